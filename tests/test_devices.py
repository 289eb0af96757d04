"""`lebench extract --devices cpu,cpu`: one worker process per device, one store, one summary."""

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from click.testing import CliRunner

from lebench_cli.cli import main
from lebench_cli.reading.store import open_features

REPO = Path(__file__).resolve().parents[1]
INTERRUPTED = re.compile(r"Error: interrupted after \d+ files; finished work is committed: "
                         r"rerun the same command to resume\n")


@pytest.fixture
def corpus(tmp_path):
    """Utterances of 0.6-2.5 s (over half of --batch-seconds 1: one per batch, as in one
    process, so float32 results are bit-identical) and one file that cannot be decoded."""
    generator = np.random.default_rng(0)
    root = tmp_path / "corpus"
    for index in range(80):
        path = root / f"spk{index % 3}" / f"utt{index:03d}.wav"
        path.parent.mkdir(parents=True, exist_ok=True)
        seconds = generator.uniform(0.6, 2.5)
        sf.write(path, (0.1 * generator.standard_normal(int(seconds * 16000))).astype(np.float32), 16000)
    (root / "spk0" / "broken.wav").write_bytes(b"RIFF but not audio")
    return root


def lebench(corpus, out, checkpoint, *extra, env=None, wait=True):
    command = [sys.executable, "-m", "lebench_cli", "extract", str(corpus), "-o", str(out), "-m", str(checkpoint),
               "--batch-seconds", "1", "--save-dtype", "float32", "--layers", "all", "--commit-seconds", "1", *extra]
    environment = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    process = subprocess.Popen(command, cwd=REPO, env=environment, stderr=subprocess.PIPE, text=True)
    if not wait:
        return process
    _, stderr = process.communicate(timeout=600)
    return process.returncode, stderr


def one_process_store(corpus, tmp_path, checkpoint):
    """The reference: one process, with the threads each of two CPU workers gets."""
    out = tmp_path / "one"
    threads = str(max(1, (os.cpu_count() or 1) // 2))
    code, stderr = lebench(corpus, out, checkpoint, "--device", "cpu", env={"OMP_NUM_THREADS": threads})
    assert code == 3, stderr
    return out


def assert_same_store(out, reference):
    with open_features(out) as got, open_features(reference) as expected:
        assert sorted(got.ids) == sorted(expected.ids)
        assert len(got.ids) == 80
        for utt_id in expected.ids:
            for layer in expected.layers:
                assert np.array_equal(got.read(utt_id, layer), expected.read(utt_id, layer)), (utt_id, layer)


def test_two_cpu_workers_make_the_store_of_one_process(checkpoints, corpus, tmp_path):
    checkpoint = checkpoints("base")
    code, stderr = lebench(corpus, tmp_path / "two", checkpoint, "--devices", "cpu,cpu")
    assert code == 3, stderr
    summaries = [line for line in stderr.splitlines() if line.startswith("extracted ")]
    assert len(summaries) == 1, stderr
    assert re.fullmatch(r"extracted 80 files \(\d+\.\d (s|min) of audio\) in [\d.]+ s \(\d+x real time; [\d.]+ s in all, with model loading\) on cpu, float32; "
                        rf"1 failed \(see {re.escape(str(tmp_path / 'two'))}/failures-[12]of2\.jsonl\)",
                        summaries[0]), summaries[0]
    failures = [len(p.read_text().splitlines()) for p in sorted((tmp_path / "two").glob("failures-*of2.jsonl"))]
    assert sorted(failures) == [0, 1]
    assert_same_store(tmp_path / "two", one_process_store(corpus, tmp_path, checkpoint))


def stop_lock_holder(out: Path, tag: str, previous: str, timeout: float = 300) -> int:
    """Freezes (SIGSTOP) the worker that takes part `tag`'s lock as soon as its pid shows in
    the lock file (the file stays after a run, with the previous holder's pid): from then on
    it is mid-run for as long as the test needs, however fast the machine."""
    path, deadline = out / f".lock-{tag}", time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = path.read_text().strip() if path.exists() else ""
        if text and text != previous:
            os.kill(int(text), signal.SIGSTOP)
            return int(text)
        time.sleep(0.001)
    raise AssertionError(f"no worker took {path}")


def wait_for_commit(out: Path, tag: str, timeout: float = 300):
    path, deadline = out / f"index-{tag}.tsv", time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and len(path.read_text().splitlines()) > 1:
            return
        time.sleep(0.05)
    raise AssertionError(f"{path}: nothing committed")


def test_a_killed_worker_ends_the_run_naming_its_device_and_a_rerun_completes(checkpoints, corpus, tmp_path):
    checkpoint, out = checkpoints("base"), tmp_path / "two"
    # kill -9 of one worker mid-run: the run ends with one line naming it; the other commits.
    run = lebench(corpus, out, checkpoint, "--devices", "cpu,cpu", wait=False)
    worker = stop_lock_holder(out, "2of2", previous="")
    assert worker != run.pid
    wait_for_commit(out, "1of2")
    os.kill(worker, signal.SIGKILL)
    _, stderr = run.communicate(timeout=300)
    # Python's resource tracker may add a warning about the semaphore fairseq creates at import
    # (fairseq/pdb.py), which the killed worker could not release: not lebench's line.
    stderr = "\n".join(line for line in stderr.splitlines() if "resource_tracker" not in line and "warnings.warn" not in line)
    assert (run.returncode, stderr.splitlines()[-1]) == (
        1, "Error: the worker on cpu (part 2/2) died (killed by SIGKILL); the other workers committed their "
           "work: rerun the same command to resume"), stderr
    stored = len(open_features(out).ids)
    assert 0 < stored < 80

    # SIGTERM (a scheduler's stop) to the parent: every worker commits, exit 130.
    previous = (out / ".lock-2of2").read_text().strip()
    run = lebench(corpus, out, checkpoint, "--devices", "cpu,cpu", wait=False)
    worker = stop_lock_holder(out, "2of2", previous)
    run.send_signal(signal.SIGTERM)
    time.sleep(0.5)  # the parent passes SIGTERM on; the worker takes it when it runs again
    os.kill(worker, signal.SIGCONT)
    _, stderr = run.communicate(timeout=300)
    assert run.returncode == 130, stderr
    assert INTERRUPTED.fullmatch(stderr.splitlines()[-1] + "\n"), stderr

    code, stderr = lebench(corpus, out, checkpoint, "--devices", "cpu,cpu")
    assert code == 3, stderr  # the broken file fails again; everything else is stored
    assert_same_store(out, one_process_store(corpus, tmp_path, checkpoint))


def invoke(*args):
    return CliRunner().invoke(main, ["extract", *map(str, args)], catch_exceptions=False)


@pytest.mark.parametrize("options, message", [
    (["--devices", "gpu0"], "Error: --devices: 'gpu0' is not a device (expected cpu, cuda:N or all)\n"),
    (["--devices", "cpu,cpu", "--device", "cpu"],
     "Error: --device and --devices cannot be combined: --devices names every device\n"),
    (["--devices", "cpu,cpu", "--overwrite"],
     "Error: --overwrite cannot be combined with --devices: each worker would delete the others' features; "
     "empty OUTPUT first\n"),
])
def test_bad_devices_are_refused_in_one_line(checkpoints, tmp_path, options, message):
    (tmp_path / "a.wav").write_bytes(b"")
    result = invoke(tmp_path / "a.wav", "-o", tmp_path / "out", "-m", checkpoints("base"), *options)
    assert (result.exit_code, result.output) == (1, message)


def test_devices_that_do_not_exist_are_refused(checkpoints, tmp_path):
    import torch

    (tmp_path / "a.wav").write_bytes(b"")
    missing = f"cuda:{torch.cuda.device_count()}"
    result = invoke(tmp_path / "a.wav", "-o", tmp_path / "out", "-m", checkpoints("base"), "--devices", missing)
    assert (result.exit_code, result.output) == (
        1, f"Error: --devices: {missing} does not exist (this machine has {torch.cuda.device_count()} CUDA devices)\n")


def test_the_devices_benchmark_parses_its_options():
    result = subprocess.run([sys.executable, "-m", "benchmarks.bench_devices", "--help"],
                            capture_output=True, text=True, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert result.returncode == 0, result.stderr
    assert "--devices DEVICES" in result.stdout
