"""wav2vec2 checkpoints with random weights, built with fairseq's own classes and saved in
the real formats: fairseq (omegaconf cfg as LeBenchmark's releases, plain-dict cfg, or
argparse args as fairseq < 0.10), transformers folder, SpeechBrain folder. Tiny ones for
tests, real shapes for benchmarks and `make demo-offline`."""

from __future__ import annotations

import argparse
import logging
import os
import warnings
from pathlib import Path

TINY_CONV = "[(16, 10, 5)] + [(16, 3, 2)] * 4 + [(16, 2, 2)] * 2"
BASE_CONV = "[(512, 10, 5)] + [(512, 3, 2)] * 4 + [(512, 2, 2)] * 2"

FAMILIES = {
    # base-like: group-norm extractor, post-LN, no waveform normalisation
    "base": dict(extractor_mode="default", layer_norm_first=False, normalize=False, conv_bias=False),
    # large-like: layer-norm extractor, pre-LN, normalised waveforms
    "large": dict(extractor_mode="layer_norm", layer_norm_first=True, normalize=True, conv_bias=True),
}

# Real architectures (docs/models.md); everything else keeps fairseq's Wav2Vec2Config
# defaults, which are the base model's.
ARCHS = {
    "base": dict(encoder_layers=12, encoder_embed_dim=768, encoder_ffn_embed_dim=3072, encoder_attention_heads=12,
                 extractor_mode="default", layer_norm_first=False, conv_bias=False, final_dim=256,
                 normalize=False),
    "large": dict(encoder_layers=24, encoder_embed_dim=1024, encoder_ffn_embed_dim=4096, encoder_attention_heads=16,
                  extractor_mode="layer_norm", layer_norm_first=True, conv_bias=True, final_dim=768,
                  normalize=True),
}

# What a trainer leaves beside the weights; lebench must ignore it.
TRAINING = {
    "optimizer_history": [{"criterion_name": "Wav2vecCriterion", "optimizer_name": "FairseqAdam",
                           "lr_scheduler_state": {"best": 1.5}, "num_updates": 10}],
    "extra_state": {"epoch": 2},
    "last_optimizer_state": {"state": {}, "param_groups": []},
}


def build_model(seed: int = 0, perturb: float = 0.0, **config_options):
    """(model in eval mode, Wav2Vec2Config) of fairseq's Wav2Vec2Model with random weights;
    `perturb` adds that much noise to every weight."""
    import torch

    # fairseq logs and warns at import and build (tensorboardX, basicConfig); none of it
    # concerns a random model.
    logging.disable(logging.INFO)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from fairseq.models.wav2vec.wav2vec2 import Wav2Vec2Config, Wav2Vec2Model

            config = Wav2Vec2Config(**config_options)
            torch.manual_seed(seed)
            model = Wav2Vec2Model.build_model(config)
    finally:
        logging.disable(logging.NOTSET)
    if perturb:
        with torch.no_grad():
            for parameter in model.parameters():
                parameter.add_(torch.randn_like(parameter) * perturb)
    return model.eval(), config


def full_config(config, normalize: bool) -> dict:
    """The checkpoint's cfg: the model's config with its task, as fairseq's trainer saves it."""
    from omegaconf import OmegaConf

    model = OmegaConf.to_container(OmegaConf.structured(config), enum_to_str=True)
    model["_name"] = "wav2vec2"
    task = {"_name": "audio_pretraining", "data": "/corpus", "normalize": normalize, "sample_rate": 16000}
    return {"common": {"seed": 1, "fp16": True}, "model": model, "task": task}


def save_fairseq(path: Path, model, config, normalize: bool, style: str = "cfg", training: dict | None = TRAINING,
                 atomic: bool = False) -> Path:
    """style: "cfg" (omegaconf DictConfig, as the released checkpoints), "container"
    (plain dict cfg, fairseq >= 0.12), or "args" (argparse Namespace, fairseq < 0.10).
    `atomic`: written beside and renamed, so that a stopped run leaves no partial file."""
    import torch
    from omegaconf import OmegaConf

    cfg = full_config(config, normalize)
    state = {"args": None, "cfg": OmegaConf.create(cfg) if style == "cfg" else cfg, "model": model.state_dict(),
             **(training or {})}
    if style == "args":
        state["cfg"] = None
        state["args"] = argparse.Namespace(**cfg["model"], normalize=normalize, arch="wav2vec2",
                                           task="audio_pretraining")
    path.parent.mkdir(parents=True, exist_ok=True)
    target = path.with_suffix(".tmp") if atomic else path
    torch.save(state, target)
    if atomic:
        os.replace(target, path)
    return path


# ---- tiny models for tests ---------------------------------------------------------------------

def build_fairseq_model(family: str, seed: int = 0, encoder_layers: int = 3):
    """A tiny model of `family` (32 wide, 16-channel convolutions). Random init leaves norms
    at identity and biases at zero: every weight is perturbed so that a wrong key mapping
    cannot hide behind equal default values."""
    options = FAMILIES[family]
    return build_model(
        seed, perturb=0.1, extractor_mode=options["extractor_mode"], layer_norm_first=options["layer_norm_first"],
        conv_bias=options["conv_bias"], conv_feature_layers=TINY_CONV, encoder_layers=encoder_layers,
        encoder_embed_dim=32, encoder_ffn_embed_dim=64, encoder_attention_heads=4, conv_pos=16,
        conv_pos_groups=4, final_dim=16, latent_vars=8, latent_dim=16,
    )


def save_fairseq_checkpoint(path: Path, family: str, style: str = "cfg", seed: int = 0,
                            encoder_layers: int = 3) -> Path:
    """A tiny fairseq checkpoint of `family` in `style` (see save_fairseq)."""
    model, config = build_fairseq_model(family, seed, encoder_layers)
    return save_fairseq(path, model, config, FAMILIES[family]["normalize"], style)


def save_transformers_checkpoint(folder: Path, family: str, seed: int = 0) -> Path:
    """A tiny model of `family` as a transformers folder (config.json, model.safetensors)."""
    from lebench_cli.model.formats import load_local
    from lebench_cli.model.conversion import export_transformers

    export_transformers(load_local(save_fairseq_checkpoint(folder / "fairseq" / "checkpoint_best.pt", family,
                                                           seed=seed)), folder)
    return folder


def save_speechbrain_checkpoint(folder: Path, family: str, seed: int = 0) -> Path:
    """A tiny model of `family` as a SpeechBrain folder (wav2vec2.ckpt and its hyperparams)."""
    from lebench_cli.model.formats import load_local
    from lebench_cli.model.conversion import export_speechbrain

    export_speechbrain(load_local(save_fairseq_checkpoint(folder / "fairseq" / "checkpoint_best.pt", family,
                                                          seed=seed)), folder)
    return folder


def fairseq_reference(model, waveform, normalize: bool) -> dict:
    """fairseq's own forward on ONE utterance: {"cnn", 1..L} in the project's numbering."""
    import torch
    import torch.nn.functional as F

    with torch.no_grad():
        if normalize:
            waveform = F.layer_norm(waveform, waveform.shape)
        result = model.extract_features(waveform[None], None, mask=False)
    layers = len(model.encoder.layers)
    states = {"cnn": result["features"][0], layers: result["x"][0]}
    for index, (state, *_rest) in enumerate(result["layer_results"][:-1]):
        states[index + 1] = state[:, 0]
    return states


# ---- real shapes for benchmarks and the offline demo --------------------------------------------

def save_real_shape_checkpoint(path: Path, arch: str, seed: int = 0) -> Path:
    """`arch`'s real architecture (ARCHS) with random weights, written atomically."""
    options = dict(ARCHS[arch])
    normalize = options.pop("normalize")
    model, config = build_model(seed, conv_feature_layers=BASE_CONV, conv_pos=128, conv_pos_groups=16, **options)
    training = dict(TRAINING, extra_state={"epoch": 1})
    return save_fairseq(path, model, config, normalize, training=training, atomic=True)


def save_skinny_checkpoint(path: Path, arch: str, layers: int) -> Path:
    """`layers` blocks of `arch`'s kind but tiny widths and convolutions: for measuring
    everything but the model, where only the layer count and the conv strides matter."""
    large = arch == "large"
    model, config = build_model(
        0, conv_feature_layers=TINY_CONV, encoder_layers=layers, encoder_embed_dim=16, encoder_ffn_embed_dim=32,
        encoder_attention_heads=2, conv_pos=4, conv_pos_groups=2, final_dim=16,
        extractor_mode="layer_norm" if large else "default", layer_norm_first=large,
    )
    return save_fairseq(path, model, config, large, training=None)


def build_demo_model(layers: int, width: int, seed: int):
    """(model, config) base-like: the real convolutional front end (512 channels, 20 ms
    frames, group norm, post-LN, no waveform normalisation), `layers` blocks of `width`."""
    return build_model(
        seed, extractor_mode="default", layer_norm_first=False, conv_bias=False, conv_feature_layers=BASE_CONV,
        encoder_layers=layers, encoder_embed_dim=width, encoder_ffn_embed_dim=4 * width,
        encoder_attention_heads=max(1, width // 64), final_dim=min(256, width),
    )


DEMO_TRAINING = {
    "optimizer_history": [{"criterion_name": "Wav2vecCriterion", "optimizer_name": "FairseqAdam",
                           "lr_scheduler_state": {"best": 0.0}, "num_updates": 0}],
    "extra_state": {"epoch": 1},
    "last_optimizer_state": None,
}


def save_demo_checkpoint(path: Path, model, config) -> Path:
    """As LeBenchmark's base checkpoints are saved (`checkpoint_best.pt`, an omegaconf cfg)."""
    return save_fairseq(path, model, config, normalize=False, training=DEMO_TRAINING)
