"""Checksums of what a shard stores (docs/format.md, "Checksums"): xxh3-64 of each utterance's
rows of each layer matrix, as stored, and one over the shard's per-utterance tables.

64 bits per utterance-layer: a damaged block goes unnoticed with a chance of 2^-64, and xxh3
hashes at memory speed, so that checking every read costs a few percent of the read
(docs/performance.md). It guards against damage (bits flipped on a disk or in a copy, a
truncated or partly overwritten file), not against someone forging a shard.
"""

from __future__ import annotations

import numpy as np
import xxhash

from ..errors import StoreIntegrityError

# The tables' checksum, and the names of the datasets it covers (storage/tables.py: each
# per-utterance table and each layer's checksums; a reader hashes exactly those named).
TABLES_ATTR = "tables_xxh3"
COVERS_ATTR = "tables_xxh3_covers"
IDENTITY_ATTR = "identity"
COMPUTE_ATTR = "compute"
# Written by --update (storage/update.py): a JSON list of the part's shards whose copies of
# some of this shard's ids it replaces. Without it, an id in two shards is stored twice.
SUPERSEDES_ATTR = "supersedes"
KINDS = ("frames", "mean")


def mismatch_error(shard, utt_id: str, layer: str, kind: str) -> StoreIntegrityError:
    return StoreIntegrityError(f"{shard}: utterance {utt_id}, layer {layer}: the {kind} bytes read do not match "
                               "their checksum: the shard is damaged (lebench verify --repair moves it aside)")


def checksum_key(name: str, kind: str) -> str:
    """layers/NAME/frames_xxh3 or layers/NAME/mean_xxh3: uint64 [utterances]."""
    return f"layers/{name}/{kind}_xxh3"


def digest(array: np.ndarray) -> int:
    """xxh3-64 of an array's bytes in C order."""
    return xxhash.xxh3_64_intdigest(memoryview(np.ascontiguousarray(array)).cast("B"))


class RowsHasher:
    """One utterance's rows of one matrix, hashed as they are written, piece by piece."""

    def __init__(self):
        self._state = xxhash.xxh3_64()

    def update(self, array) -> None:
        """An array (hashed in C order), or bytes as a buffer."""
        if isinstance(array, np.ndarray):
            array = memoryview(np.ascontiguousarray(array)).cast("B")
        self._state.update(array)

    def intdigest(self) -> int:
        return self._state.intdigest()


def tables_digest(tables: dict, identity_text: str) -> int:
    """xxh3-64 over the named tables (name -> list of str, or numeric array) in name order, and
    the shard's identity attribute: the same value whether computed from what the writer
    writes or from what a reader reads back."""
    state = xxhash.xxh3_64()
    state.update(identity_text.encode("utf-8"))
    for name in sorted(tables):
        values = tables[name]
        state.update(b"\0" + name.encode("utf-8") + b"\0")
        if isinstance(values, np.ndarray) and values.dtype.kind in "iuf":
            state.update(np.ascontiguousarray(values, dtype=values.dtype.newbyteorder("<")).tobytes())
        else:
            for value in values:
                text = value if isinstance(value, bytes) else str(value).encode("utf-8")
                state.update(len(text).to_bytes(8, "little") + text)
    return state.intdigest()
