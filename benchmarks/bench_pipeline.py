#!/usr/bin/env python
"""How fast lebench's pipeline runs without the model: the ceiling that decoding, batching
and writing put on `lebench extract`, whatever the GPU.

bench_extract.py times whole runs; on a GPU, where the model takes a few milliseconds per
batch, what bounds a run is everything around it. This script times those parts alone, in
one process, on the corpus bench_extract.py generates:

  decode    the files through lebench's decoding stage (decoding.decoded_stream) with N
            worker processes; recordings longer than a window are read the way extract
            streams them (a statistics pass in the workers, the windows pass in blocks
            on the main thread);
  write     the ShardWriter storing float16 frames of the given width and layers, as
            lebench stores them (no model, no audio): the disk side alone; in the same run,
            numpy writing the same frames into one file (`tofile`, fsynced), the ceiling,
            and "vs numpy", lebench's rate over it (--repeat: interleaved, best of each);
  pipeline  a whole `lebench extract` (Extraction.run: discovery, probing, decoding,
            batching, windows, the background writer, resume bookkeeping) with the model
            replaced by one that returns ready float16 states of the real shapes at no cost
            (and without the NaN/inf check, which a GPU runs on the device).

x RT = audio seconds / wall seconds. "main CPU s" is the CPU time of the main process (all
its threads): with a GPU, the main thread also launches the model, so this is the part
that competes with it. "CPU s/h" is every process's CPU time (main and decoding workers)
per hour of audio; a pipeline row's "vs slowest" is its x RT over the slower of the decode
row (same workers) and the write row (same layers) of this run. Under the table, the cores
a host needs to feed the model at 8,000x real time: CPU s/h x 8000 / 3600. Not included:
the GPU's compute and its device-to-host copies.

Run with the project's interpreter:  .venv/bin/python -m benchmarks.bench_pipeline --help
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import sys
import time
import types
from pathlib import Path

import numpy as np

from lebench_cli.testing.corpora import speechlike_corpus

from .common import SAMPLE_RATE, add_json_out_argument, add_work_argument, brief_machine, text_table, write_json

# Stored shapes of the real models (docs/models.md): encoder layers, width, cnn width.
SHAPES = {"base": (12, 768, 512), "large": (24, 1024, 512)}


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--minutes", type=float, help="corpus to generate, in minutes (default 30)")
    size.add_argument("--hours", type=float, help="corpus to generate, in hours")
    parser.add_argument("--corpus", type=Path, help="use this folder of audio instead of generating one")
    parser.add_argument("--no-long-files", action="store_true", help="generated corpus: utterances of 0.5-30 s only")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--arch", choices=sorted(SHAPES), default="large", help="stored shapes (default large)")
    parser.add_argument("--layers", default="last",
                        help="comma-separated layer specs, one run each: e.g. last;8,16,24;all (';' between runs)")
    parser.add_argument("--stages", default="decode,write,pipeline", help="which stages (default all three)")
    parser.add_argument("--workers", default="0,1", help="decode/pipeline: comma-separated worker counts (default 0,1)")
    parser.add_argument("--repeat", type=int, default=1, help="write: interleaved runs of lebench and numpy, best of each; pipeline: runs, the best kept (default 1)")
    parser.add_argument("--batch-seconds", type=float, default=120.0, help="pipeline: lebench --batch-seconds (default 120, the CUDA default)")
    add_work_argument(parser, help="corpora, checkpoint and outputs (default $TMPDIR/lebench-bench)")
    parser.add_argument("--out", type=Path, help="where the write and pipeline stages write (default under --work)")
    add_json_out_argument(parser)
    args = parser.parse_args(argv)
    args.seconds = 60 * (args.minutes or 30) if args.hours is None else 3600 * args.hours
    args.single_file = False
    args.work = args.work.resolve()
    return args


@dataclasses.dataclass
class Item:
    """What lebench's decoding stage reads of an item: its source and duration."""

    source: object
    seconds: float = 0.0


def corpus_items(folder: Path) -> list:
    from lebench_cli.audio.loading import probe
    from lebench_cli.errors import AudioError
    from lebench_cli.audio.inputs import AUDIO_EXTENSIONS, discover

    items = [Item(source) for source in discover([str(folder)], AUDIO_EXTENSIONS)]
    for item in items:
        try:
            item.seconds = probe(item.source.path).duration_seconds
        except AudioError:
            raise SystemExit(f"error: cannot probe {item.source.path}")
    return items


# ---- decode ---------------------------------------------------------------------------------

def children_cpu() -> float:
    """CPU seconds of this process's ended children (decoding workers, once joined)."""
    import resource

    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def stage_decode(items: list, workers: int, window_seconds: float = 30.0) -> dict:
    """The files through lebench's decoding stage, the way extract reads them: recordings
    longer than a window first (a statistics pass, in the workers where this lebench does it
    there, then the windows pass on this thread), then the others decoded whole."""
    import inspect

    from lebench_cli.audio.loading import stream_audio

    from lebench_cli.pipeline import extract

    if hasattr(extract, "_decoded_stream"):  # a commit before the decoding module, for "before" figures
        def decoded_stream(items, workers, channel, ahead):
            return extract._decoded_stream(items, types.SimpleNamespace(workers=workers, channel=channel), ahead)
    else:
        from lebench_cli.audio.decoding import decoded_stream

    def read(item) -> int:
        return sum(len(block) for block in stream_audio(item.source.path))

    short = [item for item in items if item.seconds <= window_seconds]
    long_files = [item for item in items if item.seconds > window_seconds]
    ahead = max(4, 4 * workers)
    started, cpu, children = time.perf_counter(), time.process_time(), children_cpu()
    samples = 0
    if "streamed_over" in inspect.signature(decoded_stream).parameters:
        stream = decoded_stream(long_files + short, workers, None, ahead, streamed_over=window_seconds)
    else:  # before: both passes over a long recording on the main thread
        for item in long_files:
            read(item)
            samples += read(item)
        stream = decoded_stream(short, workers, None, ahead)
    long_wall = short_started = short_cpu = None
    for item, (value, reason) in stream:
        if reason is not None:
            raise SystemExit(f"error: {item.source.path}: {reason}")
        if item.seconds > window_seconds:
            samples += read(item)
            continue
        if short_started is None:
            short_started, short_cpu = time.perf_counter(), time.process_time()
        samples += len(value[0])
    finished = time.perf_counter()
    if short_started is None:
        short_started, short_cpu = finished, time.process_time()
    long_wall = short_started - started
    main_cpu = time.process_time() - cpu
    return {"wall_s": finished - started, "main_cpu_s": main_cpu, "files": len(items),
            "cpu_s": main_cpu + (children_cpu() - children),
            "audio_s": samples / SAMPLE_RATE,
            "short_x_rt": sum(i.seconds for i in short) / (finished - short_started) if short else None,
            "short_main_cpu_s": time.process_time() - short_cpu,
            "long_x_rt": sum(i.seconds for i in long_files) / long_wall if long_files else None}


# ---- write ----------------------------------------------------------------------------------

def stage_write(items: list, arch: str, spec: str, out: Path, repeat: int = 1) -> dict:
    """The ShardWriter against its ceiling, in the same run: numpy writing the same frames
    (`tofile`, one file, fsynced at the end as the writer fsyncs its shards). Interleaved
    `repeat` times, best of each; the ratio is lebench's payload rate over numpy's."""
    from lebench_cli.frames import frame_count
    from lebench_cli.layers import parse_layers

    layers, width, cnn_width = SHAPES[arch]
    names = [str(layer) for layer in parse_layers(spec, layers)]
    frames = [max(1, frame_count(round(item.seconds * SAMPLE_RATE))) for item in items]
    rng = np.random.default_rng(0)
    pool = {name: rng.standard_normal((max(frames), cnn_width if name == "cnn" else width)).astype(np.float16)
            for name in names}
    payload = sum(count * pool[name].shape[1] * 2 for count in frames for name in names)
    lebench, ceiling = [], []
    for _ in range(repeat):
        ceiling.append(_write_numpy(pool, names, frames, out))
        lebench.append(_write_lebench(items, pool, names, frames, out))
    best = min(lebench, key=lambda run: run["wall_s"])
    numpy_wall = min(ceiling)
    return {**best, "files": len(items), "audio_s": sum(i.seconds for i in items),
            "payload_mb": payload / 1e6, "write_mb_s": payload / 1e6 / best["wall_s"],
            "numpy_mb_s": payload / 1e6 / numpy_wall, "vs_numpy": numpy_wall / best["wall_s"],
            "runs_wall_s": [run["wall_s"] for run in lebench], "numpy_runs_wall_s": ceiling}


def _write_lebench(items: list, pool: dict, names: list, frames: list, out: Path) -> dict:
    from lebench_cli.storage import PartLock, ShardWriter, StoredUtterance, WriterOptions, prepare_output

    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    prepare_output(out, {"identity": {"layers": names, "save_dtype": "float16"}}, overwrite=False)  # shards copy it
    options = WriterOptions(layers=names, store_frames=True, store_mean=False, save_dtype="float16",
                            shard_size_bytes=2 * 1024**3, compression=None, commit_seconds=300.0)
    started, cpu = time.perf_counter(), time.process_time()
    with PartLock(out, 1, 1), ShardWriter(out, options) as writer:
        for index, (item, count) in enumerate(zip(items, frames)):
            writer.add(StoredUtterance(utt_id=f"u{index}", source=str(item.source.path), duration=item.seconds,
                                       frames=count, flags="", states={n: pool[n][:count] for n in names}))
    wall = time.perf_counter() - started
    main_cpu = time.process_time() - cpu
    written = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    shutil.rmtree(out, ignore_errors=True)
    return {"wall_s": wall, "main_cpu_s": main_cpu, "cpu_s": main_cpu, "written_mb": written / 1e6}


def _write_numpy(pool: dict, names: list, frames: list, out: Path) -> float:
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    started = time.perf_counter()
    with open(out / "frames.bin", "wb") as file:
        for count in frames:
            for name in names:
                pool[name][:count].tofile(file)
        file.flush()
        os.fsync(file.fileno())
    wall = time.perf_counter() - started
    shutil.rmtree(out, ignore_errors=True)
    return wall


# ---- the whole pipeline without the model -------------------------------------------------

def skinny_checkpoint(work: Path, arch: str) -> Path:
    """A real fairseq checkpoint with the arch's layer count and tiny widths (only its layer
    count and conv strides matter here: the null encoder claims the real widths)."""
    from lebench_cli.testing.checkpoints import save_skinny_checkpoint

    path = work / f"skinny-{arch}" / "checkpoint_best.pt"
    if path.exists():
        return path
    return save_skinny_checkpoint(path, arch, SHAPES[arch][0])


def null_encoder_class(arch: str):
    import torch

    from lebench_cli.model.encoder import EncodedBatch, Encoder

    layers, width, cnn_width = SHAPES[arch]
    # Random values, made once: the states are views of these (a GPU hands back new memory
    # per batch; here that copy is left out with the model).
    generator = torch.Generator().manual_seed(0)
    ready = {}

    class NullEncoder(Encoder):
        def __init__(self, checkpoint, device="cpu", dtype="float32"):
            super().__init__(checkpoint, device="cpu", dtype="float32")
            self.width, self.cnn_width, self.num_layers = width, cnn_width, layers

        def forward(self, waveforms, lengths, layers, normalize=None):
            frames = self.frames_for(torch.as_tensor(lengths))
            batch, longest = len(frames), int(frames.max())
            states = {}
            for layer in self.check_layers(layers):
                wide = cnn_width if layer == "cnn" else width
                needed = batch * longest * wide
                if wide not in ready or ready[wide].numel() < needed:
                    ready[wide] = torch.randn(2 * needed, generator=generator).to(torch.float16)
                states[layer] = ready[wide][:needed].view(batch, longest, wide)
            return EncodedBatch(states, frames)

    return NullEncoder


def all_finite(values: list, frames):
    import torch

    return torch.ones((len(values), len(frames)), dtype=torch.bool)


def stage_pipeline(corpus: Path, checkpoint: Path, arch: str, spec: str, workers: int, batch_seconds: float,
                   out: Path) -> dict:
    from lebench_cli.model import encoder as encoder_module
    from lebench_cli.pipeline.options import ExtractOptions
    from lebench_cli.pipeline.extract import run_extract

    from lebench_cli.model import readback

    original, original_check = encoder_module.Encoder, readback.finite_per_utterance
    encoder_module.Encoder = null_encoder_class(arch)
    # On a GPU the NaN/inf check runs on the device with the model (readback.py), not on the
    # host this script measures: it is left out with the model.
    readback.finite_per_utterance = all_finite
    shutil.rmtree(out, ignore_errors=True)
    options = ExtractOptions(inputs=[str(corpus)], output=str(out), model=str(checkpoint), layers=spec,
                             device="cpu", dtype="float32", workers=workers, batch_seconds=batch_seconds)
    try:
        started, cpu, children = time.perf_counter(), time.process_time(), children_cpu()
        summary = run_extract(options)
        wall = time.perf_counter() - started
        main_cpu = time.process_time() - cpu
        all_cpu = main_cpu + children_cpu() - children
    finally:
        encoder_module.Encoder, readback.finite_per_utterance = original, original_check
    written = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    shutil.rmtree(out, ignore_errors=True)
    if summary.failed:
        raise SystemExit(f"error: {summary.failed} files failed: {summary.first_failure}")
    return {"wall_s": wall, "main_cpu_s": main_cpu, "cpu_s": all_cpu, "files": summary.extracted,
            "audio_s": summary.audio_seconds,
            "written_mb": written / 1e6, "write_mb_s": written / 1e6 / wall}


# ---- report -------------------------------------------------------------------------------

def format_rows(rows: list) -> str:
    header = ["stage", "layers", "workers", "files", "audio s", "wall s", "x RT", "files/s", "main CPU s",
              "CPU s/h", "written MB/s", "vs numpy", "vs slowest", "detail"]
    lines = []
    for row in rows:
        detail = ""
        if row["stage"] == "decode":
            parts = []
            if row.get("short_x_rt"):
                parts.append(f"short files {row['short_x_rt']:.0f}x RT, main CPU {row['short_main_cpu_s']:.2f} s")
            if row.get("long_x_rt"):
                parts.append(f"long files {row['long_x_rt']:.0f}x RT")
            detail = ", ".join(parts)
        elif row["stage"] == "write":
            detail = f"numpy {row['numpy_mb_s']:.0f} MB/s"
        elif row.get("slowest"):
            detail = f"slowest stage: {row['slowest']}"
        lines.append([row["stage"], row.get("layers", "-"), str(row.get("workers", "-")), str(row["files"]),
                      f"{row['audio_s']:.0f}", f"{row['wall_s']:.2f}", f"{row['audio_s'] / row['wall_s']:.0f}",
                      f"{row['files'] / row['wall_s']:.0f}", f"{row['main_cpu_s']:.2f}",
                      f"{row['cpu_s'] / row['audio_s'] * 3600:.1f}",
                      f"{row['write_mb_s']:.0f}" if "write_mb_s" in row else "-",
                      f"{row['vs_numpy']:.2f}" if "vs_numpy" in row else "-",
                      f"{row['vs_slowest']:.2f}" if "vs_slowest" in row else "-", detail])
    return text_table(header, lines)


def compare_with_stages(rows: list) -> None:
    """Each pipeline row's x RT over the slower of its decode and write rows of this run."""
    rate = {}
    for row in rows:
        if row["stage"] in ("decode", "write"):
            key = row.get("workers") if row["stage"] == "decode" else row.get("layers")
            rate[(row["stage"], key)] = row["audio_s"] / row["wall_s"]
    for row in rows:
        if row["stage"] != "pipeline":
            continue
        stages = {name: rate[key] for name, key in (("decode", ("decode", row["workers"])),
                                                   ("write", ("write", row["layers"]))) if key in rate}
        if stages:
            row["slowest"] = min(stages, key=stages.get)
            row["vs_slowest"] = row["audio_s"] / row["wall_s"] / stages[row["slowest"]]


def feeding_lines(rows: list, target: float = 8000.0) -> list:
    return [f"to feed {target:,.0f}x real time ({row['layers']}, {row['workers']} workers): "
            f"{row['cpu_s'] / row['audio_s'] * target:.1f} cores at this CPU's speed"
            for row in rows if row["stage"] == "pipeline"]


def main(argv=None):
    args = parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    corpus = args.corpus.resolve() if args.corpus else speechlike_corpus(args.work, args.seconds, args.seed,
                                                                        args.single_file, not args.no_long_files)
    items = corpus_items(corpus)
    out = (args.out or args.work / "pipeline-out").resolve()
    stages = [s.strip() for s in args.stages.split(",") if s.strip()]
    workers_list = [int(w) for w in args.workers.split(",")]
    specs = [s.strip() for s in args.layers.split(";") if s.strip()]
    print(f"corpus {corpus}: {len(items)} files, {sum(i.seconds for i in items):.0f} s of audio; "
          f"{args.arch} shapes; {os.cpu_count()} CPUs", file=sys.stderr)
    rows = []
    for stage in stages:
        if stage == "decode":
            for workers in workers_list:
                rows.append({"stage": "decode", "workers": workers, **stage_decode(items, workers)})
        elif stage == "write":
            for spec in specs:
                rows.append({"stage": "write", "layers": spec, **stage_write(items, args.arch, spec, out, args.repeat)})
        elif stage == "pipeline":
            checkpoint = skinny_checkpoint(args.work, args.arch)
            for spec in specs:
                for workers in workers_list:
                    runs = [stage_pipeline(corpus, checkpoint, args.arch, spec, workers, args.batch_seconds, out)
                            for _ in range(args.repeat)]
                    best = min(runs, key=lambda run: run["wall_s"])
                    rows.append({"stage": "pipeline", "layers": spec, "workers": workers, **best,
                                 "runs_wall_s": [run["wall_s"] for run in runs]})
        else:
            raise SystemExit(f"error: unknown stage '{stage}' (decode, write, pipeline)")
        print(format_rows(rows[-1:]).splitlines()[-1], file=sys.stderr)
    compare_with_stages(rows)
    print(format_rows(rows))
    for line in feeding_lines(rows):
        print(line)
    if args.json_out:
        write_json(args.json_out, {"machine": brief_machine(), "args": {k: str(v) for k, v in vars(args).items()},
                                   "rows": rows}, indent=1)


if __name__ == "__main__":
    main()
