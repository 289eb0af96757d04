"""Weight and config maps between transformers' Wav2Vec2 names and fairseq's.

Every key is accounted for: a weight that maps nowhere, or a needed weight that is absent,
is an error, never a silent skip (a partial load would give random features)."""

from __future__ import annotations

import ast
import re

from ..errors import CheckpointError

# (fairseq pattern, transformers pattern); {i} is a layer index.
_RULES = [
    ("feature_extractor.conv_layers.{i}.0.weight", "feature_extractor.conv_layers.{i}.conv.weight"),
    ("feature_extractor.conv_layers.{i}.0.bias", "feature_extractor.conv_layers.{i}.conv.bias"),
    ("feature_extractor.conv_layers.{i}.2.weight", "feature_extractor.conv_layers.{i}.layer_norm.weight"),
    ("feature_extractor.conv_layers.{i}.2.bias", "feature_extractor.conv_layers.{i}.layer_norm.bias"),
    ("feature_extractor.conv_layers.{i}.2.1.weight", "feature_extractor.conv_layers.{i}.layer_norm.weight"),
    ("feature_extractor.conv_layers.{i}.2.1.bias", "feature_extractor.conv_layers.{i}.layer_norm.bias"),
    ("layer_norm.weight", "feature_projection.layer_norm.weight"),
    ("layer_norm.bias", "feature_projection.layer_norm.bias"),
    ("post_extract_proj.weight", "feature_projection.projection.weight"),
    ("post_extract_proj.bias", "feature_projection.projection.bias"),
    ("encoder.pos_conv.0.bias", "encoder.pos_conv_embed.conv.bias"),
    ("encoder.pos_conv.0.weight_g", "encoder.pos_conv_embed.conv.parametrizations.weight.original0"),
    ("encoder.pos_conv.0.weight_v", "encoder.pos_conv_embed.conv.parametrizations.weight.original1"),
    ("encoder.layer_norm.weight", "encoder.layer_norm.weight"),
    ("encoder.layer_norm.bias", "encoder.layer_norm.bias"),
]
for _name in ("q_proj", "k_proj", "v_proj", "out_proj"):
    for _p in ("weight", "bias"):
        _RULES.append((f"encoder.layers.{{i}}.self_attn.{_name}.{_p}", f"encoder.layers.{{i}}.attention.{_name}.{_p}"))
for _fairseq, _hf in (
    ("self_attn_layer_norm", "layer_norm"),
    ("fc1", "feed_forward.intermediate_dense"),
    ("fc2", "feed_forward.output_dense"),
    ("final_layer_norm", "final_layer_norm"),
):
    for _p in ("weight", "bias"):
        _RULES.append((f"encoder.layers.{{i}}.{_fairseq}.{_p}", f"encoder.layers.{{i}}.{_hf}.{_p}"))

# Older transformers versions saved the weight-normed positional conv under these names.
_LEGACY_TRANSFORMERS_NAMES = {
    "encoder.pos_conv_embed.conv.weight_g": "encoder.pos_conv_embed.conv.parametrizations.weight.original0",
    "encoder.pos_conv_embed.conv.weight_v": "encoder.pos_conv_embed.conv.parametrizations.weight.original1",
}

# Pre-training-only weights: they take no part in computing hidden states.
FAIRSEQ_PRETRAINING_PREFIXES = ("mask_emb", "quantizer.", "project_q.", "final_proj.", "target_glu.",
                                "input_quantizer.", "project_inp.")
TRANSFORMERS_PRETRAINING_PREFIXES = ("masked_spec_embed", "quantizer.", "project_q.", "project_hid.")
# Wrappers: Wav2Vec2ForPreTraining ("wav2vec2."), SpeechBrain ("model."), DataParallel ("module.").
_WRAPPER_PREFIXES = ("model.", "wav2vec2.", "module.")


def _compile(pattern: str) -> re.Pattern:
    return re.compile("^" + re.escape(pattern).replace(r"\{i\}", r"(\d+)") + "$")


_TO_FAIRSEQ = [(_compile(hf), fs) for fs, hf in _RULES]
_TO_TRANSFORMERS = [(_compile(fs), hf) for fs, hf in _RULES]


def _rename(key: str, rules) -> str | None:
    for pattern, target in rules:
        match = pattern.match(key)
        if match:
            return target.replace("{i}", match.group(1)) if match.groups() else target
    return None


def is_pretraining_only(fairseq_key: str) -> bool:
    return fairseq_key.startswith(FAIRSEQ_PRETRAINING_PREFIXES)


def strip_wrapper_prefixes(key: str) -> str:
    changed = True
    while changed:
        changed = False
        for prefix in _WRAPPER_PREFIXES:
            if key.startswith(prefix):
                key, changed = key[len(prefix):], True
    return key


def fairseq_state_from_transformers(path, state: dict) -> tuple[dict, tuple[str, ...]]:
    """Rename transformers (or SpeechBrain) weights to fairseq names.

    Returns (fairseq state dict, pre-training-only keys that were left out). Layer-norm
    extractors use `conv_layers.i.2.1`, group-norm ones `conv_layers.0.2`: both are
    produced here and the encoder's strict load tells which one the config wants."""
    mapped, ignored, unexpected = {}, [], []
    for original_key, tensor in state.items():
        key = strip_wrapper_prefixes(original_key)
        key = _LEGACY_TRANSFORMERS_NAMES.get(key, key)
        if key.startswith(TRANSFORMERS_PRETRAINING_PREFIXES):
            ignored.append(original_key)
            continue
        target = _rename(key, _TO_FAIRSEQ)
        if target is None:
            unexpected.append(original_key)
            continue
        if target in mapped:
            raise CheckpointError(f"{path}: weight '{original_key}' appears twice")
        mapped[target] = tensor
    if unexpected:
        raise CheckpointError(
            f"{path}: unexpected weight '{unexpected[0]}' ({len(unexpected)} unknown keys): "
            "not a wav2vec2 encoder in transformers naming"
        )
    return mapped, tuple(ignored)


def layer_norm_conv_keys(state: dict) -> dict:
    """Rename `conv_layers.i.2.*` to the layer-norm extractor's `conv_layers.i.2.1.*`."""
    renamed = {}
    for key, value in state.items():
        match = re.match(r"^(feature_extractor\.conv_layers\.\d+\.2)\.(weight|bias)$", key)
        renamed[f"{match.group(1)}.1.{match.group(2)}" if match else key] = value
    return renamed


def transformers_state_from_fairseq(state: dict) -> dict:
    """fairseq weights in transformers' Wav2Vec2Model names (pre-training heads dropped;
    the mask embedding kept, since Wav2Vec2Model has it)."""
    converted = {}
    for key, tensor in state.items():
        if key == "mask_emb":
            converted["masked_spec_embed"] = tensor
        elif is_pretraining_only(key):
            continue
        else:
            target = _rename(key, _TO_TRANSFORMERS)
            if target is None:
                raise CheckpointError(f"fairseq weight '{key}' has no transformers name")
            converted[target] = tensor
    return converted


def fairseq_config_from_transformers(path, config: dict) -> dict:
    """Wav2Vec2Config fields for a transformers `config.json`."""
    if config.get("model_type", "wav2vec2") != "wav2vec2":
        raise CheckpointError(f"{path}: model_type '{config.get('model_type')}' is not wav2vec2")
    for flag, supported in (("add_adapter", False), ("feat_proj_layer_norm", True)):
        if config.get(flag, supported) != supported:
            raise CheckpointError(f"{path}: config {flag}={config.get(flag)} is not supported")
    if float(config.get("layer_norm_eps", 1e-5)) != 1e-5:
        raise CheckpointError(f"{path}: layer_norm_eps {config['layer_norm_eps']} differs from fairseq's 1e-5")
    try:
        conv_layers = list(zip(config["conv_dim"], config["conv_kernel"], config["conv_stride"]))
        norm = config.get("feat_extract_norm", "group")
        if norm not in ("group", "layer"):
            raise CheckpointError(f"{path}: feat_extract_norm '{norm}' is not supported")
        return {
            "extractor_mode": "default" if norm == "group" else "layer_norm",
            "conv_feature_layers": repr([tuple(int(v) for v in layer) for layer in conv_layers]),
            "conv_bias": bool(config.get("conv_bias", False)),
            "encoder_layers": int(config["num_hidden_layers"]),
            "encoder_embed_dim": int(config["hidden_size"]),
            "encoder_ffn_embed_dim": int(config["intermediate_size"]),
            "encoder_attention_heads": int(config["num_attention_heads"]),
            "activation_fn": config.get("hidden_act", "gelu"),
            "layer_norm_first": bool(config.get("do_stable_layer_norm", False)),
            "conv_pos": int(config.get("num_conv_pos_embeddings", 128)),
            "conv_pos_groups": int(config.get("num_conv_pos_embedding_groups", 16)),
            "quantize_targets": False,
            "final_dim": int(config.get("proj_codevector_dim", 256) or 256),
        }
    except (KeyError, TypeError, ValueError) as error:
        raise CheckpointError(f"{path}: incomplete wav2vec2 config.json ({error})") from None


def transformers_config_from_fairseq(model_config: dict) -> dict:
    """A transformers `config.json` for a fairseq Wav2Vec2Config."""
    conv = parse_conv_layers("config", model_config.get("conv_feature_layers"))
    layer_norm = model_config.get("extractor_mode", "default") == "layer_norm"
    return {
        "model_type": "wav2vec2",
        "architectures": ["Wav2Vec2Model"],
        "conv_dim": [c[0] for c in conv],
        "conv_kernel": [c[1] for c in conv],
        "conv_stride": [c[2] for c in conv],
        "num_feat_extract_layers": len(conv),
        "conv_bias": bool(model_config.get("conv_bias", False)),
        "feat_extract_norm": "layer" if layer_norm else "group",
        "feat_extract_activation": "gelu",
        "hidden_size": int(model_config["encoder_embed_dim"]),
        "num_hidden_layers": int(model_config["encoder_layers"]),
        "intermediate_size": int(model_config["encoder_ffn_embed_dim"]),
        "num_attention_heads": int(model_config["encoder_attention_heads"]),
        "hidden_act": str(model_config.get("activation_fn", "gelu")),
        "do_stable_layer_norm": bool(model_config.get("layer_norm_first", False)),
        "num_conv_pos_embeddings": int(model_config.get("conv_pos", 128)),
        "num_conv_pos_embedding_groups": int(model_config.get("conv_pos_groups", 16)),
        "layer_norm_eps": 1e-5,
        "hidden_dropout": 0.0, "activation_dropout": 0.0, "attention_dropout": 0.0,
        "feat_proj_dropout": 0.0, "layerdrop": 0.0, "apply_spec_augment": False,
    }


def preprocessor_config(normalize: bool, layer_norm: bool) -> dict:
    return {
        "feature_extractor_type": "Wav2Vec2FeatureExtractor",
        "feature_size": 1,
        "sampling_rate": 16000,
        "padding_value": 0.0,
        "padding_side": "right",
        "do_normalize": bool(normalize),
        "return_attention_mask": bool(layer_norm),
    }


def export_transformers(checkpoint, folder) -> None:
    """Write `checkpoint` as a transformers folder: config.json, preprocessor_config.json,
    model.safetensors."""
    import json
    from pathlib import Path

    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    config = transformers_config_from_fairseq(checkpoint.model_config)
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    layer_norm = config["feat_extract_norm"] == "layer"
    (folder / "preprocessor_config.json").write_text(
        json.dumps(preprocessor_config(checkpoint.normalize, layer_norm), indent=2)
    )
    state = {k: v.contiguous() for k, v in transformers_state_from_fairseq(checkpoint.state_dict).items()}
    save_file(state, str(folder / "model.safetensors"))


def export_speechbrain(checkpoint, folder, prefix: str = "model.") -> None:
    """Write `checkpoint` the way LeBenchmark's 14K models ship: wav2vec2.ckpt (a plain
    state dict in transformers names) next to config.json and preprocessor_config.json."""
    from pathlib import Path

    import torch

    folder = Path(folder)
    export_transformers(checkpoint, folder)
    (folder / "model.safetensors").unlink()
    state = {prefix + k: v for k, v in transformers_state_from_fairseq(checkpoint.state_dict).items()}
    torch.save(state, folder / "wav2vec2.ckpt")


def _one_line(error: Exception) -> str:
    text = " ".join(str(error).split())
    return text[:300] if text else type(error).__name__


def import_fairseq_wav2vec2():
    """fairseq's wav2vec2 module, imported quietly (its import logs and warns about
    optional packages lebench never uses)."""
    import logging
    import warnings

    root = logging.getLogger()
    saved = root.level, list(root.handlers)
    logging.getLogger("fairseq").setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from fairseq.models.wav2vec import wav2vec2
    except ImportError as error:
        raise CheckpointError(
            f"fairseq is not installed or does not import ({_one_line(error)}): "
            "see docs/install.md (Python >= 3.11 needs fairseq-fixed)"
        ) from None
    finally:
        # Some fairseq modules call logging.basicConfig(level=DEBUG) at import: undo that,
        # so that stderr carries lebench's messages only.
        root.setLevel(saved[0])
        root.handlers[:] = saved[1]
    return wav2vec2


def parse_conv_layers(path, text) -> list[tuple[int, int, int]]:
    if text is None:
        text = import_fairseq_wav2vec2().Wav2Vec2Config.conv_feature_layers
    try:
        value = _literal_arithmetic(ast.parse(str(text), mode="eval").body)
        layers = [tuple(int(x) for x in layer) for layer in value]
        if not layers or any(len(layer) != 3 for layer in layers):
            raise ValueError("expected a list of (dim, kernel, stride)")
        return layers
    except (SyntaxError, ValueError, TypeError) as error:
        raise CheckpointError(f"{path}: invalid conv_feature_layers {text!r}: {error}") from None


def _literal_arithmetic(node):
    if isinstance(node, ast.Constant) and isinstance(node.value, int):
        return node.value
    if isinstance(node, (ast.List, ast.Tuple)):
        items = [_literal_arithmetic(e) for e in node.elts]
        return items if isinstance(node, ast.List) else tuple(items)
    if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Mult)):
        left, right = _literal_arithmetic(node.left), _literal_arithmetic(node.right)
        if isinstance(node.op, ast.Mult) and isinstance(right, int) and right > 10_000:
            raise ValueError("repetition too large")
        return left + right if isinstance(node.op, ast.Add) else left * right
    raise ValueError(f"unsupported expression {ast.dump(node)[:60]}")
