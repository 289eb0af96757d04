"""Where an utterance's frames lie in a shard: each layer's rows of one utterance in one run of
bytes, the utterance's layers next to each other, and a table of where the chunks lie.

Training reads one utterance at a time in random order, either one layer or all of them.
Each utterance starts on a chunk boundary of the frames matrices (so no chunk holds two
utterances) and its layers are written one after the other, so HDF5 places its chunks of
each layer in one run and its layers together: one layer is one contiguous read, all layers
one sequential read, like a .npy file per utterance. The padding rows cost half a chunk per
utterance on average (about 2.7% on a 2-20 s mix with 1024-wide float16 layers), and the
writer, which writes 8x as many chunks as with 256 KiB ones, one utterance's layer at a time,
is 1.5-2x slower (docs/performance.md): features are written once and read every epoch.
"""

from __future__ import annotations

from typing import Optional

import h5py
import numpy as np

FRAMES_CHUNK_BYTES = 32 * 1024  # a frames matrix's chunk, for its widest layer...
MAX_CHUNK_ROWS = 16  # ...and no more rows (0.32 s), so that the padding stays short, whatever the width
CHUNK_OFFSETS = "frames_chunk_offsets"  # layers/NAME/frames_chunk_offsets: where chunks lie


def frames_chunk_rows(widths, itemsize: int) -> int:
    """Rows per chunk of every frames matrix of a shard (one value, so that the utterances'
    chunk boundaries are the same in every layer), sized by the widest layer."""
    return min(MAX_CHUNK_ROWS, max(1, FRAMES_CHUNK_BYTES // (max(widths) * itemsize)))


def aligned(row: int, chunk_rows: int) -> int:
    """The first chunk boundary at or after row."""
    return -(-row // chunk_rows) * chunk_rows


def padded_rows(frames, chunk_rows: int) -> int:
    """Rows that utterances of `frames` frames take, each starting on a chunk boundary."""
    return sum(aligned(int(count), chunk_rows) for count in frames)


def chunk_offsets(dataset) -> Optional[np.ndarray]:
    """int64 [chunks]: the byte offset in the file of each chunk of a frames matrix, in row
    order, -1 for a chunk never written; None when the matrix is not stored raw (compression)
    or HDF5 cannot list its chunks. Readers find an utterance's bytes with it without walking
    HDF5's chunk index (which, read cold, cost more than the features)."""
    plist = dataset.id.get_create_plist()
    if plist.get_nfilters() or dataset.chunks is None or not hasattr(dataset.id, "chunk_iter"):
        return None
    rows = dataset.chunks[0]
    starts = np.full(-(-dataset.shape[0] // rows), -1, np.int64)

    def note(info) -> None:
        starts[info.chunk_offset[0] // rows] = info.byte_offset
    dataset.id.chunk_iter(note)
    return starts


def write_chunk_tables(file, layers) -> None:
    """layers/NAME/frames_chunk_offsets for each raw frames matrix of a shard being committed."""
    for name in layers:
        key = f"layers/{name}/frames"
        table = chunk_offsets(file[key]) if key in file else None
        if table is not None:
            file[f"layers/{name}/{CHUNK_OFFSETS}"] = table


def write_rows(dataset, start: int, block: np.ndarray) -> None:
    """dataset[start: start + len(block)] = block, through h5py's low-level write (its slicing
    costs more than HDF5's write of a short utterance, and each utterance's layers are
    written one by one)."""
    if len(block):
        file_space = dataset.id.get_space()
        file_space.select_hyperslab((int(start),) + (0,) * (block.ndim - 1), block.shape)
        dataset.id.write(h5py.h5s.create_simple(block.shape), file_space, np.ascontiguousarray(block))
