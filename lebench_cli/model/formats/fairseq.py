"""fairseq checkpoints (`checkpoint_best.pt`, cfg and args styles), the reference format."""

from __future__ import annotations

from pathlib import Path

from ...errors import CheckpointError
from ..catalog import FAIRSEQ
from ..checkpoint import Checkpoint
from ..conversion import import_fairseq_wav2vec2, parse_conv_layers
from ..safe_loading import load_torch_file


def load_fairseq(path: Path, trust: bool = False) -> Checkpoint:
    state = load_torch_file(path, trust=trust)
    if not isinstance(state, dict) or "model" not in state:
        raise CheckpointError(f"{path}: not a fairseq checkpoint (no 'model' entry)")
    model_cfg, task_cfg = _fairseq_configs(path, state)
    name = model_cfg.get("_name") or model_cfg.get("arch")
    if name not in (None, "wav2vec2"):
        raise CheckpointError(f"{path}: a fairseq '{name}' model, not a pre-trained wav2vec2 model")
    config = sanitize_fairseq_config(path, model_cfg)
    normalize = bool(task_cfg.get("normalize", False))
    weights = {k: v for k, v in state["model"].items()}
    return Checkpoint(FAIRSEQ, path, config, normalize, weights)


def _fairseq_configs(path, state) -> tuple[dict, dict]:
    cfg = state.get("cfg")
    if cfg is not None:
        cfg = _to_plain(cfg)
        if not isinstance(cfg.get("model"), dict):
            raise CheckpointError(f"{path}: fairseq checkpoint without a model config")
        return cfg["model"], cfg.get("task") or {}
    args = state.get("args")
    if args is not None:
        values = dict(vars(args))
        return values, values
    raise CheckpointError(f"{path}: fairseq checkpoint with neither 'cfg' nor 'args'")


def _to_plain(value):
    try:
        from omegaconf import OmegaConf

        if OmegaConf.is_config(value):
            return OmegaConf.to_container(value, resolve=False)
    except ImportError:
        pass
    return value


def sanitize_fairseq_config(path, model_cfg: dict) -> dict:
    """Keep the Wav2Vec2Config fields fairseq knows, with conv layers as a plain literal.

    fairseq eval()s `conv_feature_layers`; a checkpoint must not be able to run code
    through it, so it is parsed here with a tiny arithmetic-only evaluator."""
    from dataclasses import fields

    known = {f.name for f in fields(import_fairseq_wav2vec2().Wav2Vec2Config)}
    config = {k: v for k, v in model_cfg.items() if k in known}
    layer_type = config.get("layer_type", "transformer")
    if layer_type != "transformer":
        raise CheckpointError(f"{path}: layer_type '{layer_type}' is not supported (only 'transformer')")
    config["conv_feature_layers"] = repr(parse_conv_layers(path, config.get("conv_feature_layers")))
    for key in ("encoder_layerdrop", "dropout", "attention_dropout", "activation_dropout",
                "dropout_input", "dropout_features", "mask_prob", "mask_channel_prob"):
        config.pop(key, None)  # training-only: the encoder runs in eval mode anyway
    return config
