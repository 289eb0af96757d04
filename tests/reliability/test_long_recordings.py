"""Long recordings in bounded memory.
The harness: tests/support/reliability.py."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import soundfile as sf

from lebench_cli.reading.store import open_features
from support.reliability import RATE, soak_only


# ---- 8. long recordings in bounded memory ------------------------------------------------------


def write_long_recording(path: Path, minutes: float) -> Path:
    """16 kHz mono PCM_16, written a minute at a time (a two-hour file is 230 MB)."""
    rng = np.random.default_rng(0)
    block = 60 * RATE
    with sf.SoundFile(path, "w", RATE, 1, "PCM_16") as file:
        for start in range(0, int(minutes * 60 * RATE), block):
            t = (start + np.arange(block)) / RATE
            file.write((0.3 * np.sin(2 * np.pi * 150 * t) + 0.05 * rng.standard_normal(block)).astype(np.float32))
    return path


# One 30 s window per batch: the smallest steady state, so the recording's share stands out.
LONG_ARGS = ("--device", "cpu", "--workers", "0", "-q", "--layers", "3", "--batch-seconds", "30")


def peak_rss_mib(zygote, audio: Path, out: Path, model, **options) -> float:
    """Peak resident memory of one forked run in MiB, polled from /proc every 10 ms. It
    counts the pages the run shares with the zygote (the same for every run): only
    differences between runs mean something."""
    import threading

    samples = []

    def poll(pid: int) -> None:
        while True:
            try:
                status = Path(f"/proc/{pid}/status").read_text()
            except OSError:
                return
            samples.extend(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:"))
            time.sleep(0.01)

    run = zygote.start(["extract", audio, "-o", out, "--model", model, *LONG_ARGS], **options)
    poller = threading.Thread(target=poll, args=(run.pid,))
    poller.start()
    status = zygote.wait(run, 600)
    poller.join()
    assert status == 0, run.stderr
    return max(samples) / 1024


def test_a_ten_minute_recording_runs_in_the_memory_of_a_one_minute_one(zygote, model, tmp_path):
    # Streaming holds one batch of windows (here one 30 s window) and 20 s decoding blocks,
    # never the recording: 10 minutes must peak where 1 minute (3 windows) does. Holding the
    # whole 10-minute recording at once would cost at least its float32 waveform,
    # 10 x 60 x 16000 x 4 B = 36.6 MiB (33 MiB more than the 1-minute one), and the model's
    # first conv output over it, 16 channels x 1.92e6 steps x 4 B = 117 MiB (105 MiB more).
    # Measured on 2026-11-24: streaming within 8 MiB; the control below (decoded audio kept)
    # 50 MiB or more. On 2026-12-04 streaming measured 6.9-20.2 MiB from run to run (the same
    # spread at the commit before that day's changes: 8.1-17.9). Bound: 28 MiB, under the
    # 33 MiB that the waveform alone adds when held.
    short = peak_rss_mib(zygote, write_long_recording(tmp_path / "one.wav", 1), tmp_path / "one", model)
    long = peak_rss_mib(zygote, write_long_recording(tmp_path / "ten.wav", 10), tmp_path / "ten", model)
    print(f"\npeak RSS: 1 min {short:.1f} MiB, 10 min {long:.1f} MiB ({long - short:+.1f} MiB)")
    assert long - short < 28, f"10 min peaks {long - short:.1f} MiB above 1 min"
    with open_features(tmp_path / "ten") as store:
        (utt_id,) = store.ids
        assert store.info(utt_id)["frames"] == (10 * 60 * RATE - 400) // 320 + 1
        assert store.info(utt_id)["flags"] == "chunked"


@soak_only
def test_soak_the_memory_bound_catches_a_recording_held_whole(zygote, model, tmp_path):
    """A control for the test above: the same runs, but every decoded block is kept."""
    one, ten = (write_long_recording(tmp_path / f"{name}.wav", minutes) for name, minutes in (("one", 1), ("ten", 10)))
    short = peak_rss_mib(zygote, one, tmp_path / "one", model, hoard_audio=True)
    long = peak_rss_mib(zygote, ten, tmp_path / "ten", model, hoard_audio=True)
    print(f"\nholding the decoded audio: peak RSS 1 min {short:.1f} MiB, 10 min {long:.1f} MiB ({long - short:+.1f} MiB)")
    assert long - short > 20


@soak_only
def test_soak_a_two_hour_recording_in_bounded_memory(model, tmp_path):
    """`python -m lebench_cli` on a two-hour file; peak RSS from a wrapper's RUSAGE_CHILDREN."""
    def peak(audio: Path, out: Path) -> tuple:
        wrapper = ("import resource, subprocess, sys, time; started = time.monotonic(); "
                   "code = subprocess.call(sys.argv[1:]); "
                   "print(code, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, time.monotonic() - started)")
        result = subprocess.run([sys.executable, "-c", wrapper, sys.executable, "-m", "lebench_cli", "extract",
                                 str(audio), "-o", str(out), "--model", str(model), *LONG_ARGS],
                                capture_output=True, text=True, check=True)
        code, kib, seconds = result.stdout.split()
        assert code == "0", result.stderr
        return int(kib) / 1024, float(seconds)

    started = time.monotonic()
    recording = write_long_recording(tmp_path / "two-hours.wav", 120)
    written = time.monotonic() - started
    short, short_seconds = peak(write_long_recording(tmp_path / "three.wav", 3), tmp_path / "three")
    long, long_seconds = peak(recording, tmp_path / "two-hours")
    print(f"\ntwo-hour recording ({recording.stat().st_size / 2**20:.0f} MiB written in {written:.1f} s): peak RSS "
          f"{long:.1f} MiB in {long_seconds:.0f} s; 3 min: {short:.1f} MiB in {short_seconds:.0f} s")
    # Holding it whole would take its float32 waveform alone: 2 x 3600 x 16000 x 4 B = 439 MiB.
    assert long - short < 64
    with open_features(tmp_path / "two-hours") as store:
        (utt_id,) = store.ids
        assert store.info(utt_id)["frames"] == (120 * 60 * RATE - 400) // 320 + 1
