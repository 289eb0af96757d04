"""Tiny random wav2vec2 checkpoints built with fairseq's own classes, saved in the real
formats (fairseq cfg-style and args-style, transformers folder, SpeechBrain folder)."""

from __future__ import annotations

import argparse
import warnings
from pathlib import Path

import torch

CONV = "[(16, 10, 5)] + [(16, 3, 2)] * 4 + [(16, 2, 2)] * 2"

FAMILIES = {
    # base-like: group-norm extractor, post-LN, no waveform normalisation
    "base": dict(extractor_mode="default", layer_norm_first=False, normalize=False, conv_bias=False),
    # large-like: layer-norm extractor, pre-LN, normalised waveforms
    "large": dict(extractor_mode="layer_norm", layer_norm_first=True, normalize=True, conv_bias=True),
}


def build_fairseq_model(family: str, seed: int = 0, encoder_layers: int = 3):
    from fairseq.models.wav2vec.wav2vec2 import Wav2Vec2Config, Wav2Vec2Model

    options = FAMILIES[family]
    config = Wav2Vec2Config(
        extractor_mode=options["extractor_mode"], layer_norm_first=options["layer_norm_first"],
        conv_bias=options["conv_bias"], conv_feature_layers=CONV, encoder_layers=encoder_layers,
        encoder_embed_dim=32, encoder_ffn_embed_dim=64, encoder_attention_heads=4, conv_pos=16,
        conv_pos_groups=4, final_dim=16, latent_vars=8, latent_dim=16,
    )
    torch.manual_seed(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = Wav2Vec2Model.build_model(config)
    # Random init leaves norms at identity and biases at zero: perturb every weight so that
    # a wrong key mapping cannot hide behind equal default values.
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.1)
    return model.eval(), config


def full_config(config, normalize: bool) -> dict:
    from omegaconf import OmegaConf

    model = OmegaConf.to_container(OmegaConf.structured(config), enum_to_str=True)
    model["_name"] = "wav2vec2"
    task = {"_name": "audio_pretraining", "data": "/corpus", "normalize": normalize, "sample_rate": 16000}
    return {"common": {"seed": 1, "fp16": True}, "model": model, "task": task}


def save_fairseq_checkpoint(path: Path, family: str, style: str = "cfg", seed: int = 0,
                            encoder_layers: int = 3) -> Path:
    """style: "cfg" (omegaconf DictConfig, as the released checkpoints), "container"
    (plain dict cfg, fairseq >= 0.12), or "args" (argparse Namespace, fairseq < 0.10)."""
    from omegaconf import OmegaConf

    model, config = build_fairseq_model(family, seed, encoder_layers)
    normalize = FAMILIES[family]["normalize"]
    cfg = full_config(config, normalize)
    state = {
        "args": None,
        "cfg": OmegaConf.create(cfg) if style == "cfg" else cfg,
        "model": model.state_dict(),
        "optimizer_history": [{"criterion_name": "Wav2vecCriterion", "optimizer_name": "FairseqAdam",
                               "lr_scheduler_state": {"best": 1.5}, "num_updates": 10}],
        "extra_state": {"epoch": 2},
        "last_optimizer_state": {"state": {}, "param_groups": []},
    }
    if style == "args":
        state["cfg"] = None
        state["args"] = argparse.Namespace(**cfg["model"], normalize=normalize, arch="wav2vec2",
                                           task="audio_pretraining")
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)
    return path


def fairseq_reference(model, waveform: torch.Tensor, normalize: bool) -> dict:
    """fairseq's own forward on ONE utterance: {"cnn", 1..L} in the project's numbering."""
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
