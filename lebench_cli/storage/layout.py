"""The output folder's layout: file names, shard tables, committed shards, index lines."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from ..errors import InputError
from .files import _WRITE_ERRORS, _one_line, _reason

FORMAT = "lebench-shard"
FORMAT_VERSION = 1
METADATA_FILE = "lebench.json"
SHARDS_DIR = "shards"
INDEX_HEADER = ("id", "shard", "position", "frames", "duration", "flags", "source")
SAVE_DTYPES = ("float16", "float32")
CNN_LAYER = "cnn"
# What prepare_output(overwrite=True) removes: lebench's own files, never the user's.
STORE_FILES = (
    METADATA_FILE,
    "index-*of*.tsv",
    "failures-*of*.jsonl",
    f"{SHARDS_DIR}/part-*of*-*.h5",
    f"{SHARDS_DIR}/part-*of*-*.h5.tmp",
)

_SHARD_NAME = re.compile(r"^part-(\d+)of(\d+)-(\d+)\.h5$")
# What reading a damaged shard raises: h5py's errors, and missing or malformed datasets.
_SHARD_READ_ERRORS = (OSError, RuntimeError, KeyError, ValueError)


@dataclass(frozen=True, order=True)
class ShardName:
    part: int
    num_parts: int
    sequence: int

    @property
    def file_name(self) -> str:
        return f"part-{self.part}of{self.num_parts}-{self.sequence:05d}.h5"


@dataclass
class ShardTable:
    """The per-utterance datasets of one shard, and which layer datasets it holds."""

    ids: list
    offsets: np.ndarray
    frames: np.ndarray
    durations: np.ndarray
    sources: list
    flags: list
    layers: dict  # layer name -> {"frames", "mean"} subset
    source_sizes: np.ndarray  # bytes, -1 when unknown (shards written before lebench 0.2)
    source_mtimes_ns: np.ndarray  # -1 when unknown
    source_xxh3: list  # hex content hashes, "" when unknown (shards written before lebench 0.3)


def part_tag(part: int, num_parts: int) -> str:
    if not 1 <= part <= num_parts:
        raise InputError(f"part {part}/{num_parts} does not exist: use K/N with 1 <= K <= N")
    return f"{part}of{num_parts}"


def open_h5(path, mode: str = "r", **options) -> h5py.File:
    # A shard is never open for writing once renamed, so HDF5's own file locking adds
    # nothing and fails on NFS/Lustre, where job arrays usually run.
    return h5py.File(path, mode, locking=False, **options)


def committed_shards(out: Path) -> list:
    """(ShardName, path) of every committed shard of OUT, in storage order."""
    folder = Path(out) / SHARDS_DIR
    if not folder.is_dir():
        return []
    found = []
    for path in folder.iterdir():
        match = _SHARD_NAME.match(path.name)
        if match:
            found.append((ShardName(*map(int, match.groups())), path))
    return sorted(found)


def read_shard_table(path: Path) -> ShardTable:
    try:
        with open_h5(path) as shard:
            _check_shard(shard, path)
            layers = {name: set(group) for name, group in shard.get("layers", {}).items()}
            unknown = np.full(len(shard["ids"]), -1, dtype=np.int64)
            return ShardTable(
                ids=list(shard["ids"].asstr()[:]),
                offsets=shard["offsets"][:],
                frames=shard["frames"][:],
                durations=shard["durations"][:],
                sources=list(shard["sources"].asstr()[:]),
                flags=list(shard["flags"].asstr()[:]),
                layers={name: kinds & {"frames", "mean"} for name, kinds in layers.items()},
                source_sizes=shard["source_sizes"][:] if "source_sizes" in shard else unknown,
                source_mtimes_ns=shard["source_mtimes_ns"][:] if "source_mtimes_ns" in shard else unknown,
                source_xxh3=(list(shard["source_xxh3"].asstr()[:]) if "source_xxh3" in shard
                             else [""] * len(unknown)),
            )
    except _SHARD_READ_ERRORS as error:
        raise _unreadable_shard(path, error) from None


def _unreadable_shard(path: Path, error: Exception) -> InputError:
    # Committed shards are complete by construction: one that does not open was damaged
    # after the fact (a partial copy, a failing disk), and only the user can decide its fate.
    reason = _reason(error) if isinstance(error, _WRITE_ERRORS) else _one_line(error)
    return InputError(f"{path} is not a readable lebench shard ({reason}): "
                      "move it out of the folder, then rerun to extract its utterances again")


def _check_shard(shard: h5py.File, path: Path) -> None:
    if shard.attrs.get("format") != FORMAT:
        raise InputError(f"{path} is not a lebench shard")
    if int(shard.attrs.get("format_version", 0)) > FORMAT_VERSION:
        raise InputError(f"{path} was written by a newer lebench (format version "
                         f"{shard.attrs['format_version']}); upgrade lebench to read it")


@dataclass(frozen=True)
class StoredSource:
    """Where a stored utterance came from: the path as stored, its size and modification
    time when it was read (-1: unknown), the xxh3-64 hash of its bytes ("": unknown), and
    the part (K, N) whose shards hold it."""

    path: str
    size: int = -1
    mtime_ns: int = -1
    content_hash: str = ""
    part: tuple = (1, 1)


def stored_sources(out: Path) -> dict:
    """{id: StoredSource} of every committed shard of every part of OUT. An id in two shards
    of one part (an --update cut short before it removed the old copy) is the later shard's."""
    stored = {}
    for name, path in committed_shards(out):
        table = read_shard_table(path)
        for utt_id, source, size, mtime, digest in zip(table.ids, table.sources, table.source_sizes,
                                                        table.source_mtimes_ns, table.source_xxh3):
            stored[utt_id] = StoredSource(source, int(size), int(mtime), digest, (name.part, name.num_parts))
    return stored


def superseded_ids(shards: list) -> dict:
    """{shard path: ids that a later shard of the same part also holds} for `shards`, a list of
    (ShardName, path, ids) in storage order. The later copy is the one: an --update commits
    the new features before it removes the old ones (storage/update.py), so an id in two
    shards of one part is an update cut short. Ids in shards of different parts are left be."""
    latest = {}
    for position, (name, _, ids) in enumerate(shards):
        for utt_id in ids:
            latest[(name.part, name.num_parts, utt_id)] = position
    found = {}
    for position, (name, path, ids) in enumerate(shards):
        older = {utt_id for utt_id in ids if latest[(name.part, name.num_parts, utt_id)] != position}
        if older:
            found[path] = older
    return found


def stored_ids(out: Path) -> set:
    """Ids in every committed shard of every part of OUT."""
    ids = set()
    for _, path in committed_shards(out):
        ids.update(_ids_of(path))
    return ids


def _ids_of(path: Path) -> list:
    try:
        with open_h5(path) as shard:
            _check_shard(shard, path)
            return list(shard["ids"].asstr()[:])
    except _SHARD_READ_ERRORS as error:
        raise _unreadable_shard(path, error) from None


def _index_lines(shard: Path, table: ShardTable) -> list:
    return [
        _index_line(utt_id, shard, position, table.frames[position], table.durations[position],
                    table.flags[position], table.sources[position])
        for position, utt_id in enumerate(table.ids)
    ]


def _index_line(utt_id, shard, position, frames, duration, flags, source) -> str:
    fields = (utt_id, shard.as_posix(), position, int(frames), repr(float(duration)), flags,
              source)
    return "\t".join(_tsv_field(value) for value in fields) + "\n"


def _tsv_field(value) -> str:
    text = str(value).replace("\\", "\\\\")
    return text.replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")
