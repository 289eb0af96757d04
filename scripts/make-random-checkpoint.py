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
import logging
import warnings
from pathlib import Path

BASE_CONV = "[(512, 10, 5)] + [(512, 3, 2)] * 4 + [(512, 2, 2)] * 2"


def build(layers: int, width: int, seed: int):
    import torch

    # fairseq logs at import (tensorboardX, basicConfig); none of it concerns this model.
    logging.disable(logging.INFO)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from fairseq.models.wav2vec.wav2vec2 import Wav2Vec2Config, Wav2Vec2Model

        config = Wav2Vec2Config(
            extractor_mode="default", layer_norm_first=False, conv_bias=False, conv_feature_layers=BASE_CONV,
            encoder_layers=layers, encoder_embed_dim=width, encoder_ffn_embed_dim=4 * width,
            encoder_attention_heads=max(1, width // 64), final_dim=min(256, width),
        )
        torch.manual_seed(seed)
        model = Wav2Vec2Model.build_model(config)
    logging.disable(logging.NOTSET)
    return model, config


def save(model, config, path: Path) -> None:
    import torch
    from omegaconf import OmegaConf

    model_cfg = OmegaConf.to_container(OmegaConf.structured(config), enum_to_str=True)
    model_cfg["_name"] = "wav2vec2"
    cfg = {
        "common": {"seed": 1, "fp16": True},
        "model": model_cfg,
        "task": {"_name": "audio_pretraining", "data": "/corpus", "normalize": False, "sample_rate": 16000},
    }
    state = {
        "args": None,
        "cfg": OmegaConf.create(cfg),
        "model": model.state_dict(),
        "optimizer_history": [{"criterion_name": "Wav2vecCriterion", "optimizer_name": "FairseqAdam",
                               "lr_scheduler_state": {"best": 0.0}, "num_updates": 0}],
        "extra_state": {"epoch": 1},
        "last_optimizer_state": None,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("output", type=Path, help="the checkpoint file to write, e.g. random-model/checkpoint_best.pt")
    parser.add_argument("--layers", type=int, default=2, help="transformer blocks (real base: 12; default 2)")
    parser.add_argument("--width", type=int, default=256, help="transformer width (real base: 768; default 256)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    args = parser.parse_args()
    if args.layers < 1 or args.width < 64 or args.width % 64:
        parser.error("--layers must be >= 1 and --width a multiple of 64")
    model, config = build(args.layers, args.width, args.seed)
    save(model, config, args.output)
    parameters = sum(p.numel() for p in model.parameters())
    print(f"{args.output}: random wav2vec2 base-like checkpoint, {args.layers} blocks of width {args.width}, "
          f"{parameters / 1e6:.1f}M parameters; its features mean nothing (a dry run only)")


if __name__ == "__main__":
    main()
