"""Writing features into an output folder of HDF5 shards; docs/format.md specifies the format.

One writer per job-array part (K of N) holds `.lock-KofN`, writes `shards/part-KofN-S.h5.tmp`
and renames it once closed and synced: only renamed shards count, so a crash at any point
leaves readable shards and loses at most the shard being written.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from ..errors import OutputError
from .buffers import SHARD_ROW_BYTES, PendingArrays, ShardRow
from .checksums import COMPUTE_ATTR, IDENTITY_ATTR, SUPERSEDES_ATTR, digest
from .files import WRITE_ERRORS, fsync_path, is_disk_full, os_reason, write_atomic
from .identity import identity_text
from .layout import (FORMAT, FORMAT_VERSION, INDEX_HEADER, SHARDS_DIR, ShardName, committed_shards, index_line,
                     index_lines, open_h5, part_tag, read_shard_table, shard_ids)
from .streaming import StreamedUtterances
from .tables import run_identity, write_tables
from .locks import holds_part_lock
from .placement import aligned, frames_chunk_rows, write_chunk_tables, write_rows
from .sizing import chunk_rows
from .utterance import (StoredUtterance, WriterOptions, checked_layers, compression_options, frames_of, mean_of,
                        range_check)



@dataclass
class WriterStats:
    utterances: int = 0
    frames: int = 0
    bytes: int = 0  # committed shard files, on disk
    shards: int = 0


class ShardWriter(StreamedUtterances):
    """Writes utterances of one part into shards; the caller holds that part's PartLock.

    A shard is committed when the next utterance would take it past shard_size_bytes,
    commit_seconds after its first utterance (checked on add), and on close. Leaving the
    `with` block on an exception (KeyboardInterrupt included) commits the finished
    utterances first.
    """

    def __init__(self, out: Path, options: WriterOptions, tables: Optional[list] = None):
        """tables: (name, path, ShardTable) of OUT's shards as the caller just read them
        (layout.shard_tables, under this part's lock): not read again; shards not in it are."""
        self.out = Path(out)
        self._given = {path: table for _, path, table in tables or ()}
        self.options = options
        self.stats = WriterStats()
        self._tag = part_tag(options.part, options.num_parts)
        self._layers = checked_layers(options)
        self._compression = compression_options(options.compression)
        if not holds_part_lock(self.out, options.part, options.num_parts):
            raise RuntimeError(f"hold PartLock({self.out}, {options.part}, "
                               f"{options.num_parts}) while writing")
        self._shards = self.out / SHARDS_DIR
        self._identity = run_identity(self.out)
        self._widths = {}
        self._pending = PendingArrays(np.dtype(options.save_dtype))
        self._stream = None
        self._direct_checksums = {}  # of the utterance _write_rows just wrote
        self._start_part()
        self._reset_shard()

    def _start_part(self) -> None:
        try:
            self._shards.mkdir(parents=True, exist_ok=True)
            for leftover in self._shards.glob(f"part-{self._tag}-*.h5.tmp"):
                leftover.unlink()
        except OSError as error:
            raise OutputError(f"cannot write to {self._shards}: {os_reason(error)}") from error
        self._known, self._index_lines, last_sequence = set(), [], -1
        self._holders, self._replaced = {}, {}  # id -> the file name of this part's shard holding it
        for name, path in committed_shards(self.out):
            given = self._given.get(path)
            if (name.part, name.num_parts) != (self.options.part, self.options.num_parts):
                self._known.update(given.ids if given is not None else shard_ids(path, self._identity))
                continue
            table = given if given is not None else read_shard_table(path, self._identity)
            self._known.update(table.ids)
            self._holders.update(dict.fromkeys(table.ids, name.file_name))
            self._index_lines.extend(index_lines(path.relative_to(self.out), table))
            last_sequence = name.sequence
        self._next_sequence = last_sequence + 1
        self._given = {}  # read once; the run's own shards come through _record_commit
        self._write_index()  # an index lost by a crash after a rename is rebuilt here

    def add(self, utt: StoredUtterance) -> None:
        if utt.utt_id in self._known:
            raise OutputError(f"utterance {utt.utt_id} is already stored in {self.out}")
        arrays = self._arrays_of(utt)
        size = SHARD_ROW_BYTES + len(utt.utt_id) + len(utt.source) + len(utt.flags)
        size += sum(len(array) * array.shape[1] for array in arrays.values()) * self._pending.itemsize
        if self._rows and self._size + size > self.options.shard_size_bytes:
            self.commit()
        if self._file is None:
            self._open_shard()
        if not self._pending.fits(arrays):
            self._flush()
        if self._pending.fits(arrays):
            self._pending.put(arrays, self._range_check(utt.utt_id))
        else:  # larger than the buffers: straight to the file
            self._write_rows(utt.utt_id, arrays)
        self._append(utt, size)
        if not self._pending.used:
            self._flushed = len(self._rows)
        elapsed = time.monotonic() - self._started
        if self._size >= self.options.shard_size_bytes or elapsed >= self.options.commit_seconds:
            self.commit()

    def replace(self, ids) -> None:
        """Let `ids`, stored in this part's shards, be stored again (update.py removes the
        old copies once the new ones are committed). Each shard holding a new copy names the
        shards of the old ones (its `supersedes` mark): only such a shard supersedes another."""
        ids = set(ids)
        self._known.difference_update(ids)
        self._replaced.update({utt_id: self._holders[utt_id] for utt_id in ids if utt_id in self._holders})

    def _supersedes(self, rows: list) -> list:
        """The file names of the shards whose copies of `rows`' ids these rows replace."""
        return sorted({self._replaced[row.utt_id] for row in rows if row.utt_id in self._replaced})

    def _frame_bytes(self) -> int:
        """Bytes per stored frame across layers, once widths are known (0 before)."""
        itemsize = np.dtype(self.options.save_dtype).itemsize
        return sum(width for key, width in self._widths.items() if key.endswith("/frames")) * itemsize

    def _check_width(self, utt_id: str, key: str, width: int) -> None:
        if self._widths.setdefault(key, width) != width:
            raise ValueError(f"{utt_id}: {key} is {width} wide, earlier utterances {self._widths[key]}")

    def _next_offset(self) -> int:
        """The first row of the frames matrices for the next utterance: the first chunk
        boundary after the open shard's utterances (see placement.py)."""
        return aligned(self._frames_end(), self._frames_chunk_rows()) if self._rows else 0

    def _frames_end(self) -> int:
        return self._rows[-1].offset + self._rows[-1].frames if self._rows else 0

    def _frames_chunk_rows(self) -> int:
        widths = [width for key, width in self._widths.items() if key.endswith("/frames")]
        return frames_chunk_rows(widths, self._pending.itemsize) if widths else 1

    def _trim_to_rows(self) -> None:
        """Drop what an unfinished streamed utterance wrote past the last row."""
        frames_end = self._frames_end()
        for name in self._layers:
            for key, end in ((f"layers/{name}/frames", frames_end), (f"layers/{name}/mean", len(self._rows))):
                if key in self._file and self._file[key].shape[0] > end:
                    self._file[key].resize(end, axis=0)

    def commit(self) -> None:
        """Closes, syncs and renames the open shard, then rewrites index-KofN.tsv. An
        utterance still being streamed is dropped (it is not finished)."""
        self._stream = None
        if not self._rows:
            self._discard_shard()
            return
        self._seal()
        try:
            os.replace(self._tmp, self._final)
            fsync_path(self._shards)
        except WRITE_ERRORS as error:
            self._fail(error)
        rows, final = self._rows, self._final
        self._reset_shard()
        self._next_sequence += 1
        self._record_commit(rows, final)

    def _seal(self) -> None:
        """The open shard's last rows, tables and chunk tables written, the file closed and
        synced under its .tmp name."""
        self._flush(complete=True)
        try:
            self._trim_to_rows()
            self._write_table()
            write_chunk_tables(self._file, self._layers)
            self._file.close()
            fsync_path(self._tmp)
        except WRITE_ERRORS as error:
            self._fail(error)

    def close(self) -> None:
        self.commit()

    def __enter__(self) -> "ShardWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc is None:
            self.close()
            return
        try:
            self.close()
        except Exception as error:  # the original error is the one to report
            if hasattr(exc, "add_note"):  # Python >= 3.11
                exc.add_note(f"lebench could not commit the pending shard: {error}")

    # -- one utterance ------------------------------------------------------------------

    def _arrays_of(self, utt: StoredUtterance) -> dict:
        if not utt.utt_id:
            raise ValueError("an utterance needs a non-empty id")
        if utt.frames < 1:
            raise ValueError(f"{utt.utt_id}: no frames to store")
        arrays = {}
        for name in self._layers:
            if self.options.store_frames:
                arrays[f"layers/{name}/frames"] = frames_of(utt, name)
            if self.options.store_mean:
                arrays[f"layers/{name}/mean"] = mean_of(utt, name)[None]
        for key, array in arrays.items():
            if self._widths.setdefault(key, array.shape[1]) != array.shape[1]:
                raise ValueError(f"{utt.utt_id}: {key} is {array.shape[1]} wide, "
                                 f"earlier utterances {self._widths[key]}")
        return arrays

    def _converted(self, utt_id: str, key: str, array: np.ndarray) -> np.ndarray:
        with np.errstate(over="ignore"):  # the check reports it
            converted = array.astype(self._pending.dtype)
        self._range_check(utt_id)(key, array, converted)
        return converted

    def _range_check(self, utt_id: str):
        return range_check(utt_id, self._pending.dtype)

    def _write_rows(self, utt_id: str, arrays: dict) -> None:
        """One utterance written at once, after the buffered ones (the buffers are empty)."""
        offset = self._next_offset()
        converted = {key: self._converted(utt_id, key, array) for key, array in arrays.items()}
        try:
            for key, block in converted.items():
                self._write_block(key, offset if key.endswith("/frames") else len(self._rows), block)
        except WRITE_ERRORS as error:
            self._fail(error)
        self._direct_checksums = {key: digest(block) for key, block in converted.items()}

    def _append(self, utt: StoredUtterance, size: int) -> None:
        offset = self._next_offset()
        row = ShardRow(utt.utt_id, str(utt.source), float(utt.duration), int(utt.frames), utt.flags, offset,
                       int(utt.source_size), int(utt.source_mtime_ns), utt.source_xxh3,
                       checksums=self._direct_checksums, metadata=utt.metadata)
        self._direct_checksums = {}  # buffered rows get theirs when flushed
        self._rows.append(row)
        self._known.add(utt.utt_id)
        self._size += size

    # -- the open shard -----------------------------------------------------------------

    def _reset_shard(self) -> None:
        self._file = None
        self._datasets, self._lengths = {}, {}  # the open shard's layer datasets, their rows
        self._tmp = self._final = None
        self._rows = []
        self._flushed = 0  # rows whose arrays are in the file; the others' are in self._pending
        self._pending.clear()
        self._size = 0
        self._started = 0.0

    def _open_shard(self) -> None:
        name = ShardName(self.options.part, self.options.num_parts, self._next_sequence)
        self._final = self._shards / name.file_name
        self._tmp = self._shards / f"{name.file_name}.tmp"
        try:
            # No raw-data chunk cache: a write that fails (disk full, quota, file size limit)
            # then fails in the call that made it, as an OSError. With a cache it fails later,
            # inside HDF5's own flush, and h5py crashes (SIGSEGV) releasing the file.
            self._file = open_h5(self._tmp, "w", rdcc_nbytes=0)
            self._file.attrs.update({"format": FORMAT, "format_version": FORMAT_VERSION,
                                     "part": name.part, "num_parts": name.num_parts,
                                     "sequence": name.sequence, IDENTITY_ATTR: identity_text(self._identity)})
            if self.options.compute is not None:
                self._file.attrs[COMPUTE_ATTR] = json.dumps(self.options.compute, sort_keys=True)
        except WRITE_ERRORS as error:
            self._fail(error)
        self._started = time.monotonic()

    def _flush(self, complete: bool = False) -> None:
        """Writes the buffered rows' arrays; safe to repeat after an interruption. complete:
        these are the shard's last rows (commit), so a dataset made now is made to fit them."""
        todo = self._rows[self._flushed:]
        if not todo:
            return
        try:
            frames_keys = [key for key in self._pending.buffers if key.endswith("/frames")]
            first = 0
            for row in todo:  # utterance by utterance, layer after layer: see placement.py
                for key in frames_keys:
                    block = self._pending.buffers[key][first: first + row.frames]
                    self._write_block(key, row.offset, block)
                    row.checksums[key] = digest(block)
                first += row.frames
            for key, buffer in self._pending.buffers.items():
                if not key.endswith("/frames"):
                    self._write_block(key, self._flushed, buffer[: len(todo)], complete)
                    for position, row in enumerate(todo):
                        row.checksums[key] = digest(buffer[position: position + 1])
        except WRITE_ERRORS as error:
            self._fail(error)
        self._flushed += len(todo)
        self._pending.clear()

    def _write_block(self, key: str, start: int, block: np.ndarray, complete: bool = False) -> None:
        # Datasets and their lengths are kept: looking them up in h5py costs more than
        # writing a short utterance, and each utterance's layers are written one by one.
        dataset = self._datasets.get(key)
        if dataset is None and key in self._file:  # made by a write that an interruption cut short
            dataset = self._file[key]
        elif dataset is None:
            width = block.shape[1]
            if key.endswith("/frames"):
                rows = self._frames_chunk_rows()
            else:
                rows = chunk_rows(width, block.itemsize, start + len(block) if complete else None)
            dataset = self._file.create_dataset(key, shape=(0, width), maxshape=(None, width),
                                                dtype=block.dtype, chunks=(rows, width),
                                                **self._compression)
        if key not in self._datasets:
            self._datasets[key], self._lengths[key] = dataset, dataset.shape[0]
        end = start + len(block)
        if self._lengths[key] < end:
            dataset.resize(end, axis=0)
            self._lengths[key] = end
        write_rows(dataset, start, block)

    def _write_table(self) -> None:
        write_tables(self._file, self._rows, self._layers, self.options, self._identity)
        supersedes = self._supersedes(self._rows)
        if supersedes:
            self._file.attrs[SUPERSEDES_ATTR] = json.dumps(supersedes)

    def _record_commit(self, rows: list, final: Path) -> None:
        self.stats.utterances += len(rows)
        self.stats.frames += sum(row.frames for row in rows)
        self.stats.bytes += final.stat().st_size
        self.stats.shards += 1
        shard = final.relative_to(self.out)
        self._index_lines.extend(
            index_line(row.utt_id, shard, position, row.frames, row.duration, row.flags, row.source)
            for position, row in enumerate(rows))
        self._write_index()

    def _write_index(self) -> None:
        path = self.out / f"index-{self._tag}.tsv"
        try:
            write_atomic(path, "".join(["\t".join(INDEX_HEADER) + "\n", *self._index_lines]))
        except OSError as error:
            raise OutputError(f"cannot write {path}: {os_reason(error)}") from error

    def _fail(self, error: Exception):
        """Drops the open shard after a failed write; committed shards stay as they are."""
        shard = self._final.relative_to(self.out) if self._final else self._shards
        self._stream = None
        self._known.difference_update(row.utt_id for row in self._rows)
        self._discard_shard()
        what = "disk full while writing" if is_disk_full(error) else "cannot write"
        raise OutputError(f"{what} {shard}: {os_reason(error)}") from error

    def _discard_shard(self) -> None:
        if self._file is not None:
            try:
                self._file.close()
            except Exception:  # a file that failed to write may fail to close: it goes anyway
                pass
        if self._tmp is not None:
            try:
                self._tmp.unlink(missing_ok=True)
            except OSError:
                pass  # removed on the next start of this part
        self._reset_shard()


