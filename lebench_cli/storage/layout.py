"""The output folder's layout: file names, shard tables, committed shards, index lines."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Optional

import h5py
import numpy as np

from ..errors import InputError, StoreIntegrityError, StoreReadError
from ..frames import CNN
from .checksums import (COMPUTE_ATTR, COVERS_ATTR, IDENTITY_ATTR, KINDS, SUPERSEDES_ATTR, TABLES_ATTR,
                        checksum_key, tables_digest)
from .files import WRITE_ERRORS, one_line, os_reason
from .identity import first_difference, parse_identity

FORMAT = "lebench-shard"
FORMAT_VERSION = 2  # 2: checksums and the run's identity in every shard; 1 is still read
METADATA_FILE = "lebench.json"
SHARDS_DIR = "shards"
INDEX_HEADER = ("id", "shard", "position", "frames", "duration", "flags", "source")
SAVE_DTYPES = ("float16", "float32")
CNN_LAYER = CNN
# What prepare_output(overwrite=True) removes: lebench's own files, never the user's.
STORE_FILES = (
    METADATA_FILE,
    "index-*of*.tsv",
    "failures-*of*.jsonl",
    "relocated-*of*.jsonl",
    f"{SHARDS_DIR}/part-*of*-*.h5",
    f"{SHARDS_DIR}/part-*of*-*.h5.tmp",
)

_SHARD_NAME = re.compile(r"^part-(\d+)of(\d+)-(\d+)\.h5$")
# What reading a damaged shard raises: h5py's errors, and missing or malformed datasets.
SHARD_READ_ERRORS = (OSError, RuntimeError, KeyError, ValueError)


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
    source_xxh3: list = field(default_factory=list)  # hex content hashes, "" when unknown
    format_version: int = 1
    identity: Optional[dict] = None  # the run's identity; None in format 1 shards
    compute: Optional[dict] = None  # {"dtype", "device"} the states were computed with, if recorded
    checksums: dict = field(default_factory=dict)  # layer name -> {"frames"/"mean": uint64 [utterances]}
    supersedes: tuple = ()  # file names of the part's shards whose copies of its ids it replaces (--update)
    metadata: list = field(default_factory=list)  # a JSON object text per utterance ("{}": none)


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


def read_shard_table(path: Path, identity: Optional[dict] = None) -> ShardTable:
    """The shard's tables, checked against their checksum (format 2) and against each other;
    with identity (lebench.json's), a shard of another run is refused."""
    try:
        with open_h5(path) as shard:
            table = _read_table(shard, path)
    except SHARD_READ_ERRORS as error:
        raise _unreadable_shard(path, error) from None
    if identity is not None:
        require_identity(path, table.identity, identity)
    return table


def _read_table(shard: h5py.File, path: Path) -> ShardTable:
    _check_shard(shard, path)
    # Every object's header, opened once: a damaged one (a flipped address) fails here, by
    # name, rather than in the middle of a later read.
    shard.visititems(lambda name, item: None)
    layers = {name: set(group) & set(KINDS) for name, group in shard.get("layers", {}).items()}
    count = len(shard["ids"])
    unknown = np.full(count, -1, dtype=np.int64)
    table = ShardTable(
        ids=list(shard["ids"].asstr()[:]),
        offsets=shard["offsets"][:],
        frames=shard["frames"][:],
        durations=shard["durations"][:],
        sources=list(shard["sources"].asstr()[:]),
        flags=list(shard["flags"].asstr()[:]),
        layers=layers,
        source_sizes=shard["source_sizes"][:] if "source_sizes" in shard else unknown,
        source_mtimes_ns=shard["source_mtimes_ns"][:] if "source_mtimes_ns" in shard else unknown,
        source_xxh3=list(shard["source_xxh3"].asstr()[:]) if "source_xxh3" in shard else [""] * count,
        format_version=int(shard.attrs.get("format_version", 1)),
        identity=parse_identity(shard.attrs.get(IDENTITY_ATTR)),
        compute=parse_identity(shard.attrs.get(COMPUTE_ATTR)),
        supersedes=_parse_supersedes(shard.attrs.get(SUPERSEDES_ATTR)),
        metadata=list(shard["metadata"].asstr()[:]) if "metadata" in shard else ["{}"] * count,
    )
    for name, kinds in layers.items():
        for kind in kinds:
            key = checksum_key(name, kind)
            if key in shard:
                table.checksums.setdefault(name, {})[kind] = shard[key][:]
    _check_tables(shard, path, table)
    return table


def parse_metadata(text: str) -> dict:
    """An utterance's `metadata` table entry as a dict ({} for an entry that is not an object)."""
    loaded = json.loads(text) if text else {}
    return loaded if isinstance(loaded, dict) else {}


def _parse_supersedes(text) -> tuple:
    if text is None:
        return ()
    loaded = json.loads(text.decode("utf-8") if isinstance(text, bytes) else str(text))
    if not isinstance(loaded, list) or not all(isinstance(name, str) for name in loaded):
        raise ValueError(f"its {SUPERSEDES_ATTR} attribute is not a list of shard names")
    return tuple(loaded)


def _check_tables(shard: h5py.File, path: Path, table: ShardTable) -> None:
    """The tables' checksum, then what must hold between the tables and the layer matrices
    (a flipped offset or frame count would serve another utterance's rows)."""
    if TABLES_ATTR in shard.attrs:
        covered = [name for name in str(shard.attrs.get(COVERS_ATTR, "")).split(",") if name]
        tables = {name: shard[name].asstr()[:] if shard[name].dtype.kind == "O" else shard[name][:]
                  for name in covered}
        text = shard.attrs.get(IDENTITY_ATTR, "")
        if tables_digest(tables, text.decode() if isinstance(text, bytes) else str(text)) != \
                int(shard.attrs[TABLES_ATTR]):
            raise StoreIntegrityError(f"{path}: its tables (ids, offsets, frame counts...) do not match their "
                                      "checksum: the shard is damaged (lebench verify --repair moves it aside)")
    count = len(table.ids)
    lengths = {len(table.offsets), len(table.frames), len(table.durations), len(table.sources), len(table.flags),
               len(table.metadata)}
    ends = table.offsets + table.frames
    for name, kinds in table.layers.items():
        for kind in kinds:
            dataset = shard[f"layers/{name}/{kind}"]
            rows = dataset.shape[0]
            if (kind == "mean" and rows != count) or (kind == "frames" and count and int(ends.max()) > rows):
                raise StoreIntegrityError(f"{path}: layers/{name}/{kind} holds {rows} rows, fewer than its tables "
                                          "say: the shard is damaged (lebench verify --repair moves it aside)")
            checksums = table.checksums.get(name, {}).get(kind)
            if checksums is not None:
                lengths.add(len(checksums))
    if lengths != {count} or (count and (table.offsets.min() < 0 or table.frames.min() < 1)):
        raise StoreIntegrityError(f"{path}: its tables disagree on the utterances it holds: the shard is damaged "
                                  "(lebench verify --repair moves it aside)")


def require_identity(path: Path, shard_identity: Optional[dict], identity: dict) -> None:
    """Refuses a shard written by another run than `identity` (lebench.json's). A shard of
    format 1 records none: it is taken as the folder's, as before."""
    if shard_identity is None:
        return
    difference = first_difference(identity, shard_identity)
    if difference is not None:
        raise StoreIntegrityError(f"{path} was written by another run than lebench.json records ({difference}, "
                                  "lebench.json's value first): move it out of the folder")


def _unreadable_shard(path: Path, error: Exception) -> InputError:
    # Committed shards are complete by construction: one that does not open was damaged
    # after the fact (a partial copy, a failing disk), and only the user can decide its fate.
    reason = os_reason(error) if isinstance(error, WRITE_ERRORS) else one_line(error)
    return StoreReadError(f"{path} is not a readable lebench shard ({reason}): "
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
    time when it was read (-1: unknown), the xxh3-64 hash of its bytes ("": unknown), the
    part (K, N) whose shards hold it, and the (path, size, mtime_ns) where a later run found
    the same bytes (storage/relocations.py)."""

    path: str
    size: int = -1
    mtime_ns: int = -1
    content_hash: str = ""
    part: tuple = (1, 1)
    also_at: tuple = ()


def shard_tables(out: Path, identity: Optional[dict] = None) -> list:
    """(ShardName, path, ShardTable) of every committed shard of OUT, each checked."""
    return [(name, path, read_shard_table(path, identity)) for name, path in committed_shards(out)]


def stored_sources(out: Path, identity: Optional[dict] = None, tables: Optional[list] = None) -> dict:
    """{id: StoredSource} of every committed shard of every part of OUT, each shard checked
    (read_shard_table; tables: shard_tables(out, identity), when the caller has read them). An
    id that a later shard of its part supersedes (an --update cut short before it removed the
    old copy) is the later shard's; any other id stored twice (a copied shard, shards of two
    parts) is refused. Where a later run found the same bytes under another path or time is in
    each one's `also_at`."""
    from .relocations import read_relocations

    named = shard_tables(out, identity) if tables is None else tables
    superseded = superseded_ids(named)
    stored, where = {}, {}
    for name, path, table in named:
        old = superseded.get(path, set())
        for utt_id, source, size, mtime, digest in zip(table.ids, table.sources, table.source_sizes,
                                                        table.source_mtimes_ns, table.source_xxh3):
            if utt_id in old:
                continue
            require_single(utt_id, where.setdefault(utt_id, path), path)
            stored[utt_id] = StoredSource(source, int(size), int(mtime), digest, (name.part, name.num_parts))
    for utt_id, places in read_relocations(out).items():
        known = stored.get(utt_id)
        if known is not None and known.content_hash:
            also_at = tuple((path, size, mtime) for path, size, mtime, digest in places if digest == known.content_hash)
            stored[utt_id] = replace(known, also_at=also_at)
    return stored


def superseded_ids(shards: list) -> dict:
    """{shard path: ids that a later shard of the same part replaces} for `shards`, a list of
    (ShardName, path, ShardTable) in storage order. An --update commits the new features
    before it removes the old ones (storage/update.py), replaces only ids whose source
    changed, and marks each shard it writes with the shards it supersedes: an id whose later
    copy comes from another source, in a shard that names this one, is an update cut short,
    and the later copy is the one. Any other copy (a shard copied under another name, a
    foreign shard of the same run) is not: readers refuse it."""
    holders = {}
    for position, (name, _, table) in enumerate(shards):
        for row, utt_id in enumerate(table.ids):
            holders.setdefault((name.part, name.num_parts, utt_id), []).append((position, row))
    found = {}
    for position, (name, path, table) in enumerate(shards):
        older = set()
        for row, utt_id in enumerate(table.ids):
            copies = holders[(name.part, name.num_parts, utt_id)]
            last, last_row = copies[-1]
            if last == position or _source_of(shards[last][2], last_row) == _source_of(table, row):
                continue
            if any(path.name in shards[later][2].supersedes for later, _ in copies if later > position):
                older.add(utt_id)
        if older:
            found[path] = older
    return found


def _source_of(table: ShardTable, row: int) -> tuple:
    xxh3 = table.source_xxh3[row] if table.source_xxh3 else ""
    return (table.sources[row], int(table.source_sizes[row]), int(table.source_mtimes_ns[row]), xxh3)


def stored_ids(out: Path, identity: Optional[dict] = None) -> set:
    """Ids in every committed shard of every part of OUT."""
    return set(stored_sources(out, identity))


def require_single(utt_id: str, first: Path, second: Path) -> None:
    if first != second:
        raise StoreIntegrityError(f"{utt_id} is stored twice ({first} and {second}): remove one of these shards")


def shard_ids(path: Path, identity: Optional[dict] = None) -> list:
    """The ids a committed shard holds, in its order."""
    return read_shard_table(path, identity).ids


def index_lines(shard: Path, table: ShardTable) -> list:
    """index-KofN.tsv's lines for a shard's utterances (`shard`: its path relative to OUT)."""
    return [
        index_line(utt_id, shard, position, table.frames[position], table.durations[position],
                   table.flags[position], table.sources[position])
        for position, utt_id in enumerate(table.ids)
    ]


def index_line(utt_id, shard, position, frames, duration, flags, source) -> str:
    """One line of index-KofN.tsv, its fields in INDEX_HEADER's order, tabs and newlines escaped."""
    fields = (utt_id, shard.as_posix(), position, int(frames), repr(float(duration)), flags,
              source)
    return "\t".join(tsv_field(value) for value in fields) + "\n"


def tsv_field(value) -> str:
    """VALUE as one TSV field: backslash, tab and line breaks escaped (\\, \t, \n, \r)."""
    text = str(value).replace("\\", "\\\\")
    return text.replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")
