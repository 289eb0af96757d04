"""Replacing stored features (`lebench extract --update`), shard by shard.

The new features of a replaced id are committed first, into the part's next shards, like any
others. Then every older shard of the part that holds a replaced id is written again without
it, into `NAME.h5.tmp`, and renamed over `NAME.h5` (removed instead when nothing is left in
it); the part's index is rewritten last. Until an old shard is renamed over, the id is in two
shards of one part, and every reader takes the later shard's copy (`layout.superseded_ids`):
a crash at any point leaves the old or the new features of each id, never none and never both
served. The next run of the part finishes the removal before it writes (`remove_superseded`).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from ..errors import OutputError
from .files import _reason, fsync_path, write_atomic
from .layout import (INDEX_HEADER, _index_lines, committed_shards, open_h5, part_tag,
                     read_shard_table, superseded_ids)
from .locks import _HELD_LOCKS, lock_key
from .utterance import StoredUtterance, WriterOptions
from .writer import ShardWriter


def remove_superseded(out: Path, options: WriterOptions) -> int:
    """Removes from this part's shards every id that a later shard of the part also holds, and
    rewrites the part's index when it did; the number of ids removed. The caller holds the
    part's PartLock."""
    out = Path(out)
    if lock_key(out, options.part, options.num_parts) not in _HELD_LOCKS:
        raise RuntimeError(f"hold PartLock({out}, {options.part}, {options.num_parts}) while updating")
    mine = (options.part, options.num_parts)
    shards = [(name, path, read_shard_table(path)) for name, path in committed_shards(out)
              if (name.part, name.num_parts) == mine]
    older = superseded_ids(shards)
    for name, path, _ in shards:
        if path in older:
            _rewrite_without(out, options, name, path, older[path])
    if older:
        _write_part_index(out, options)
    return sum(len(ids) for ids in older.values())


def _rewrite_without(out: Path, options: WriterOptions, name, path: Path, dropped: set) -> None:
    table = read_shard_table(path)
    kept = [position for position, utt_id in enumerate(table.ids) if utt_id not in dropped]
    if not kept:
        try:
            path.unlink()
            fsync_path(path.parent)
        except OSError as error:
            raise OutputError(f"cannot remove {path}: {_reason(error)}") from error
        return
    # One shard in, one shard out, under the old name: no commit before the last utterance.
    whole = replace(options, shard_size_bytes=2**62, commit_seconds=float("inf"))
    with open_h5(path) as shard, _Rewriter(out, whole, name.sequence) as writer:
        for position in kept:
            writer.add(_utterance_at(shard, table, position, writer.layers, options))


def _utterance_at(shard, table, position: int, layers: list, options: WriterOptions) -> StoredUtterance:
    start, frames = int(table.offsets[position]), int(table.frames[position])
    states, means = {}, None
    if options.store_frames:
        states = {name: shard[f"layers/{name}/frames"][start: start + frames] for name in layers}
    if options.store_mean:
        means = {name: shard[f"layers/{name}/mean"][position] for name in layers}
    return StoredUtterance(
        utt_id=table.ids[position], source=table.sources[position], duration=float(table.durations[position]),
        frames=frames, states=states, means=means, flags=table.flags[position],
        source_size=int(table.source_sizes[position]), source_mtime_ns=int(table.source_mtimes_ns[position]),
        source_xxh3=table.source_xxh3[position],
    )


class _Rewriter(ShardWriter):
    """A ShardWriter that writes one shard under a given sequence number (the shard it
    replaces) and leaves the part's other shards and its index alone."""

    def __init__(self, out: Path, options: WriterOptions, sequence: int):
        self._sequence = sequence
        super().__init__(out, options)

    @property
    def layers(self) -> list:
        return self._layers

    def _start_part(self) -> None:
        super()._start_part()
        self._known, self._next_sequence = set(), self._sequence  # its ids are written again, under its name

    def _record_commit(self, rows: list, final: Path) -> None:
        pass  # the index is rewritten once every shard is

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
            lines.extend(_index_lines(path.relative_to(out), read_shard_table(path)))
    index = out / f"index-{part_tag(*mine)}.tsv"
    try:
        write_atomic(index, "".join(["\t".join(INDEX_HEADER) + "\n", *lines]))
    except OSError as error:
        raise OutputError(f"cannot write {index}: {_reason(error)}") from error

