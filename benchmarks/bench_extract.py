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
                on the checkpoint exported with lebench_cli.conversion.export_transformers.

Run with the project's interpreter:  .venv/bin/python benchmarks/bench_extract.py --help
docs/performance.md has the measurements and how to read them.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
SAMPLE_RATE = 16000
METHODS = ("lebench", "fairseq", "transformers")
NAIVE = ("fairseq", "transformers")

# Real architectures (docs/models.md). Everything else keeps
# fairseq's Wav2Vec2Config defaults, which are the base model's.
ARCHS = {
    "base": dict(encoder_layers=12, encoder_embed_dim=768, encoder_ffn_embed_dim=3072, encoder_attention_heads=12,
                 extractor_mode="default", layer_norm_first=False, conv_bias=False, final_dim=256,
                 normalize=False),
    "large": dict(encoder_layers=24, encoder_embed_dim=1024, encoder_ffn_embed_dim=4096, encoder_attention_heads=16,
                  extractor_mode="layer_norm", layer_norm_first=True, conv_bias=True, final_dim=768,
                  normalize=True),
}
CONV = "[(512, 10, 5)] + [(512, 3, 2)] * 4 + [(512, 2, 2)] * 2"

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
  .venv/bin/python benchmarks/bench_extract.py --minutes 5 --arch base --device cpu
  .venv/bin/python benchmarks/bench_extract.py --minutes 20 --layers all --methods lebench,fairseq
  .venv/bin/python benchmarks/bench_extract.py --minutes 60 --single-file --methods lebench
  .venv/bin/python benchmarks/bench_extract.py --hours 2 --arch large --device cuda \\
      --dtype float16 --layers 8,16,24 --json-out large-h100.json
"""


# ---- options -------------------------------------------------------------------------------

def parse_args(argv):
    parser = argparse.ArgumentParser(
        prog="bench_extract.py", description=__doc__.split("\n\n")[0],
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
    run.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], default=None,
                     help="lebench's compute precision (default: float16 on CUDA, float32 on CPU)")
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
    where.add_argument("--work", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "lebench-bench",
                       help="cache of corpora, checkpoints and outputs (default $TMPDIR/lebench-bench)")
    where.add_argument("--lebench", default=str(Path(sys.executable).parent / "lebench"),
                       help="the lebench executable (default: next to this Python)")
    where.add_argument("--json-out", type=Path, help="also write the results as JSON here")
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


def write_speechlike(path: Path, seconds: float, rng, block_seconds: float = 10.0):
    """Seeded speech-like audio: harmonics of a wandering f0 (90-250 Hz), syllable-rate
    amplitude bursts with pauses, formant-ish spectral tilt, background noise; PCM16 WAV,
    written a block at a time (an hour-long file never sits in memory)."""
    import soundfile

    total = int(round(seconds * SAMPLE_RATE))
    path.parent.mkdir(parents=True, exist_ok=True)
    harmonics = np.arange(1, 16)
    gains = 1.0 / harmonics * (1 + 0.8 * np.exp(-((harmonics * 150 - 700) / 300.0) ** 2))
    phase = np.zeros(len(harmonics))
    f0 = rng.uniform(100, 200)
    with soundfile.SoundFile(path, "w", SAMPLE_RATE, 1, "PCM_16") as out:
        done = 0
        while done < total:
            n = min(int(block_seconds * SAMPLE_RATE), total - done)
            # f0 track: a random walk every 10 ms, interpolated to samples.
            steps = n // 160 + 2
            track = np.clip(f0 + np.cumsum(rng.normal(0, 2.0, steps)), 90, 250)
            f0 = float(track[-1])
            f0_samples = np.interp(np.arange(n), np.arange(steps) * 160, track)
            increments = 2 * np.pi * f0_samples / SAMPLE_RATE
            base_phase = np.cumsum(increments)
            wave = np.zeros(n)
            for index, k in enumerate(harmonics):
                wave += gains[index] * np.sin(phase[index] + k * base_phase)
            phase = (phase + harmonics * base_phase[-1]) % (2 * np.pi)
            # Syllables of 80-300 ms, ~25% of them silent.
            envelope = np.zeros(n)
            position = 0
            while position < n:
                length = int(rng.uniform(0.08, 0.3) * SAMPLE_RATE)
                if rng.random() > 0.25:
                    envelope[position: position + length] = np.hanning(length)[: n - position] * rng.uniform(0.3, 1.0)
                position += length
            signal = 0.1 * wave * envelope + rng.normal(0, 0.003, n)
            out.write(signal.astype(np.float32))
            done += n


def make_corpus(args) -> Path:
    kind = "single" if args.single_file else ("short" if args.no_long_files else "mix")
    folder = args.work / f"corpus-{kind}-{args.seconds:g}s-seed{args.seed}"
    manifest = folder / "manifest.json"
    if manifest.exists():
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    rng = np.random.default_rng(args.seed)
    lengths = [args.seconds] if args.single_file else corpus_lengths(args.seconds, rng, not args.no_long_files)
    files = []
    long_count = 0
    for index, length in enumerate(lengths):
        if length > 30:
            name = f"long/rec{long_count:03d}.wav"
            long_count += 1
        else:
            name = f"spk{index % 20:02d}/utt{index:05d}.wav"
        write_speechlike(folder / name, length, np.random.default_rng([args.seed, index]))
        files.append({"path": name, "seconds": round(length, 4)})
    manifest.write_text(json.dumps({"seconds": args.seconds, "seed": args.seed, "kind": kind, "files": files}, indent=1))
    return folder


def probe_corpus(folder: Path) -> list:
    """Durations (s) of the audio files under `folder`."""
    import soundfile

    return [soundfile.info(str(path)).duration for path in audio_files(folder)]


def audio_files(folder: Path) -> list:
    extensions = {".wav", ".flac", ".ogg", ".mp3", ".opus"}
    return sorted(p for p in Path(folder).rglob("*") if p.suffix.lower() in extensions and p.is_file())


def make_probe_corpus(work: Path) -> Path:
    folder = work / "corpus-startup-probe"
    if not (folder / "manifest.json").exists():
        write_speechlike(folder / "probe.wav", 2.0, np.random.default_rng(12345))
        (folder / "manifest.json").write_text('{"seconds": 2.0}')
    return folder


# ---- model ------------------------------------------------------------------------------------

def worker_build_model(arch: str, path: Path, seed: int):
    """A fairseq checkpoint_best.pt with random weights and the real architecture, in the
    structure of tests/tiny_models.py save_fairseq_checkpoint (cfg with model/task dicts)."""
    import warnings

    import torch
    from fairseq.models.wav2vec.wav2vec2 import Wav2Vec2Config, Wav2Vec2Model
    from omegaconf import OmegaConf

    sys.path.insert(0, str(REPO / "tests"))
    from tiny_models import full_config

    options = dict(ARCHS[arch])
    normalize = options.pop("normalize")
    config = Wav2Vec2Config(conv_feature_layers=CONV, conv_pos=128, conv_pos_groups=16, **options)
    torch.manual_seed(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = Wav2Vec2Model.build_model(config)
    state = {
        "args": None,
        "cfg": OmegaConf.create(full_config(config, normalize)),
        "model": model.state_dict(),
        "optimizer_history": [{"criterion_name": "Wav2vecCriterion", "optimizer_name": "FairseqAdam",
                               "lr_scheduler_state": {"best": 1.5}, "num_updates": 10}],
        "extra_state": {"epoch": 1},
        "last_optimizer_state": {"state": {}, "param_groups": []},
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".tmp")
    torch.save(state, temporary)
    os.replace(temporary, path)


def worker_describe_model(model: str, export_folder: str, out_json: str):
    """The architecture numbers the FLOP formula needs; optionally the transformers export."""
    from lebench_cli.checkpoints import load_local
    from lebench_cli.conversion import export_transformers

    checkpoint = load_local(Path(model))
    config = checkpoint.model_config
    conv = checkpoint.model_config["conv_feature_layers"]
    from lebench_cli.checkpoints import parse_conv_layers

    description = {
        "layers": int(config["encoder_layers"]), "width": int(config["encoder_embed_dim"]),
        "ffn_width": int(config["encoder_ffn_embed_dim"]), "heads": int(config["encoder_attention_heads"]),
        "conv_pos": int(config.get("conv_pos", 128)), "conv_pos_groups": int(config.get("conv_pos_groups", 16)),
        "cnn_width": int(parse_conv_layers(checkpoint.weights_path, conv)[-1][0]),
        "extractor_mode": config.get("extractor_mode", "default"),
        "layer_norm_first": bool(config.get("layer_norm_first", False)), "normalize": bool(checkpoint.normalize),
        "parameters": int(sum(v.numel() for v in checkpoint.state_dict.values())),
    }
    if export_folder and not (Path(export_folder) / "model.safetensors").exists():
        temporary = Path(export_folder + ".tmp")
        shutil.rmtree(temporary, ignore_errors=True)
        export_transformers(checkpoint, temporary)
        shutil.rmtree(export_folder, ignore_errors=True)
        os.replace(temporary, export_folder)
    Path(out_json).write_text(json.dumps(description))


def prepare_model(args) -> tuple:
    """(checkpoint path, transformers folder or None, description)."""
    if args.model is not None:
        checkpoint = args.model.resolve()
        key = f"given-{abs(hash(str(checkpoint))) % 10**8}"
    else:
        checkpoint = args.work / f"model-{args.arch}-seed{args.seed}" / "checkpoint_best.pt"
        key = f"{args.arch}-seed{args.seed}"
        if not checkpoint.exists():
            print(f"building a random {args.arch} checkpoint in {checkpoint} ...", file=sys.stderr)
            run_worker(["_build-model", args.arch, str(checkpoint), str(args.seed)])
    export = args.work / f"transformers-{key}" if "transformers" in args.methods else None
    description_path = args.work / f"describe-{key}.json"
    run_worker(["_describe-model", str(checkpoint), str(export or ""), str(description_path)])
    return checkpoint, export, json.loads(description_path.read_text())


def run_worker(arguments: list):
    result = subprocess.run([sys.executable, __file__, *arguments], env=quiet_env())
    if result.returncode:
        raise SystemExit(f"error: {' '.join(arguments[:1])} failed (exit {result.returncode})")


def quiet_env(threads: int | None = None) -> dict:
    env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONWARNINGS="ignore")
    if threads:
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    return env


# ---- FLOPs ------------------------------------------------------------------------------------

CNN_MAC_PER_SECOND = 2.45e9  # the 7 convolutions of 512 channels, per audio second
WINDOW_FRAMES = 1500  # 30 s: attention context of lebench's windows and the naive pieces


def useful_flops(seconds_list, description) -> float:
    d, f, layers = description["width"], description["ffn_width"], description["layers"]
    per_frame = (description["cnn_width"] * d + d * (d // description["conv_pos_groups"]) * description["conv_pos"]
                 + layers * (4 * d * d + 2 * d * f))
    total = 0.0
    for seconds in seconds_list:
        n = max(1, int((seconds * SAMPLE_RATE - 400) // 320 + 1))
        total += CNN_MAC_PER_SECOND * seconds + n * per_frame + layers * 2 * n * min(n, WINDOW_FRAMES) * d
    return 2 * total


# ---- measuring a subprocess ---------------------------------------------------------------------

def _children_map() -> dict:
    children: dict = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(entry))
    return children


def _tree(pid: int) -> list:
    children = _children_map()
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        tree.append(current)
        todo.extend(children.get(current, []))
    return tree


def _pss_bytes(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as rollup:
            for line in rollup:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _gpu_used_mb() -> float | None:
    try:
        output = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
                                capture_output=True, text=True, timeout=10).stdout
        return float(output.split()[0])
    except (OSError, ValueError, IndexError, subprocess.SubprocessError):
        return None


class Sampler(threading.Thread):
    """Polls the process tree's summed PSS (and the GPU's used memory) until stopped."""

    def __init__(self, pid: int, gpu: bool, interval: float = 0.5):
        super().__init__(daemon=True)
        self.pid, self.gpu, self.interval = pid, gpu, interval
        self.peak_pss = 0
        self.gpu_baseline = _gpu_used_mb() if gpu else None
        self.peak_gpu = self.gpu_baseline
        self.timeline = []  # (seconds since start, tree PSS MB), one point per 5 s
        self.stopped = threading.Event()

    def run(self):
        started = time.monotonic()
        while not self.stopped.is_set():
            pss = sum(_pss_bytes(p) for p in _tree(self.pid))
            self.peak_pss = max(self.peak_pss, pss)
            elapsed = time.monotonic() - started
            if not self.timeline or elapsed - self.timeline[-1][0] >= 5:
                self.timeline.append((round(elapsed, 1), round(pss / 1024**2)))
            if self.gpu_baseline is not None:
                used = _gpu_used_mb()
                if used is not None:
                    self.peak_gpu = max(self.peak_gpu, used)
            self.stopped.wait(self.interval)

    def gpu_mb(self):
        return None if self.gpu_baseline is None else self.peak_gpu - self.gpu_baseline


def measure(command: list, log: Path, env: dict, gpu: bool) -> dict:
    started = time.monotonic()
    with open(log, "w") as log_file:
        process = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT, env=env, cwd=REPO)
        sampler = Sampler(process.pid, gpu)
        sampler.start()
        _, status, usage = os.wait4(process.pid, 0)
        wall = time.monotonic() - started
        process.returncode = os.waitstatus_to_exitcode(status)
        sampler.stopped.set()
        sampler.join()
    return {
        "exit_code": process.returncode, "wall_s": wall,
        "peak_rss_mb": usage.ru_maxrss / 1024, "peak_tree_pss_mb": sampler.peak_pss / 1024**2,
        "peak_gpu_mb": sampler.gpu_mb(), "user_cpu_s": usage.ru_utime, "system_cpu_s": usage.ru_stime,
        "command": command, "pss_timeline_mb": sampler.timeline,
    }


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in Path(folder).rglob("*") if p.is_file()) if Path(folder).exists() else 0


# ---- the naive loops (run as `bench_extract.py _naive METHOD ...` subprocesses) ------------------

def worker_naive(method: str, corpus: str, model: str, out: str, layers_spec: str, device: str, dtype: str,
                 max_seconds: float, save: str, threads: int, result_json: str):
    started = time.monotonic()
    import soundfile
    import torch
    import torch.nn.functional as F

    if threads:
        torch.set_num_threads(threads)
    torch_dtype = getattr(torch, dtype)
    from lebench_cli.layers import parse_layers

    if method == "fairseq":
        run, num_layers, normalize = _fairseq_runner(model, device, torch_dtype)
    else:
        run, num_layers, normalize = _transformers_runner(model, device, torch_dtype)
    layers = parse_layers(layers_spec, num_layers)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    loaded = time.monotonic()

    corpus_path = Path(corpus)
    Path(out).mkdir(parents=True, exist_ok=True)
    store = None
    if save == "h5":
        import h5py

        store = h5py.File(Path(out) / "features.h5", "w")
    piece_samples = int(max_seconds * SAMPLE_RATE) // 320 * 320 if max_seconds > 0 else 0
    audio_seconds = 0.0
    files = 0
    for path in audio_files(corpus_path):
        wav, rate = soundfile.read(str(path), dtype="float32")
        if wav.ndim > 1:
            wav = wav.mean(axis=1)
        if rate != SAMPLE_RATE:
            import soxr

            wav = soxr.resample(wav, rate, SAMPLE_RATE, quality="HQ").astype(np.float32)
        audio_seconds += len(wav) / SAMPLE_RATE
        pieces = [wav]
        if piece_samples and len(wav) > piece_samples:
            cuts = list(range(piece_samples, len(wav), piece_samples))
            if len(wav) - cuts[-1] < 400:  # a last sliver without a frame joins the piece before
                cuts.pop()
            pieces = np.split(wav, cuts)
        outputs = []
        for piece in pieces:
            source = torch.from_numpy(np.ascontiguousarray(piece)).to(device)
            with torch.no_grad():
                if normalize:
                    source = F.layer_norm(source, source.shape)
                outputs.append(run(source.to(torch_dtype), layers))
        utt_id = path.relative_to(corpus_path).with_suffix("").as_posix()
        for layer in layers:
            value = torch.cat([o[layer] for o in outputs]).float().cpu().numpy().astype(np.float16)
            if store is not None:
                store.create_dataset(f"{utt_id}/{layer}", data=value)
            else:
                target = Path(out) / f"{utt_id}.{layer}.npy"
                target.parent.mkdir(parents=True, exist_ok=True)
                np.save(target, value)
        files += 1
    if store is not None:
        store.close()
    finished = time.monotonic()
    result = {"files": files, "audio_s": audio_seconds, "startup_s": loaded - started, "loop_s": finished - loaded,
              "torch_threads": torch.get_num_threads(), "layers": [str(layer) for layer in layers]}
    if device.startswith("cuda"):
        result["torch_max_allocated_mb"] = torch.cuda.max_memory_allocated() / 1024**2
    Path(result_json).write_text(json.dumps(result))


def _fairseq_runner(model_path: str, device: str, dtype):
    """LeBenchmark's loop: fairseq's own model and extract_features, one utterance."""
    import logging
    import warnings

    import torch

    logging.disable(logging.WARNING)
    from fairseq.models.wav2vec.wav2vec2 import Wav2Vec2Config, Wav2Vec2Model
    from omegaconf import OmegaConf

    # fairseq's checkpoint_utils fails on torch >= 2.6 (weights_only); this file is our own.
    state = torch.load(model_path, map_location="cpu", weights_only=False)
    cfg = state["cfg"]
    model_cfg = OmegaConf.to_container(cfg["model"]) if not isinstance(cfg["model"], dict) else dict(cfg["model"])
    model_cfg.pop("_name", None)
    fields = set(Wav2Vec2Config.__dataclass_fields__)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = Wav2Vec2Model.build_model(Wav2Vec2Config(**{k: v for k, v in model_cfg.items() if k in fields}))
    model.load_state_dict(state["model"], strict=True)
    del state
    model = model.eval().to(device=device, dtype=dtype)
    num_layers = len(model.encoder.layers)
    normalize = bool(cfg["task"].get("normalize", False))
    captured = {}
    # Hidden state 0 (the transformer input) is not in extract_features' result: catch it.
    model.encoder.layers[0].register_forward_pre_hook(lambda module, inputs: captured.__setitem__(0, inputs[0]))

    def run(source, layers):
        result = model.extract_features(source[None], None, mask=False)
        states = {}
        for layer in layers:
            if layer == "cnn":
                states[layer] = result["features"][0]
            elif layer == num_layers:
                states[layer] = result["x"][0]
            elif layer == 0:
                states[layer] = captured[0][: result["x"].shape[1], 0]
            else:
                states[layer] = result["layer_results"][layer - 1][0][:, 0]
        return states

    return run, num_layers, normalize


def _transformers_runner(folder: str, device: str, dtype):
    from transformers import Wav2Vec2FeatureExtractor, Wav2Vec2Model
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    try:
        model = Wav2Vec2Model.from_pretrained(folder, dtype=dtype)
    except TypeError:  # transformers 4.x
        model = Wav2Vec2Model.from_pretrained(folder, torch_dtype=dtype)
    model = model.eval().to(device)
    extractor = Wav2Vec2FeatureExtractor.from_pretrained(folder)
    num_layers = model.config.num_hidden_layers

    def run(source, layers):
        # The feature extractor normalises (do_normalize) as users call it; the generic
        # loop's F.layer_norm is skipped for this runner (normalize=False below).
        values = extractor(source.float().cpu().numpy(), sampling_rate=SAMPLE_RATE, return_tensors="pt").input_values
        output = model(values.to(device=device, dtype=dtype), output_hidden_states=True)
        states = {}
        for layer in layers:
            if layer == "cnn":
                states[layer] = output.extract_features[0]
            elif layer == num_layers:
                states[layer] = output.last_hidden_state[0]  # 5.x hidden_states[L] lacks the final LayerNorm
            else:
                states[layer] = output.hidden_states[layer][0]
        return states

    return run, num_layers, False


# ---- orchestration ----------------------------------------------------------------------------

def machine_info(device: str) -> dict:
    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {"date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"), "host": platform.node(),
            "cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version()}
    versions = subprocess.run(
        [sys.executable, "-c", "import json, torch, lebench_cli; d = {'torch': torch.__version__, "
         "'torch_threads': torch.get_num_threads(), 'lebench': lebench_cli.__version__, "
         "'cuda': torch.cuda.is_available()};\n"
         "if d['cuda']: d['gpu'] = torch.cuda.get_device_name(0)\nprint(json.dumps(d))"],
        capture_output=True, text=True, env=quiet_env())
    try:
        info.update(json.loads(versions.stdout.strip().splitlines()[-1]))
    except (ValueError, IndexError):
        info["versions_error"] = versions.stderr[-300:]
    try:
        meminfo = Path("/proc/meminfo").read_text().split("\n")[0]
        info["memory_gb"] = round(int(meminfo.split()[1]) / 1024**2, 1)
    except (OSError, ValueError, IndexError):
        pass
    return info


def method_command(method: str, args, corpus: Path, checkpoint: Path, export: Path | None, out: Path,
                   result_json: Path, profile: Path | None) -> list:
    prefix = [sys.executable, "-m", "cProfile", "-o", str(profile)] if profile else []
    if method == "lebench":
        command = [args.lebench, "extract", str(corpus), "-o", str(out), "--model", str(checkpoint),
                   "--layers", args.layers, "--device", args.device, "--dtype", args.dtype, "--quiet"]
        if args.batch_seconds is not None:
            command += ["--batch-seconds", f"{args.batch_seconds:g}"]
        if args.workers is not None:
            command += ["--workers", str(args.workers)]
        command += args.lebench_args.split()
        return (prefix + command) if profile else command
    model = str(export) if method == "transformers" else str(checkpoint)
    return (prefix or [sys.executable]) + [
        __file__, "_naive", method, str(corpus), model, str(out), args.layers, args.device, args.naive_dtype,
        f"{args.naive_max_seconds:g}", args.naive_save, str(args.threads or 0), str(result_json)]


def run_method(method: str, args, corpus: Path, checkpoint: Path, export, run_dir: Path, tag: str) -> dict:
    out = run_dir / f"out-{method}-{tag}"
    shutil.rmtree(out, ignore_errors=True)
    result_json = run_dir / f"{method}-{tag}.json"
    profile = run_dir / f"{method}-{tag}.prof" if args.profile and tag != "probe" else None
    command = method_command(method, args, corpus, checkpoint, export, out, result_json, profile)
    measured = measure(command, run_dir / f"{method}-{tag}.log", quiet_env(args.threads),
                       gpu=args.device.startswith("cuda"))
    measured["output_bytes"] = folder_bytes(out)
    if result_json.exists():
        measured["inside"] = json.loads(result_json.read_text())
    if measured["exit_code"] != 0:
        tail = (run_dir / f"{method}-{tag}.log").read_text()[-1500:]
        print(f"warning: {method} exited with {measured['exit_code']}:\n{tail}", file=sys.stderr)
    if not args.keep_outputs:
        shutil.rmtree(out, ignore_errors=True)
    return measured


def summarise(rows: list, audio_seconds: float, flops: float):
    medians = {}
    for method in METHODS:
        speeds = [audio_seconds / r["wall_s"] for r in rows if r["method"] == method and r["exit_code"] == 0]
        if speeds:
            medians[method] = statistics.median(speeds)
    for row in rows:
        row["audio_s"] = audio_seconds
        row["cpu_s"] = row["user_cpu_s"] + row["system_cpu_s"]
        if row["exit_code"] != 0:  # a failed run has no throughput
            row.update(x_real_time=None, steady_x_real_time=None, tflops=None, write_mb_s=None,
                       vs_fairseq=None, vs_transformers=None)
            continue
        row["x_real_time"] = audio_seconds / row["wall_s"]
        startup = row.get("startup_s")
        row["steady_x_real_time"] = audio_seconds / (row["wall_s"] - startup) if startup and row["wall_s"] > startup else None
        row["tflops"] = flops / row["wall_s"] / 1e12
        row["write_mb_s"] = row["output_bytes"] / 1024**2 / row["wall_s"]
        for naive in NAIVE:
            row[f"vs_{naive}"] = row["x_real_time"] / medians[naive] if naive in medians else None
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
        ("CPU s", lambda r: f"{r['cpu_s']:.0f}"),
        ("peak RSS MB", lambda r: f"{r['peak_rss_mb']:.0f}"),
        ("tree PSS MB", lambda r: f"{r['peak_tree_pss_mb']:.0f}"),
        ("GPU MB", lambda r: "-" if r["peak_gpu_mb"] is None else f"{r['peak_gpu_mb']:.0f}"),
        ("TFLOP/s", lambda r: "-" if r["tflops"] is None else f"{r['tflops']:.3f}"),
        ("write MB/s", lambda r: "-" if r["write_mb_s"] is None else f"{r['write_mb_s']:.2f}"),
        ("exit", lambda r: str(r["exit_code"])),
    ]
    cells = [[name for name, _ in columns]] + [[value(row) for _, value in columns] for row in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(columns))]
    lines = ["  ".join(cell.rjust(widths[i]) if i else cell.ljust(widths[i]) for i, cell in enumerate(line))
             for line in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "_build-model":
        return worker_build_model(argv[1], Path(argv[2]), int(argv[3]))
    if argv and argv[0] == "_describe-model":
        return worker_describe_model(*argv[1:4])
    if argv and argv[0] == "_naive":
        method, corpus, model, out, layers, device, dtype, max_seconds, save, threads, result = argv[1:12]
        return worker_naive(method, corpus, model, out, layers, device, dtype, float(max_seconds), save,
                            int(threads), result)

    args = parse_args(argv)
    args.work = args.work.resolve()
    args.work.mkdir(parents=True, exist_ok=True)
    info = machine_info(args.device or "")
    args.device = args.device or ("cuda" if info.get("cuda") else "cpu")
    args.dtype = args.dtype or ("float16" if args.device.startswith("cuda") else "float32")
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
    probe = None if args.no_startup_probe else make_probe_corpus(args.work)
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
        "command": " ".join([Path(sys.executable).name, "benchmarks/bench_extract.py", *argv]),
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
        args.json_out.write_text(json.dumps({"machine": info, "settings": settings, "medians_x_real_time": medians,
                                             "runs": rows}, indent=2, default=str))
    return 1 if any(r["exit_code"] != 0 for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
