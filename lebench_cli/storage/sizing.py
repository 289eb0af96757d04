"""How large chunks and stores are: chunk shapes sized to the data, and the output size
that `lebench extract --dry-run` estimates."""

from __future__ import annotations

from typing import Optional

from .placement import frames_chunk_rows, padded_rows

CHUNK_BYTES = 256 * 1024  # the largest chunk of a layer dataset

# What a store costs besides its features, measured with h5py 3.16 (HDF5 1.14) on shards of
# 1 to 1000 utterances and 1 to 25 layers; they matter only for tiny runs.
SHARD_BYTES = 10_500  # one shard file: superblock, attributes, the six per-utterance datasets
LAYER_BYTES = 1_000  # one layers/NAME group
DATASET_BYTES = 2_900  # one layers/NAME/frames or layers/NAME/mean dataset
ROW_BYTES = 124  # one utterance in a shard's tables, besides its id and source strings
INDEX_ROW_BYTES = 40  # its line in index-KofN.tsv, besides its id and source
METADATA_BYTES = 2_000  # lebench.json
CHUNK_OFFSET_BYTES = 8  # one chunk's entry in layers/NAME/frames_chunk_offsets


def chunk_rows(width: int, itemsize: int, total_rows: Optional[int] = None) -> int:
    """Rows per chunk of a [rows, width] dataset. total_rows: its final row count, when known
    as the dataset is made (a shard committed at its first write): HDF5 stores whole chunks,
    so a few mean rows in a 256 KiB chunk made tiny shards 40x larger than their data; equal
    chunks leave no part-empty last one."""
    rows = max(1, CHUNK_BYTES // (width * itemsize))
    if total_rows is None or total_rows < 1:
        return rows
    chunks = -(-total_rows // rows)
    return -(-total_rows // chunks)


def estimate_store_bytes(frames: list, text_bytes: list, widths: list, itemsize: int, store_frames: bool,
                         store_mean: bool, shard_size_bytes: int) -> int:
    """Bytes of an output folder holding utterances of `frames` frames each, uncompressed.
    text_bytes: per utterance, the length of its id plus its source path. Shards cut by
    --commit-seconds in a long run add SHARD_BYTES + layer overhead each (negligible there)."""
    row_width = sum(widths) * itemsize
    chunk_rows = frames_chunk_rows(widths, itemsize) if widths else 1
    rows = padded_rows(frames, chunk_rows) if store_frames else 0  # each utterance from a chunk boundary
    payload = row_width * (rows + (len(frames) if store_mean else 0))
    payload += CHUNK_OFFSET_BYTES * len(widths) * -(-rows // chunk_rows)
    shards = max(1, -(-payload // max(1, shard_size_bytes))) if frames else 0
    datasets = len(widths) * (2 * int(store_frames) + int(store_mean))  # frames and their chunk table
    per_shard = SHARD_BYTES + LAYER_BYTES * len(widths) + DATASET_BYTES * datasets
    tables = sum(ROW_BYTES + INDEX_ROW_BYTES + 2 * text for text in text_bytes)
    return payload + shards * per_shard + tables + METADATA_BYTES
