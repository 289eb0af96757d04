"""Nothing lost by accident: ids bound to their sources, canonical layer sets, errors before
side effects, and progress that tells the truth."""

import json
import os
import pty
import struct
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from lebench_cli.cli import main
from lebench_cli.reading.store import open_features
from lebench_cli.testing.audio import write_audio


def extract(*args, input=None):
    return CliRunner().invoke(main, ["extract", *map(str, args)], input=input, catch_exceptions=False)


def quiet_args(checkpoint, out, *extra):
    return ["-o", out, "--model", checkpoint, "--device", "cpu", "--workers", "0", "-q", *extra]


def failures_of(out: Path) -> list:
    return [json.loads(line) for line in (out / "failures-1of1.jsonl").read_text().splitlines()]


@pytest.fixture
def two_corpora(tmp_path):
    """Two folders that both hold spk1/u1, with different audio."""
    first = write_audio(tmp_path / "c1" / "spk1" / "u1.wav", 0.9, seed=1)
    second = write_audio(tmp_path / "c2" / "spk1" / "u1.wav", 1.2, seed=2)
    write_audio(tmp_path / "c2" / "spk2" / "u2.wav", 0.6, seed=3)
    return first, second


# ---- 1. ids bound to their sources ---------------------------------------------------------


def test_another_folder_with_the_same_ids_fails_instead_of_being_skipped(checkpoints, two_corpora, tmp_path):
    first, second = two_corpora
    out = tmp_path / "out"
    assert extract(tmp_path / "c1", *quiet_args(checkpoints("base"), out)).exit_code == 0
    result = extract(tmp_path / "c2", *quiet_args(checkpoints("base"), out))
    assert result.exit_code == 3
    assert result.stderr == f"Error: 1 files failed (see {out / 'failures-1of1.jsonl'})\n"
    assert failures_of(out) == [{"id": "spk1/u1", "path": str(second),
                                 "reason": f"id spk1/u1 already stored from {first}"}]
    with open_features(out) as store:
        assert sorted(store.ids) == ["spk1/u1", "spk2/u2"]
        assert store.info("spk1/u1")["source"] == str(first)  # the first file's features, kept


def test_the_summary_counts_the_conflict_and_strict_stops_on_it(checkpoints, two_corpora, tmp_path):
    first, second = two_corpora
    out = tmp_path / "out"
    base = ["-o", out, "--model", checkpoints("base"), "--device", "cpu", "--workers", "0"]
    assert extract(tmp_path / "c1", *base).exit_code == 0
    result = extract(tmp_path / "c2", *base)
    assert result.exit_code == 3
    assert result.stderr.startswith("extracted 1 file (0.6 s of audio) in ")
    assert result.stderr.endswith(f"; 1 failed (see {out / 'failures-1of1.jsonl'})\n")
    result = extract(tmp_path / "c2", *base, "--strict", "--overwrite")  # a fresh store: no conflict
    assert result.exit_code == 0
    result = extract(tmp_path / "c1", *base, "--strict")
    assert (result.exit_code, result.stderr) == (1, f"Error: {first}: id spk1/u1 already stored from {second}\n")


def test_id_prefix_lets_two_corpora_share_one_output(checkpoints, two_corpora, tmp_path):
    out = tmp_path / "out"
    for corpus in ("c1", "c2"):
        result = extract(tmp_path / corpus, *quiet_args(checkpoints("base"), out, "--id-prefix", f"{corpus}/"))
        assert result.exit_code == 0, result.output
    with open_features(out) as store:
        assert sorted(store.ids) == ["c1/spk1/u1", "c2/spk1/u1", "c2/spk2/u2"]
        assert store.info("c2/spk1/u1")["source"] == str(two_corpora[1])
    result = extract(tmp_path / "c1", *quiet_args(checkpoints("base"), out, "--id-prefix", "../x"))
    assert (result.exit_code, result.stderr) == (1, "Error: invalid --id-prefix '../x': no '.' or '..' path "
                                                    "components\n")


def test_a_file_changed_since_it_was_stored_fails_and_keeps_its_features(checkpoints, tmp_path):
    corpus = tmp_path / "corpus"
    path = write_audio(corpus / "u1.wav", 0.9, seed=1)
    out = tmp_path / "out"
    assert extract(corpus, *quiet_args(checkpoints("base"), out)).exit_code == 0
    with open_features(out) as store:
        before = store.read("u1", 3)
    size = path.stat().st_size
    write_audio(path, 1.1, seed=5)
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10**9))
    result = extract(corpus, *quiet_args(checkpoints("base"), out))
    assert result.exit_code == 3
    (failure,) = failures_of(out)
    assert failure["path"] == str(path)
    assert failure["reason"].startswith(f"changed since its features were stored (size {size} -> "
                                        f"{path.stat().st_size} bytes, modified ")
    assert failure["reason"].endswith("); the stored features are kept: use --update to extract it again")
    with open_features(out) as store:
        np.testing.assert_array_equal(store.read("u1", 3), before)
    assert extract(corpus, *quiet_args(checkpoints("base"), out, "--overwrite")).exit_code == 0
    with open_features(out) as store:
        assert store.info("u1")["duration"] == pytest.approx(1.1)


def test_a_touched_file_is_skipped_and_a_rewritten_one_of_the_same_size_is_not(checkpoints, tmp_path):
    corpus = tmp_path / "corpus"
    path = write_audio(corpus / "u1.wav", 0.9, seed=1)
    out = tmp_path / "out"
    assert extract(corpus, *quiet_args(checkpoints("base"), out)).exit_code == 0
    mtime = path.stat().st_mtime_ns
    os.utime(path, ns=(mtime, mtime + 2 * 10**9))  # same bytes: the content hash decides
    result = extract(corpus, "-o", out, "--model", checkpoints("base"), "--device", "cpu", "--workers", "0")
    assert (result.exit_code, result.stderr) == (0, "nothing to extract: all 1 file already stored\n")
    write_audio(path, 0.9, seed=2)  # same size, other bytes
    os.utime(path, ns=(mtime, mtime + 4 * 10**9))
    result = extract(corpus, *quiet_args(checkpoints("base"), out))
    assert result.exit_code == 3
    (failure,) = failures_of(out)
    assert failure["reason"].startswith("changed since its features were stored (modified ")
    assert failure["reason"].endswith(", other content); the stored features are kept: use --update to "
                                      "extract it again")


def test_an_unchanged_file_is_skipped_from_any_folder_and_any_input_form(checkpoints, tmp_path, monkeypatch):
    corpus = tmp_path / "corpus"
    paths = [write_audio(corpus / "spk1" / f"u{index}.wav", 0.5 + index / 10, seed=index) for index in range(3)]
    out = tmp_path / "out"
    assert extract(corpus, *quiet_args(checkpoints("base"), out)).exit_code == 0
    monkeypatch.chdir(tmp_path / "corpus")  # relative paths from another folder, on stdin
    listing = "".join(f"{os.path.relpath(path)}\n" for path in paths)
    result = extract("-", *quiet_args(checkpoints("base"), out, "--root", "."), input=listing)
    assert result.exit_code == 0, result.output
    result = extract("-", "-o", out, "--model", checkpoints("base"), "--device", "cpu", "--workers", "0",
                     "--root", tmp_path / "corpus", input=listing)
    assert (result.exit_code, result.stderr) == (0, "nothing to extract: all 3 files already stored\n")


def test_root_gives_stdin_files_the_ids_of_the_folder_walk(checkpoints, tmp_path):
    corpus = tmp_path / "corpus"
    write_audio(corpus / "fr" / "bonjour.wav", 0.6, seed=1)
    outside = write_audio(tmp_path / "elsewhere" / "x.wav", 0.6, seed=2)
    by_folder, by_stdin = tmp_path / "by-folder", tmp_path / "by-stdin"
    assert extract(corpus, *quiet_args(checkpoints("base"), by_folder)).exit_code == 0
    listing = f"{corpus / 'fr' / 'bonjour.wav'}\n"
    assert extract("-", *quiet_args(checkpoints("base"), by_stdin, "--root", corpus), input=listing).exit_code == 0
    with open_features(by_folder) as folder, open_features(by_stdin) as stdin:
        assert folder.ids == stdin.ids == ["fr/bonjour"]
    without_root = tmp_path / "without-root"
    assert extract("-", *quiet_args(checkpoints("base"), without_root), input=listing).exit_code == 0
    with open_features(without_root) as store:
        assert store.ids == [os.path.splitext(str(corpus / "fr" / "bonjour.wav"))[0]]
    result = extract("-", *quiet_args(checkpoints("base"), tmp_path / "x", "--root", corpus),
                     input=listing + f"{outside}\n")
    assert (result.exit_code, result.stderr) == (1, f"Error: {outside} is outside --root {corpus}\n")
    assert not (tmp_path / "x").exists()


def test_dry_run_counts_conflicts(checkpoints, two_corpora, tmp_path):
    out = tmp_path / "out"
    assert extract(tmp_path / "c1", *quiet_args(checkpoints("base"), out)).exit_code == 0
    result = extract(tmp_path / "c2", *quiet_args(checkpoints("base"), out, "--dry-run"))
    assert result.exit_code == 0
    assert result.stdout.startswith("1 file to extract (0.6 s of audio), 0 already stored, 1 id conflict "
                                    "(would fail), 0 unreadable; estimated output ")


# ---- 2. the run's identity is canonical ---------------------------------------------------------


@pytest.mark.parametrize("first,second", [("2,1,0", "0-2"), ("cnn,all", "all,cnn"), ("0,1,2,2", "0-2")])
def test_one_layer_set_in_any_order_is_the_same_run(checkpoints, two_corpora, tmp_path, first, second):
    out = tmp_path / "out"
    assert extract(tmp_path / "c1", *quiet_args(checkpoints("base"), out, "--layers", first)).exit_code == 0
    result = extract(tmp_path / "c1", "-o", out, "--model", checkpoints("base"), "--device", "cpu",
                     "--workers", "0", "--layers", second)
    assert (result.exit_code, result.stderr) == (0, "nothing to extract: all 1 file already stored\n")
    metadata = json.loads((out / "lebench.json").read_text())
    expected = {"2,1,0": ["0", "1", "2"], "cnn,all": ["cnn", "0", "1", "2", "3"], "0,1,2,2": ["0", "1", "2"]}
    assert metadata["identity"]["layers"] == metadata["layers"] == expected[first]
    with open_features(out) as store:
        assert store.layers == [name if name == "cnn" else int(name) for name in expected[first]]


# ---- 3. errors before side effects ---------------------------------------------------------------


def test_early_errors_leave_no_folder_behind(checkpoints, two_corpora, tmp_path, offline_cache):
    import torch

    out = tmp_path / "new" / "out"
    cases = {
        ("--layers", "7"): "Error: layer 7 does not exist: this model has layers 0-3 and 'cnn'\n",
        ("--model", "LeBenchmark/no-such-model"): None,
        ("--model", str(tmp_path / "missing.pt")): None,
    }
    if not torch.cuda.is_available():
        from lebench_cli.model.compute_device import cpu_fallback_reason

        cases[("--device", "cuda")] = ("Error: device 'cuda' requested but CUDA is not available: "
                                       f"{cpu_fallback_reason()} (use --device cpu)\n")
    for extra, message in cases.items():
        result = extract(tmp_path / "c1", *quiet_args(checkpoints("base"), out), *extra)
        assert result.exit_code == 1, (extra, result.output)
        assert result.stderr.startswith("Error: ") and result.stderr.count("\n") == 1, extra
        assert message is None or result.stderr == message, extra
        assert not (tmp_path / "new").exists(), extra


def test_layer_syntax_fails_at_parsing_without_importing_fairseq(checkpoints, two_corpora, tmp_path):
    code = (
        "import sys, runpy\n"
        f"sys.argv = ['lebench', 'extract', {str(tmp_path / 'c1')!r}, '-o', {str(tmp_path / 'out')!r},"
        f" '--model', {str(checkpoints('base'))!r}, '--layers', '3-1']\n"
        "try:\n"
        "    runpy.run_module('lebench_cli', run_name='__main__')\n"
        "except SystemExit as exit:\n"
        "    print(exit.code, 'fairseq' in sys.modules, 'torch' in sys.modules)\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.stdout == "2 False False\n", run.stderr
    assert run.stderr.endswith("Error: Invalid value for '--layers': invalid layer selection '3-1': "
                               "bad range '3-1'\n")
    assert not (tmp_path / "out").exists()


# ---- 6. progress that tells the truth ------------------------------------------------------------


def run_in_a_zero_column_terminal(args: list) -> tuple:
    """(exit code, what the terminal showed) of `python -m lebench_cli ARGS` whose stderr is a
    pty that reports 0 columns, as under `script` or some CI runners."""
    import fcntl
    import termios

    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 0, 0, 0, 0))
    chunks = []

    def drain():
        while True:
            try:
                data = os.read(master, 65536)
            except OSError:
                return
            if not data:
                return
            chunks.append(data)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    process = subprocess.Popen([sys.executable, "-m", "lebench_cli", *map(str, args)],
                               stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=slave)
    os.close(slave)
    process.communicate(timeout=300)
    reader.join(timeout=10)
    os.close(master)
    return process.returncode, b"".join(chunks).decode(errors="replace")


def test_a_zero_column_terminal_still_gets_a_bar_by_audio_seconds(checkpoints, tmp_path):
    corpus = tmp_path / "corpus"
    for index, seconds in enumerate([3.0, 0.5, 0.5, 0.5]):
        write_audio(corpus / f"u{index}.wav", seconds, seed=index)
    code, screen = run_in_a_zero_column_terminal(
        ["extract", corpus, "-o", tmp_path / "out", "--model", checkpoints("base"), "--device", "cpu",
         "--workers", "0"])
    assert code == 0, screen
    lines = screen.replace("\r\n", "\n").split("\n")
    bar, summary = lines[-3].split("\r")[-1], lines[-2]
    assert bar.startswith("100%|") and "| 4/4 files, 4.5 s of 4.5 s audio, " in bar, screen
    assert len(bar) <= 80
    assert summary.startswith("extracted 4 files (4.5 s of audio) in "), screen
    bar_rate = float(bar.split(" audio, ")[1].split("x real time")[0])
    summary_rate = float(summary.split(" s (")[1].split("x real time")[0])
    assert 0.65 < bar_rate / summary_rate < 1.5, screen  # one span: decoding to the last commit


def test_the_bar_counts_audio_not_files(tmp_path):
    from lebench_cli.pipeline.progress import ProgressBar

    class Stream:
        text = ""

        def write(self, text):
            self.text += text

        def flush(self):
            pass

    stream = Stream()
    bar = ProgressBar(stream)
    bar.start(files=4, audio_seconds=100.0)
    bar.advance(1, 70.0)  # the longest file first
    bar._bar.refresh()
    shown = stream.text.split("\r")[-1]
    assert shown.startswith(" 70%|") and "| 1/4 files, 1.2 min of 1.7 min audio, " in shown
    bar.close()
