#!/usr/bin/env python
"""Throughput and memory of `lebench extract` against the naive one-file-at-a-time loops.

One run: make (or take) a corpus, make (or take) a checkpoint, then time each method in its
own subprocess and print a table (and --json-out):

  lebench       `lebench extract CORPUS -o OUT --model CKPT ...`, end to end;
  fairseq       LeBenchmark's scripts: fairseq, one file at a time, float32:
                soundfile.read, layer_norm if the checkpoint normalises,
                model.extract_features(wav[None], None, mask=False) under no_grad,
                the chosen layers written as float16 into one HDF5 file (like lebench);
  transformers  the same loop with transformers' Wav2Vec2Model (output_hidden_states),
                on the checkpoint exported with lebench_cli.model.conversion.export_transformers.

Run from the repository root:  .venv/bin/python -m benchmarks.bench_extract --help
docs/performance.md has the measurements and how to read them.
"""

from __future__ import annotations

import argparse
import datetime
import json
import shutil
import statistics
import sys
from pathlib import Path

from lebench_cli.testing.checkpoints import ARCHS
from lebench_cli.testing.corpora import speechlike_corpus, startup_corpus

from .common import (add_json_out_argument, add_work_argument, folder_bytes, machine_info, measure, probe_corpus,
                     quiet_env, text_table, write_json)
from .models import prepare_model, useful_flops

METHODS = ("lebench", "fairseq", "transformers")
NAIVE = ("fairseq", "transformers")

HELP_EPILOG = """
figures (per run of a method):
  audio s      seconds of audio in the corpus
  wall s       the subprocess's wall time, start to exit (imports, model load, decoding,
               compute, writing: end to end)
  startup s    wall time of the same command on a 1-file, 2-second corpus (imports, model
               load, checkpoint hashing, pool start): the fixed cost inside "wall s"
  x RT         audio s / wall s (real-time factor); "steady x RT" = audio s / (wall s - startup s)
  vs fairseq, vs transformers
               x RT / median x RT of that naive method in this run
  TFLOP/s      useful model FLOPs / wall s. FLOPs per file of n frames (50 per second):
                 2 * [2.45e9 * seconds                       (conv feature encoder)
                      + n * (C*D + D*(D/G)*K                 (projection, positional conv)
                             + L * (4*D^2 + 2*D*F))          (attention projections, FFN)
                      + L * 2 * n * min(n, 1500) * D]        (attention scores and sums,
                                                              context capped at 30 s windows)
               C=512, D width, F ffn width, L layers, G conv_pos_groups, K conv_pos kernel.
               It gives ~15 GFLOP per audio second (base) and ~38 (large) at 10 s, the
               usual count for these models. Compute that a method spends on window
               overlaps or padding is not counted: it is not useful work.
  CPU s        user + system CPU seconds of the method's processes (wait4): the work done,
               less sensitive than wall time to other jobs on the machine (with --threads 1:
               with more threads, OpenMP threads spin while waiting and count too)
  peak RSS     largest resident set of any single process of the method (wait4 ru_maxrss)
  tree PSS     peak of the summed proportional set size of the method's process tree
               (main process + decoding workers), polled every 0.5 s
               (the JSON has the PSS every 5 s: "pss_timeline_mb")
  GPU MB       peak of the GPU's used memory minus its level before the run (nvidia-smi,
               polled every 0.5 s; CUDA only)
  write MB/s   bytes the method left in its output folder / wall s

naive loops: files longer than --naive-max-seconds are cut into consecutive pieces of that
length, without overlap, each run alone (0: whole files, as LeBenchmark's scripts do: the
attention cost then grows with the square of the length). lebench's windows overlap
(--chunk-seconds 30, --overlap-seconds 5 by default), so on long files it computes about
20% more than the naive loops do with the default 30.

examples:
  .venv/bin/python -m benchmarks.bench_extract --minutes 5 --arch base --device cpu
  .venv/bin/python -m benchmarks.bench_extract --minutes 20 --layers all --methods lebench,fairseq
  .venv/bin/python -m benchmarks.bench_extract --minutes 60 --single-file --methods lebench
  .venv/bin/python -m benchmarks.bench_extract --hours 2 --arch large --device cuda \\
      --dtype float16 --layers 8,16,24 --json-out large-h100.json
"""


# ---- options -------------------------------------------------------------------------------

DTYPES = ("float32", "float16", "bfloat16")


def dtype_list(text: str) -> list:
    """'bfloat16,float32' -> ['bfloat16', 'float32']; argparse turns the ValueError into a usage error."""
    values = [part.strip() for part in text.split(",") if part.strip()]
    if not values or any(value not in DTYPES for value in values) or len(set(values)) < len(values):
        raise ValueError(text)
    return values


def lebench_dtype(method: str, args) -> str:
    """The compute precision of a lebench row: 'lebench:bfloat16' -> bfloat16, 'lebench' -> --dtype."""
    return method.split(":", 1)[1] if ":" in method else args.dtypes[0]

def parse_args(argv):
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.bench_extract", description=__doc__.split("\n\n")[0],
        epilog=HELP_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    corpus = parser.add_argument_group("corpus")
    size = corpus.add_mutually_exclusive_group()
    size.add_argument("--minutes", type=float, help="total audio to generate, in minutes (default 5)")
    size.add_argument("--hours", type=float, help="total audio to generate, in hours")
    corpus.add_argument("--corpus", type=Path, help="use this folder of audio instead of generating one "
                        "(walked recursively for wav/flac/ogg/mp3)")
    corpus.add_argument("--single-file", action="store_true",
                        help="generate ONE recording of the whole duration (for the long-file memory check)")
    corpus.add_argument("--no-long-files", action="store_true",
                        help="only 0.5-30 s files (by default ~20%% of the audio is in files of 35 s to 5 min)")
    corpus.add_argument("--seed", type=int, default=0, help="seed of the corpus and of the random weights (default 0)")

    model = parser.add_argument_group("model")
    model.add_argument("--arch", choices=sorted(ARCHS), default="base",
                       help="random weights with the real architecture of LeBenchmark's base or large models "
                       "(default base), saved as a fairseq checkpoint_best.pt and cached in --work")
    model.add_argument("--model", type=Path,
                       help="use this fairseq checkpoint (or model folder lebench reads) instead of --arch")

    run = parser.add_argument_group("run")
    run.add_argument("--methods", default=",".join(METHODS),
                     help=f"comma-separated subset of {','.join(METHODS)} (default: all)")
    run.add_argument("--skip-naive", action="store_true", help="run lebench only")
    run.add_argument("--layers", default="last",
                     help="layers to store, lebench syntax: last, all, cnn, 4,8,12, 0-12 (default last)")
    run.add_argument("--device", default=None, help="cpu or cuda[:N] (default: cuda when available)")
    run.add_argument("--dtype", type=dtype_list, default=None,
                     help="lebench's compute precision, or several comma-separated (bfloat16,float32: one "
                          "lebench row each and a 'vs float32' column) (default: float16 on CUDA, float32 on CPU)")
    run.add_argument("--naive-dtype", choices=["float32", "float16", "bfloat16"], default="float32",
                     help="the naive loops' precision (default float32, as LeBenchmark's scripts)")
    run.add_argument("--batch-seconds", type=float, default=None, help="lebench --batch-seconds (default: lebench's)")
    run.add_argument("--workers", type=int, default=None, help="lebench --workers (default: lebench's)")
    run.add_argument("--lebench-args", default="",
                     help="extra arguments for lebench extract, one string, e.g. '--chunk-seconds 60'")
    run.add_argument("--naive-max-seconds", type=float, default=30.0,
                     help="naive loops cut longer files into pieces of this length (0: whole files; default 30)")
    run.add_argument("--naive-save", choices=["h5", "npy"], default="h5",
                     help="naive loops write float16 into one HDF5 file (default) or one .npy per utterance and layer")
    run.add_argument("--threads", type=int, default=None,
                     help="OMP/MKL threads for every method, and torch.set_num_threads in the naive loops "
                     "(default: torch's, the number of cores)")
    run.add_argument("--repeat", type=int, default=1, help="run each method this many times, interleaved A B A B (default 1)")
    run.add_argument("--no-startup-probe", action="store_true",
                     help="do not measure each method's fixed cost on a 1-file corpus")
    run.add_argument("--profile", action="store_true",
                     help="run each method's main process under cProfile (slower); .prof files go to the run folder")
    run.add_argument("--keep-outputs", action="store_true", help="keep each method's output folder")

    where = parser.add_argument_group("files")
    add_work_argument(where, help="cache of corpora, checkpoints and outputs (default $TMPDIR/lebench-bench)")
    where.add_argument("--lebench", default=str(Path(sys.executable).parent / "lebench"),
                       help="the lebench executable (default: next to this Python)")
    add_json_out_argument(where)
    args = parser.parse_args(argv)

    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        parser.error(f"unknown method {unknown[0]!r}: choose from {', '.join(METHODS)}")
    if args.skip_naive:
        methods = [m for m in methods if m not in NAIVE]
    if not methods:
        parser.error("no method left to run")
    args.methods = methods
    args.dtypes = args.dtype or []
    if args.corpus is None:
        args.seconds = 3600.0 * args.hours if args.hours else 60.0 * (args.minutes or 5.0)
        if args.seconds < 1:
            parser.error("the corpus needs at least one second of audio")
    elif args.minutes or args.hours or args.single_file:
        parser.error("--corpus excludes --minutes, --hours and --single-file")
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    return args


# ---- corpus ------------------------------------------------------------------------------------

def make_corpus(args) -> Path:
    return speechlike_corpus(args.work, args.seconds, args.seed, args.single_file, not args.no_long_files)


# ---- orchestration ----------------------------------------------------------------------------

def method_command(method: str, args, corpus: Path, checkpoint: Path, export: Path | None, out: Path,
                   result_json: Path, profile: Path | None) -> list:
    prefix = [sys.executable, "-m", "cProfile", "-o", str(profile)] if profile else []
    if method.startswith("lebench"):
        command = [args.lebench, "extract", str(corpus), "-o", str(out), "--model", str(checkpoint),
                   "--layers", args.layers, "--device", args.device, "--dtype", lebench_dtype(method, args), "--quiet"]
        if args.batch_seconds is not None:
            command += ["--batch-seconds", f"{args.batch_seconds:g}"]
        if args.workers is not None:
            command += ["--workers", str(args.workers)]
        command += args.lebench_args.split()
        return (prefix + command) if profile else command
    model = str(export) if method == "transformers" else str(checkpoint)
    return (prefix or [sys.executable]) + [
        "-m", "benchmarks.naive", method, str(corpus), model, str(out), args.layers, args.device, args.naive_dtype,
        f"{args.naive_max_seconds:g}", args.naive_save, str(args.threads or 0), str(result_json)]


def run_method(method: str, args, corpus: Path, checkpoint: Path, export, run_dir: Path, tag: str) -> dict:
    name = method.replace(":", "-")
    out = run_dir / f"out-{name}-{tag}"
    shutil.rmtree(out, ignore_errors=True)
    result_json = run_dir / f"{name}-{tag}.json"
    profile = run_dir / f"{name}-{tag}.prof" if args.profile and tag != "probe" else None
    command = method_command(method, args, corpus, checkpoint, export, out, result_json, profile)
    measured = measure(command, run_dir / f"{name}-{tag}.log", quiet_env(args.threads),
                       gpu=args.device.startswith("cuda"))
    measured["output_bytes"] = folder_bytes(out)
    if result_json.exists():
        measured["inside"] = json.loads(result_json.read_text())
    if measured["exit_code"] != 0:
        tail = (run_dir / f"{name}-{tag}.log").read_text()[-1500:]
        print(f"warning: {method} exited with {measured['exit_code']}:\n{tail}", file=sys.stderr)
    if not args.keep_outputs:
        shutil.rmtree(out, ignore_errors=True)
    return measured


def summarise(rows: list, audio_seconds: float, flops: float):
    medians = {}
    for method in dict.fromkeys(row["method"] for row in rows):
        speeds = [audio_seconds / r["wall_s"] for r in rows if r["method"] == method and r["exit_code"] == 0]
        if speeds:
            medians[method] = statistics.median(speeds)
    for row in rows:
        row["audio_s"] = audio_seconds
        row["cpu_s"] = row["user_cpu_s"] + row["system_cpu_s"]
        if row["exit_code"] != 0:  # a failed run has no throughput
            row.update(x_real_time=None, steady_x_real_time=None, tflops=None, write_mb_s=None,
                       vs_fairseq=None, vs_transformers=None, vs_float32=None)
            continue
        row["x_real_time"] = audio_seconds / row["wall_s"]
        startup = row.get("startup_s")
        row["steady_x_real_time"] = audio_seconds / (row["wall_s"] - startup) if startup and row["wall_s"] > startup else None
        row["tflops"] = flops / row["wall_s"] / 1e12
        row["write_mb_s"] = row["output_bytes"] / 1024**2 / row["wall_s"]
        for naive in NAIVE:
            row[f"vs_{naive}"] = row["x_real_time"] / medians[naive] if naive in medians else None
        float32 = medians.get("lebench:float32")
        row["vs_float32"] = row["x_real_time"] / float32 if float32 and row["method"].startswith("lebench") else None
    return medians


def format_table(rows: list) -> str:
    columns = [
        ("method", lambda r: r["method"] + (f" #{r['repeat']}" if r["repeats"] > 1 else "")),
        ("audio s", lambda r: f"{r['audio_s']:.0f}"),
        ("wall s", lambda r: f"{r['wall_s']:.1f}"),
        ("startup s", lambda r: "-" if r.get("startup_s") is None else f"{r['startup_s']:.1f}"),
        ("x RT", lambda r: "FAILED" if r["x_real_time"] is None else f"{r['x_real_time']:.2f}"),
        ("steady x RT", lambda r: "-" if r["steady_x_real_time"] is None else f"{r['steady_x_real_time']:.2f}"),
        ("vs fairseq", lambda r: "-" if r["vs_fairseq"] is None else f"{r['vs_fairseq']:.2f}"),
        ("vs transformers", lambda r: "-" if r["vs_transformers"] is None else f"{r['vs_transformers']:.2f}"),
        ("vs float32", lambda r: "-" if r.get("vs_float32") is None else f"{r['vs_float32']:.2f}"),
        ("CPU s", lambda r: f"{r['cpu_s']:.0f}"),
        ("peak RSS MB", lambda r: f"{r['peak_rss_mb']:.0f}"),
        ("tree PSS MB", lambda r: f"{r['peak_tree_pss_mb']:.0f}"),
        ("GPU MB", lambda r: "-" if r["peak_gpu_mb"] is None else f"{r['peak_gpu_mb']:.0f}"),
        ("TFLOP/s", lambda r: "-" if r["tflops"] is None else f"{r['tflops']:.3f}"),
        ("write MB/s", lambda r: "-" if r["write_mb_s"] is None else f"{r['write_mb_s']:.2f}"),
        ("exit", lambda r: str(r["exit_code"])),
    ]
    return text_table([name for name, _ in columns], [[value(row) for _, value in columns] for row in rows],
                      numbers_right=True)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    args.work = args.work.resolve()
    args.work.mkdir(parents=True, exist_ok=True)
    info = machine_info(args.device or "")
    args.device = args.device or ("cuda" if info.get("cuda") else "cpu")
    args.dtypes = args.dtypes or ["float16" if args.device.startswith("cuda") else "float32"]
    if len(args.dtypes) > 1:  # one lebench row per precision
        args.methods = [expanded for method in args.methods
                        for expanded in ([f"lebench:{d}" for d in args.dtypes] if method == "lebench" else [method])]
    args.dtype = ",".join(args.dtypes)
    if args.corpus is not None:
        corpus = args.corpus.resolve()
        lengths = probe_corpus(corpus)
    else:
        print(f"corpus: {args.seconds / 60:g} min of generated audio in {args.work} ...", file=sys.stderr)
        corpus = make_corpus(args)
        lengths = [f["seconds"] for f in json.loads((corpus / "manifest.json").read_text())["files"]]
    checkpoint, export, description = prepare_model(args)
    audio_seconds = float(sum(lengths))
    flops = useful_flops(lengths, description)

    run_dir = args.work / "runs" / datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    run_dir.mkdir(parents=True, exist_ok=True)
    probe = None if args.no_startup_probe else startup_corpus(args.work)
    startup = {}
    for method in args.methods if probe is not None else ():
        print(f"{method}: startup probe ...", file=sys.stderr)
        startup[method] = run_method(method, args, probe, checkpoint, export, run_dir, "probe")["wall_s"]
    rows = []
    # Repeats interleave (A B A B): a load that comes and goes hits every method alike.
    for repeat in range(1, args.repeat + 1):
        for method in args.methods:
            print(f"{method}: run {repeat}/{args.repeat} ...", file=sys.stderr)
            row = run_method(method, args, corpus, checkpoint, export, run_dir, f"run{repeat}")
            row.update(method=method, repeat=repeat, repeats=args.repeat, startup_s=startup.get(method))
            rows.append(row)
            print(f"{method}: {row['wall_s']:.1f} s", file=sys.stderr)
    rows.sort(key=lambda row: (args.methods.index(row["method"]), row["repeat"]))
    medians = summarise(rows, audio_seconds, flops)

    settings = {
        "corpus": str(corpus), "files": len(lengths), "audio_s": audio_seconds,
        "longest_file_s": max(lengths), "files_over_30s": sum(1 for s in lengths if s > 30),
        "model": str(checkpoint), "arch": args.arch if args.model is None else "given", "model_description": description,
        "layers": args.layers, "device": args.device, "lebench_dtype": args.dtype, "naive_dtype": args.naive_dtype,
        "batch_seconds": args.batch_seconds, "workers": args.workers, "lebench_args": args.lebench_args,
        "naive_max_seconds": args.naive_max_seconds, "naive_save": args.naive_save, "threads": args.threads,
        "useful_flops": flops, "gflop_per_audio_second": flops / audio_seconds / 1e9,
        "command": " ".join([Path(sys.executable).name, "-m", "benchmarks.bench_extract", *argv]),
    }
    print()
    print(f"machine: {info.get('cpu')}, {info.get('cores')} cores, {info.get('memory_gb')} GB, "
          f"torch {info.get('torch')} ({info.get('torch_threads')} threads)"
          + (f", GPU {info['gpu']}" if info.get("gpu") else "") + f"; {info['date']}")
    print(f"corpus: {len(lengths)} files, {audio_seconds / 60:.1f} min (longest {max(lengths):.0f} s, "
          f"{settings['files_over_30s']} over 30 s); model: {settings['arch']} "
          f"({description['layers']} layers x {description['width']}, {description['parameters'] / 1e6:.0f}M params), "
          f"{settings['gflop_per_audio_second']:.1f} GFLOP per audio second")
    print(f"layers {args.layers}; device {args.device}; lebench {args.dtype}, naive {args.naive_dtype}; "
          f"batch-seconds {args.batch_seconds or 'default'}; workers {args.workers if args.workers is not None else 'default'}"
          f"; naive pieces {args.naive_max_seconds:g} s; naive save {args.naive_save}")
    print(format_table(rows))
    print(f"command: {settings['command']}")
    print(f"logs: {run_dir}")
    if args.json_out:
        write_json(args.json_out, {"machine": info, "settings": settings, "medians_x_real_time": medians,
                                   "runs": rows}, indent=2, default=str)
    return 1 if any(r["exit_code"] != 0 for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
