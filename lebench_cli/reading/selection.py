"""What a read takes: layer names ("last", "all", lists of layers) and time segments as frame ranges."""

from __future__ import annotations

import math
from typing import Optional, Sequence, Union

import numpy as np

from ..storage import CNN_LAYER

Layer = Union[int, str]
Layers = Union[Layer, Sequence[Layer]]
ALL = "all"
LAST = "last"
# Seconds given as multiples of the frame shift (0.1 s = 5 frames) land a hair off in floating
# point (0.1 / 0.02 = 5.000000000000001): a millionth of a frame is treated as exact.
_FRAME_TOLERANCE = 1e-6


def layer_names(layers: Layers, stored: list, num_layers: Optional[int]) -> tuple:
    """(dataset names, stacked): one name and False for a single layer; the names in the
    order asked, repeats kept, and True for a list or "all"."""
    if isinstance(layers, str) and layers == ALL:
        numbered = [str(layer) for layer in stored if layer != CNN_LAYER]
        if not numbered:
            raise KeyError(f"'all' means the stored layers 0..L, and none is stored "
                           f"(stored: {_listed(stored)}): read {CNN_LAYER!r} by its name")
        return numbered, True
    if isinstance(layers, np.ndarray) and layers.ndim == 0:
        layers = layers.item()
    if isinstance(layers, (list, tuple, range, np.ndarray)):
        if len(layers) == 0:
            raise KeyError("an empty list of layers: give at least one layer")
        return [_one_layer(layer, stored, num_layers, in_list=True) for layer in layers], True
    return [_one_layer(layers, stored, num_layers, in_list=False)], False


def _one_layer(layer, stored: list, num_layers: Optional[int], in_list: bool) -> str:
    if isinstance(layer, str) and layer == LAST:
        if num_layers is None:
            raise KeyError(f"'last' needs the model's number of layers, which lebench.json does not "
                           f"record: name the layer (stored: {_listed(stored)})")
        return str(num_layers)
    if isinstance(layer, str) and layer == ALL and in_list:
        raise KeyError("'all' stands for every stored layer 0..L: pass it alone, not in a list")
    if isinstance(layer, (int, np.integer)) and not isinstance(layer, bool) and layer >= 0:
        return str(int(layer))
    if isinstance(layer, str) and (layer == CNN_LAYER or layer.isdigit()):
        return layer if layer == CNN_LAYER else str(int(layer))
    raise KeyError(f"{layer!r} is not a layer: use an int 0..L, its string, 'last', 'cnn', "
                   "a list of these, or 'all'")


def frame_range(frames: int, start: Optional[float], end: Optional[float], shift: float) -> range:
    """The frames whose start time lies in [start, end) seconds, clipped to the utterance's
    `frames` (frame i starts at i * shift); None means the utterance's start or end."""
    first = 0 if start is None else _first_frame_from(_seconds("start", start), shift)
    stop = frames if end is None else _first_frame_from(_seconds("end", end), shift)
    if start is not None and end is not None and end < start:
        raise ValueError(f"end={end} comes before start={start}")
    return range(min(first, frames), min(stop, frames))


def _seconds(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ValueError(f"{name}={value!r} is not a number of seconds")
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{name}={value} seconds: give a finite time >= 0")
    return float(value)


def _first_frame_from(seconds: float, shift: float) -> int:
    return max(0, math.ceil(seconds / shift - _FRAME_TOLERANCE))


def _listed(layers: list) -> str:
    return ", ".join(map(str, layers)) or "none"


def common_width(datasets: dict) -> int:
    widths = {}
    for name, dataset in datasets.items():
        widths.setdefault(int(dataset.shape[1]), []).append(name)
    if len(widths) > 1:
        described = "; ".join(f"{', '.join(names)}: {width} wide" for width, names in sorted(widths.items()))
        cnn_apart = CNN_LAYER in datasets and len({int(dataset.shape[1]) for name, dataset in datasets.items()
                                                   if name != CNN_LAYER}) == 1
        advice = f"read {CNN_LAYER} separately" if cnn_apart else "read each width separately"
        raise ValueError(f"cannot stack layers of different widths ({described}): {advice}")
    return next(iter(widths))


def common_dtype(datasets: dict) -> np.dtype:
    return np.result_type(*(dataset.dtype for dataset in datasets.values()))
