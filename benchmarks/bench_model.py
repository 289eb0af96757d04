#!/usr/bin/env python
"""How fast lebench's encoder runs alone: the ceiling the model puts on `lebench extract`.

bench_extract.py times whole runs and bench_pipeline.py everything but the model; this one
times the model alone, on batches of the shapes extract makes (N clips of about S seconds,
padded to the longest, at most 10% padding), with no decoding and no writing:

  compute   Encoder.forward, batch after batch, the device synchronised only at the end:
            the arithmetic and the kernel launches;
  readback  the same with each batch's states brought to the host the way extract does
            (readback.Readback, the next batch launched before the last one is read back):
            what the model side of extract can reach at best.

x RT = audio seconds / wall seconds. TFLOP/s counts useful FLOPs (bench_extract.py's formula,
padding not counted); "of peak" divides it by the rate of one large matrix product in the
same precision on the same device, measured at the start (the practical ceiling: no model
runs faster than its matrix products). GPU MB is the allocator's peak for that row (CUDA only).

Optional checks, for the GPU questions still open:
  --group-norm  base models (group-norm extractor): time the convolutional feature extractor
                with lebench's first GroupNorm, run on each utterance's valid frames (exact, a
                few small kernels per utterance), against fairseq's, one GroupNorm over the
                padded batch (inexact), on the same batches of 0.5 s and 2 s clips;
  --compile     the transformer layers under torch.compile(dynamic=True): speed, and the
                largest difference from the uncompiled states relative to their scale;
  --against-float32
                with --dtype float16/bfloat16: a float32 twin timed on the same batches (rows
                "compute float32", and "vs fp32" on the others), then every hidden state's
                error against float32 on --error-seconds of speech-like audio: the largest
                |difference| and its root mean square, both over the layer's largest |value|.

Run with the project's interpreter:  .venv/bin/python -m benchmarks.bench_model --help
"""

from __future__ import annotations

import argparse
import sys
import time
import types
from collections import deque
from pathlib import Path

import numpy as np

from .common import SAMPLE_RATE, add_json_out_argument, add_work_argument, brief_machine, text_table, write_json
from .models import prepare_model, useful_flops  # the same checkpoints and FLOPs as bench_extract


def seconds_list(text: str) -> list:
    """'60,120' -> [60.0, 120.0]; argparse turns the ValueError into a one-line usage error."""
    values = [float(part) for part in text.split(",")]
    if any(value <= 0 for value in values):
        raise ValueError(text)
    return values


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--arch", choices=["base", "large"], default="large",
                        help="random weights with the real architecture (default large), cached in --work")
    parser.add_argument("--model", type=Path, help="use this checkpoint instead of --arch")
    parser.add_argument("--device", help="cpu or cuda[:N] (default: cuda when available)")
    parser.add_argument("--dtype", choices=["float32", "float16", "bfloat16"],
                        help="compute precision (default: float16 on CUDA, float32 on CPU)")
    parser.add_argument("--layers", default="last;8,16,24;all",
                        help="layer specs, one row each, ';' between them (default last;8,16,24;all)")
    parser.add_argument("--batch-seconds", type=seconds_list, default=[120.0],
                        help="padded audio per batch, comma-separated (default 120)")
    parser.add_argument("--clip-seconds", type=seconds_list, default=[10.0],
                        help="utterance length, comma-separated (default 10)")
    parser.add_argument("--batches", type=int, default=20, help="timed batches per row (default 20)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed batches first (default 3)")
    parser.add_argument("--group-norm", action="store_true", help="time the per-utterance GroupNorm (base models)")
    parser.add_argument("--compile", action="store_true", help="also time the layers under torch.compile")
    parser.add_argument("--against-float32", action="store_true",
                        help="time a float32 twin too and print each layer's error against it")
    parser.add_argument("--error-seconds", type=float, default=20.0,
                        help="speech-like audio for --against-float32's errors (default 20)")
    parser.add_argument("--seed", type=int, default=0)
    add_work_argument(parser, help="checkpoint cache (default $TMPDIR/lebench-bench, shared with bench_extract)")
    add_json_out_argument(parser)
    args = parser.parse_args(argv)
    args.work = args.work.resolve()
    return args


def make_batch(batch_seconds: float, clip_seconds: float, rng, pin: bool):
    """(padded waveforms [B, longest], lengths [B]): clips of 0.9-1.0 x clip_seconds, so that
    padding stays under 10% as in extract's length batches."""
    import torch

    count = max(1, int(batch_seconds // clip_seconds))
    lengths = (rng.uniform(0.9, 1.0, count) * clip_seconds * SAMPLE_RATE).astype(np.int64)
    padded = torch.zeros((count, int(lengths.max())), dtype=torch.float32, pin_memory=pin)
    for row, length in enumerate(lengths):
        padded[row, :length] = torch.from_numpy(rng.standard_normal(length).astype(np.float32) * 0.1)
    return padded, torch.from_numpy(lengths)


def synchronize(device):
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_tflops(device, dtype, size: int) -> float:
    """The rate of one size x size x size matrix product in `dtype` on `device` (random data:
    zeros run faster), the median of a few after a warm-up."""
    import torch

    a, b = (torch.randn(size, size, device=device).to(dtype) for _ in range(2))
    timings = []
    for attempt in range(8):
        synchronize(device)
        started = time.perf_counter()
        a @ b
        synchronize(device)
        if attempt >= 3:
            timings.append(time.perf_counter() - started)
    return 2 * size**3 / float(np.median(timings)) / 1e12


def timed(device, run, batches: int, warmup: int) -> float:
    """Seconds for `batches` calls of run(), after `warmup` untimed ones, the device
    synchronised only before and after (launches queue up as they do in extract)."""
    for _ in range(warmup):
        run()
    synchronize(device)
    started = time.perf_counter()
    for _ in range(batches):
        run()
    synchronize(device)
    return time.perf_counter() - started


def time_compute(encoder, batch, layers, batches: int, warmup: int) -> float:
    return timed(encoder.device, lambda: encoder.forward(*batch, layers), batches, warmup)


def time_readback(encoder, batch, layers, batches: int, warmup: int) -> float:
    """extract's loop without decoding and writing: one batch in flight on a GPU."""
    from lebench_cli.pipeline.extract import batches_in_flight
    from lebench_cli.model.readback import Readback

    depth = batches_in_flight(encoder.device)

    def run(count):
        in_flight = deque()
        for _ in range(count):
            in_flight.append(Readback(encoder.forward(*batch, layers)))  # checked for NaN/inf, as extract does
            while len(in_flight) > depth:
                in_flight.popleft().result()
        while in_flight:
            in_flight.popleft().result()

    run(warmup)
    started = time.perf_counter()
    run(batches)
    return time.perf_counter() - started


def time_group_norm(encoder, batch, batches: int, warmup: int) -> dict:
    """Per-utterance GroupNorm (lebench) against one GroupNorm over the padded batch (fairseq)."""
    import torch

    padded, lengths = batch
    x = padded.to(encoder.device, dtype=encoder.dtype)
    timings = {}
    with torch.inference_mode():
        for name, run in (("per_utterance", lambda: encoder._conv_features(x, lengths)),
                          ("whole_batch", lambda: encoder.model.feature_extractor(x))):
            timings[name] = timed(encoder.device, run, batches, warmup) / batches * 1e3
    return {"utterances": len(lengths), "per_utterance_ms": timings["per_utterance"],
            "whole_batch_ms": timings["whole_batch"]}


def compiled_twin(checkpoint, device, dtype):
    """A second encoder of the same checkpoint, its transformer layers under torch.compile
    (a copy.deepcopy of the first fails on the weight-normed positional convolution)."""
    import torch

    from lebench_cli.model.encoder import Encoder

    twin = Encoder(checkpoint, device=device, dtype=dtype)
    layers = twin.model.encoder.layers
    for index in range(len(layers)):
        layers[index] = torch.compile(layers[index], dynamic=True)
    return twin


def largest_difference(encoder, twin, batch, layers) -> float:
    expected = encoder.forward(*batch, layers).states
    actual = twin.forward(*batch, layers).states
    return max(float((actual[k].float() - expected[k].float()).abs().max() / expected[k].float().abs().max())
               for k in expected)


def layer_errors(encoder, reference, work: Path, seconds: float, seed: int) -> dict:
    """{layer: (largest |diff| / largest |float32|, rms diff / largest |float32|)} for every
    hidden state of one utterance of speech-like audio, `encoder` against its float32 twin."""
    import soundfile
    import torch

    from lebench_cli.testing.audio import write_speechlike

    path = write_speechlike(work / f"speechlike-{seconds:g}s-{seed}.wav", seconds, np.random.default_rng(seed))
    waveform = torch.from_numpy(soundfile.read(path, dtype="float32")[0])[None]
    lengths = torch.tensor([waveform.shape[1]])
    layers = reference.layer_names
    with torch.inference_mode():
        low = encoder.forward(waveform, lengths, layers).states
        exact = reference.forward(waveform, lengths, layers).states
    errors = {}
    for layer in layers:
        difference = low[layer].float().cpu() - exact[layer].float().cpu()
        scale = float(exact[layer].float().abs().max())
        errors[str(layer)] = (float(difference.abs().max()) / scale, float(difference.pow(2).mean().sqrt()) / scale)
    return errors


def load_encoder(args) -> tuple:
    """(checkpoint, Encoder, description, device, dtype) for --model/--arch, --device and
    --dtype (defaults: cuda in float16 where there is one, else cpu in float32)."""
    import torch

    from lebench_cli.model.formats import load_local
    from lebench_cli.model.encoder import Encoder

    args.work.mkdir(parents=True, exist_ok=True)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = args.dtype or ("float16" if device.startswith("cuda") else "float32")
    settings = types.SimpleNamespace(model=args.model, work=args.work, arch=args.arch, seed=args.seed, methods=())
    checkpoint_path, _, description = prepare_model(settings)
    checkpoint = load_local(checkpoint_path)
    return checkpoint, Encoder(checkpoint, device=device, dtype=dtype), description, device, dtype


def main(argv=None):
    import torch

    from lebench_cli.layers import parse_layers

    args = parse_args(argv)
    checkpoint, encoder, description, device, dtype = load_encoder(args)
    on_gpu = encoder.device.type == "cuda"
    twin = compiled_twin(checkpoint, device, dtype) if args.compile else None
    reference = None
    if args.against_float32 and dtype != "float32":
        from lebench_cli.model.encoder import Encoder

        reference = Encoder(checkpoint, device=device, dtype="float32")
    rng = np.random.default_rng(args.seed)
    with torch.inference_mode():
        peak = matmul_tflops(encoder.device, encoder.dtype, 8192 if on_gpu else 2048)
    print(f"one {8192 if on_gpu else 2048}^3 matrix product in {dtype}: {peak:.2f} TFLOP/s", file=sys.stderr)
    print(f"{args.model or args.arch}: {description['layers']} layers x {description['width']}, {device} {dtype}, "
          f"torch {torch.__version__}" + (f", {torch.cuda.get_device_name(encoder.device)}" if on_gpu else ""),
          file=sys.stderr)
    rows = []
    for batch_seconds in args.batch_seconds:
        for clip_seconds in args.clip_seconds:
            batch = make_batch(batch_seconds, clip_seconds, rng, pin=on_gpu)
            audio = float(batch[1].sum()) / SAMPLE_RATE
            flops = useful_flops((batch[1].numpy() / SAMPLE_RATE).tolist(), description)
            for spec in [s.strip() for s in args.layers.split(";") if s.strip()]:
                layers = parse_layers(spec, checkpoint.layers)
                variants = [("compute", encoder, time_compute), ("readback", encoder, time_readback)]
                if twin is not None:
                    variants.append(("compiled", twin, time_compute))
                if reference is not None:
                    variants.append(("compute float32", reference, time_compute))
                for variant, model, timer in variants:
                    if on_gpu:
                        torch.cuda.reset_peak_memory_stats(encoder.device)
                    wall = timer(model, batch, layers, args.batches, args.warmup)
                    row = {"variant": variant, "layers": spec, "batch_s": batch_seconds, "clip_s": clip_seconds,
                           "utterances": len(batch[1]), "ms_per_batch": wall / args.batches * 1e3,
                           "x_rt": audio * args.batches / wall, "tflop_s": flops * args.batches / wall / 1e12}
                    row["of_peak"] = row["tflop_s"] / peak
                    if on_gpu:
                        row["gpu_mb"] = torch.cuda.max_memory_allocated(encoder.device) / 1e6
                    if variant == "compiled":
                        row["max_relative_difference"] = largest_difference(encoder, twin, batch, layers)
                    rows.append(row)
                    print(format_rows(rows[-1:]).splitlines()[-1], file=sys.stderr)
                if reference is not None:
                    float32_rate = rows[-1]["x_rt"]
                    for row in rows[-len(variants):-1]:
                        row["vs_float32"] = row["x_rt"] / float32_rate
    extra = {}
    if args.group_norm:
        if not encoder.group_norm:
            raise SystemExit("error: --group-norm needs a group-norm (base) model")
        for clip_seconds in (0.5, 2.0):
            batch = make_batch(args.batch_seconds[-1], clip_seconds, rng, pin=on_gpu)
            extra[f"group_norm_{clip_seconds:g}s"] = time_group_norm(encoder, batch, args.batches, args.warmup)
    errors = layer_errors(encoder, reference, args.work, args.error_seconds, args.seed) if reference else None
    print(format_rows(rows))
    if errors:
        print(f"error against float32, {args.error_seconds:g} s of speech-like audio (largest/rms, of each layer's largest |value|):")
        print("  " + ", ".join(f"{layer} {top:.3g}/{rms:.2g}" for layer, (top, rms) in errors.items()))
    for name, value in extra.items():
        print(f"{name}: {value['utterances']} utterances per batch, conv feature extractor per batch "
              f"{value['per_utterance_ms']:.2f} ms with lebench's per-utterance GroupNorm, "
              f"{value['whole_batch_ms']:.2f} ms with one GroupNorm over the padded batch")
    if args.json_out:
        machine = {**brief_machine(), "torch": torch.__version__, "device": device, "dtype": dtype,
                   "matmul_tflop_s": peak}
        if on_gpu:
            machine["gpu"] = torch.cuda.get_device_name(encoder.device)
        write_json(args.json_out, {"machine": machine, "args": {k: str(v) for k, v in vars(args).items()},
                                   "description": description, "rows": rows, **extra,
                                   **({"errors_vs_float32": errors} if errors else {})}, indent=1)


def format_rows(rows: list) -> str:
    header = ["variant", "layers", "batch s", "clip s", "utts", "ms/batch", "x RT", "vs fp32", "TFLOP/s", "of peak",
              "GPU MB", "max rel diff"]
    lines = []
    for row in rows:
        lines.append([row["variant"], row["layers"], f"{row['batch_s']:g}", f"{row['clip_s']:g}", str(row["utterances"]),
                      f"{row['ms_per_batch']:.1f}", f"{row['x_rt']:.0f}",
                      f"{row['vs_float32']:.2f}" if "vs_float32" in row else "-", f"{row['tflop_s']:.2f}",
                      f"{row['of_peak']:.0%}",
                      f"{row['gpu_mb']:.0f}" if "gpu_mb" in row else "-",
                      f"{row['max_relative_difference']:.2g}" if "max_relative_difference" in row else "-"])
    return text_table(header, lines)


if __name__ == "__main__":
    main()
