"""What the writer takes: one utterance's states, the writer's options, their checks."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from ..errors import InputError, OutputError
from .layout import SAVE_DTYPES

_LAYER_NAME = re.compile(r"^(0|[1-9]\d*|cnn)$")


@dataclass
class StoredUtterance:
    """What the pipeline hands over per utterance."""

    utt_id: str
    source: str
    duration: float  # seconds
    frames: int
    states: dict  # layer ("12" or 12, "cnn") -> [frames, width] array
    means: Optional[dict] = None  # layer -> [width]; computed from states when None
    flags: str = ""  # "" or comma-separated, e.g. "padded"
    # The source file as it was read, so that a rerun can tell it from another file under
    # the same id, or from the same file changed since: -1 when unknown.
    source_size: int = -1  # bytes
    source_mtime_ns: int = -1
    source_xxh3: str = ""  # the xxh3-64 hash of its bytes, 16 hex digits ("": unknown)
    # What the corpus says of it (speaker, text, language, recording, start, end...): names
    # -> str, int or float, stored as the shard's `metadata` table (docs/format.md).
    metadata: dict = field(default_factory=dict)


@dataclass
class WriterOptions:
    """How features are stored; the caller also writes these into lebench.json."""

    layers: list[str]  # layer names: "0".."48" or "cnn"
    store_frames: bool = True  # layers/NAME/frames: every frame
    store_mean: bool = False  # layers/NAME/mean: one utterance-mean vector
    save_dtype: str = "float16"  # or "float32"
    shard_size_bytes: int = 2 * 1024**3  # uncompressed payload; compressed shards are smaller
    compression: Optional[str] = None  # None/"none", "gzip", "gzip:LEVEL" (0-9) or "lzf"
    commit_seconds: float = 300.0  # commit a shard this long after its first utterance
    part: int = 1  # job-array part K of num_parts N
    num_parts: int = 1
    compute: Optional[dict] = None  # {"dtype", "device"} of the model run, recorded in each shard


def frames_of(utt: StoredUtterance, name: str) -> np.ndarray:
    """The utterance's [frames, width] states of layer `name`, checked against its frame count."""
    states = layer_value(utt.states, name)
    if states is None:
        raise ValueError(f"{utt.utt_id}: no hidden states for layer {name}")
    states = np.asarray(states)
    if states.ndim != 2 or states.shape[0] != utt.frames:
        raise ValueError(f"{utt.utt_id}: layer {name} states are {states.shape}, "
                         f"expected [{utt.frames}, width]")
    return states


def mean_of(utt: StoredUtterance, name: str) -> np.ndarray:
    """The utterance's [width] mean of layer `name`: as given, or the mean of its states."""
    if utt.means is None:
        return frames_of(utt, name).mean(axis=0, dtype=np.float64).astype(np.float32)
    mean = layer_value(utt.means, name)
    if mean is None:
        raise ValueError(f"{utt.utt_id}: no mean vector for layer {name}")
    mean = np.asarray(mean)
    if mean.ndim != 1:
        raise ValueError(f"{utt.utt_id}: layer {name} mean is {mean.shape}, expected [width]")
    return mean


def layer_value(values: dict, name: str):
    """values[name], or values[int(name)]: the encoder keys numbered layers by int."""
    if name in values:
        return values[name]
    return values.get(int(name)) if name.isdigit() else None


def checked_layers(options: WriterOptions) -> list:
    """The layer names to store, each once, after checking the options (InputError if wrong)."""
    if options.save_dtype not in SAVE_DTYPES:
        raise InputError(f"cannot save as {options.save_dtype!r}: use float16 or float32")
    if not (options.store_frames or options.store_mean):
        raise InputError("nothing to store: store frames, utterance means or both")
    if options.shard_size_bytes <= 0 or options.commit_seconds < 0:
        raise InputError("shard size must be positive and commit seconds not negative")
    layers = list(dict.fromkeys(str(layer) for layer in options.layers))
    if not layers:
        raise InputError("no layers to store")
    for name in layers:
        if not _LAYER_NAME.match(name):
            raise InputError(f"{name!r} is not a layer: use 0..L or cnn")
    return layers


def compression_options(spec: Optional[str]) -> dict:
    """h5py create_dataset arguments for "gzip", "gzip:LEVEL", "lzf", "none" or None."""
    if spec in (None, "", "none"):
        return {}
    # Shuffling the bytes of floats first makes them compress markedly better.
    if spec == "lzf":
        return {"compression": "lzf", "shuffle": True}
    name, _, level = spec.partition(":")
    if name == "gzip" and (level == "" or (level.isdigit() and int(level) <= 9)):
        return {"compression": "gzip", "compression_opts": int(level or 4), "shuffle": True}
    raise InputError(f"unknown compression {spec!r}: use gzip, gzip:LEVEL (0-9), lzf or none")


def range_check(utt_id: str, dtype: np.dtype):
    """check(key, source, converted): float16 turns values past 65504 into inf without a
    warning; this makes that an error."""
    def check(key: str, source: np.ndarray, converted: np.ndarray) -> None:
        if dtype.itemsize < source.dtype.itemsize and np.isinf(converted).any():
            raise OutputError(f"{utt_id}: {key} holds values beyond the {dtype} range "
                              f"(max {np.finfo(dtype).max:.0f}); use --save-dtype float32")
    return check
