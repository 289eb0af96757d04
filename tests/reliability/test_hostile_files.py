"""Bad audio, hostile checkpoints and committed shards damaged after the fact.
The harness: tests/support/reliability.py."""

from __future__ import annotations

import json
import os
import random
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from click.testing import CliRunner

from lebench_cli.cli import main
from lebench_cli.reading.store import open_features
from lebench_cli.testing.audio import write_audio
from support.reliability import RATE, check_complete, extract_args, is_root, shard_files, soak_only


# ---- 6. bad audio -----------------------------------------------------------------------


def wav_bytes(format_tag: int, data: bytes, declared: int | None = None) -> bytes:
    """A WAV file, mono 16 kHz 16-bit, whose header says what we like."""
    declared = len(data) if declared is None else declared
    fmt = format_tag.to_bytes(2, "little") + (1).to_bytes(2, "little") + RATE.to_bytes(4, "little") + \
        (2 * RATE).to_bytes(4, "little") + (2).to_bytes(2, "little") + (16).to_bytes(2, "little")
    return (b"RIFF" + (36 + len(data)).to_bytes(4, "little") + b"WAVE" + b"fmt " + (16).to_bytes(4, "little") + fmt
            + b"data" + declared.to_bytes(4, "little") + data)


def bad_audio_corpus(root: Path) -> tuple:
    """(folder, extra paths for stdin, {id: reason}, {id: (frames, flags)} of the good files)."""
    folder = root / "corpus"
    good = {}
    for index in range(4):
        write_audio(folder / f"good{index}.wav", 0.5 + 0.3 * index, seed=index)
        good[f"good{index}"] = ((int(round((0.5 + 0.3 * index) * RATE)) - 400) // 320 + 1, "")
    write_audio(folder / "good-flac.flac", 0.8, seed=9)
    good["good-flac"] = ((12_800 - 400) // 320 + 1, "")
    samples = (np.sin(np.arange(8000) * 0.05) * 8000).astype("<i2").tobytes()
    (folder / "empty.wav").write_bytes(b"")
    (folder / "text.wav").write_text("this is not audio\n" * 20)
    whole = write_audio(root / "whole.wav", 1.0, seed=5, subtype="PCM_16").read_bytes()
    (folder / "truncated-wav.wav").write_bytes(whole[:44 + 2 * 6000 + 1])  # 6000 samples and a half
    flac = write_audio(root / "whole.flac", 1.0, seed=6).read_bytes()
    (folder / "truncated-flac.flac").write_bytes(flac[:len(flac) // 2])
    sf.write(folder / "zero-samples.wav", np.zeros(0, np.float32), RATE, subtype="PCM_16")
    write_audio(folder / "short.wav", 100 / RATE, seed=7)  # 100 samples: padded to one frame
    good["short"] = (1, "padded")
    for name, value in (("nan", np.nan), ("inf", np.inf)):
        waveform = np.sin(np.arange(8000, dtype=np.float32) * 0.05)
        waveform[4000] = value
        sf.write(folder / f"{name}.wav", waveform, RATE, subtype="FLOAT")
    (folder / "codec.wav").write_bytes(wav_bytes(0x1234, samples))  # an unknown WAVE format tag
    (folder / "garbage-mp3.mp3").write_bytes(b"\xff\xfb\x90\x00" + random.Random(1).randbytes(3000))
    (folder / "garbage-opus.opus").write_bytes(b"OggS" + random.Random(2).randbytes(3000))
    (folder / "absurd-length.wav").write_bytes(wav_bytes(1, samples, declared=0xFFFFFFF0))
    os.symlink("loop-b.wav", folder / "loop-a.wav")
    os.symlink("loop-a.wav", folder / "loop-b.wav")
    os.symlink("nowhere.wav", folder / "dangling.wav")
    (folder / "unreadable.wav").write_bytes(whole)
    (folder / "unreadable.wav").chmod(0)
    os.mkfifo(folder / "fifo.wav")  # no writer: reading it would wait forever
    os.symlink("/dev/zero", folder / "endless.wav")
    directory = root / "listed" / "directory.wav"
    directory.mkdir(parents=True)
    missing = root / "listed" / "missing.wav"
    reasons = {
        "empty": "empty file (0 bytes)",
        "text": "not a readable audio file (format not recognised)",
        "truncated-flac": "decoding failed (flac decoder lost sync)",
        "truncated-wav": "truncated: ends at 0.375 s of the 1.000 s its header declares",
        "absurd-length": "truncated: ends at 0.500 s of the 134217.728 s its header declares",
        "zero-samples": "no samples",
        "nan": "contains NaN or infinite samples",
        "inf": "contains NaN or infinite samples",
        "codec": "not a readable audio file (error in WAV/W64/RF64 file. Malformed 'fmt ' chunk)",
        "garbage-mp3": "not a readable audio file (corrupt or unsupported data)",
        "garbage-opus": "not a readable audio file (file contains data in an unimplemented format)",
        "fifo": "not a regular file (a FIFO)",
        "endless": "not a regular file (a character device)",
        "loop-a": "symlink loop",
        "loop-b": "symlink loop",
        "dangling": "no such file",
        "unreadable": "permission denied",
        str(directory.with_suffix("")): "is a directory",
        str(missing.with_suffix("")): "no such file",
    }
    return folder, [directory, missing], reasons, good


@pytest.mark.parametrize("workers", [0, pytest.param(2, marks=soak_only)])
def test_bad_audio_is_recorded_and_the_good_files_are_written(zygote, model, tmp_path, workers):
    folder, listed, reasons, good = bad_audio_corpus(tmp_path)
    stdin = tmp_path / "stdin.txt"
    stdin.write_text("".join(f"{path}\n" for path in listed))
    out = tmp_path / "out"
    run = zygote.run(["extract", folder, "-", "-o", out, "--model", model, "--device", "cpu", "--workers", workers,
                      "-q"], stdin=str(stdin), drop_dac=is_root(), timeout=60)
    assert run.status == 3, run.stderr
    lines = run.stderr.splitlines()
    assert lines[-1] == f"Error: {len(reasons)} files failed (see {out}/failures-1of1.jsonl)"
    assert "Traceback" not in run.stderr
    failures = [json.loads(line) for line in (out / "failures-1of1.jsonl").read_text().splitlines()]
    assert {entry["id"]: entry["reason"] for entry in failures} == reasons
    assert len(failures) == len(reasons)
    with open_features(out) as store:
        assert sorted(store.ids) == sorted(good)
        for utt_id, (frames, flags) in good.items():
            assert (store.info(utt_id)["frames"], store.info(utt_id)["flags"]) == (frames, flags), utt_id
    print(f"\n{len(reasons)} bad inputs recorded, {len(good)} good files written; "
          f"other stderr lines: {lines[:-1][:3]}")


# ---- 7. hostile checkpoints -----------------------------------------------------------------


class RunsCode:
    """Unpickling this calls os.system: what a malicious checkpoint does."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def hostile_checkpoint(kind: str, valid: Path, folder: Path, marker: Path) -> tuple:
    """(model path, the exact error line or its start)."""
    import zipfile
    from pathlib import PurePosixPath

    path = folder / "checkpoint_best.pt"
    folder.mkdir()
    if kind in ("code-execution", "code-execution-legacy-format"):
        state = torch.load(valid, weights_only=False)
        state["extra_state"] = RunsCode(marker)
        torch.save(state, path, _use_new_zipfile_serialization=kind == "code-execution")
        return path, (f"Error: {path}: refused to load: it needs 'posix.system', which is not in the allowlist of "
                      "checkpoint config classes (loading it could run code); pass --trust-checkpoint only if you "
                      "trust this file\n")
    if kind == "global-outside-the-allowlist":
        state = torch.load(valid, weights_only=False)
        state["extra_state"] = PurePosixPath("/data/corpus")  # harmless, but not a config class
        torch.save(state, path)
        return path, (f"Error: {path}: refused to load: it needs 'pathlib.PurePosixPath', which is not in the "
                      "allowlist of checkpoint config classes (loading it could run code); pass "
                      "--trust-checkpoint only if you trust this file\n")
    if kind == "truncated-archive":
        data = valid.read_bytes()
        path.write_bytes(data[:len(data) // 2])
        return path, f"Error: {path}: not a readable PyTorch checkpoint: "
    if kind == "corrupt-data-pkl":
        with zipfile.ZipFile(valid) as source, zipfile.ZipFile(path, "w") as target:
            for item in source.infolist():
                content = source.read(item)
                if item.filename.endswith("/data.pkl"):
                    content = b"\x80\x02}q\x00(X\x05\x00\x00\x00modelq\x01cposix\nsystem\n" + b"\xff" * 64
                target.writestr(item, content)
        return path, f"Error: {path}: "
    if kind == "config-not-json":
        from safetensors.torch import save_file

        path = folder
        save_file({"weight": torch.zeros(2)}, str(folder / "model.safetensors"))
        (folder / "config.json").write_text("{'model_type': 'wav2vec2',")
        return path, (f"Error: {folder}/config.json: not valid JSON: Expecting property name enclosed in double "
                      "quotes: line 1 column 2 (char 1)\n")
    raise ValueError(kind)


HOSTILE = ["code-execution", "code-execution-legacy-format", "global-outside-the-allowlist", "truncated-archive",
           "corrupt-data-pkl", "config-not-json"]


def test_hostile_checkpoints_are_refused_without_running_anything(model, corpus, tmp_path):
    marker = tmp_path / "code-ran"
    for kind in HOSTILE:
        path, expected = hostile_checkpoint(kind, Path(model), tmp_path / kind, marker)
        out = tmp_path / f"out-{kind}"
        result = CliRunner().invoke(main, ["extract", str(corpus), "-o", str(out), "--model", str(path), "--device",
                                           "cpu", "--workers", "0", "-q"])
        assert result.exit_code == 1, (kind, result.output)
        assert result.output.count("\n") == 1 and result.output.startswith(expected), (kind, result.output)
        if expected.endswith("\n"):
            assert result.output == expected, kind
        assert not marker.exists(), f"{kind}: the checkpoint ran code"
        written = [p for p in out.rglob("*") if p.is_file()] if out.exists() else []
        assert written == [], (kind, written)
    # The same file is loaded, code and all, only on request: the marker proves the fixture works.
    path, _ = hostile_checkpoint("code-execution", Path(model), tmp_path / "trusted", marker)
    CliRunner().invoke(main, ["info", str(path), "--trust-checkpoint"])
    assert marker.exists()


# ---- committed shards damaged after the fact -----------------------------------------------


def test_a_damaged_committed_shard_is_a_one_line_error_naming_it(zygote, corpus, model, reference, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(reference.out, out)
    damaged = shard_files(out)[3]
    damaged.write_bytes(damaged.read_bytes()[:2000])  # a partial copy
    expected = re.compile(rf"Error: {re.escape(str(damaged))} is not a readable lebench shard \(.+\): move it out "
                          r"of the folder, then rerun to extract its utterances again\n")
    run = zygote.run(extract_args(corpus, out, model))
    assert run.status == 1 and expected.fullmatch(run.stderr), run.stderr
    result = CliRunner().invoke(main, ["ls", str(out)])
    assert result.exit_code == 1 and expected.fullmatch(result.output), result.output
    damaged.rename(tmp_path / damaged.name)  # as the message says
    assert zygote.run(extract_args(corpus, out, model)).status == 0
    check_complete(out, reference)
