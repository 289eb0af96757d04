"""Reading checkpoints in every released format into one description: fairseq-named weights
plus a fairseq `Wav2Vec2Config` dict and the waveform normalisation flag.

fairseq checkpoints are unpickled weights-only, with an explicit allowlist of the config
classes released checkpoints contain: a checkpoint is data, and must not be able to run code.
"""

from __future__ import annotations

import hashlib
import json
import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import CheckpointError, UnsafeCheckpointError
from .catalog import FAIRSEQ, SPEECHBRAIN, TRANSFORMERS
from .conversion import _one_line, import_fairseq_wav2vec2, parse_conv_layers

FAIRSEQ_CHECKPOINT_NAMES = ("checkpoint_best.pt", "checkpoint_last.pt")
TRANSFORMERS_WEIGHT_NAMES = ("model.safetensors", "pytorch_model.bin")
SPEECHBRAIN_WEIGHT_NAMES = ("wav2vec2.ckpt",)

# Globals that released fairseq checkpoints need besides tensors: omegaconf containers and
# their metadata (cfg-style checkpoints), argparse.Namespace (args-style, fairseq < 0.10),
# and plain builtin containers. Nothing here can run code when unpickled.
ALLOWED_GLOBALS = {
    "argparse.Namespace",
    "builtins.bool",
    "builtins.dict",
    "builtins.float",
    "builtins.int",
    "builtins.list",
    "builtins.set",
    "builtins.str",
    "builtins.tuple",
    "collections.OrderedDict",
    "collections.defaultdict",
    "omegaconf.base.ContainerMetadata",
    "omegaconf.base.Metadata",
    "omegaconf.dictconfig.DictConfig",
    "omegaconf.listconfig.ListConfig",
    "omegaconf.nodes.AnyNode",
    "omegaconf.nodes.BooleanNode",
    "omegaconf.nodes.FloatNode",
    "omegaconf.nodes.IntegerNode",
    "omegaconf.nodes.StringNode",
    "typing.Any",
}


@dataclass
class Checkpoint:
    """A wav2vec2 checkpoint in fairseq terms, whatever format it came in."""

    format: str
    weights_path: Path
    model_config: dict  # fairseq Wav2Vec2Config fields
    normalize: bool
    state_dict: dict = field(repr=False)
    source: str = ""  # what the user named: hub id or path
    hub_id: str | None = None
    ignored_keys: tuple[str, ...] = ()  # pre-training-only weights not needed for features

    @property
    def layers(self) -> int:
        return int(self.model_config["encoder_layers"])

    @property
    def width(self) -> int:
        return int(self.model_config["encoder_embed_dim"])


def _resolve_global(name: str):
    module_name, _, attr = name.rpartition(".")
    module = __import__(module_name, fromlist=[attr])
    return getattr(module, attr)


def _allowed_global_objects(path, names=ALLOWED_GLOBALS) -> list:
    """The allowlisted classes NAMES, imported; a missing package (omegaconf, which fairseq
    checkpoints' configs are made of) is named, not blamed on the file."""
    objects = []
    for name in sorted(names):
        try:
            objects.append(_resolve_global(name))
        except ImportError as error:
            package = (error.name or name).split(".")[0]
            raise CheckpointError(f"{path}: reading it needs the {package} package, which does not import "
                                  f"({_one_line(error)}): see docs/install.md") from None
    return objects


def load_torch_file(path: Path, trust: bool = False) -> dict:
    """torch.load a checkpoint without letting it run code (unless `trust`)."""
    import pickle

    import torch

    if trust:
        try:
            return torch.load(path, map_location="cpu", weights_only=False)
        except Exception as error:  # any failure of an opaque pickle is the file's fault
            raise CheckpointError(f"{path}: cannot be loaded: {_one_line(error)}") from None
    if zipfile.is_zipfile(path):
        try:
            needed = torch.serialization.get_unsafe_globals_in_checkpoint(path)
        except Exception as error:
            raise CheckpointError(f"{path}: not a readable PyTorch checkpoint: {_one_line(error)}") from None
        refused = sorted(set(needed) - ALLOWED_GLOBALS)
        if refused:
            raise UnsafeCheckpointError(_unsafe_message(path, refused[0]))
        allowed = _allowed_global_objects(path, set(needed))
    else:
        allowed = _allowed_global_objects(path)
    try:
        with torch.serialization.safe_globals(allowed):
            return torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    except pickle.UnpicklingError as error:
        raise UnsafeCheckpointError(_unsafe_message(path, _offending_global(error))) from None
    except Exception as error:
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint: {_one_line(error)}") from None


def _offending_global(error: Exception) -> str:
    text = str(error)
    marker = "GLOBAL "
    if marker in text:
        return text.split(marker, 1)[1].split()[0]
    return _one_line(error)


def _unsafe_message(path, name: str) -> str:
    return (
        f"{path}: refused to load: it needs '{name}', which is not in the allowlist of "
        "checkpoint config classes (loading it could run code); pass --trust-checkpoint "
        "only if you trust this file"
    )


# ---- fairseq ---------------------------------------------------------------------------

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


# ---- transformers and SpeechBrain -----------------------------------------------------

def load_transformers_folder(folder: Path, weights: Path | None = None) -> Checkpoint:
    from .conversion import fairseq_config_from_transformers, fairseq_state_from_transformers, layer_norm_conv_keys

    weights = weights or _first_existing(folder, TRANSFORMERS_WEIGHT_NAMES)
    if weights is None:
        raise CheckpointError(f"{folder}: no {' or '.join(TRANSFORMERS_WEIGHT_NAMES)}")
    config = _read_json(folder / "config.json")
    state = _load_plain_state_dict(weights)
    model_config = fairseq_config_from_transformers(weights, config)
    mapped, ignored = fairseq_state_from_transformers(weights, state)
    if model_config["extractor_mode"] == "layer_norm":
        mapped = layer_norm_conv_keys(mapped)
    return Checkpoint(
        TRANSFORMERS, weights, model_config, _read_do_normalize(folder, config), mapped,
        ignored_keys=ignored,
    )


def load_speechbrain_folder(folder: Path, weights: Path | None = None) -> Checkpoint:
    checkpoint = load_transformers_folder(folder, weights or folder / SPEECHBRAIN_WEIGHT_NAMES[0])
    checkpoint.format = SPEECHBRAIN
    return checkpoint


def _first_existing(folder: Path, names) -> Path | None:
    return next((folder / n for n in names if (folder / n).is_file()), None)


def _read_json(path: Path) -> dict:
    if not path.is_file():
        raise CheckpointError(f"{path}: missing (a transformers-style model needs its config.json)")
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CheckpointError(f"{path}: not valid JSON: {_one_line(error)}") from None
    if not isinstance(value, dict):
        raise CheckpointError(f"{path}: expected a JSON object")
    return value


def _read_do_normalize(folder: Path, config: dict) -> bool:
    preprocessor = folder / "preprocessor_config.json"
    if preprocessor.is_file():
        return bool(_read_json(preprocessor).get("do_normalize", False))
    # Without a preprocessor config, the architecture decides as in LeBenchmark's training:
    # layer-norm (large) models normalised their input, group-norm (base) ones did not.
    return config.get("feat_extract_norm") == "layer"


def _load_plain_state_dict(path: Path) -> dict:
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except (SafetensorError, OSError, ValueError) as error:
            raise CheckpointError(f"{path}: not a readable safetensors file: {_one_line(error)}") from None
    state = load_torch_file(path)
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: expected a state dict of tensors")
    return state


# ---- detection ------------------------------------------------------------------------

def detect_format(path: Path) -> tuple[str, Path, Path]:
    """(format, weights file, folder) for a local checkpoint file or model folder."""
    if path.is_dir():
        fairseq = _first_existing(path, FAIRSEQ_CHECKPOINT_NAMES)
        if fairseq is not None:  # the reference: conversions have been wrong before
            return FAIRSEQ, fairseq, path
        weights = _first_existing(path, TRANSFORMERS_WEIGHT_NAMES)
        if weights is not None:
            return TRANSFORMERS, weights, path
        weights = _first_existing(path, SPEECHBRAIN_WEIGHT_NAMES)
        if weights is not None:
            return SPEECHBRAIN, weights, path
        raise CheckpointError(
            f"{path}: no checkpoint found (looked for {', '.join(FAIRSEQ_CHECKPOINT_NAMES + TRANSFORMERS_WEIGHT_NAMES + SPEECHBRAIN_WEIGHT_NAMES)})"
        )
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file or folder")
    if path.suffix in (".safetensors", ".bin"):
        return TRANSFORMERS, path, path.parent
    if path.suffix == ".ckpt":
        return SPEECHBRAIN, path, path.parent
    return FAIRSEQ, path, path.parent


def load_local(path: Path, trust: bool = False) -> Checkpoint:
    format, weights, folder = detect_format(path)
    if format == FAIRSEQ:
        checkpoint = load_fairseq(weights, trust=trust)
    elif format == TRANSFORMERS:
        checkpoint = load_transformers_folder(folder, weights)
    else:
        checkpoint = load_speechbrain_folder(folder, weights)
    checkpoint.source = str(path)
    return checkpoint


def sha256_file(path: Path, chunk_size: int = 8 * 1024 * 1024) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def file_size(path: Path) -> int:
    return os.stat(path).st_size
