"""The open shard's rows and the buffers that hold their arrays until they are written."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

_FLUSH_BYTES = 64 * 1024**2  # utterances are buffered and written to HDF5 in blocks this large
SHARD_ROW_BYTES = 64  # ids, offsets, frames... per utterance, in the shard size estimate


@dataclass
class ShardRow:
    """One utterance of the open shard (its arrays: in the file, or in ShardWriter._pending)."""

    utt_id: str
    source: str
    duration: float
    frames: int
    flags: str
    offset: int  # first row in the layers/NAME/frames matrices
    source_size: int = -1
    source_mtime_ns: int = -1
    source_xxh3: str = ""
    checksums: dict = field(default_factory=dict)  # dataset path -> xxh3-64 of its rows, as stored
    metadata: dict = field(default_factory=dict)  # StoredUtterance.metadata


@dataclass
class UtteranceStream:
    """An utterance being written in pieces."""

    row: ShardRow
    size: int
    written: int = 0
    sums: dict = field(default_factory=dict)  # layer name -> float64 sum, for the mean
    hashers: dict = field(default_factory=dict)  # dataset path -> RowsHasher of the rows written


class PendingArrays:
    """The open shard's rows that are not in the file yet: one buffer per dataset, reused
    from flush to flush. Each utterance is copied in once, converted to the save dtype on
    the way, and each dataset goes to HDF5 in one write (a copy per utterance and another
    to join them had cost as much as HDF5's own write)."""

    def __init__(self, dtype: np.dtype):
        self.dtype = dtype
        self.itemsize = dtype.itemsize
        self.buffers: dict = {}  # dataset path -> [capacity, width] in the save dtype
        self.used = 0  # utterances in the buffers
        self._rows: dict = {}  # dataset path -> rows used

    def fits(self, arrays: dict) -> bool:
        if not self.buffers:
            share = _FLUSH_BYTES // (len(arrays) * self.itemsize)
            self.buffers = {key: np.empty((max(1, share // array.shape[1]), array.shape[1]), self.dtype)
                            for key, array in arrays.items()}
        return all(self._rows.get(key, 0) + len(array) <= len(self.buffers[key]) for key, array in arrays.items())

    def put(self, arrays: dict, check) -> None:
        """Copies the arrays in (the caller may reuse its own); check(key, array, copy) may
        refuse one, and then none is kept."""
        for key, array in arrays.items():
            start = self._rows.get(key, 0)
            target = self.buffers[key][start: start + len(array)]
            with np.errstate(over="ignore"):  # check() reports it
                np.copyto(target, array, casting="unsafe")
            check(key, array, target)
        for key, array in arrays.items():
            self._rows[key] = self._rows.get(key, 0) + len(array)
        self.used += 1

    def clear(self) -> None:
        self._rows = {}
        self.used = 0
