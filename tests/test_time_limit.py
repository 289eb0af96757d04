"""Time limits without endless requeues, and exit codes that match what was done: the stop
signals are sent from inside the run (deterministic), on tiny models; the real SLURM runs of
the same rules are in test_slurm.py."""

import json
import os
import re
import signal

import numpy as np
import pytest
from click.testing import CliRunner

from lebench_cli.cli import main
from lebench_cli.pipeline.extract import Extraction
from lebench_cli.reading.store import open_features
from lebench_cli.pipeline.time_limit import parse_slurm_time
from lebench_cli.testing.audio import write_audio
from support.slow_runs import slow_windows


def default_stop_signals():
    """A stopped or decided run leaves the stop signals ignored until its process ends (and a
    signal ignored from the start stays ignored): the test process goes on, with defaults."""
    from lebench_cli.pipeline import stop_signals

    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGUSR1, signal.SIG_DFL)
    stop_signals._time_limit["reached"] = False


@pytest.fixture(autouse=True)
def restore_signals():
    saved = {name: signal.getsignal(getattr(signal, name)) for name in ("SIGINT", "SIGTERM", "SIGUSR1")}
    yield
    default_stop_signals()
    for name, handler in saved.items():
        signal.signal(getattr(signal, name), handler)


@pytest.fixture
def long_corpus(tmp_path):
    root = tmp_path / "corpus"
    write_audio(root / "long.wav", 40, seed=1)
    write_audio(root / "a.wav", 1.0, seed=2)
    write_audio(root / "b.wav", 1.5, seed=3)
    return root


def run(corpus, out, checkpoint, env=None):
    args = ["extract", str(corpus), "-o", str(out), "--model", str(checkpoint), "--device", "cpu", "--workers", "0",
            "--layers", "1,3", "--save-dtype", "float32", "--chunk-seconds", "4", "--overlap-seconds", "1",
            "--batch-seconds", "8"]
    default_stop_signals()
    return CliRunner().invoke(main, args, env=env)


def signal_after_windows(monkeypatch, signum, groups: int):
    """Sends `signum` to this process once `groups` window groups of a long recording are stored."""
    original, calls = Extraction._append_windows, []

    def append(source, windows, states, non_finite, background):
        original(source, windows, states, non_finite, background)
        calls.append(len(windows))
        if len(calls) == groups:
            os.kill(os.getpid(), signum)

    monkeypatch.setattr(Extraction, "_append_windows", staticmethod(append))


def record(out):
    return json.loads((out / "interrupted-1of1.json").read_text())


STOPPED = "Error: interrupted after 0 files; finished work is committed: rerun the same command to resume\n"


def fake_squeue(tmp_path, left: str) -> dict:
    """The environment of a task of `lebench slurm`'s script whose squeue says `left` is left."""
    folder = tmp_path / "bin"
    folder.mkdir(exist_ok=True)
    squeue = folder / "squeue"
    squeue.write_text(f"#!/bin/sh\necho '{left}'\n")
    squeue.chmod(0o755)
    return {"PATH": f"{folder}{os.pathsep}{os.environ['PATH']}", "SLURM_JOB_ID": "7", "LEBENCH_STOP_SECONDS": "0"}


def test_a_recording_stopped_twice_by_the_time_limit_fails_with_the_time_it_needs_then_runs_with_more_time(
        checkpoints, long_corpus, tmp_path, monkeypatch):
    reference = tmp_path / "reference"
    assert run(long_corpus, reference, checkpoints("base")).exit_code == 0
    out = tmp_path / "out"
    for stops in (1, 2):
        signal_after_windows(monkeypatch, signal.SIGUSR1, groups=2)
        result = run(long_corpus, out, checkpoints("base"))
        assert (result.exit_code, result.output) == (130, STOPPED)
        entry = record(out)["files"]["long"]
        assert entry["stops"] == stops and entry["needs_seconds"] > 0 and entry["path"].endswith("long.wav")
    monkeypatch.undo()
    # The requeued task has 5 s: less than the recording needs, so it fails at once; the rest is stored.
    result = run(long_corpus, out, checkpoints("base"), env=fake_squeue(tmp_path, "00:05"))
    assert result.exit_code == 3, result.output
    failures = [json.loads(line) for line in (out / "failures-1of1.jsonl").read_text().splitlines()]
    assert [failure["id"] for failure in failures] == ["long"]
    assert re.fullmatch(r"interrupted twice by the time limit: needs about \d+ s, the task has 5 s; give lebench "
                        r"slurm --time more, or split the recording", failures[0]["reason"]), failures[0]
    with open_features(out) as store:
        assert sorted(store.ids) == ["a", "b"]
    # A task with a day left (or a run outside SLURM) tries it again: stored as an uninterrupted run stores it.
    result = run(long_corpus, out, checkpoints("base"), env=fake_squeue(tmp_path, "1-00:00:00"))
    assert result.exit_code == 0, result.output
    with open_features(out) as store, open_features(reference) as expected:
        assert sorted(store.ids) == ["a", "b", "long"]
        for layer in (1, 3):
            np.testing.assert_allclose(store.read("long", layer), expected.read("long", layer), rtol=1e-5, atol=1e-5)


def test_a_cancel_is_not_a_time_limit_stop(checkpoints, long_corpus, tmp_path, monkeypatch):
    out = tmp_path / "out"
    signal_after_windows(monkeypatch, signal.SIGTERM, groups=2)
    result = run(long_corpus, out, checkpoints("base"))
    assert (result.exit_code, result.output) == (130, STOPPED)
    assert not (out / "interrupted-1of1.json").exists()


def test_a_part_stopped_twice_before_storing_anything_stops_requeueing(checkpoints, tmp_path, monkeypatch):
    corpus = tmp_path / "corpus"
    for index in range(3):
        write_audio(corpus / f"u{index}.wav", 1.0, seed=index)
    out = tmp_path / "out"
    original = Extraction._store

    def store(self, item, states, background):
        os.kill(os.getpid(), signal.SIGUSR1)
        original(self, item, states, background)

    monkeypatch.setattr(Extraction, "_store", store)
    result = run(corpus, out, checkpoints("base"))
    assert (result.exit_code, result.output) == (130, STOPPED)
    assert record(out)["stops_without_progress"] == 1
    result = run(corpus, out, checkpoints("base"))
    assert result.exit_code == 1
    assert re.fullmatch(r"Error: part 1/1 was stopped by the time limit 2 times in a row before it stored a file "
                        r"\(this task had \d+ s\): not requeueing; give lebench slurm --time more\n", result.output)


def test_a_time_limit_before_the_work_starts_does_not_requeue(checkpoints, tmp_path, monkeypatch):
    from lebench_cli.model import models

    corpus = tmp_path / "corpus"
    write_audio(corpus / "u.wav", 1.0)
    original = models.load_checkpoint

    def loading(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGUSR1)
        return original(*args, **kwargs)

    monkeypatch.setattr(models, "load_checkpoint", loading)
    result = run(corpus, tmp_path / "out", checkpoints("base"))
    assert result.exit_code == 1
    assert re.fullmatch(r"Error: the time limit came \d+ s into the task, before part 1/1 started its work: not "
                        r"requeueing; give lebench slurm --time more\n", result.output)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM, signal.SIGUSR1])
@pytest.mark.parametrize("failed", [False, True])
def test_a_signal_after_the_summary_is_decided_keeps_its_exit_code(checkpoints, tmp_path, monkeypatch, signum,
                                                                   failed):
    corpus = tmp_path / "corpus"
    write_audio(corpus / "u.wav", 1.0)
    if failed:
        (corpus / "broken.wav").write_bytes(b"not audio")
    from lebench_cli.commands import extract as extract_command

    original = extract_command.report_summary

    def report(summary, quiet):
        os.kill(os.getpid(), signum)  # as the summary line is printed
        original(summary, quiet)

    monkeypatch.setattr(extract_command, "report_summary", report)
    result = run(corpus, tmp_path / "out", checkpoints("base"))
    assert result.exit_code == (3 if failed else 0), result.output
    assert result.output.startswith("extracted 1 file") and "interrupted" not in result.output


@pytest.mark.parametrize("text, seconds", [
    ("3", 180), ("90", 5400), ("05:30", 330), ("20:00:00", 72000), ("1-12", 129600), ("1-12:30", 131400),
    ("2-00:00:10", 172810), ("UNLIMITED", None), ("0", None),
])
def test_slurm_time_formats(text, seconds):
    assert parse_slurm_time(text) == seconds


def test_devices_pass_the_time_limit_warning_on_to_their_workers(checkpoints, tmp_path):
    """What `lebench slurm`'s script does on a task with several devices: USR1 to lebench
    only. Each worker stops, commits and records its stop; the recording part 1 was encoding
    counts one stop."""
    import subprocess
    import sys
    import time

    corpus = tmp_path / "corpus"
    write_audio(corpus / "long.wav", 1800, seed=1, subtype="PCM_16")
    write_audio(corpus / "short.wav", 1.0, seed=2)
    out = tmp_path / "out"
    args = [sys.executable, "-m", "lebench_cli", "extract", str(corpus), "-o", str(out), "--model",
            str(checkpoints("base")), "--devices", "cpu,cpu", "--workers", "0", "--chunk-seconds", "4",
            "--overlap-seconds", "1", "--batch-seconds", "8", "-q"]
    # The tiny model runs the 30-minute recording in seconds on a quiet machine: slowed to minutes.
    process = subprocess.Popen(args, stderr=subprocess.PIPE, text=True, env=slow_windows(dict(os.environ), tmp_path),
                               preexec_fn=lambda: [signal.signal(s, signal.SIG_DFL) for s in (signal.SIGINT,
                                                                                            signal.SIGUSR1)])
    deadline = time.monotonic() + 120
    while not (out / ".lock-1of2").exists():
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()
        time.sleep(0.05)
    while not list((out / "shards").glob("part-1of2-*")):  # part 1 has begun the long recording
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()
        time.sleep(0.05)
    time.sleep(2)
    process.send_signal(signal.SIGUSR1)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr
    assert re.fullmatch(r"Error: interrupted after [01] files; finished work is committed: rerun the same command "
                        r"to resume\n", stderr), stderr
    entry = json.loads((out / "interrupted-1of2.json").read_text())["files"]["long"]
    assert entry["stops"] == 1, entry


def _open_when_read(fifo, process, seconds: float = 120):
    """The writing end of the list `fifo`, opened once lebench has opened it to read: from
    then on it is listing its inputs, its signal handling in place."""
    import time

    deadline = time.monotonic() + seconds
    while True:
        try:
            return os.fdopen(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK), "w")
        except OSError:  # ENXIO: no reader yet
            assert process.poll() is None and time.monotonic() < deadline, process.communicate()
            time.sleep(0.05)


def _devices_listing(checkpoints, tmp_path):
    """`--devices cpu,cpu` in a real process, its input list a FIFO that the test feeds."""
    import subprocess
    import sys

    write_audio(tmp_path / "corpus" / "a.wav", 1.0, seed=1)
    listing = tmp_path / "list.tsv"
    os.mkfifo(listing)
    out = tmp_path / "out"
    args = [sys.executable, "-m", "lebench_cli", "extract", str(listing), "-o", str(out), "--model",
            str(checkpoints("base")), "--devices", "cpu,cpu", "--workers", "0", "-q"]
    process = subprocess.Popen(args, stderr=subprocess.PIPE, text=True,
                               preexec_fn=lambda: [signal.signal(s, signal.SIG_DFL) for s in (signal.SIGINT,
                                                                                            signal.SIGUSR1)])
    return process, listing, out


BEFORE_THE_WORK = (r"Error: the time limit came \d+ s into the task, before parts 1-2/2 started their work \(listing "
                   r"the inputs\): not requeueing; give lebench slurm --time more\n")


@pytest.mark.parametrize("signum, code, message", [
    (signal.SIGUSR1, 1, BEFORE_THE_WORK),
    (signal.SIGTERM, 130, re.escape(STOPPED)),  # a cancel: 130, which the script does not requeue
])
def test_devices_stopped_while_the_inputs_are_listed(checkpoints, tmp_path, signum, code, message):
    """The list comes slowly (a FIFO, as from a slow filesystem): the signal lands while
    the parent lists. As for one process, a time-limit stop then is exit 1, not 130: the
    requeued task would list as long and be stopped there again. Nothing is written."""
    process, listing, out = _devices_listing(checkpoints, tmp_path)
    with _open_when_read(listing, process) as feed:
        feed.write(f"{tmp_path / 'corpus'}\n")
        feed.flush()
        process.send_signal(signum)
        _, stderr = process.communicate(timeout=60)
    assert process.returncode == code, stderr
    assert re.fullmatch(message, stderr), stderr
    assert not out.exists()


def test_devices_stopped_by_the_time_limit_while_the_workers_start(checkpoints, tmp_path):
    """The list ends and the warning comes at once, while the workers start (they take
    seconds to import torch): each worker is passed the warning once it can take it, and
    stops before its part's work: exit 1, nothing recorded, no worker left running."""
    process, listing, out = _devices_listing(checkpoints, tmp_path)
    with _open_when_read(listing, process) as feed:
        feed.write(f"{tmp_path / 'corpus'}\na.wav\n")
    process.send_signal(signal.SIGUSR1)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 1, stderr
    worker = (r"Error: the worker on cpu \(part [12]/2\) stopped: the time limit came \d+ s into the task, before "
              r"part [12]/2 started its work: not requeueing; give lebench slurm --time more\n")
    assert re.fullmatch(f"{BEFORE_THE_WORK}|{worker}", stderr), stderr
    assert not list(out.glob("interrupted-*.json"))
    assert all(_unlocked(lock) for lock in out.glob(".lock-*"))  # no worker holds its part


def _unlocked(lock) -> bool:
    import fcntl

    with open(lock) as file:
        try:
            fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return False
        return True
