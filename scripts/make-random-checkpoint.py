#!/usr/bin/env python3
"""Write a wav2vec2 checkpoint with RANDOM weights, for trying lebench without network.

Its features mean nothing: it only lets `lebench extract` (and `make demo`) run end to end
offline. It is built with fairseq's own classes and saved as LeBenchmark's base checkpoints
are (`checkpoint_best.pt`, an omegaconf `cfg`): the real convolutional front end (512
channels, 20 ms frames, group norm, post-LN, no waveform normalisation), with fewer and
narrower transformer blocks unless --layers 12 --width 768 asks for the full base shape.

    python scripts/make-random-checkpoint.py random-model/checkpoint_best.pt
"""

from __future__ import annotations

import argparse
from pathlib import Path

from lebench_cli.testing.checkpoints import build_demo_model, save_demo_checkpoint


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("output", type=Path, help="the checkpoint file to write, e.g. random-model/checkpoint_best.pt")
    parser.add_argument("--layers", type=int, default=2, help="transformer blocks (real base: 12; default 2)")
    parser.add_argument("--width", type=int, default=256, help="transformer width (real base: 768; default 256)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    args = parser.parse_args()
    if args.layers < 1 or args.width < 64 or args.width % 64:
        parser.error("--layers must be >= 1 and --width a multiple of 64")
    model, config = build_demo_model(args.layers, args.width, args.seed)
    save_demo_checkpoint(args.output, model, config)
    parameters = sum(p.numel() for p in model.parameters())
    print(f"{args.output}: random wav2vec2 base-like checkpoint, {args.layers} blocks of width {args.width}, "
          f"{parameters / 1e6:.1f}M parameters; its features mean nothing (a dry run only)")


if __name__ == "__main__":
    main()
