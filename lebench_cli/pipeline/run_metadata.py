"""lebench.json: how the features of an output folder were made (docs/format.md)."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

from .. import __version__
from ..audio.loading import PADDED_FLAG
from ..frames import FRAME_SECONDS, SAMPLE_RATE
from .options import ExtractOptions


def build_identity(options: ExtractOptions, sha256: str, layers: list) -> dict:
    """What decides whether two runs may share an output folder (lebench.json and every shard)."""
    return {
        "model_sha256": sha256,
        "layers": [str(layer) for layer in layers],
        "store_frames": options.store_frames,
        "pool": options.pool,
        "save_dtype": options.save_dtype,
        "chunk_seconds": options.chunk_seconds,
        "overlap_seconds": options.overlap_seconds,
        "channel": options.channel,
    }


def build_metadata(options: ExtractOptions, checkpoint, sha256: str, layers: list, encoder) -> dict:
    layer_names = [str(layer) for layer in layers]
    identity = build_identity(options, sha256, layers)
    return {
        "format": "lebench-features",
        "format_version": 2,
        "identity": identity,
        "tool": "lebench",
        "tool_version": __version__,
        "model": {
            "name": options.model,
            "hub_id": checkpoint.hub_id,
            "format": checkpoint.format,
            "sha256": sha256,
            "num_layers": encoder.num_layers,
            "width": encoder.width,
            "cnn_width": encoder.cnn_width,
            "extractor_mode": checkpoint.model_config.get("extractor_mode", "default"),
            "layer_norm_first": encoder.layer_norm_first,
        },
        "layers": layer_names,
        "layer_numbering": (
            "0 = transformer input (after the positional conv; post-LN models: after the encoder "
            "LayerNorm); i = output of block i; L = encoder output (pre-LN models: with the final "
            "LayerNorm); cnn = conv features after their LayerNorm, before the projection"
        ),
        "normalize": checkpoint.normalize,
        "sample_rate": SAMPLE_RATE,
        "frame_shift_seconds": FRAME_SECONDS,
        "receptive_field_samples": encoder.min_samples,
        "short_files": f"fewer than {encoder.min_samples} samples: zero-padded to one frame, flag '{PADDED_FLAG}'",
        "compute_dtype": options.dtype,
        "save_dtype": options.save_dtype,
        "options": _jsonable(asdict(options)),
    }


def _jsonable(value):
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value
