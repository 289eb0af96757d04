"""Small corpora of generated audio: tone files for tests, speech-like folders of a given
length (with a manifest, kept between runs) for benchmarks."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np

from .audio import write_audio, write_speechlike


def tone_corpus(root: Path, files: int, first: float = 0.5, step: float = 0.3) -> Path:
    """`files` tone files under three speakers, `spk{i % 3}/u{i:03d}.wav`, of
    first + (i % 7) * step seconds, seed i."""
    for index in range(files):
        write_audio(root / f"spk{index % 3}" / f"u{index:03d}.wav", first + (index % 7) * step, seed=index)
    return root


def corpus_lengths(seconds: float, rng, long_files: bool) -> list:
    """Durations (s): log-uniform 0.5-30 s, plus ~20% of the total in files of 35 s-5 min."""
    lengths = []
    if long_files and seconds >= 120:
        budget = 0.2 * seconds
        count = max(1, round(budget / 180))
        for _ in range(count):
            lengths.append(float(np.clip(budget / count * rng.uniform(0.8, 1.2), 35, 300)))
    remaining = seconds - sum(lengths)
    while remaining > 0.5:
        length = float(math.exp(rng.uniform(math.log(0.5), math.log(30.0))))
        length = min(length, remaining)
        lengths.append(length)
        remaining -= length
    return lengths


def speechlike_corpus(work: Path, seconds: float, seed: int, single_file: bool = False,
                      long_files: bool = True) -> Path:
    """A folder of `seconds` of speech-like audio under `work`, made once per (kind, seconds,
    seed): its manifest.json, written last, marks it complete."""
    kind = "single" if single_file else ("mix" if long_files else "short")
    folder = work / f"corpus-{kind}-{seconds:g}s-seed{seed}"
    manifest = folder / "manifest.json"
    if manifest.exists():
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    rng = np.random.default_rng(seed)
    lengths = [seconds] if single_file else corpus_lengths(seconds, rng, long_files)
    files = []
    long_count = 0
    for index, length in enumerate(lengths):
        if length > 30:
            name = f"long/rec{long_count:03d}.wav"
            long_count += 1
        else:
            name = f"spk{index % 20:02d}/utt{index:05d}.wav"
        write_speechlike(folder / name, length, np.random.default_rng([seed, index]))
        files.append({"path": name, "seconds": round(length, 4)})
    manifest.write_text(json.dumps({"seconds": seconds, "seed": seed, "kind": kind, "files": files}, indent=1))
    return folder


def startup_corpus(work: Path) -> Path:
    """One 2 s speech-like file, for a start-up measurement."""
    folder = work / "corpus-startup-probe"
    if not (folder / "manifest.json").exists():
        write_speechlike(folder / "probe.wav", 2.0, np.random.default_rng(12345))
        (folder / "manifest.json").write_text('{"seconds": 2.0}')
    return folder
