"""Replacing stored features (`lebench extract --update`), shard by shard.

The new features of a replaced id are committed first, into the part's next shards, like any
others, in shards whose `supersedes` mark names the old copies' shards. Then every older
shard of the part that holds a replaced id is written again without it, into `NAME.h5.tmp`,
each row carried over checked against its stored checksum (a damaged one is never hashed anew
as valid), and once all are written each is renamed over its `NAME.h5` (removed instead when
nothing is left in it); the part's index is rewritten last. Until an old shard is renamed over, the id is in two
shards of one part, and every reader takes the later shard's copy (`layout.superseded_ids`):
a crash at any point leaves the old or the new features of each id, never none and never both
served. The next run of the part finishes the removal before it writes (`remove_superseded`).
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import replace
from pathlib import Path
from typing import Optional

from ..errors import OutputError, StoreReadError
from .checksums import digest, mismatch_error
from .files import fsync_path, one_line, os_reason, write_atomic
from .layout import (INDEX_HEADER, committed_shards, index_lines, open_h5, parse_metadata, part_tag,
                     read_shard_table, superseded_ids)
from .locks import holds_part_lock
from .utterance import StoredUtterance, WriterOptions
from .writer import ShardWriter


def remove_superseded(out: Path, options: WriterOptions) -> int:
    """Removes from this part's shards every id that a later shard of the part replaces, and
    rewrites the part's index when it did; the number of ids removed. Every row carried over
    is checked against its stored checksum first, and the rewritten shards are all written
    before the first is renamed over: a damaged row is refused (StoreIntegrityError) with
    nothing renamed. The caller holds the part's PartLock."""
    out = Path(out)
    if not holds_part_lock(out, options.part, options.num_parts):
        raise RuntimeError(f"hold PartLock({out}, {options.part}, {options.num_parts}) while updating")
    shards = _part_shards(out, options)
    older = superseded_ids(shards)
    rewritten = []
    try:
        for name, path, table in shards:
            if path in older:
                rewritten.append((path, _rewrite_without(out, options, name, path, table, older[path])))
    except BaseException:
        for _, tmp in rewritten:
            if tmp is not None:
                tmp.unlink(missing_ok=True)
        raise
    for path, tmp in rewritten:
        try:
            if tmp is None:
                path.unlink()
            else:
                os.replace(tmp, path)
            fsync_path(path.parent)
        except OSError as error:
            raise OutputError(f"cannot replace {path}: {os_reason(error)}") from error
    if older:
        _write_part_index(out, options)
    return sum(len(ids) for ids in older.values())


def check_carried(out: Path, options: WriterOptions, replaced, tables: Optional[list] = None) -> None:
    """Before an --update writes anything: every row that rewriting the part's shards holding
    a `replaced` id will carry over matches its stored checksum (StoreIntegrityError naming
    shard, id and layer otherwise), so that a damaged row is never hashed anew as a valid one.
    tables: layout.shard_tables(out), when the caller has read them."""
    replaced = set(replaced)
    mine = (options.part, options.num_parts)
    shards = _part_shards(out, options) if tables is None else [
        (name, path, table) for name, path, table in tables if (name.part, name.num_parts) == mine]
    for _, path, table in shards:
        if replaced & set(table.ids):
            with open_h5(path) as shard:
                for position, utt_id in enumerate(table.ids):
                    if utt_id not in replaced:
                        _utterance_at(shard, path, table, position, options.layers, options)


def _part_shards(out: Path, options: WriterOptions) -> list:
    mine = (options.part, options.num_parts)
    return [(name, path, read_shard_table(path)) for name, path in committed_shards(out)
            if (name.part, name.num_parts) == mine]


def _rewrite_without(out: Path, options: WriterOptions, name, path: Path, table, dropped: set):
    """NAME.h5.tmp written, synced and checked, holding the shard's other ids; None when none
    is left (the shard is to be removed)."""
    kept = [position for position, utt_id in enumerate(table.ids) if utt_id not in dropped]
    if not kept:
        return None
    # One shard in, one shard out, under the old name: no commit before the last utterance.
    whole = replace(options, shard_size_bytes=2**62, commit_seconds=float("inf"))
    with open_h5(path) as shard, _Rewriter(out, whole, name.sequence, table.supersedes) as writer:
        for position in kept:
            writer.add(_utterance_at(shard, path, table, position, writer.layers, options))
    return writer.sealed


def _utterance_at(shard, path: Path, table, position: int, layers: list, options: WriterOptions) -> StoredUtterance:
    """The stored utterance, each of its layer blocks checked against its stored checksum."""
    start, frames, utt_id = int(table.offsets[position]), int(table.frames[position]), table.ids[position]
    states, means = {}, None
    with _read_errors(path, utt_id):
        if options.store_frames:
            states = {name: shard[f"layers/{name}/frames"][start: start + frames] for name in layers}
        if options.store_mean:
            means = {name: shard[f"layers/{name}/mean"][position: position + 1] for name in layers}
    for kind, blocks in (("frames", states), ("mean", means or {})):
        for name, block in blocks.items():
            stored = table.checksums.get(name, {}).get(kind)
            if stored is not None and digest(block) != int(stored[position]):
                raise mismatch_error(path, utt_id, name, kind)
    return StoredUtterance(
        utt_id=utt_id, source=table.sources[position], duration=float(table.durations[position]),
        frames=frames, states=states, means=None if means is None else {name: mean[0] for name, mean in means.items()},
        flags=table.flags[position], source_size=int(table.source_sizes[position]),
        source_mtime_ns=int(table.source_mtimes_ns[position]), source_xxh3=table.source_xxh3[position],
        metadata=parse_metadata(table.metadata[position]),
    )


@contextlib.contextmanager
def _read_errors(path: Path, utt_id: str):
    try:
        yield
    except (OSError, KeyError, RuntimeError) as error:
        reason = one_line(error.args[0] if isinstance(error, KeyError) and error.args else error)
        raise StoreReadError(f"read error in {path} (utterance {utt_id}): {reason}: the shard is damaged "
                             "(lebench verify --repair moves it aside)") from None


class _Rewriter(ShardWriter):
    """A ShardWriter that writes one shard under a given sequence number (the shard it
    replaces) into its .tmp, sealed but not renamed (`sealed`: its path), and leaves the
    part's other shards and its index alone. The shard keeps its own `supersedes` mark."""

    def __init__(self, out: Path, options: WriterOptions, sequence: int, supersedes: tuple):
        self._sequence, self._marks, self.sealed = sequence, list(supersedes), None
        super().__init__(out, options)

    @property
    def layers(self) -> list:
        return self._layers

    def _start_part(self) -> None:
        # Its ids are written again, under its name; the other shards' .tmp files are the
        # other rewrites of this update, not leftovers.
        self._known, self._index_lines, self._next_sequence = set(), [], self._sequence
        self._holders, self._replaced = {}, {}

    def _supersedes(self, rows: list) -> list:
        return self._marks

    def commit(self) -> None:
        self._stream = None
        if self._rows:
            self._seal()
            self.sealed = self._tmp
            self._tmp = None  # kept: remove_superseded renames it
        self._discard_shard()

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc is None:
            self.close()
        else:  # a partial shard must never be renamed over a whole one
            self._discard_shard()


def _write_part_index(out: Path, options: WriterOptions) -> None:
    mine = (options.part, options.num_parts)
    lines = []
    for name, path in committed_shards(out):
        if (name.part, name.num_parts) == mine:
            lines.extend(index_lines(path.relative_to(out), read_shard_table(path)))
    index = out / f"index-{part_tag(*mine)}.tsv"
    try:
        write_atomic(index, "".join(["\t".join(INDEX_HEADER) + "\n", *lines]))
    except OSError as error:
        raise OutputError(f"cannot write {index}: {os_reason(error)}") from error

