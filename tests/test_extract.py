"""`lebench extract` end to end on tiny models and generated audio."""

import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import soundfile as sf
import torch
from click.testing import CliRunner

from lebench_cli.audio.loading import load_audio
from lebench_cli.model.formats import load_local
from lebench_cli.cli import main
from lebench_cli.model.encoder import Encoder
from lebench_cli.reading.store import open_features
from lebench_cli.testing.audio import write_audio
from support.signals import default_sigint

RATE = 16_000


@pytest.fixture
def corpus(tmp_path):
    root = tmp_path / "corpus"
    write_audio(root / "spk1" / "a.wav", 1.3, seed=1)
    write_audio(root / "spk1" / "b.flac", 0.7, seed=2)
    write_audio(root / "spk2" / "c.wav", 2.1, rate=8_000, seed=3)
    write_audio(root / "spk2" / "d.wav", 1.9, rate=44_100, channels=2, seed=4)
    write_audio(root / "spk2" / "e.wav", 0.45, rate=48_000, seed=5, subtype="PCM_16")
    return root


IDS = ["spk1/a", "spk1/b", "spk2/c", "spk2/d", "spk2/e"]


def extract(*args, input=None):
    return CliRunner().invoke(main, ["extract", *map(str, args)], input=input, catch_exceptions=False)


def base_args(checkpoint, out, *extra, device="cpu"):
    return ["-o", out, "--model", checkpoint, "--device", device, "--workers", "0", "-q", *extra]


@pytest.mark.parametrize("family", ["base", "large"])
def test_features_read_back_equal_one_at_a_time_output(checkpoints, corpus, tmp_path, family, device):
    """float32 on `device` against the CPU's one-at-a-time float32 output."""
    checkpoint = checkpoints(family)
    out = tmp_path / "out"
    result = extract(corpus, *base_args(checkpoint, out, "--layers", "all,cnn", "--save-dtype", "float32",
                                        "--batch-seconds", "8", "--dtype", "float32", device=device))
    assert result.exit_code == 0, result.output
    encoder = Encoder(load_local(checkpoint))
    with open_features(out) as store:
        assert sorted(store.ids) == IDS
        assert store.layers == ["cnn", 0, 1, 2, 3]
        for utt_id in IDS:
            path = next(corpus.glob(utt_id + ".*"))
            (expected,) = encoder.encode([load_audio(path)], ["cnn", 0, 1, 2, 3])
            for layer, value in expected.items():
                stored = store.read(utt_id, layer)
                scale = np.abs(value).max()
                assert stored.shape == value.shape
                assert np.abs(stored - value).max() <= 1e-4 * scale, (utt_id, layer)


@pytest.mark.parametrize("family", ["base", "large"])
def test_half_precision_features_stay_close_to_float32(checkpoints, corpus, tmp_path, family, device):
    """float16 on `device` (CUDA's default), stored as float16: within 1e-2 of the CPU's
    float32 output, relative to each layer's scale, on every layer and utterance."""
    checkpoint = checkpoints(family)
    out = tmp_path / "out"
    write_audio(corpus / "long" / "rec.wav", 5.3, seed=9)
    result = extract(corpus, *base_args(checkpoint, out, "--layers", "all,cnn", "--dtype", "float16",
                                        "--batch-seconds", "4", "--chunk-seconds", "2.5", "--overlap-seconds", "0.5",
                                        device=device))
    assert result.exit_code == 0, result.output
    encoder = Encoder(load_local(checkpoint))
    with open_features(out) as store:
        assert sorted(store.ids) == sorted(IDS + ["long/rec"]) and store.info("long/rec")["flags"] == "chunked"
        for utt_id in store.ids:
            if utt_id == "long/rec":  # windows: compared with the same windows in float32 below
                continue
            (expected,) = encoder.encode([load_audio(next(corpus.glob(utt_id + ".*")))], store.layers)
            for layer, value in expected.items():
                stored = store.read(utt_id, layer)
                assert stored.dtype == np.float16 and stored.shape == value.shape
                error = np.abs(stored.astype(np.float32) - value).max() / np.abs(value).max()
                assert error < 1e-2, f"{family} {utt_id} layer {layer}: relative error {error:.3g}"
    reference = tmp_path / "float32"
    result = extract(corpus / "long", *base_args(checkpoint, reference, "--layers", "all,cnn", "--dtype", "float32",
                                                 "--save-dtype", "float32", "--chunk-seconds", "2.5",
                                                 "--overlap-seconds", "0.5"))
    assert result.exit_code == 0, result.output
    with open_features(out) as store, open_features(reference) as exact:
        for layer in exact.layers:
            value, stored = exact.read("rec", layer), store.read("long/rec", layer)
            error = np.abs(stored.astype(np.float32) - value).max() / np.abs(value).max()
            assert error < 1e-2, f"{family} long/rec layer {layer}: relative error {error:.3g}"


def test_summary_exit_codes_and_failure_records(checkpoints, corpus, tmp_path):
    (corpus / "bad").mkdir()
    (corpus / "bad" / "empty.wav").write_bytes(b"")
    (corpus / "bad" / "text.wav").write_text("not audio")
    sf.write(corpus / "bad" / "nan.wav", np.array([0.1, np.nan] * 400, dtype=np.float32), RATE, subtype="FLOAT")
    write_audio(corpus / "bad" / "tiny.wav", 0.01, seed=6)  # 160 samples: under one frame
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["extract", str(corpus), "-o", str(out), "--model", str(checkpoints("base")),
                                       "--device", "cpu", "--workers", "0"])
    assert result.exit_code == 3
    summary = result.output.strip().splitlines()[-1]
    assert summary.startswith("extracted 6 files (6.5 s of audio) in ")
    assert summary.endswith(f"; 1 padded to one frame; 3 failed (see {out}/failures-1of1.jsonl)")
    failures = {json.loads(line)["id"]: json.loads(line)["reason"]
                for line in (out / "failures-1of1.jsonl").read_text().splitlines()}
    assert failures == {
        "bad/empty": "empty file (0 bytes)",
        "bad/text": "not a readable audio file (format not recognised)",
        "bad/nan": "contains NaN or infinite samples",
    }
    with open_features(out) as store:
        assert sorted(store.ids) == sorted(IDS + ["bad/tiny"])
        assert store.info("bad/tiny")["flags"] == "padded"
        assert store.info("bad/tiny")["frames"] == 1
        assert store.info("bad/tiny")["duration"] == pytest.approx(0.01)


def test_strict_stops_at_the_first_failure(checkpoints, corpus, tmp_path):
    (corpus / "zz.wav").write_text("not audio")
    out = tmp_path / "out"
    result = extract(corpus, *base_args(checkpoints("base"), out, "--strict"))
    assert result.exit_code == 1
    assert result.output == f"Error: {corpus}/zz.wav: not a readable audio file (format not recognised)\n"


def test_rerun_skips_stored_utterances(checkpoints, corpus, tmp_path):
    out = tmp_path / "out"
    args = [corpus, "-o", out, "--model", checkpoints("base"), "--device", "cpu", "--workers", "0"]
    assert extract(*args).exit_code == 0
    write_audio(corpus / "spk3" / "f.wav", 1.0, seed=7)
    result = extract(*args)
    assert result.exit_code == 0
    assert "extracted 1 file " in result.output and "; 5 already stored" in result.output
    with open_features(out) as store:
        assert sorted(store.ids) == sorted(IDS + ["spk3/f"])


def test_stdin_paths_and_manifest(checkpoints, corpus, tmp_path):
    paths = [corpus / "spk1" / "a.wav", corpus / "spk2" / "d.wav"]
    out = tmp_path / "out"
    result = extract("-", *base_args(checkpoints("base"), out), input="".join(f"{p}\n" for p in paths) + "\n")
    assert result.exit_code == 0, result.output
    with open_features(out) as store:
        assert sorted(store.ids) == sorted(str(p.with_suffix("")) for p in paths)  # as given, no extension
    manifest = tmp_path / "train.tsv"
    manifest.write_text(f"{corpus}\nspk1/a.wav\t20800\nspk2/c.wav\t16800\n")
    out2 = tmp_path / "out2"
    assert extract(manifest, *base_args(checkpoints("base"), out2)).exit_code == 0
    with open_features(out2) as store:
        assert sorted(store.ids) == ["spk1/a", "spk2/c"]


def test_find_pipeline_into_extract(checkpoints, corpus, tmp_path):
    out = tmp_path / "out"
    lebench = Path(sys.executable).with_name("lebench")
    command = (f"cd {corpus} && find . -name '*.wav' | sort | {lebench} extract - -o {out} "
               f"--model {checkpoints('base')} --device cpu --workers 0")
    result = subprocess.run(command, shell=True, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""  # data never goes to stdout; the summary is on stderr
    assert result.stderr.startswith("extracted 4 files")
    with open_features(out) as store:
        assert sorted(store.ids) == ["spk1/a", "spk2/c", "spk2/d", "spk2/e"]


def test_different_layers_refused_unless_overwrite(checkpoints, corpus, tmp_path):
    out = tmp_path / "out"
    assert extract(corpus, *base_args(checkpoints("base"), out, "--layers", "1")).exit_code == 0
    result = extract(corpus, *base_args(checkpoints("base"), out, "--layers", "2"))
    assert result.exit_code == 1
    assert result.output == (f'Error: {out} holds features of other layers (layers: ["1"] != ["2"]): to store '
                             "more layers, extract them into a second output folder, or use --overwrite to "
                             "replace these features\n")
    assert extract(corpus, *base_args(checkpoints("base"), out, "--layers", "2", "--overwrite")).exit_code == 0
    with open_features(out) as store:
        assert store.layers == [2] and len(store) == 5


def test_second_concurrent_run_is_refused(checkpoints, corpus, tmp_path):
    out = tmp_path / "out"
    assert extract(corpus, *base_args(checkpoints("base"), out)).exit_code == 0
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from pathlib import Path; from lebench_cli.storage import PartLock\n"
        f"lock = PartLock(Path({str(out)!r}), 1, 1); lock.acquire(); print('held', flush=True); time.sleep(60)")],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        result = extract(corpus, *base_args(checkpoints("base"), out))
        assert result.exit_code == 1
        assert result.output == f"Error: another lebench extract is writing part 1/1 of {out} (pid {holder.pid})\n"
    finally:
        holder.kill()
        holder.wait()
    assert extract(corpus, *base_args(checkpoints("base"), out)).exit_code == 0  # stale lock recovered


def test_job_array_parts_make_one_dataset(checkpoints, corpus, tmp_path):
    out = tmp_path / "out"
    for part in ("1/2", "2/2"):
        assert extract(corpus, *base_args(checkpoints("base"), out, "--shard", part)).exit_code == 0
    with open_features(out) as store:
        assert sorted(store.ids) == IDS
    result = CliRunner().invoke(main, ["ls", str(out)])
    assert sorted(line.split("\t")[0] for line in result.output.splitlines()) == IDS


def test_dry_run_writes_nothing(checkpoints, corpus, tmp_path):
    out = tmp_path / "out"
    result = extract(corpus, "-o", out, "--model", checkpoints("base"), "--layers", "1,3", "--device", "cpu",
                     "--dry-run")
    assert result.exit_code == 0
    # 1.3 + 0.7 + 2.1 + 1.9 + 0.45 s = 6.45 s -> 64+34+104+94+22 = 318 frames, each utterance from a
    # 16-row chunk boundary: 64+48+112+96+32 = 352 rows x 2 layers x 32 x 2 bytes = 45.1 KB, plus one
    # shard's fixed cost, the chunk tables and the utterance tables (tests/test_sizing.py checks the total)
    assert re.fullmatch(r"5 files to extract \(6\.5 s of audio\), 0 already stored, 0 unreadable; "
                        r"estimated output 7\d\.\d KB\n", result.output), result.output
    assert not out.exists()


def test_ls_and_show(checkpoints, corpus, tmp_path):
    out = tmp_path / "out"
    assert extract(corpus, *base_args(checkpoints("base"), out)).exit_code == 0
    result = CliRunner().invoke(main, ["ls", str(out), "--header"])
    lines = result.output.splitlines()
    assert lines[0] == "id\tframes\tduration\tflags"
    assert sorted(lines[1:]) == ["spk1/a\t64\t1.300\t", "spk1/b\t34\t0.700\t", "spk2/c\t104\t2.100\t",
                                 "spk2/d\t94\t1.900\t", "spk2/e\t22\t0.450\t"]
    shown = json.loads(CliRunner().invoke(main, ["show", str(out)]).output)
    assert shown["utterances"] == 5
    assert shown["layers"] == ["3"] and shown["frame_shift_seconds"] == 0.02 and shown["sample_rate"] == 16000
    assert shown["model"]["sha256"] == shown["identity"]["model_sha256"]
    assert shown["options"]["batch_seconds"] == 20.0  # the CPU default


def test_plain_h5py_reads_what_extract_wrote(checkpoints, corpus, tmp_path):
    out = tmp_path / "out"
    assert extract(corpus, *base_args(checkpoints("base"), out, "--layers", "2,cnn")).exit_code == 0
    found = {}
    for path in sorted((out / "shards").glob("part-*.h5")):
        with h5py.File(path, "r") as shard:
            for row, utt_id in enumerate(shard["ids"].asstr()[:]):
                start, count = shard["offsets"][row], shard["frames"][row]
                found[utt_id] = shard["layers/2/frames"][start:start + count]
    with open_features(out) as store:
        assert sorted(found) == IDS
        for utt_id, value in found.items():
            np.testing.assert_array_equal(value, store.read(utt_id, 2))
            assert value.dtype == np.float16


def test_long_recording_is_chunked_to_the_unchunked_frame_count(checkpoints, tmp_path):
    audio = write_audio(tmp_path / "in" / "long.wav", 7.3, seed=8)
    out = tmp_path / "out"
    result = extract(audio, *base_args(checkpoints("large"), out, "--chunk-seconds", "2", "--overlap-seconds", "0.6",
                                       "--layers", "cnn,3", "--save-dtype", "float32"))
    assert result.exit_code == 0, result.output
    waveform = load_audio(audio)
    (full,) = Encoder(load_local(checkpoints("large"))).encode([waveform], ["cnn", 3])
    with open_features(out) as store:
        (utt_id,) = store.ids
        cnn, last = store.read(utt_id, "cnn"), store.read(utt_id, 3)
    assert len(cnn) == len(last) == (len(waveform) - 400) // 320 + 1
    # Layer-norm extractor: the conv features see their full context in every window.
    np.testing.assert_allclose(cnn, full["cnn"], atol=1e-4 * np.abs(full["cnn"]).max())
    # The transformer attends within each window only: close, not equal (docs/extract.md).
    relative = np.abs(last - full[3]).max() / np.abs(full[3]).max()
    assert relative < 0.5
    middle = slice(len(last) // 2 - 5, len(last) // 2 + 5)
    print(f"chunked vs full context, layer 3: max relative difference {relative:.3g}, "
          f"middle frames {np.abs(last[middle] - full[3][middle]).max() / np.abs(full[3]).max():.3g}")


def test_long_stereo_recording_with_means_and_a_misleading_manifest(checkpoints, tmp_path):
    audio = write_audio(tmp_path / "in" / "long.wav", 6.2, rate=44_100, channels=2, seed=9)
    out = tmp_path / "out"
    result = extract(audio, *base_args(checkpoints("base"), out, "--chunk-seconds", "2", "--overlap-seconds", "0.5",
                                       "--layers", "2,cnn", "--pool", "mean", "--frames", "--save-dtype", "float32"))
    assert result.exit_code == 0, result.output
    samples = len(load_audio(audio))
    with open_features(out) as store:
        (utt_id,) = store.ids
        info = store.info(utt_id)
        assert info["flags"] == "chunked" and info["frames"] == (samples - 400) // 320 + 1
        assert info["duration"] == pytest.approx(6.2, abs=1e-3)
        for layer in (2, "cnn"):
            np.testing.assert_allclose(store.read_mean(utt_id, layer), store.read(utt_id, layer).mean(axis=0),
                                       rtol=1e-5, atol=1e-6)
    # A manifest that says the file is short: decoded whole, found long, then streamed all the same.
    manifest = tmp_path / "short.tsv"
    manifest.write_text(f"{audio.parent}\nlong.wav\t16000\n")
    out2 = tmp_path / "out2"
    result = extract(manifest, *base_args(checkpoints("base"), out2, "--chunk-seconds", "2", "--overlap-seconds", "0.5",
                                          "--layers", "2", "--save-dtype", "float32"))
    assert result.exit_code == 0, result.output
    with open_features(out) as first, open_features(out2) as second:
        np.testing.assert_array_equal(first.read(utt_id, 2), second.read("long", 2))
        assert second.info("long")["flags"] == "chunked"


def test_a_manifest_that_says_long_for_short_files(checkpoints, tmp_path):
    """Sample counts that promise long recordings: the files are measured as recordings,
    found short and then handled as the short files they are (the tiny one padded)."""
    write_audio(tmp_path / "in" / "tiny.wav", 0.01, seed=11)
    write_audio(tmp_path / "in" / "mid.wav", 1.5, seed=12)
    write_audio(tmp_path / "in" / "real.wav", 3.3, seed=13)
    manifest = tmp_path / "stale.tsv"
    manifest.write_text(f"{tmp_path / 'in'}\ntiny.wav\t9000000\nmid.wav\t8000000\nreal.wav\t7000000\n")
    out = tmp_path / "out"
    result = extract(manifest, *base_args(checkpoints("base"), out, "--chunk-seconds", "2", "--overlap-seconds", "0.5",
                                          "--layers", "2", "--save-dtype", "float32"))
    assert result.exit_code == 0, result.output
    encoder = Encoder(load_local(checkpoints("base")))
    with open_features(out) as store:
        assert sorted(store.ids) == ["mid", "real", "tiny"]
        assert store.info("tiny")["flags"] == "padded" and store.read("tiny", 2).shape[0] == 1
        assert store.info("real")["flags"] == "chunked"
        (expected,) = encoder.encode([load_audio(tmp_path / "in" / "mid.wav")], [2])
        np.testing.assert_allclose(store.read("mid", 2), expected[2], atol=1e-4 * np.abs(expected[2]).max())


def test_non_finite_half_precision_batches_are_recomputed_in_float32(checkpoints, corpus, tmp_path, monkeypatch):
    from lebench_cli.pipeline import extract as extract_module
    from lebench_cli.model.encoder import EncodedBatch

    original = Encoder.forward

    def overflowing(self, waveforms, lengths, layers, normalize=None):
        batch = original(self, waveforms, lengths, layers, normalize)
        if self.dtype != torch.float32:
            batch = EncodedBatch({k: torch.full_like(v, float("inf")) for k, v in batch.states.items()}, batch.frames)
        return batch

    monkeypatch.setattr(Encoder, "forward", overflowing)
    options = extract_module.ExtractOptions(inputs=[str(corpus)], output=str(tmp_path / "out"),
                                            model=str(checkpoints("base")), device="cpu", dtype="bfloat16",
                                            save_dtype="float32", workers=0)
    summary = extract_module.run_extract(options)
    assert summary.recomputed_float32 >= 1 and summary.extracted == 5
    monkeypatch.setattr(Encoder, "forward", original)
    (expected,) = Encoder(load_local(checkpoints("base"))).encode([load_audio(corpus / "spk1" / "a.wav")], [3])
    with open_features(tmp_path / "out") as store:
        np.testing.assert_allclose(store.read("spk1/a", 3), expected[3], atol=1e-4 * np.abs(expected[3]).max())


def test_a_batch_launched_ahead_stores_the_same_dataset(checkpoints, corpus, tmp_path, monkeypatch, device):
    """The GPU setting (the next batch launched before the last one is read back), on every
    device: short batches, a long recording's window batches and a file whose manifest said
    it was short all reach the writer whole, in order, equal to the one-batch-at-a-time run."""
    from lebench_cli.pipeline import extract as extract_module
    from lebench_cli.model import readback as readback_module

    write_audio(corpus / "long" / "rec.wav", 6.2, seed=9)
    write_audio(corpus / "long" / "liar.wav", 4.1, seed=10)
    (corpus / "bad.wav").write_bytes(b"RIFF....WAVEfmt nonsense")
    manifest = tmp_path / "all.tsv"
    manifest.write_text(str(corpus) + "\n" + "".join(
        f"{path.relative_to(corpus)}\t{16000 if path.name == 'liar.wav' else ''}\n"
        for path in sorted(corpus.rglob("*.*"))).replace("\t\n", "\n"))
    options = ["--layers", "1,cnn", "--dtype", "float32", "--save-dtype", "float32", "--batch-seconds", "4",
               "--chunk-seconds", "2", "--overlap-seconds", "0.5"]
    one_at_a_time = tmp_path / "one"
    monkeypatch.setattr(extract_module, "batches_in_flight", lambda device: 0)
    assert extract(manifest, *base_args(checkpoints("base"), one_at_a_time, *options, device=device)).exit_code == 3

    events = []
    launch, result = Encoder.forward, readback_module.Readback.result
    monkeypatch.setattr(extract_module, "batches_in_flight", lambda device: 1)
    monkeypatch.setattr(Encoder, "forward", lambda self, *a, **k: events.append("launch") or launch(self, *a, **k))
    monkeypatch.setattr(readback_module.Readback, "result", lambda self: events.append("read") or result(self))
    ahead = tmp_path / "ahead"
    assert extract(manifest, *base_args(checkpoints("base"), ahead, *options, device=device)).exit_code == 3

    # Batches are read back one behind, except where a long recording starts (the writer
    # takes it after everything launched before it) and at its end and the run's.
    assert events[:3] == ["launch", "launch", "read"], events
    assert events.count("launch") == events.count("read") and events[-1] == "read"
    with open_features(one_at_a_time) as expected, open_features(ahead) as store:
        assert store.ids == expected.ids and len(store.ids) == 7
        assert store.info("long/liar")["flags"] == expected.info("long/liar")["flags"] == "chunked"
        for utt_id in expected.ids:
            for layer in (1, "cnn"):
                np.testing.assert_array_equal(store.read(utt_id, layer), expected.read(utt_id, layer))
    failures = sorted((tmp_path / "ahead").glob("failures*"))
    assert failures and "bad.wav" in failures[0].read_text()


def test_decoding_in_worker_processes(checkpoints, corpus, tmp_path):
    out = tmp_path / "out"
    result = extract(corpus, "-o", out, "--model", checkpoints("base"), "--device", "cpu", "--workers", "2", "-q")
    assert result.exit_code == 0
    with open_features(out) as store:
        assert sorted(store.ids) == IDS


def test_decoding_workers_from_a_library_caller_off_the_main_thread(checkpoints, corpus, tmp_path):
    """Signal handlers can only be set on the main thread: a caller's thread must still work."""
    import threading

    from lebench_cli import ExtractOptions, run_extract

    options = ExtractOptions(inputs=[str(corpus)], output=str(tmp_path / "out"), model=str(checkpoints("base")),
                             device="cpu", workers=2)
    outcome = {}
    thread = threading.Thread(target=lambda: outcome.update(summary=run_extract(options)))
    thread.start()
    thread.join(120)
    assert outcome["summary"].extracted == len(IDS)


def test_killed_run_resumes_to_the_same_dataset(checkpoints, tmp_path):
    corpus = tmp_path / "many"
    for index in range(60):
        write_audio(corpus / f"u{index:03d}.wav", 0.5 + (index % 7) * 0.3, seed=index)
    command = [sys.executable, "-m", "lebench_cli", "extract", str(corpus), "--model", str(checkpoints("base")),
               "--device", "cpu", "--workers", "0", "-q", "--shard-size", "8KB", "--batch-seconds", "2"]
    reference = tmp_path / "reference"
    subprocess.run(command + ["-o", str(reference)], check=True)
    out = tmp_path / "out"
    process = subprocess.Popen(command + ["-o", str(out)])
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and len(list((out / "shards").glob("*.h5"))) < 2:
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    with open_features(out) as store:
        interrupted = len(store)
    assert 0 < interrupted < 60
    subprocess.run(command + ["-o", str(out)], check=True)
    with open_features(out) as store, open_features(reference) as expected:
        assert sorted(store.ids) == sorted(expected.ids) and len(set(store.ids)) == 60
        for utt_id in expected.ids:
            np.testing.assert_array_equal(store.read(utt_id, 3), expected.read(utt_id, 3))


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_interrupt_commits_finished_work_and_exits_130(checkpoints, tmp_path, signum):
    corpus = tmp_path / "many"
    for index in range(40):
        write_audio(corpus / f"u{index:03d}.wav", 0.5 + (index % 5) * 0.4, seed=index)
    out = tmp_path / "out"
    command = [sys.executable, "-m", "lebench_cli", "extract", str(corpus), "-o", str(out), "--model",
               str(checkpoints("base")), "--device", "cpu", "--workers", "1", "-q", "--shard-size", "8KB",
               "--batch-seconds", "2"]
    process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True, preexec_fn=default_sigint)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not list((out / "shards").glob("*.h5")):
        time.sleep(0.02)
    process.send_signal(signum)
    _, stderr = process.communicate(timeout=60)
    if process.returncode == 0:
        pytest.skip("the run finished before the signal arrived")
    assert process.returncode == 130
    assert stderr.startswith("Error: interrupted after ")
    assert stderr.endswith("files; finished work is committed: rerun the same command to resume\n")
    assert "Traceback" not in stderr
    assert not list((out / "shards").glob("*.tmp"))
    with open_features(out) as store:
        assert 0 < len(store) < 40
    subprocess.run(command, check=True)
    with open_features(out) as store:
        assert len(store) == len(set(store.ids)) == 40


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message of a machine without CUDA")
def test_cuda_requested_without_cuda(checkpoints, corpus, tmp_path):
    result = extract(corpus, "-o", tmp_path / "out", "--model", checkpoints("base"), "--device", "cuda", "-q")
    assert result.exit_code == 1
    from lebench_cli.model.compute_device import cpu_fallback_reason

    assert result.output == (f"Error: device 'cuda' requested but CUDA is not available: {cpu_fallback_reason()} "
                             "(use --device cpu)\n")


def test_bad_option_values_are_one_line_errors(checkpoints, corpus, tmp_path):
    args = [corpus, "-o", tmp_path / "out", "--model", checkpoints("base"), "--device", "cpu", "-q"]
    cases = {
        ("--layers", "7"): "Error: layer 7 does not exist: this model has layers 0-3 and 'cnn'\n",
        ("--shard", "3/2"): "Error: invalid --shard '3/2': K must be between 1 and N\n",
        ("--shard-size", "lots"): "Error: invalid size 'lots': expected e.g. 500MB or 2GB\n",
        ("--overlap-seconds", "20"): "Error: --overlap-seconds 20 must be under half of --chunk-seconds 30\n",
    }
    for extra, message in cases.items():
        result = extract(*args, *extra)
        assert (result.exit_code, result.output) == (1, message), extra
    result = extract(*args, "--layers", "2-x")
    assert result.exit_code == 2
    assert result.output.endswith("Error: Invalid value for '--layers': invalid layer selection '2-x': "
                                  "'2-x' is not a layer, range, all, last or cnn\n")
    assert not (tmp_path / "out").exists()
    result = extract(tmp_path / "missing", *args[1:])
    assert (result.exit_code, result.output) == (1, f"Error: no such file or folder: {tmp_path / 'missing'}\n")


def test_extension_filter_channel_and_compression(checkpoints, corpus, tmp_path):
    out = tmp_path / "out"
    result = extract(corpus, *base_args(checkpoints("base"), out, "--ext", "FLAC", "--compression", "gzip"))
    assert result.exit_code == 0, result.output
    with open_features(out) as store:
        assert store.ids == ["spk1/b"]
        (shard,) = (out / "shards").glob("*.h5")
    with h5py.File(shard, "r") as opened:
        assert opened["layers/3/frames"].compression == "gzip"
    stereo = tmp_path / "stereo.wav"
    left, right = np.sin(np.arange(16_000) * 0.05), np.random.default_rng(0).standard_normal(16_000) * 0.1
    sf.write(stereo, np.stack([left, right], axis=1).astype(np.float32), RATE, subtype="FLOAT")
    out2 = tmp_path / "out2"
    assert extract(stereo, *base_args(checkpoints("base"), out2, "--channel", "1", "--save-dtype", "float32")).exit_code == 0
    (expected,) = Encoder(load_local(checkpoints("base"))).encode([right.astype(np.float32)], [3])
    with open_features(out2) as store:
        np.testing.assert_allclose(store.read(store.ids[0], 3), expected[3], atol=1e-4 * np.abs(expected[3]).max())


def test_a_different_model_into_an_existing_output_is_refused(checkpoints, corpus, tmp_path):
    out = tmp_path / "out"
    assert extract(corpus, *base_args(checkpoints("base"), out)).exit_code == 0
    result = extract(corpus, *base_args(checkpoints("large"), out))
    assert result.exit_code == 1
    assert result.output.startswith(f"Error: {out} holds features of a different run (model_sha256: ")
    assert result.output.endswith("; use --overwrite to replace them\n")


@pytest.mark.skipif(not Path("/proc/self/statm").exists() or __import__("platform").libc_ver()[0] != "glibc",
                    reason="glibc on Linux")
def test_extract_has_large_blocks_returned_to_the_os_when_freed(checkpoints, corpus, tmp_path, monkeypatch):
    from lebench_cli.pipeline import memory as extract_module

    calls = []
    original = extract_module.return_large_blocks_to_the_os
    monkeypatch.setattr(extract_module, "return_large_blocks_to_the_os", lambda: calls.append(original()) or calls[-1])
    assert extract(corpus, *base_args(checkpoints("base"), tmp_path / "out")).exit_code == 0
    assert calls == [True]
    # In a fresh process: 8 MB blocks, freed between live ones, are unmapped only when set.
    script = """
import os, sys
import numpy as np
from lebench_cli.pipeline.memory import return_large_blocks_to_the_os

def rss():
    return int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

set_here = return_large_blocks_to_the_os() if sys.argv[1] == "set" else False
warm = np.ones(2**22, np.float32); del warm  # a freed 16 MB block: glibc's threshold rises past 8 MB
blocks = [np.ones(2**21, np.float32) for _ in range(24)]  # 8 MB each, 192 MB
kept = blocks[::4]
del blocks
print(set_here, (rss() - 48 * 2**20) // 2**20)
"""
    def run(mode):
        result = subprocess.run([sys.executable, "-c", script, mode], capture_output=True, text=True, check=True)
        flag, extra = result.stdout.split()
        return flag, int(extra)

    default, returned = run("default"), run("set")
    assert default[0] == "False" and returned[0] == "True"
    assert default[1] - returned[1] > 100, (default, returned)  # 144 MB freed, kept by default
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "65536")  # the user's own choice stands
    assert original() is False
