#!/usr/bin/env python
"""`lebench extract --devices D1,D2,...` against one process on the same corpus and model.

Generates (or reuses) bench_extract's speech-like corpus and random-weight checkpoint of a
real architecture, then runs, interleaved for --repeat rounds:

  one      `lebench extract CORPUS -o OUT --model CKPT --device DEVICE -q`
  devices  `lebench extract CORPUS -o OUT --model CKPT --devices DEVICES -q`

each into a fresh output folder, and prints wall time (end to end, model loading included),
x real time, and the speed-up of `devices` over `one`. Run with the project's interpreter:
  .venv/bin/python -m benchmarks.bench_devices --minutes 3 --devices cpu,cpu --device cpu
On one GPU, `--devices cuda:0,cuda:0` shows the mechanics, not a speed-up: both workers share it.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time

from lebench_cli.testing.checkpoints import ARCHS, save_real_shape_checkpoint
from lebench_cli.testing.corpora import speechlike_corpus

from .common import REPO, add_work_argument, probe_corpus


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, default=3.0, help="audio to generate, in minutes (default 3)")
    parser.add_argument("--arch", choices=sorted(ARCHS), default="base")
    parser.add_argument("--device", default="cpu", help="the one-process run's device (default cpu)")
    parser.add_argument("--devices", default="cpu,cpu", help="the --devices run's devices (default cpu,cpu)")
    parser.add_argument("--repeat", type=int, default=1, help="rounds, each one then devices (default 1)")
    parser.add_argument("--seed", type=int, default=0)
    add_work_argument(parser)
    return parser.parse_args(argv)


def timed(command: list) -> float:
    started = time.monotonic()
    subprocess.run(command, check=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    return time.monotonic() - started


def main(argv=None):
    args = parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    corpus = speechlike_corpus(args.work, args.minutes * 60, args.seed)
    audio = sum(probe_corpus(corpus))
    model = args.work / f"model-{args.arch}-seed{args.seed}" / "checkpoint_best.pt"
    if not model.exists():
        save_real_shape_checkpoint(model, args.arch, args.seed)
    base = [sys.executable, "-m", "lebench_cli", "extract", str(corpus), "--model", str(model), "-q"]
    runs = {"one": ["--device", args.device], "devices": ["--devices", args.devices]}
    walls = {name: [] for name in runs}
    for _ in range(args.repeat):
        for name, extra in runs.items():
            out = args.work / f"out-{name}"
            shutil.rmtree(out, ignore_errors=True)
            walls[name].append(timed(base + ["-o", str(out)] + extra))
    print(f"{datetime.date.today()}  {platform.processor() or platform.machine()}, {os.cpu_count()} cores; "
          f"load average {os.getloadavg()[0]:.1f}; {args.arch} model, {audio / 60:.1f} min of audio")
    print(f"{'run':<36} {'wall s (median)':>16} {'x real time':>12} {'speed-up':>9}")
    one = statistics.median(walls["one"])
    for name, extra in runs.items():
        wall = statistics.median(walls[name])
        print(f"{name + ' ' + ' '.join(extra):<36} {wall:>16.1f} {audio / wall:>12.1f} {one / wall:>9.2f}")


if __name__ == "__main__":
    main()
