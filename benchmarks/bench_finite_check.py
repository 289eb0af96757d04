#!/usr/bin/env python
"""What the NaN/inf check of every batch costs, against the model's own time.

extract checks each batch's states on the device before they are stored
(readback.finite_per_utterance: each utterance's valid frames, every stored layer and the
conv features). This times, on batches of the shapes extract makes (bench_model.py's):

  forward     Encoder.forward on the batch, the device synchronised after each;
  check       finite_per_utterance on that batch's states, one [layers, batch] flag;
  whole flag  the check it replaced, one flag for the whole batch
              (torch.isfinite(value).all() per layer), for comparison.

"check / forward" is the share of the model's time the check adds. Medians of --repeats.

Run from the repository root:  .venv/bin/python -m benchmarks.bench_finite_check --help
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

from .bench_model import load_encoder, make_batch, seconds_list, synchronize  # the same batches
from .common import SAMPLE_RATE, add_json_out_argument, add_work_argument, write_json


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--arch", choices=["base", "large"], default="large",
                        help="random weights with the real architecture (default large), cached in --work")
    parser.add_argument("--model", type=Path, help="use this checkpoint instead of --arch")
    parser.add_argument("--device", help="cpu or cuda[:N] (default: cuda when available)")
    parser.add_argument("--dtype", choices=["float32", "float16", "bfloat16"],
                        help="compute precision (default: float16 on CUDA, float32 on CPU)")
    parser.add_argument("--layers", default="last;all,cnn", help="layer specs, one row each, ';' between them")
    parser.add_argument("--batch-seconds", type=seconds_list, default=[20.0],
                        help="padded audio per batch (default 20, extract's CPU default)")
    parser.add_argument("--clip-seconds", type=seconds_list, default=[5.0], help="utterance length (default 5)")
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats of each (default 5), after one warm-up")
    parser.add_argument("--seed", type=int, default=0)
    add_work_argument(parser, help="checkpoint cache (default $TMPDIR/lebench-bench, shared with bench_extract)")
    add_json_out_argument(parser)
    args = parser.parse_args(argv)
    args.work = args.work.resolve()
    return args


def median_seconds(device, run, repeats: int) -> float:
    run()
    timings = []
    for _ in range(repeats):
        synchronize(device)
        started = time.perf_counter()
        run()
        synchronize(device)
        timings.append(time.perf_counter() - started)
    return float(np.median(timings))


def main(argv=None):
    import torch

    from lebench_cli.model.encoder import CNN
    from lebench_cli.layers import parse_layers
    from lebench_cli.model.readback import finite_per_utterance

    args = parse_args(argv)
    checkpoint, encoder, description, device, dtype = load_encoder(args)
    rng = np.random.default_rng(args.seed)
    print(f"{args.model or args.arch}: {description['layers']} layers x {description['width']}, {device} {dtype}, "
          f"torch {torch.__version__}, {os.cpu_count()} CPUs", file=sys.stderr)
    rows = []
    with torch.inference_mode():
        for batch_seconds in args.batch_seconds:
            for clip_seconds in args.clip_seconds:
                padded, lengths = make_batch(batch_seconds, clip_seconds, rng, pin=encoder.device.type == "cuda")
                for spec in [s.strip() for s in args.layers.split(";") if s.strip()]:
                    layers = parse_layers(spec, checkpoint.layers)
                    batch = encoder.forward(padded, lengths, layers)
                    checked = [batch.conv_features] + [v for k, v in batch.states.items() if k != CNN]
                    forward = median_seconds(encoder.device, lambda: encoder.forward(padded, lengths, layers),
                                             args.repeats)
                    # Bound as defaults: pyflakes sees the del below as reaching into the lambdas.
                    check = median_seconds(encoder.device, lambda checked=checked, batch=batch:
                                           finite_per_utterance(checked, batch.frames), args.repeats)
                    whole = median_seconds(encoder.device, lambda batch=batch: torch.stack(
                        [torch.isfinite(v).all() for v in batch.states.values()]).all(), args.repeats)
                    rows.append({"layers": spec, "batch_s": batch_seconds, "clip_s": clip_seconds,
                                 "utterances": len(lengths), "checked_tensors": len(checked),
                                 "forward_ms": forward * 1e3, "check_ms": check * 1e3, "whole_flag_ms": whole * 1e3,
                                 "check_share": check / forward})
                    del batch, checked
    header = f"{'layers':>10} {'batch s':>8} {'clip s':>7} {'utts':>5} {'forward ms':>11} {'check ms':>9} " \
             f"{'whole flag ms':>14} {'check / forward':>16}"
    print(header)
    for row in rows:
        print(f"{row['layers']:>10} {row['batch_s']:>8g} {row['clip_s']:>7g} {row['utterances']:>5} "
              f"{row['forward_ms']:>11.1f} {row['check_ms']:>9.2f} {row['whole_flag_ms']:>14.2f} "
              f"{row['check_share']:>15.2%}")
    report = {"machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
              "torch": torch.__version__, "device": device, "dtype": dtype,
              "model": str(args.model or args.arch), "audio_s_per_batch": float(lengths.sum()) / SAMPLE_RATE,
              "rows": rows}
    if args.json_out:
        write_json(args.json_out, report, indent=2)


if __name__ == "__main__":
    main()
