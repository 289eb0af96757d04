"""transformers model folders: `config.json`, `preprocessor_config.json` and the weights,
mapped to fairseq's names (`conversion`)."""

from __future__ import annotations

import json
from pathlib import Path

from ...errors import CheckpointError
from ..catalog import TRANSFORMERS
from ..checkpoint import Checkpoint
from ..conversion import _one_line
from ..safe_loading import load_torch_file
from .files import TRANSFORMERS_WEIGHT_NAMES, first_existing


def load_transformers_folder(folder: Path, weights: Path | None = None) -> Checkpoint:
    from ..conversion import fairseq_config_from_transformers, fairseq_state_from_transformers, layer_norm_conv_keys

    weights = weights or first_existing(folder, TRANSFORMERS_WEIGHT_NAMES)
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
