"""An utterance's rows of the layer matrices, read straight from the shard file where HDF5 stores
them raw.

A layer matrix without compression or any other filter keeps its chunks as plain bytes in the
file. The shard's table of where each chunk lies (see storage/placement.py), or else HDF5's
chunk index, gives their place, and the rows are read with preadv straight into the caller's
array: the runs of all the layers asked for, in file order, neighbours joined into one read.
HDF5's own read of the same rows sets up selections per call and copies through its chunk
cache; this one reads faster than a .npy file per utterance warm (docs/performance.md).
Compressed matrices, and any layout this does not know, are read through HDF5.
"""

from __future__ import annotations

import os
from typing import Optional

import numpy as np
from h5py import h5d, h5s

_CAN_PREAD = hasattr(os, "preadv")
_JOIN_GAP = 256 * 1024  # bytes between two runs read rather than skipped by a second read
_MAX_BUFFERS = 512  # per preadv call (the system allows at least 1024)
_READ_BYTES = 512 * 1024  # per preadv call of a run of at least _SPLIT_FROM: see _pread_fully
_SPLIT_FROM = 4 * 1024 * 1024


class LayerRows:
    """Where the rows of one [rows, width] frames matrix of a shard lie in its file. offsets:
    the shard's first row of each utterance; table: the matrix's frames_chunk_offsets dataset,
    when the shard has one (else HDF5's chunk index is asked, chunk by chunk)."""

    def __init__(self, dataset, offsets: np.ndarray, table=None):
        self.dataset = dataset
        self.shape, self.dtype = dataset.shape, dataset.dtype
        self._offsets = offsets
        self._row_bytes = int(np.prod(self.shape[1:], dtype=np.int64)) * self.dtype.itemsize
        self._chunk_rows, self._contiguous_at = _raw_layout(dataset)
        self._chunk_at: dict = {}  # chunk number -> byte offset in the file, None: not written
        self._table = None  # until checked: _checked asks HDF5's index through _chunk_offset
        self._table = self._checked(table) if self._chunk_rows else None

    def runs(self, utterance: int, skip: int, out: np.ndarray) -> Optional[list]:
        """[(byte offset in the file, writable bytes of out)] that fill out with rows skip ..
        skip + len(out) of the shard's utterance number `utterance`; None when they must be
        read through HDF5 (read_through_hdf5)."""
        if not len(out):
            return []
        if not self._direct_into(out):
            return None
        spans = self._spans(int(self._offsets[utterance]) + skip, len(out))
        if spans is None:
            return None
        bytes_of_out = memoryview(out.reshape(-1).view(np.uint8))
        return [(at, bytes_of_out[start: start + size]) for at, start, size in spans]

    def read_through_hdf5(self, utterance: int, skip: int, out: np.ndarray) -> None:
        _read_through_hdf5(self.dataset, int(self._offsets[utterance]) + skip, out)

    def _direct_into(self, out: np.ndarray) -> bool:
        return ((self._chunk_rows is not None or self._contiguous_at is not None) and out.dtype == self.dtype
                and out.flags.c_contiguous and out.shape[1:] == self.shape[1:])

    def _spans(self, first: int, count: int) -> Optional[list]:
        """[(file offset, byte offset in the output, bytes)], chunks that follow each other in
        the file joined; None when a chunk was never written (HDF5 gives its fill value)."""
        row_bytes = self._row_bytes
        if self._contiguous_at is not None:
            return [(self._contiguous_at + first * row_bytes, 0, count * row_bytes)]
        rows, end = self._chunk_rows, first + count
        low, high = first // rows, (end - 1) // rows + 1  # the chunks to read: low .. high - 1
        if self._table is not None and high <= len(self._table):
            starts = self._table[low:high]  # a list: a few ints cost less than numpy calls
        else:
            starts = [self._chunk_offset(number) for number in range(low, high)]
        if None in starts or min(starts) < 0:
            return None
        chunk_bytes = rows * row_bytes
        skipped = (first - low * rows) * row_bytes  # the rows of the first chunk before `first`
        spans = [[starts[0] + skipped, 0, min(count * row_bytes, chunk_bytes - skipped)]]
        for start in starts[1:]:
            size = min(chunk_bytes, count * row_bytes - spans[-1][1] - spans[-1][2])
            if start == spans[-1][0] + spans[-1][2]:
                spans[-1][2] += size
            else:
                spans.append([start, spans[-1][1] + spans[-1][2], size])
        return spans

    def _chunk_offset(self, number: int) -> Optional[int]:
        """From HDF5's chunk index (cached)."""
        if number not in self._chunk_at:
            corner = (number * self._chunk_rows,) + (0,) * (len(self.shape) - 1)
            self._chunk_at[number] = self.dataset.id.get_chunk_info_by_coord(corner).byte_offset
        return self._chunk_at[number]

    def _checked(self, table) -> Optional[list]:
        """The table, when it covers the matrix and its first and last written chunks are
        where HDF5's chunk index says: a tool that rewrote the shard (h5repack...) moved the
        chunks and copied a stale table."""
        if table is None:
            return None
        table = np.asarray(table[:], dtype=np.int64)
        if table.ndim != 1 or len(table) != -(-self.shape[0] // self._chunk_rows):
            return None
        written = np.flatnonzero(table >= 0)
        for number in written[[0, -1]] if len(written) else ():
            if self._chunk_offset(int(number)) != table[number]:
                return None
        return table.tolist()


def read_runs(descriptor: int, runs: list, dataset) -> None:
    """Fills each (file offset, buffer, hasher or None) from the file: in file order, runs less
    than _JOIN_GAP apart read by one preadv (the bytes between them into a scratch buffer).
    A hasher is updated with its run's bytes as each read brings them in."""
    if len(runs) == 1:
        _pread_fully(descriptor, [runs[0][1]], runs[0][0], dataset, [runs[0][2]])
        return
    runs = sorted(runs, key=lambda run: run[0])
    scratch = None
    group, owners, group_at, group_end = [], [], 0, 0
    for at, buffer, hasher in runs:
        if group and (at - group_end > _JOIN_GAP or at < group_end or len(group) >= _MAX_BUFFERS):
            _pread_fully(descriptor, group, group_at, dataset, owners)
            group, owners = [], []
        if not group:
            group_at = group_end = at
        elif at > group_end:
            if scratch is None or len(scratch) < at - group_end:
                scratch = memoryview(bytearray(max(at - group_end, _JOIN_GAP)))
            group.append(scratch[: at - group_end])
            owners.append(None)
        group.append(buffer)
        owners.append(hasher)
        group_end = at + len(buffer)
    if group:
        _pread_fully(descriptor, group, group_at, dataset, owners)


def _pread_fully(descriptor: int, buffers: list, at: int, dataset, owners: list) -> None:
    """Fills the buffers from the file at `at`, each owner (a hasher, or None) updated with
    its buffer's bytes as they arrive. A long run (all the layers of an utterance) goes in
    reads of _READ_BYTES: Linux reads a random read's pages one by one, and the rest of a
    sequence of reads ahead in large folios (measured cold: 1.3-1.5x one read of 14 MB). A
    short one (a layer) goes in one read: a sequence would make the kernel read past its end."""
    buffers, owners = list(buffers), list(owners)
    total = sum(len(buffer) for buffer in buffers)
    step = _READ_BYTES if total >= _SPLIT_FROM else total
    while buffers:
        batch, room = [], step
        for buffer in buffers:
            if room <= 0 or len(batch) >= _MAX_BUFFERS:
                break
            batch.append(buffer[:room])
            room -= len(batch[-1])
        count = os.preadv(descriptor, batch, at)
        if count <= 0:
            raise OSError(f"{dataset.file.filename} ends inside {dataset.name} (a truncated shard?)")
        at += count
        filled = count
        for piece, owner in zip(batch, owners):
            if filled <= 0:
                break
            if owner is not None:
                owner.update(piece[:filled])
            filled -= len(piece)
        while buffers and count >= len(buffers[0]):
            count -= len(buffers[0])
            buffers, owners = buffers[1:], owners[1:]
        if buffers and count:
            buffers[0] = buffers[0][count:]


def _raw_layout(dataset) -> tuple:
    """(rows per chunk, None) for a chunked matrix whose chunks span whole rows, (None, byte
    offset) for a contiguous one, (None, None) for what must go through HDF5: filters
    (compression), external or virtual storage, chunks split across the width."""
    if not _CAN_PREAD or dataset.ndim < 2 or not hasattr(dataset.id, "get_chunk_info_by_coord"):
        return None, None  # (h5py built against HDF5 < 1.10.5 cannot say where chunks lie)
    plist = dataset.id.get_create_plist()
    if plist.get_nfilters() or plist.get_external_count():
        return None, None
    layout = plist.get_layout()
    if layout == h5d.CHUNKED and tuple(dataset.chunks[1:]) == tuple(dataset.shape[1:]):
        return int(dataset.chunks[0]), None
    if layout == h5d.CONTIGUOUS:
        return None, dataset.id.get_offset()
    return None, None


def _read_through_hdf5(dataset, first: int, out: np.ndarray) -> None:
    """h5py's low-level read: its slicing and read_direct spend longer building selections in
    Python than HDF5 takes to read a short utterance."""
    if len(out):
        file_space = dataset.id.get_space()
        file_space.select_hyperslab((int(first),) + (0,) * (out.ndim - 1), out.shape)
        dataset.id.read(h5s.create_simple(out.shape), file_space, out)
