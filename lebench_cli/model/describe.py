"""What `lebench info` reports: the catalogue of known models, and one checkpoint in detail."""

from __future__ import annotations

from .catalog import KNOWN_MODELS, KnownModel


def catalog_rows(check_cache: bool = True) -> list[dict]:
    from .hub import cached_model_path

    return [_catalog_row(m, cached_model_path(m.hub_id) is not None if check_cache else False) for m in KNOWN_MODELS]


def _catalog_row(model: KnownModel, cached: bool) -> dict:
    return {
        "hub_id": model.hub_id,
        "aliases": list(model.aliases),
        "arch": model.arch,
        "hours": model.hours,
        "layers": model.layers,
        "width": model.width,
        "normalize": model.normalize,
        "normalize_note": model.normalize_note,
        "formats": list(model.formats),
        "cached": cached,
    }


def describe_checkpoint(name: str, trust: bool = False) -> dict:
    from .hashing import file_size, sha256_file
    from .conversion import parse_conv_layers
    from .conversion import is_pretraining_only
    from .models import load_checkpoint

    checkpoint = load_checkpoint(name, trust=trust)
    config = checkpoint.model_config
    parameters = sum(
        int(t.numel()) for k, t in checkpoint.state_dict.items() if hasattr(t, "numel") and not is_pretraining_only(k)
    )
    return {
        "model": name,
        "hub_id": checkpoint.hub_id,
        "path": str(checkpoint.weights_path),
        "format": checkpoint.format,
        "layers": checkpoint.layers,
        "width": checkpoint.width,
        "ffn_width": int(config["encoder_ffn_embed_dim"]),
        "heads": int(config["encoder_attention_heads"]),
        "extractor_mode": config.get("extractor_mode", "default"),
        "layer_norm": "pre" if config.get("layer_norm_first", False) else "post",
        "normalize": checkpoint.normalize,
        "conv_layers": [list(c) for c in parse_conv_layers(checkpoint.weights_path, config["conv_feature_layers"])],
        "parameters": parameters,
        "size_bytes": file_size(checkpoint.weights_path),
        "sha256": sha256_file(checkpoint.weights_path),
    }


def format_catalog(rows: list[dict]) -> str:
    header = ["MODEL", "ALIASES", "ARCH", "HOURS", "LAYERS", "WIDTH", "NORMALIZE", "FORMATS", "CACHED"]
    table = [header] + [
        [
            row["hub_id"],
            ",".join(row["aliases"]) or "-",
            row["arch"],
            row["hours"],
            _unknown(row["layers"]),
            _unknown(row["width"]),
            _yes_no(row["normalize"]) + ("*" if row["normalize_note"] else ""),
            ",".join(row["formats"]),
            _yes_no(row["cached"]),
        ]
        for row in rows
    ]
    widths = [max(len(line[i]) for line in table) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(line, widths)).rstrip() for line in table]
    lines.append("? = not confirmed: read from the checkpoint's own config by `lebench info MODEL`.")
    lines.extend(f"* {row['hub_id'].split('/', 1)[1]}: {row['normalize_note']}." for row in rows if row["normalize_note"])
    return "\n".join(lines)


def format_description(info: dict) -> str:
    labels = [
        ("model", info["model"]),
        ("hub id", info["hub_id"] or "-"),
        ("path", info["path"]),
        ("format", info["format"]),
        ("layers", f"{info['layers']} transformer blocks (hidden states 0-{info['layers']}, plus cnn)"),
        ("width", info["width"]),
        ("ffn width", info["ffn_width"]),
        ("heads", info["heads"]),
        ("extractor mode", info["extractor_mode"]),
        ("layer norm", info["layer_norm"]),
        ("normalize", _yes_no(info["normalize"])),
        ("conv layers", " ".join(f"({d},{k},{s})" for d, k, s in info["conv_layers"])),
        ("parameters", f"{info['parameters']:,}"),
        ("size", f"{info['size_bytes']:,} bytes"),
        ("sha256", info["sha256"]),
    ]
    width = max(len(label) for label, _ in labels)
    return "\n".join(f"{label + ':':<{width + 1}} {value}" for label, value in labels)


def _unknown(value) -> str:
    return "?" if value is None else str(value)


def _yes_no(value) -> str:
    return "?" if value is None else ("yes" if value else "no")
