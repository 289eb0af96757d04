#!/usr/bin/env python
"""What resume's content fingerprint costs, next to what a run already does with each file.

One corpus of 16 kHz PCM16 WAV files (a log-normal 2-20 s length mix, noise: the bytes do not
change the cost) is generated once under --work; then, file by file over the whole corpus, each
of these is timed, warm (the corpus in the page cache, after an untimed pass) and cold (each
file's pages dropped with posix_fadvise(POSIX_FADV_DONTNEED) just before it is read):

  stat      os.stat: resume's fast path (same path, size and modification time)
  probe     lebench's header probe (soundfile.info), which every run does for every file
  xxh3      lebench's fingerprint: xxh3-64 over the whole file (resume.content_hash)
  sampled   the alternative: xxh3-64 of the size and 16 blocks of 4 KiB spread over the file
  decode    soundfile.read into float32, what decoding does before resampling and the model
  xxh3 xN   the fingerprint as lebench takes it: the whole corpus hashed by N threads
            (resume.fingerprints, --threads), timed as one pass

Run from the repository root:  .venv/bin/python -m benchmarks.bench_hash --help
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import time
from pathlib import Path

import numpy as np
import soundfile

from .common import SAMPLE_RATE, add_json_out_argument, add_work_argument, write_json

RATE = SAMPLE_RATE
SAMPLED_BLOCKS, SAMPLED_BYTES = 16, 4096


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", type=int, default=1000, help="corpus size in files (default 1000)")
    add_work_argument(parser, "lebench-bench-hash", help="corpus folder (kept and reused when it holds --files files)")
    parser.add_argument("--passes", type=int, default=3, help="timed passes per case (default 3)")
    parser.add_argument("--threads", type=int, default=8, help="threads of the 'xxh3 xN' case (default 8)")
    add_json_out_argument(parser)
    args = parser.parse_args()
    paths = make_corpus(args.work, args.files)
    total_bytes = sum(path.stat().st_size for path in paths)
    audio_seconds = sum(soundfile.info(str(path)).duration for path in paths)
    cases = {"stat": os.stat, "probe": probe, "xxh3": full_hash, "sampled": sampled_hash, "decode": decode}
    rows = []
    for cache in ("warm", "cold"):
        for name, function in cases.items():
            seconds = min(timed_pass(paths, function, cold=cache == "cold") for _ in range(args.passes))
            rows.append({"case": name, "cache": cache, "seconds": seconds, "ms_per_file": 1000 * seconds / len(paths),
                         "mb_per_s": total_bytes / 1e6 / seconds if name in ("xxh3", "decode") else None})
        seconds = min(threaded_pass(paths, args.threads, cold=cache == "cold") for _ in range(args.passes))
        rows.append({"case": f"xxh3 x{args.threads}", "cache": cache, "seconds": seconds,
                     "ms_per_file": 1000 * seconds / len(paths), "mb_per_s": total_bytes / 1e6 / seconds})
    for row in rows:
        decode_row = next(r for r in rows if r["case"] == "decode" and r["cache"] == row["cache"])
        row["of_decode"] = row["seconds"] / decode_row["seconds"]
    report = {"date": datetime.date.today().isoformat(), "machine": f"{platform.processor() or platform.machine()}, "
              f"{os.cpu_count()} cores", "files": len(paths), "corpus_mb": total_bytes / 1e6,
              "audio_hours": audio_seconds / 3600, "rows": rows}
    print(f"{len(paths)} files, {total_bytes / 1e6:.0f} MB, {audio_seconds / 3600:.2f} h of audio; best of "
          f"{args.passes} passes")
    print("| case | cache | s | ms/file | MB/s | of decode |\n|---|---|---|---|---|---|")
    for row in rows:
        speed = f"{row['mb_per_s']:.0f}" if row["mb_per_s"] else ""
        print(f"| {row['case']} | {row['cache']} | {row['seconds']:.3f} | {row['ms_per_file']:.3f} | {speed} | "
              f"{row['of_decode']:.3f} |")
    if args.json_out:
        write_json(args.json_out, report, indent=2, newline=True)


def make_corpus(folder: Path, count: int) -> list:
    paths = sorted(folder.glob("*.wav"))
    if len(paths) == count:
        return paths
    folder.mkdir(parents=True, exist_ok=True)
    for path in paths:
        path.unlink()
    generator = np.random.default_rng(0)
    seconds = np.clip(generator.lognormal(np.log(6.0), 0.6, count), 2.0, 20.0)
    paths = []
    for index, length in enumerate(seconds):
        path = folder / f"u{index:06d}.wav"
        samples = (generator.standard_normal(int(length * RATE)) * 3000).astype(np.int16)
        soundfile.write(str(path), samples, RATE, subtype="PCM_16")
        paths.append(path)
    return paths


def timed_pass(paths: list, function, cold: bool) -> float:
    elapsed = 0.0
    for path in paths:
        if cold:
            drop_from_cache(path)
        started = time.perf_counter()
        function(path)
        elapsed += time.perf_counter() - started
    return elapsed


def threaded_pass(paths: list, threads: int, cold: bool) -> float:
    from lebench_cli.pipeline.resume import fingerprints

    if cold:
        for path in paths:
            drop_from_cache(path)
    started = time.perf_counter()
    fingerprints(paths, threads)
    return time.perf_counter() - started


def drop_from_cache(path: Path) -> None:
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(descriptor, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(descriptor)


def probe(path: Path):
    from lebench_cli.audio.loading import probe as lebench_probe

    return lebench_probe(path)


def full_hash(path: Path) -> str:
    from lebench_cli.pipeline.resume import content_hash

    return content_hash(path)


def sampled_hash(path: Path) -> str:
    import xxhash

    size = path.stat().st_size
    digest = xxhash.xxh3_64(str(size).encode())
    with open(path, "rb") as file:
        if size <= SAMPLED_BLOCKS * SAMPLED_BYTES:
            digest.update(file.read())
        else:
            step = (size - SAMPLED_BYTES) // (SAMPLED_BLOCKS - 1)
            for block in range(SAMPLED_BLOCKS):
                file.seek(block * step)
                digest.update(file.read(SAMPLED_BYTES))
    return digest.hexdigest()


def decode(path: Path):
    return soundfile.read(str(path), dtype="float32")


if __name__ == "__main__":
    main()
