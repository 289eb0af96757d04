"""Reading an output folder back: utterance ids, frames of one or several layers (whole, or a
time segment), utterance means.

The id -> (shard, row) map comes from each shard's ids/offsets/frames datasets, so opening
a store of 10^5+ utterances reads a few arrays per shard, not one object per utterance.
"""

from __future__ import annotations

import json
import os
from collections import OrderedDict
from pathlib import Path
from typing import Iterator, Optional

import numpy as np

from ..errors import InputError
from ..frames import FRAME_SECONDS
from ..layers import canonical_layers
from ..storage import METADATA_FILE, committed_shards, open_h5, read_shard_table
from ..storage.checksums import RowsHasher
from ..storage.layout import parse_metadata, superseded_ids
from ..storage.placement import CHUNK_OFFSETS
from .buffers import ReusedBuffers
from .integrity import check_indexed_shards, checked_block, compute_settings, reading_errors, verify_default
from .rows import LayerRows, read_runs
from .selection import Layers, common_dtype, common_width, frame_range, layer_names

_OPEN_SHARDS = 64  # handles kept open at once; a store may have thousands of shards


def open_features(path, verify: Optional[bool] = None) -> "FeatureSet":
    """Opens a lebench output folder for reading. verify (default: True, unless the environment
    sets LEBENCH_VERIFY=0): check every read against the checksums stored with it
    (docs/reliability.md#integrity); the tables and the shards' identity are checked on
    opening either way."""
    return FeatureSet(path, verify=verify)


class FeatureSet:
    """The utterances of every committed shard of every part, in storage order
    (part, shard sequence, row). Shard files open on first read; a process forked after
    opening (a DataLoader worker) reopens its own."""

    def __init__(self, path, verify: Optional[bool] = None):
        self.path = Path(path)
        self.verify = verify_default() if verify is None else bool(verify)
        self.metadata = _load_metadata(self.path)
        identity = self.metadata.get("identity")
        named = committed_shards(self.path)
        self._shards = [shard for _, shard in named]
        check_indexed_shards(self.path, self._shards)
        tables = [read_shard_table(shard, identity if isinstance(identity, dict) else None) for shard in self._shards]
        self._superseded = superseded_ids([(name, shard, table) for (name, shard), table in zip(named, tables)])
        self._checksums = [table.checksums for table in tables]
        self.compute = compute_settings(tables)
        self._load_tables(tables)
        self._handles = OrderedDict()
        self._buffers = ReusedBuffers()
        self._pid = os.getpid()
        model = self.metadata.get("model")
        self._num_layers = model.get("num_layers") if isinstance(model, dict) else None
        self.frame_shift = float(self.metadata.get("frame_shift_seconds", FRAME_SECONDS))  # where lebench.json does not say

    def _load_tables(self, tables: list) -> None:
        self.ids = [utt_id for table in tables for utt_id in table.ids]
        counts = [len(table.ids) for table in tables]
        self._shard_of = np.repeat(np.arange(len(tables)), counts)
        self._row_of = _joined([np.arange(count) for count in counts], np.int64)
        self._frames = _joined([table.frames for table in tables], np.int64)
        self._durations = _joined([table.durations for table in tables], np.float64)
        self._sources = [source for table in tables for source in table.sources]
        self._flags = [flags for table in tables for flags in table.flags]
        self._metadata = [text for table in tables for text in table.metadata]  # JSON texts, parsed when asked
        self._shard_layers = [table.layers for table in tables]
        self._shard_offsets = [np.asarray(table.offsets, dtype=np.int64) for table in tables]
        self._layer_names = {name for table in tables for name in table.layers}
        self.layers = canonical_layers(self._layer_names)
        if self._superseded:
            self._drop_superseded()
        self._index = self._build_index()

    def _drop_superseded(self) -> None:
        """An id in two shards of one part (an --update cut short) is the later shard's."""
        keep = np.array([utt_id not in self._superseded.get(self._shards[shard], ())
                         for utt_id, shard in zip(self.ids, self._shard_of)], dtype=bool)
        self.ids = [utt_id for utt_id, kept in zip(self.ids, keep) if kept]
        self._sources = [source for source, kept in zip(self._sources, keep) if kept]
        self._flags = [flags for flags, kept in zip(self._flags, keep) if kept]
        self._metadata = [text for text, kept in zip(self._metadata, keep) if kept]
        self._shard_of, self._row_of = self._shard_of[keep], self._row_of[keep]
        self._frames, self._durations = self._frames[keep], self._durations[keep]

    def _build_index(self) -> dict:
        index = {}
        for position, utt_id in enumerate(self.ids):
            first = index.setdefault(utt_id, position)
            if first != position:
                raise InputError(f"{utt_id} is stored twice ({self._shard_name(first)} and "
                                 f"{self._shard_name(position)}): remove one of these shards")
        return index

    def read(self, utt_id: str, layers: Layers, start: Optional[float] = None,
             end: Optional[float] = None) -> np.ndarray:
        """Frames in the stored dtype: [frames, width] for one layer (an int, its string,
        "last" or "cnn"); [layers, frames, width] for a list of layers (in its order) or "all"
        (every stored layer 0..L, without cnn). With start/end (seconds), only the frames
        that start in [start, end) are read (see frame_range)."""
        index = self._position(utt_id)
        names, stacked = self._names(layers)
        rows = self._frame_range(index, start, end)
        if self.verify and len(rows) != self._frames[index]:
            # A checksum covers the utterance's rows of a layer: a segment is checked by
            # reading them all (docs/reliability.md#integrity).
            whole = self.read(utt_id, layers)
            return np.ascontiguousarray(whole[..., rows.start: rows.stop, :])
        for name in names:
            self._shard_with(index, name, "frames")
        with reading_errors(self._shards[self._shard_of[index]], utt_id):
            matrices = {name: self._frames_of(index, name) for name in dict.fromkeys(names)}
            if not stacked:
                out = self._buffers.empty((len(rows), matrices[names[0]].shape[1]), matrices[names[0]].dtype)
                (check,) = self._read_rows(index, rows.start, [(matrices[names[0]], out)], [names[0]])
                self._check_read(index, names[0], out, matrices[names[0]].dtype, check)
                return out
            out = self._buffers.empty((len(names), len(rows), common_width(matrices)), common_dtype(matrices))
            firsts = [names.index(name) for name in names]  # a layer listed twice is read once
            read = [position for position, first in enumerate(firsts) if first == position]
            targets = [(matrices[names[position]], out[position]) for position in read]
            checks = self._read_rows(index, rows.start, targets, [names[position] for position in read])
        for position, check in zip(read, checks):
            self._check_read(index, names[position], out[position], matrices[names[position]].dtype, check)
        for position, first in enumerate(firsts):
            if first < position:
                out[position] = out[first]
        return out

    def read_mean(self, utt_id: str, layers: Layers) -> np.ndarray:
        """Stored utterance means in the stored dtype: [width] for one layer, [layers, width]
        for a list of layers or "all"."""
        index = self._position(utt_id)
        names, stacked = self._names(layers)
        for name in names:
            self._shard_with(index, name, "mean")
        row = self._row_of[index]
        with reading_errors(self._shards[self._shard_of[index]], utt_id):
            datasets = {name: self._dataset(index, name, "mean") for name in dict.fromkeys(names)}
            means = {name: dataset[row] for name, dataset in datasets.items()}
        for name, mean in means.items():
            self._check(index, name, "mean", mean, datasets[name].dtype)
        if not stacked:
            return means[names[0]]
        out = np.empty((len(names), common_width(datasets)), common_dtype(datasets))
        for position, name in enumerate(names):
            out[position] = means[name]
        return out

    def frame_range(self, utt_id: str, start: Optional[float] = None,
                    end: Optional[float] = None) -> range:
        """The frames `read(utt_id, layer, start=start, end=end)` returns: those whose start
        time (frame i starts at i * 0.02 s and sees 0.025 s of audio) lies in [start, end),
        clipped to the utterance; None means its start or its end."""
        return self._frame_range(self._position(utt_id), start, end)

    def info(self, utt_id: str) -> dict:
        """{"frames", "duration", "source", "flags", "shard", "position", "metadata"}: metadata
        is what the corpus gave with the utterance (speaker, text, start, end...), {} if none."""
        index = self._position(utt_id)
        return {
            "frames": int(self._frames[index]),
            "duration": float(self._durations[index]),
            "source": self._sources[index],
            "flags": self._flags[index],
            "shard": self._shard_name(index),
            "position": int(self._row_of[index]),
            "metadata": self.metadata_of(utt_id),
        }

    def metadata_of(self, utt_id: str) -> dict:
        """The utterance's metadata (a new dict each call): {} when it has none."""
        return parse_metadata(self._metadata[self._position(utt_id)])

    def utterances(self) -> Iterator[dict]:
        """One {"id", "frames", "duration" (seconds), "source", "flags", "metadata"} per utterance."""
        for index, utt_id in enumerate(self.ids):
            yield {"id": utt_id, "frames": int(self._frames[index]),
                   "duration": float(self._durations[index]), "source": self._sources[index],
                   "flags": self._flags[index], "metadata": parse_metadata(self._metadata[index])}

    def frame_counts(self) -> np.ndarray:
        """int64 [utterances]: the frames of each utterance, in the order of `ids`."""
        return self._frames.copy()

    def close(self) -> None:
        if self._pid == os.getpid():
            for handle in self._handles.values():
                handle.close()
        self._handles.clear()
        self._buffers.clear()

    def __len__(self) -> int:
        return len(self.ids)

    def __contains__(self, utt_id) -> bool:
        return self._lookup(utt_id) is not None

    def __enter__(self) -> "FeatureSet":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_handles": OrderedDict()}  # h5py handles do not pickle

    def _position(self, utt_id: str) -> int:
        position = self._lookup(utt_id)
        if position is None:
            raise KeyError(f"utterance {utt_id!r} is not in {self.path}")
        return position

    def _lookup(self, utt_id):
        """The id as given, else its canonical spelling (NFC, bytes that are not UTF-8 as
        \\xNN), else its NFD one (what a store written before ids were canonical may hold)."""
        import unicodedata

        from ..names import canonical_id

        position = self._index.get(utt_id)
        if position is None and isinstance(utt_id, str):
            canonical = canonical_id(utt_id)
            position = self._index.get(canonical, self._index.get(unicodedata.normalize("NFD", canonical)))
        return position

    def _names(self, layers: Layers) -> tuple:
        names, stacked = layer_names(layers, self.layers, self._num_layers)
        for name in names:
            if name not in self._layer_names:
                last = " ('last')" if self._num_layers is not None and name == str(self._num_layers) else ""
                raise KeyError(f"layer {name}{last} is not stored in {self.path} "
                               f"(stored: {', '.join(map(str, self.layers))})")
        return names, stacked

    def _checksum(self, index: int, name: str, kind: str) -> Optional[int]:
        """The stored checksum of the utterance's layer when reads are checked (format 2)."""
        checksums = self._checksums[self._shard_of[index]].get(name, {}).get(kind) if self.verify else None
        return None if checksums is None else int(checksums[self._row_of[index]])

    def _check(self, index: int, name: str, kind: str, values: np.ndarray, stored_dtype, hashed=None) -> None:
        """Refuses values whose bytes, as stored, do not match their checksum. hashed: their
        hash, made as they arrived (None: hash them now)."""
        expected = self._checksum(index, name, kind)
        if expected is not None:
            checked_block(values, stored_dtype, expected, self._shards[self._shard_of[index]], self.ids[index], name,
                          kind, hashed)

    def _check_read(self, index: int, name: str, values: np.ndarray, stored_dtype, check: tuple) -> None:
        """check: (stored checksum or None, hash made as the values arrived or None)."""
        expected, hashed = check
        if expected is not None:
            checked_block(values, stored_dtype, expected, self._shards[self._shard_of[index]], self.ids[index], name,
                          "frames", hashed)

    def _frame_range(self, index: int, start, end) -> range:
        return frame_range(int(self._frames[index]), start, end, self.frame_shift)

    def _shard_name(self, index: int) -> str:
        return self._shards[self._shard_of[index]].relative_to(self.path).as_posix()

    def _dataset(self, index: int, name: str, kind: str):
        return self._handle(self._shard_with(index, name, kind)).dataset(f"layers/{name}/{kind}")

    def _read_rows(self, index: int, skip: int, targets: list, names: list) -> list:
        """Rows skip.. of utterance `index` of each (LayerRows, out): the raw runs of all of
        them in one pass over the file (an utterance's layers lie side by side), the others
        through HDF5. Returns, per target, (its stored checksum, None when reads are not
        checked; the hash of its bytes made as they arrived, while they are in the CPU's cache,
        or None: hash them after)."""
        row, runs, checks = int(self._row_of[index]), [], []
        for (matrix, out), name in zip(targets, names):
            expected = self._checksum(index, name, "frames")
            layer_runs = matrix.runs(row, skip, out)
            hasher = None
            if layer_runs is None:
                matrix.read_through_hdf5(row, skip, out)
            else:
                # Hashed on arrival only when the file holds its bytes in their order (the
                # runs are read in file order).
                if expected is not None and (len(layer_runs) == 1 or all(
                        a[0] < b[0] for a, b in zip(layer_runs, layer_runs[1:]))):
                    hasher = RowsHasher()
                runs.extend((at, buffer, hasher) for at, buffer in layer_runs)
            checks.append((expected, hasher))
        if runs:
            read_runs(self._handle(self._shard_of[index]).descriptor, runs, targets[0][0].dataset)
        return [(expected, None if hasher is None else hasher.intdigest()) for expected, hasher in checks]

    def _frames_of(self, index: int, name: str) -> LayerRows:
        shard = self._shard_with(index, name, "frames")
        return self._handle(shard).rows(name, self._shard_offsets[shard])

    def _shard_with(self, index: int, name: str, kind: str) -> int:
        shard = self._shard_of[index]
        if kind not in self._shard_layers[shard].get(name, ()):
            raise KeyError(_missing_kind_message(name, kind, self._shard_name(index)))
        return shard

    def _handle(self, shard: int) -> "_OpenShard":
        if self._pid != os.getpid():
            # Handles inherited through fork share HDF5 state with the parent: never use them.
            for handle in self._handles.values():
                handle.close_descriptor()  # a plain descriptor is this process's own copy
            self._handles, self._pid = OrderedDict(), os.getpid()
        if shard in self._handles:
            self._handles.move_to_end(shard)
        else:
            if len(self._handles) >= _OPEN_SHARDS:
                self._handles.popitem(last=False)[1].close()
            self._handles[shard] = _OpenShard(self._shards[shard])
        return self._handles[shard]


class _OpenShard:
    """An open shard: its h5py file, a plain descriptor of the same file for raw row reads,
    and the layer datasets looked up in it (a lookup by path costs more than reading a short
    utterance)."""

    def __init__(self, path: Path):
        self.file = open_h5(path)
        try:
            self.descriptor = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        except OSError:
            self.file.close()
            raise
        self._datasets, self._rows = {}, {}

    def dataset(self, key: str):
        if key not in self._datasets:
            self._datasets[key] = self.file[key]
        return self._datasets[key]

    def rows(self, name: str, offsets: np.ndarray) -> LayerRows:
        """Layer `name`'s frames matrix; offsets: the shard's first row of each utterance."""
        if name not in self._rows:
            table_key = f"layers/{name}/{CHUNK_OFFSETS}"
            table = self.file[table_key] if table_key in self.file else None
            self._rows[name] = LayerRows(self.dataset(f"layers/{name}/frames"), offsets, table)
        return self._rows[name]

    def close(self) -> None:
        self._datasets.clear()
        self._rows.clear()
        self.file.close()
        self.close_descriptor()

    def close_descriptor(self) -> None:
        if self.descriptor >= 0:
            os.close(self.descriptor)
            self.descriptor = -1


def _missing_kind_message(name: str, kind: str, shard: str) -> str:
    if kind == "frames":
        return f"layer {name} frames are not stored in {shard} (means only): use read_mean"
    return f"layer {name} means are not stored in {shard} (frames only): average read() over frames"


def _joined(arrays: list, dtype) -> np.ndarray:
    return np.concatenate(arrays).astype(dtype) if arrays else np.zeros(0, dtype)


def _load_metadata(path: Path) -> dict:
    if not path.exists():
        raise InputError(f"{path} does not exist")
    if not path.is_dir():
        raise InputError(f"{path} is not a folder")
    metadata = path / METADATA_FILE
    try:
        loaded = json.loads(metadata.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"{path} is not a lebench output folder (no {METADATA_FILE})") from None
    except (OSError, ValueError) as error:
        raise InputError(f"cannot read {metadata}: {error}") from error
    if not isinstance(loaded, dict):
        raise InputError(f"cannot read {metadata}: not a JSON object")
    return loaded
