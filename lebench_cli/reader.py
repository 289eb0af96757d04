"""Reading an output folder back: utterance ids, per-layer frames and utterance means.

The id -> (shard, row) map comes from each shard's ids/offsets/frames datasets, so opening
a store of 10^5+ utterances reads a few arrays per shard, not one object per utterance.
"""

from __future__ import annotations

import json
import os
from collections import OrderedDict
from pathlib import Path
from typing import Iterator, Union

import numpy as np

from .errors import InputError
from .storage import CNN_LAYER, METADATA_FILE, committed_shards, open_h5, read_shard_table

Layer = Union[int, str]
_OPEN_SHARDS = 64  # handles kept open at once; a store may have thousands of shards


def open_features(path) -> "FeatureSet":
    """Opens a lebench output folder for reading."""
    return FeatureSet(path)


class FeatureSet:
    """The utterances of every committed shard of every part, in storage order
    (part, shard sequence, row). Shard files open on first read; a process forked after
    opening (a DataLoader worker) reopens its own."""

    def __init__(self, path):
        self.path = Path(path)
        self.metadata = _load_metadata(self.path)
        self._shards = [shard for _, shard in committed_shards(self.path)]
        self._load_tables([read_shard_table(shard) for shard in self._shards])
        self._handles = OrderedDict()
        self._pid = os.getpid()

    def _load_tables(self, tables: list) -> None:
        self.ids = [utt_id for table in tables for utt_id in table.ids]
        counts = [len(table.ids) for table in tables]
        self._shard_of = np.repeat(np.arange(len(tables)), counts)
        self._row_of = _joined([np.arange(count) for count in counts], np.int64)
        self._offsets = _joined([table.offsets for table in tables], np.int64)
        self._frames = _joined([table.frames for table in tables], np.int64)
        self._durations = _joined([table.durations for table in tables], np.float64)
        self._sources = [source for table in tables for source in table.sources]
        self._flags = [flags for table in tables for flags in table.flags]
        self._shard_layers = [table.layers for table in tables]
        self._layer_names = {name for table in tables for name in table.layers}
        self.layers = _sorted_layers(self._layer_names)
        self._index = self._build_index()

    def _build_index(self) -> dict:
        index = {}
        for position, utt_id in enumerate(self.ids):
            first = index.setdefault(utt_id, position)
            if first != position:
                raise InputError(f"{utt_id} is stored twice ({self._shard_name(first)} and "
                                 f"{self._shard_name(position)}): remove one of these shards")
        return index

    def read(self, utt_id: str, layer: Layer) -> np.ndarray:
        """[frames, width] in the stored dtype."""
        index = self._position(utt_id)
        start = self._offsets[index]
        return self._dataset(index, layer, "frames")[start:start + self._frames[index]]

    def read_mean(self, utt_id: str, layer: Layer) -> np.ndarray:
        """[width] utterance-mean vector, in the stored dtype."""
        index = self._position(utt_id)
        return self._dataset(index, layer, "mean")[self._row_of[index]]

    def info(self, utt_id: str) -> dict:
        index = self._position(utt_id)
        return {
            "frames": int(self._frames[index]),
            "duration": float(self._durations[index]),
            "source": self._sources[index],
            "flags": self._flags[index],
            "shard": self._shard_name(index),
            "position": int(self._row_of[index]),
        }

    def utterances(self) -> Iterator[dict]:
        """One {"id", "frames", "duration" (seconds), "source", "flags"} per utterance."""
        for index, utt_id in enumerate(self.ids):
            yield {"id": utt_id, "frames": int(self._frames[index]),
                   "duration": float(self._durations[index]), "source": self._sources[index],
                   "flags": self._flags[index]}

    def close(self) -> None:
        if self._pid == os.getpid():
            for handle in self._handles.values():
                handle.close()
        self._handles.clear()

    def __len__(self) -> int:
        return len(self.ids)

    def __contains__(self, utt_id) -> bool:
        return utt_id in self._index

    def __enter__(self) -> "FeatureSet":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_handles": OrderedDict()}  # h5py handles do not pickle

    def _position(self, utt_id: str) -> int:
        try:
            return self._index[utt_id]
        except KeyError:
            raise KeyError(f"utterance {utt_id!r} is not in {self.path}") from None

    def _shard_name(self, index: int) -> str:
        return self._shards[self._shard_of[index]].relative_to(self.path).as_posix()

    def _dataset(self, index: int, layer: Layer, kind: str):
        name = _layer_name(layer)
        if name not in self._layer_names:
            raise KeyError(f"layer {name} is not stored in {self.path} "
                           f"(stored: {', '.join(map(str, self.layers))})")
        if kind not in self._shard_layers[self._shard_of[index]].get(name, ()):
            raise KeyError(_missing_kind_message(name, kind, self._shard_name(index)))
        return self._handle(self._shard_of[index])[f"layers/{name}/{kind}"]

    def _handle(self, shard: int):
        if self._pid != os.getpid():
            # Handles inherited through fork share HDF5 state with the parent: never use them.
            self._handles, self._pid = OrderedDict(), os.getpid()
        if shard in self._handles:
            self._handles.move_to_end(shard)
        else:
            if len(self._handles) >= _OPEN_SHARDS:
                self._handles.popitem(last=False)[1].close()
            self._handles[shard] = open_h5(self._shards[shard])
        return self._handles[shard]


def _missing_kind_message(name: str, kind: str, shard: str) -> str:
    if kind == "frames":
        return f"layer {name} frames are not stored in {shard} (means only): use read_mean"
    return f"layer {name} means are not stored in {shard} (frames only): average read() over frames"


def _layer_name(layer: Layer) -> str:
    if isinstance(layer, (int, np.integer)) and not isinstance(layer, bool) and layer >= 0:
        return str(int(layer))
    if isinstance(layer, str) and (layer == CNN_LAYER or layer.isdigit()):
        return layer if layer == CNN_LAYER else str(int(layer))
    raise KeyError(f"{layer!r} is not a layer: use an int 0..L, its string, or 'cnn'")


def _sorted_layers(names: set) -> list:
    """"cnn" first (it comes before layer 0 in the model), then 0..L as ints."""
    layers = [name if name == CNN_LAYER else int(name) for name in names]
    return sorted(layers, key=lambda layer: -1 if layer == CNN_LAYER else layer)


def _joined(arrays: list, dtype) -> np.ndarray:
    return np.concatenate(arrays).astype(dtype) if arrays else np.zeros(0, dtype)


def _load_metadata(path: Path) -> dict:
    if not path.is_dir():
        raise InputError(f"{path} is not a folder")
    metadata = path / METADATA_FILE
    try:
        return json.loads(metadata.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"{path} is not a lebench output folder (no {METADATA_FILE})") from None
    except (OSError, ValueError) as error:
        raise InputError(f"cannot read {metadata}: {error}") from error
