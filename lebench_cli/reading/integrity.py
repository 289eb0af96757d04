"""What a read checks before it serves anything (docs/reliability.md#integrity): the bytes of
each utterance-layer against their checksum, HDF5's errors as read errors naming the file,
and the shards that the index lists but the folder lost."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import numpy as np

from ..errors import StoreIntegrityError, StoreReadError
from ..storage.checksums import digest, mismatch_error
from ..storage.files import one_line

VERIFY_VARIABLE = "LEBENCH_VERIFY"  # "0": reads are not checked against their checksums
# What h5py raises when HDF5 cannot read a damaged file: OSError, and KeyError for an object
# whose header it cannot read ("Unable to synchronously open object"); RuntimeError from its
# own internals.
_HDF5_READ_ERRORS = (OSError, KeyError, RuntimeError)


def verify_default() -> bool:
    return os.environ.get(VERIFY_VARIABLE, "1").strip().lower() not in ("0", "false", "no", "off")


def checked_block(values: np.ndarray, stored_dtype, expected: int, shard: Path, utt_id: str, layer: str,
                  kind: str, hashed=None) -> None:
    """hashed: the values' hash made as they were read, or None."""
    if hashed is None:
        hashed = digest(values if values.dtype == stored_dtype else values.astype(stored_dtype))
    if hashed != expected:
        raise mismatch_error(shard, utt_id, layer, kind)


@contextlib.contextmanager
def reading_errors(shard: Path, utt_id: str):
    """HDF5's errors reading one utterance, as one StoreReadError naming the shard."""
    try:
        yield
    except _HDF5_READ_ERRORS as error:
        reason = one_line(error.args[0] if isinstance(error, KeyError) and error.args else error)
        raise StoreReadError(f"read error in {shard} (utterance {utt_id}): {reason}: the shard is damaged "
                             "(lebench verify --repair moves it aside)") from None


def check_indexed_shards(out: Path, shards: list) -> None:
    """Refuses a store whose index-KofN.tsv lists a shard that is not there (deleted, moved
    aside): its utterances would be missing without a word. Rerunning the extraction
    rebuilds the index and extracts them again."""
    present = {path.relative_to(out).as_posix() for path in shards}
    for index in sorted(Path(out).glob("index-*of*.tsv")):
        try:
            lines = index.read_text(encoding="utf-8").splitlines()[1:]
        except (OSError, ValueError) as error:
            raise StoreReadError(f"read error in {index}: {one_line(error)}") from None
        counts: dict = {}
        for line in lines:
            fields = line.split("\t", 2)
            if len(fields) > 1:
                counts[fields[1]] = counts.get(fields[1], 0) + 1
        missing = sorted(set(counts) - present)
        if missing:
            raise StoreIntegrityError(f"{out / missing[0]} is missing ({index.name} lists its {counts[missing[0]]} "
                                      "utterances): rerun the extraction to extract them again")


def compute_settings(tables: list) -> list:
    """[{"dtype", "device", "shards"}] the shards were computed with (format 2 shards record
    them; a store resumed with another --dtype or device holds several)."""
    counts: dict = {}
    for table in tables:
        compute = table.compute or {}
        key = (compute.get("dtype"), compute.get("device"))
        counts[key] = counts.get(key, 0) + 1
    return [{"dtype": dtype, "device": device, "shards": shards} for (dtype, device), shards in counts.items()]
