"""A shard's per-utterance tables as the writer commits them, with their checksums and the
run's identity (docs/format.md, "A shard" and "Checksums")."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np

from ..errors import OutputError
from .checksums import COVERS_ATTR, TABLES_ATTR, checksum_key, tables_digest
from .identity import identity_text
from .layout import METADATA_FILE


def write_tables(file: h5py.File, rows: list, layers: list, options, identity: dict) -> None:
    """The per-utterance tables of `rows` (buffers.ShardRow), each layer matrix's checksums, and the
    checksum over them all."""
    strings = h5py.string_dtype()
    tables = {
        "ids": [row.utt_id for row in rows],
        "offsets": np.array([row.offset for row in rows], dtype=np.int64),
        "frames": np.array([row.frames for row in rows], dtype=np.int64),
        "durations": np.array([row.duration for row in rows], dtype=np.float64),
        "sources": [row.source for row in rows],
        "source_sizes": np.array([row.source_size for row in rows], dtype=np.int64),
        "source_mtimes_ns": np.array([row.source_mtime_ns for row in rows], dtype=np.int64),
        "source_xxh3": [row.source_xxh3 for row in rows],
        "flags": [row.flags for row in rows],
        "metadata": [metadata_text(row.utt_id, row.metadata) for row in rows],
    }
    for name in layers:
        for kind, stored in (("frames", options.store_frames), ("mean", options.store_mean)):
            if stored:
                key = f"layers/{name}/{kind}"
                tables[checksum_key(name, kind)] = np.array([row.checksums[key] for row in rows], np.uint64)
    for key, values in tables.items():
        file[key] = values if isinstance(values, np.ndarray) else np.array(values, dtype=strings)
    file.attrs[COVERS_ATTR] = ",".join(sorted(tables))
    file.attrs[TABLES_ATTR] = np.uint64(tables_digest(tables, identity_text(identity)))


def metadata_text(utt_id: str, metadata: dict) -> str:
    """An utterance's metadata as its `metadata` table holds it: a JSON object, keys sorted."""
    for name, value in metadata.items():
        if not isinstance(name, str) or isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise ValueError(f"{utt_id}: metadata {name!r}={value!r}: names are strings, values str, int or float")
    try:
        return json.dumps(metadata, sort_keys=True, ensure_ascii=False, allow_nan=False)
    except ValueError:
        raise ValueError(f"{utt_id}: metadata values must be finite numbers or strings") from None


def run_identity(out: Path) -> dict:
    """The identity of OUT's run, as lebench.json records it (prepare_output wrote or checked
    it): every shard carries a copy, so that a shard of another run is told apart."""
    try:
        identity = json.loads((Path(out) / METADATA_FILE).read_text(encoding="utf-8")).get("identity")
    except (OSError, ValueError, AttributeError) as error:
        raise OutputError(f"cannot read the run's identity from {Path(out) / METADATA_FILE} ({error}): "
                          "prepare the output folder first") from error
    if not isinstance(identity, dict):
        raise OutputError(f"{Path(out) / METADATA_FILE} holds no run identity")
    return identity
