"""Writing features into an output folder of HDF5 shards; docs/format.md specifies the format.

One writer per job-array part (K of N) holds `.lock-KofN`, writes `shards/part-KofN-S.h5.tmp`
and renames it once closed and synced: only renamed shards count, so a crash at any point
leaves readable shards and loses at most the shard being written.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import h5py
import numpy as np

from .errors import InputError, OutputError

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
_PART_FILE = re.compile(r"^(?:index|failures)-(\d+)of(\d+)\.")
_LAYER_NAME = re.compile(r"^(0|[1-9]\d*|cnn)$")
_CHUNK_BYTES = 256 * 1024
_FLUSH_BYTES = 64 * 1024**2  # utterances are buffered and written to HDF5 in blocks this large
_ROW_BYTES = 64  # ids, offsets, frames... per utterance, in the shard size estimate
_MISSING = object()
# What h5py raises when HDF5 cannot write: OSError from the call that failed, RuntimeError
# from HDF5's own flushes (closing a file, releasing an object).
_WRITE_ERRORS = (OSError, RuntimeError)
_ERRNO_IN_TEXT = re.compile(r"errno = (\d+)")
# What reading a damaged shard raises: h5py's errors, and missing or malformed datasets.
_SHARD_READ_ERRORS = (OSError, RuntimeError, KeyError, ValueError)


@dataclass
class StoredUtterance:
    """What the pipeline hands over per utterance."""

    utt_id: str
    source: str
    duration: float  # seconds
    frames: int
    states: dict  # layer ("12" or 12, "cnn") -> [frames, width] array
    means: Optional[dict] = None  # layer -> [width]; computed from states when None
    flags: str = ""  # "" or comma-separated, e.g. "padded"


@dataclass
class WriterOptions:
    """How features are stored; the caller also writes these into lebench.json."""

    layers: list[str]  # layer names: "0".."48" or "cnn"
    store_frames: bool = True  # layers/NAME/frames: every frame
    store_mean: bool = False  # layers/NAME/mean: one utterance-mean vector
    save_dtype: str = "float16"  # or "float32"
    shard_size_bytes: int = 2 * 1024**3  # uncompressed payload; compressed shards are smaller
    compression: Optional[str] = None  # None/"none", "gzip", "gzip:LEVEL" (0-9) or "lzf"
    commit_seconds: float = 300.0  # commit a shard this long after its first utterance
    part: int = 1  # job-array part K of num_parts N
    num_parts: int = 1


@dataclass
class WriterStats:
    utterances: int = 0
    frames: int = 0
    bytes: int = 0  # committed shard files, on disk
    shards: int = 0


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
            return ShardTable(
                ids=list(shard["ids"].asstr()[:]),
                offsets=shard["offsets"][:],
                frames=shard["frames"][:],
                durations=shard["durations"][:],
                sources=list(shard["sources"].asstr()[:]),
                flags=list(shard["flags"].asstr()[:]),
                layers={name: kinds & {"frames", "mean"} for name, kinds in layers.items()},
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


def stored_ids(out: Path) -> set:
    """Ids in every committed shard of every part of OUT."""
    ids = set()
    for _, path in committed_shards(out):
        ids.update(_ids_of(path))
    return ids


# -- the output folder ------------------------------------------------------------------


def prepare_output(out: Path, metadata: dict, overwrite: bool) -> None:
    """Creates OUT and writes lebench.json, or checks that OUT holds the same run (resume).

    metadata["identity"] decides whether two runs may share OUT. With overwrite, lebench's
    files are removed first (with a job array every part would remove the others' shards:
    clear OUT before launching the array instead). Parts of one array may call this
    concurrently with equal metadata.
    """
    out = Path(out)
    identity = _identity_of(metadata)
    require_writable_folder(out)
    if overwrite:
        remove_store(out)
    else:
        _require_same_run(out, identity)
    if not (out / METADATA_FILE).exists():
        text = json.dumps(metadata, indent=2, ensure_ascii=False) + "\n"
        try:
            write_atomic(out / METADATA_FILE, text)
        except OSError as error:
            raise OutputError(f"cannot write {out / METADATA_FILE}: {_reason(error)}") from error


def remove_store(out: Path) -> None:
    """Removes lebench's files from OUT; lock files stay (removing a held one breaks it)."""
    for pattern in STORE_FILES:
        for path in Path(out).glob(pattern):
            try:
                path.unlink()
            except OSError as error:
                raise OutputError(f"cannot remove {path}: {_reason(error)}") from error


def _identity_of(metadata: dict) -> dict:
    identity = metadata.get("identity")
    if not isinstance(identity, dict):
        raise ValueError("metadata needs an 'identity' dict")
    return json.loads(json.dumps(identity))  # compare as it will read back from JSON


def require_writable_folder(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise OutputError(f"{out} exists and is not a folder")
    probe = out / f".lebench-probe-{os.getpid()}"
    try:
        (out / SHARDS_DIR).mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as error:
        raise OutputError(f"cannot write to {out}: {_reason(error)}") from error


def _require_same_run(out: Path, identity: dict) -> None:
    path = out / METADATA_FILE
    if not path.exists():
        return
    try:
        stored = json.loads(path.read_text(encoding="utf-8")).get("identity")
    except (OSError, ValueError, AttributeError) as error:
        raise OutputError(f"{path} is not lebench metadata ({error}); "
                          "use --overwrite to replace it") from error
    if stored != identity:
        difference = _first_difference(stored if isinstance(stored, dict) else {}, identity)
        raise OutputError(f"{out} holds features of a different run ({difference}); "
                          "use --overwrite to replace them")


def _first_difference(stored: dict, new: dict) -> str:
    for key in [*new, *(key for key in stored if key not in new)]:
        old_value, new_value = stored.get(key, _MISSING), new.get(key, _MISSING)
        if old_value != new_value:
            return f"{key}: {_show(old_value)} != {_show(new_value)}"
    return "unknown difference"


def _show(value) -> str:
    if value is _MISSING:
        return "(none)"
    return value if isinstance(value, str) else json.dumps(value)


def write_atomic(path: Path, text: str) -> None:
    """Writes a whole file so that readers see the old or the new content, never a part."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as file:
            file.write(text)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, path)
    except OSError:
        tmp.unlink(missing_ok=True)
        raise
    fsync_path(path.parent)


def fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _reason(error: Exception) -> str:
    """The OS's words for a failed file operation ("No space left on device"), whether it
    comes from Python, or from h5py, whose text is HDF5's whole error record on many lines."""
    code = _errno_of(error)
    if code:
        reason = os.strerror(code)
        if code == errno.EFBIG:
            reason += " (a file size limit, see ulimit -f; a smaller --shard-size stays under it)"
        return reason
    text = getattr(error, "strerror", None) or str(error)
    return _one_line(text.splitlines()[0] if text.strip() else type(error).__name__)


def _errno_of(error: Exception):
    code = getattr(error, "errno", None)
    if code:
        return code
    match = _ERRNO_IN_TEXT.search(str(error))
    return int(match[1]) if match else None


def _is_disk_full(error: Exception) -> bool:
    return _errno_of(error) in (errno.ENOSPC, errno.EDQUOT)


def _one_line(text) -> str:
    return " ".join(str(text).split())[:300]


# -- the part lock ----------------------------------------------------------------------

_HELD_LOCKS: set = set()


class PartLock:
    """Exclusive right to write part K/N of OUT, held by flock on OUT/.lock-KofN.

    The kernel drops a flock when its holder dies (kill -9 included), so a lock file left
    behind never blocks a later run. The file is never deleted: a new file would be a
    different lock.
    """

    def __init__(self, out: Path, part: int = 1, num_parts: int = 1):
        self.out = Path(out)
        self.part, self.num_parts = part, num_parts
        self.path = self.out / f".lock-{part_tag(part, num_parts)}"
        self._fd = None

    def acquire(self) -> None:
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as error:
            raise OutputError(f"cannot create {self.path}: {_reason(error)}") from error
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _lock_holder(fd)
            os.close(fd)
            raise OutputError(f"another lebench extract is writing part {self.part}/"
                              f"{self.num_parts} of {self.out} (pid {holder})") from None
        except OSError as error:
            os.close(fd)
            raise OutputError(f"cannot lock {self.path}: {_reason(error)} "
                              "(the filesystem must support flock)") from error
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd
        _HELD_LOCKS.add(self._key())

    def release(self) -> None:
        if self._fd is None:
            return
        _HELD_LOCKS.discard(self._key())
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)
        self._fd = None

    def _key(self) -> tuple:
        return lock_key(self.out, self.part, self.num_parts)

    def __enter__(self) -> "PartLock":
        self.acquire()
        return self

    def __exit__(self, *exc_info) -> None:
        self.release()


def _lock_holder(fd: int, patience: float = 1.0) -> str:
    """The pid in a lock file; its holder writes it just after taking the lock, so a
    run that started at the same moment may find it empty for a moment."""
    deadline = time.monotonic() + patience
    while True:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip()
        if holder or time.monotonic() >= deadline:
            return holder or "unknown"
        time.sleep(0.01)


def lock_key(out: Path, part: int, num_parts: int) -> tuple:
    return (str(Path(out).resolve()), part, num_parts)


# -- the shard writer -------------------------------------------------------------------


@dataclass
class _Row:
    """One utterance of the open shard (its arrays: in the file, or in ShardWriter._pending)."""

    utt_id: str
    source: str
    duration: float
    frames: int
    flags: str
    offset: int  # first row in the layers/NAME/frames matrices


@dataclass
class _Stream:
    """An utterance being written in pieces."""

    row: _Row
    size: int
    written: int = 0
    sums: dict = field(default_factory=dict)  # layer name -> float64 sum, for the mean


class _Pending:
    """The open shard's rows that are not in the file yet: one buffer per dataset, reused
    from flush to flush. Each utterance is copied in once, converted to the save dtype on
    the way, and each dataset goes to HDF5 in one write (a copy per utterance and another
    to join them had cost as much as HDF5's own write)."""

    def __init__(self, dtype: np.dtype):
        self.dtype = dtype
        self.itemsize = dtype.itemsize
        self.buffers: dict = {}  # dataset path -> [capacity, width] in the save dtype
        self.used = 0  # utterances in the buffers
        self._rows: dict = {}  # dataset path -> rows used

    def fits(self, arrays: dict) -> bool:
        if not self.buffers:
            share = _FLUSH_BYTES // (len(arrays) * self.itemsize)
            self.buffers = {key: np.empty((max(1, share // array.shape[1]), array.shape[1]), self.dtype)
                            for key, array in arrays.items()}
        return all(self._rows.get(key, 0) + len(array) <= len(self.buffers[key]) for key, array in arrays.items())

    def put(self, arrays: dict, check) -> None:
        """Copies the arrays in (the caller may reuse its own); check(key, array, copy) may
        refuse one, and then none is kept."""
        for key, array in arrays.items():
            start = self._rows.get(key, 0)
            target = self.buffers[key][start: start + len(array)]
            with np.errstate(over="ignore"):  # check() reports it
                np.copyto(target, array, casting="unsafe")
            check(key, array, target)
        for key, array in arrays.items():
            self._rows[key] = self._rows.get(key, 0) + len(array)
        self.used += 1

    def clear(self) -> None:
        self._rows = {}
        self.used = 0


class ShardWriter:
    """Writes utterances of one part into shards; the caller holds that part's PartLock.

    A shard is committed when the next utterance would take it past shard_size_bytes,
    commit_seconds after its first utterance (checked on add), and on close. Leaving the
    `with` block on an exception (KeyboardInterrupt included) commits the finished
    utterances first.
    """

    def __init__(self, out: Path, options: WriterOptions):
        self.out = Path(out)
        self.options = options
        self.stats = WriterStats()
        self._tag = part_tag(options.part, options.num_parts)
        self._layers = _checked_layers(options)
        self._compression = compression_options(options.compression)
        if lock_key(self.out, options.part, options.num_parts) not in _HELD_LOCKS:
            raise RuntimeError(f"hold PartLock({self.out}, {options.part}, "
                               f"{options.num_parts}) while writing")
        self._shards = self.out / SHARDS_DIR
        self._widths = {}
        self._pending = _Pending(np.dtype(options.save_dtype))
        self._stream = None
        self._start_part()
        self._reset_shard()

    def _start_part(self) -> None:
        try:
            self._shards.mkdir(parents=True, exist_ok=True)
            for leftover in self._shards.glob(f"part-{self._tag}-*.h5.tmp"):
                leftover.unlink()
        except OSError as error:
            raise OutputError(f"cannot write to {self._shards}: {_reason(error)}") from error
        self._known, self._index_lines, last_sequence = set(), [], -1
        for name, path in committed_shards(self.out):
            if (name.part, name.num_parts) != (self.options.part, self.options.num_parts):
                self._known.update(_ids_of(path))
                continue
            table = read_shard_table(path)
            self._known.update(table.ids)
            self._index_lines.extend(_index_lines(path.relative_to(self.out), table))
            last_sequence = name.sequence
        self._next_sequence = last_sequence + 1
        self._write_index()  # an index lost by a crash after a rename is rebuilt here

    def add(self, utt: StoredUtterance) -> None:
        if utt.utt_id in self._known:
            raise OutputError(f"utterance {utt.utt_id} is already stored in {self.out}")
        arrays = self._arrays_of(utt)
        size = _ROW_BYTES + len(utt.utt_id) + len(utt.source) + len(utt.flags)
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

    # -- an utterance in pieces (long recordings) ------------------------------------------

    def begin_utterance(self, utt_id: str, source: str, duration: float, frames: int, flags: str = "") -> None:
        """Start an utterance whose frames arrive in pieces, so that memory holds one piece,
        not the recording: append_frames() each piece in order, then end_utterance()."""
        if utt_id in self._known:
            raise OutputError(f"utterance {utt_id} is already stored in {self.out}")
        if frames < 1:
            raise ValueError(f"{utt_id}: no frames to store")
        size = _ROW_BYTES + len(utt_id) + len(source) + len(flags) + frames * self._frame_bytes()
        if self._rows and self._size + size > self.options.shard_size_bytes:
            self.commit()
        self._flush()
        if self._file is None:
            self._open_shard()
        offset = self._next_offset()
        self._stream = _Stream(_Row(utt_id, str(source), float(duration), int(frames), flags, offset), size)

    def append_frames(self, states: dict) -> None:
        """The next frames of the open utterance: layer -> [n, width], n equal for all layers."""
        stream = self._stream
        if stream is None:
            raise RuntimeError("append_frames() without begin_utterance()")
        row = stream.row
        count = None
        try:
            for name in self._layers:
                piece = _layer_value(states, name)
                piece = None if piece is None else np.asarray(piece)
                if piece is None or piece.ndim != 2 or (count is not None and len(piece) != count):
                    raise ValueError(f"{row.utt_id}: bad piece for layer {name}")
                count = len(piece)
                if stream.written + count > row.frames:
                    raise ValueError(f"{row.utt_id}: more than the announced {row.frames} frames")
                if self.options.store_frames:
                    key = f"layers/{name}/frames"
                    self._check_width(row.utt_id, key, piece.shape[1])
                    self._write_block(key, row.offset + stream.written, self._converted(row.utt_id, key, piece))
                if self.options.store_mean:
                    stream.sums[name] = stream.sums.get(name, 0.0) + piece.sum(axis=0, dtype=np.float64)
        except _WRITE_ERRORS as error:
            self._fail(error)
        stream.written += count or 0

    def end_utterance(self) -> None:
        stream, self._stream = self._stream, None
        if stream is None:
            raise RuntimeError("end_utterance() without begin_utterance()")
        row = stream.row
        if stream.written != row.frames:
            raise ValueError(f"{row.utt_id}: {stream.written} frames written, {row.frames} announced")
        try:
            if self.options.store_mean:
                for name in self._layers:
                    key = f"layers/{name}/mean"
                    mean = (stream.sums[name] / row.frames).astype(np.float32)[None]
                    self._check_width(row.utt_id, key, mean.shape[1])
                    self._write_block(key, len(self._rows), self._converted(row.utt_id, key, mean))
        except _WRITE_ERRORS as error:
            self._fail(error)
        self._rows.append(row)
        self._flushed = len(self._rows)
        self._known.add(row.utt_id)
        self._size += stream.size
        if self._size >= self.options.shard_size_bytes or time.monotonic() - self._started >= self.options.commit_seconds:
            self.commit()

    def abort_utterance(self) -> None:
        """Give up the utterance being streamed: what it wrote is overwritten or trimmed."""
        self._stream = None

    def _frame_bytes(self) -> int:
        """Bytes per stored frame across layers, once widths are known (0 before)."""
        itemsize = np.dtype(self.options.save_dtype).itemsize
        return sum(width for key, width in self._widths.items() if key.endswith("/frames")) * itemsize

    def _check_width(self, utt_id: str, key: str, width: int) -> None:
        if self._widths.setdefault(key, width) != width:
            raise ValueError(f"{utt_id}: {key} is {width} wide, earlier utterances {self._widths[key]}")

    def _next_offset(self) -> int:
        """The first row of the frames matrices after the open shard's utterances."""
        return self._rows[-1].offset + self._rows[-1].frames if self._rows else 0

    def _trim_to_rows(self) -> None:
        """Drop what an unfinished streamed utterance wrote past the last row."""
        frames_end = self._next_offset()
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
        self._flush()
        try:
            self._trim_to_rows()
            self._write_table()
            self._file.close()
            fsync_path(self._tmp)
            os.replace(self._tmp, self._final)
            fsync_path(self._shards)
        except _WRITE_ERRORS as error:
            self._fail(error)
        rows, final = self._rows, self._final
        self._reset_shard()
        self._next_sequence += 1
        self._record_commit(rows, final)

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
                arrays[f"layers/{name}/frames"] = _frames_of(utt, name)
            if self.options.store_mean:
                arrays[f"layers/{name}/mean"] = _mean_of(utt, name)[None]
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
        """check(key, source, converted): float16 turns values past 65504 into inf without
        a warning; this makes that an error."""
        dtype = self._pending.dtype

        def check(key: str, source: np.ndarray, converted: np.ndarray) -> None:
            if dtype.itemsize < source.dtype.itemsize and np.isinf(converted).any():
                raise OutputError(f"{utt_id}: {key} holds values beyond the {dtype} range "
                                  f"(max {np.finfo(dtype).max:.0f}); use --save-dtype float32")
        return check

    def _write_rows(self, utt_id: str, arrays: dict) -> None:
        """One utterance written at once, after the buffered ones (the buffers are empty)."""
        offset = self._next_offset()
        converted = {key: self._converted(utt_id, key, array) for key, array in arrays.items()}
        try:
            for key, block in converted.items():
                self._write_block(key, offset if key.endswith("/frames") else len(self._rows), block)
        except _WRITE_ERRORS as error:
            self._fail(error)

    def _append(self, utt: StoredUtterance, size: int) -> None:
        offset = self._next_offset()
        row = _Row(utt.utt_id, str(utt.source), float(utt.duration), int(utt.frames), utt.flags, offset)
        self._rows.append(row)
        self._known.add(utt.utt_id)
        self._size += size

    # -- the open shard -----------------------------------------------------------------

    def _reset_shard(self) -> None:
        self._file = None
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
                                     "sequence": name.sequence})
        except _WRITE_ERRORS as error:
            self._fail(error)
        self._started = time.monotonic()

    def _flush(self) -> None:
        """Writes the buffered rows' arrays; safe to repeat after an interruption."""
        todo = self._rows[self._flushed:]
        if not todo:
            return
        frames = sum(row.frames for row in todo)
        try:
            for key, buffer in self._pending.buffers.items():
                if key.endswith("/frames"):
                    self._write_block(key, todo[0].offset, buffer[:frames])
                else:
                    self._write_block(key, self._flushed, buffer[: len(todo)])
        except _WRITE_ERRORS as error:
            self._fail(error)
        self._flushed += len(todo)
        self._pending.clear()

    def _write_block(self, key: str, start: int, block: np.ndarray) -> None:
        if key in self._file:
            dataset = self._file[key]
        else:
            width = block.shape[1]
            rows = max(1, _CHUNK_BYTES // (width * block.itemsize))
            dataset = self._file.create_dataset(key, shape=(0, width), maxshape=(None, width),
                                                dtype=block.dtype, chunks=(rows, width),
                                                **self._compression)
        end = start + len(block)
        if dataset.shape[0] < end:
            dataset.resize(end, axis=0)
        dataset[start:end] = block

    def _write_table(self) -> None:
        strings = h5py.string_dtype()
        rows = self._rows
        self._file["ids"] = np.array([row.utt_id for row in rows], dtype=strings)
        self._file["offsets"] = np.array([row.offset for row in rows], dtype=np.int64)
        self._file["frames"] = np.array([row.frames for row in rows], dtype=np.int64)
        self._file["durations"] = np.array([row.duration for row in rows], dtype=np.float64)
        self._file["sources"] = np.array([row.source for row in rows], dtype=strings)
        self._file["flags"] = np.array([row.flags for row in rows], dtype=strings)

    def _record_commit(self, rows: list, final: Path) -> None:
        self.stats.utterances += len(rows)
        self.stats.frames += sum(row.frames for row in rows)
        self.stats.bytes += final.stat().st_size
        self.stats.shards += 1
        shard = final.relative_to(self.out)
        self._index_lines.extend(
            _index_line(row.utt_id, shard, position, row.frames, row.duration, row.flags,
                        row.source)
            for position, row in enumerate(rows))
        self._write_index()

    def _write_index(self) -> None:
        path = self.out / f"index-{self._tag}.tsv"
        try:
            write_atomic(path, "".join(["\t".join(INDEX_HEADER) + "\n", *self._index_lines]))
        except OSError as error:
            raise OutputError(f"cannot write {path}: {_reason(error)}") from error

    def _fail(self, error: Exception):
        """Drops the open shard after a failed write; committed shards stay as they are."""
        shard = self._final.relative_to(self.out) if self._final else self._shards
        self._stream = None
        self._known.difference_update(row.utt_id for row in self._rows)
        self._discard_shard()
        what = "disk full while writing" if _is_disk_full(error) else "cannot write"
        raise OutputError(f"{what} {shard}: {_reason(error)}") from error

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


def _ids_of(path: Path) -> list:
    try:
        with open_h5(path) as shard:
            _check_shard(shard, path)
            return list(shard["ids"].asstr()[:])
    except _SHARD_READ_ERRORS as error:
        raise _unreadable_shard(path, error) from None


def _frames_of(utt: StoredUtterance, name: str) -> np.ndarray:
    states = _layer_value(utt.states, name)
    if states is None:
        raise ValueError(f"{utt.utt_id}: no hidden states for layer {name}")
    states = np.asarray(states)
    if states.ndim != 2 or states.shape[0] != utt.frames:
        raise ValueError(f"{utt.utt_id}: layer {name} states are {states.shape}, "
                         f"expected [{utt.frames}, width]")
    return states


def _mean_of(utt: StoredUtterance, name: str) -> np.ndarray:
    if utt.means is None:
        return _frames_of(utt, name).mean(axis=0, dtype=np.float64).astype(np.float32)
    mean = _layer_value(utt.means, name)
    if mean is None:
        raise ValueError(f"{utt.utt_id}: no mean vector for layer {name}")
    mean = np.asarray(mean)
    if mean.ndim != 1:
        raise ValueError(f"{utt.utt_id}: layer {name} mean is {mean.shape}, expected [width]")
    return mean


def _layer_value(values: dict, name: str):
    """values[name], or values[int(name)]: the encoder keys numbered layers by int."""
    if name in values:
        return values[name]
    return values.get(int(name)) if name.isdigit() else None


def _checked_layers(options: WriterOptions) -> list:
    if options.save_dtype not in SAVE_DTYPES:
        raise InputError(f"cannot save as {options.save_dtype!r}: use float16 or float32")
    if not (options.store_frames or options.store_mean):
        raise InputError("nothing to store: store frames, utterance means or both")
    if options.shard_size_bytes <= 0 or options.commit_seconds < 0:
        raise InputError("shard size must be positive and commit seconds not negative")
    layers = list(dict.fromkeys(str(layer) for layer in options.layers))
    if not layers:
        raise InputError("no layers to store")
    for name in layers:
        if not _LAYER_NAME.match(name):
            raise InputError(f"{name!r} is not a layer: use 0..L or cnn")
    return layers


def compression_options(spec: Optional[str]) -> dict:
    """h5py create_dataset arguments for "gzip", "gzip:LEVEL", "lzf", "none" or None."""
    if spec in (None, "", "none"):
        return {}
    # Shuffling the bytes of floats first makes them compress markedly better.
    if spec == "lzf":
        return {"compression": "lzf", "shuffle": True}
    name, _, level = spec.partition(":")
    if name == "gzip" and (level == "" or (level.isdigit() and int(level) <= 9)):
        return {"compression": "gzip", "compression_opts": int(level or 4), "shuffle": True}
    raise InputError(f"unknown compression {spec!r}: use gzip, gzip:LEVEL (0-9), lzf or none")


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


# -- failures ---------------------------------------------------------------------------


class FailureLog:
    """failures-KofN.jsonl: one {"id", "path", "reason"} per file this run could not use."""

    def __init__(self, out: Path, part: int = 1, num_parts: int = 1):
        self.path = Path(out) / f"failures-{part_tag(part, num_parts)}.jsonl"
        self.count = 0
        try:
            self._file = open(self.path, "w", encoding="utf-8")  # a new run starts it afresh
        except OSError as error:
            raise OutputError(f"cannot write {self.path}: {_reason(error)}") from error

    def record(self, utt_id: str, path, reason: str) -> None:
        entry = {"id": utt_id, "path": str(path), "reason": reason}
        try:
            self._file.write(json.dumps(entry, ensure_ascii=False) + "\n")
            self._file.flush()
        except OSError as error:
            raise OutputError(f"cannot write {self.path}: {_reason(error)}") from error
        self.count += 1

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> "FailureLog":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def read_failures(out: Path) -> list:
    """The failures of the last run of every part, in part order."""
    files = []
    for path in Path(out).glob("failures-*of*.jsonl"):
        match = _PART_FILE.match(path.name)
        if match:
            files.append(((int(match[1]), int(match[2])), path))
    failures = []
    for _, path in sorted(files):
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                failures.append(json.loads(line))
            except ValueError:
                continue  # a line torn by a crash
    return failures
