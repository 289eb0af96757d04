"""Where an utterance's bytes come from: a file, a member of a tar, a cell of an arrow or
parquet table, or what a shell command writes (a Kaldi wav.scp pipe). `open_bytes` opens
any of them as one seekable binary file object, so that every check of loading.py and
headers.py (truncation, lying headers, NaN, channels) reads them alike.

Nothing is unpacked to disk: a tar member is a read-only window on the tar, a table cell is
read from the one record batch or row group that holds it (the table memory-mapped), and a
pipe's output is held in a SpooledTemporaryFile (memory, then a temporary file past 64 MB)."""

from __future__ import annotations

import errno
import io
import os
import signal
import stat
import subprocess
import tempfile
from contextlib import contextmanager
from typing import BinaryIO, Iterator

from ..errors import AudioError
from .sources import PipeCommand, TableRow, TarMember

_PIPE_SPOOL_BYTES = 64 * 1024**2  # a pipe's output past this goes to a temporary file
_COPY_BLOCK = 1024**2

_OS_REASONS = {
    errno.ENOENT: "no such file",
    errno.EISDIR: "is a directory",
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
    errno.ELOOP: "symlink loop",
}


def origin_of(source):
    """The source's origin, None for a plain file (a path given as a string included)."""
    return getattr(source, "origin", None)


def name_of(source) -> str:
    """The name messages give the audio: the path, or the source's printable name."""
    return os.fspath(getattr(source, "path", source))


@contextmanager
def open_bytes(source) -> Iterator[BinaryIO]:
    """The bytes of `source` (an AudioSource, or a path) as a seekable binary file object,
    closed on leaving. Raises AudioError (naming the audio) when they cannot be had."""
    origin = origin_of(source)
    name = name_of(source)
    if origin is None:
        with _opened_file(name, name) as file:
            yield file
    elif isinstance(origin, TarMember):
        with _opened_file(origin.tar, name) as tar:
            yield _window(tar, origin, name)
    elif isinstance(origin, TableRow):
        with _table_cell(origin, name) as cell:
            yield cell
    elif isinstance(origin, PipeCommand):
        with pipe_output(origin) as output:
            yield output
    else:
        raise AudioError(name, f"unknown origin {type(origin).__name__}")


def byte_size(file: BinaryIO) -> int:
    """The length of a seekable file object, its position left where it was."""
    position = file.tell()
    size = file.seek(0, io.SEEK_END)
    file.seek(position)
    return size


@contextmanager
def _opened_file(path, name) -> Iterator[BinaryIO]:
    try:
        file = open(path, "rb")
    except OSError as error:
        raise AudioError(name, f"cannot open {os.fsdecode(path)}: {(error.strerror or str(error)).lower()}") from None
    try:
        yield file
    finally:
        file.close()


class _Window(io.RawIOBase):
    """`size` bytes at `offset` of an open file, read-only, positions counted from `offset`."""

    def __init__(self, file: BinaryIO, offset: int, size: int):
        super().__init__()
        self._file, self._offset, self._size, self._position = file, offset, size, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._position

    def seek(self, position: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._position, io.SEEK_END: self._size}[whence]
        self._position = max(0, base + position)
        return self._position

    def readinto(self, buffer) -> int:
        count = max(0, min(len(buffer), self._size - self._position))
        if not count:
            return 0
        self._file.seek(self._offset + self._position)
        data = self._file.read(count)
        buffer[: len(data)] = data
        self._position += len(data)
        return len(data)


def _window(tar: BinaryIO, member: TarMember, name: str) -> BinaryIO:
    tar_size = tar.seek(0, io.SEEK_END)
    if member.offset < 0 or member.size < 0 or member.offset + member.size > tar_size:
        raise AudioError(name, f"{member.tar} ends at byte {tar_size}, before member {member.member} "
                               f"({member.size} bytes at {member.offset}): a truncated tar")
    return io.BufferedReader(_Window(tar, member.offset, member.size))


# ---- table rows (HuggingFace datasets) ------------------------------------------------------

@contextmanager
def _table_cell(row: TableRow, name: str) -> Iterator[BinaryIO]:
    try:
        value = _cell(row, name)
    except AudioError:
        raise
    except Exception as error:  # noqa: BLE001 - pyarrow's reasons for a damaged table are many
        from ..errors import one_line

        raise AudioError(name, f"cannot read row {row.row} of {row.file}: {one_line(error)}") from None
    if isinstance(value, dict):  # datasets' Audio feature: {bytes, path}
        if value.get("bytes") is not None:
            value = value["bytes"]
        elif value.get("path"):
            with _opened_file(os.path.join(os.path.dirname(row.file), value["path"]), name) as file:
                yield file
            return
        else:
            raise AudioError(name, f"row {row.row} of {row.file}: column {row.column} holds neither bytes nor a path")
    if not isinstance(value, (bytes, bytearray, memoryview)) or not len(value):
        raise AudioError(name, f"row {row.row} of {row.file}: column {row.column} holds no audio bytes")
    yield io.BytesIO(bytes(value))


def _cell(row: TableRow, name: str):
    """The Python value of the cell, read from only the batch or row group that holds it."""
    import pyarrow as pa

    if row.row < 0:
        raise AudioError(name, f"{row.file} has no row {row.row}")
    if row.kind == "parquet":
        import pyarrow.parquet as pq

        table = pq.ParquetFile(row.file)
        first = 0
        for group in range(table.metadata.num_row_groups):
            count = table.metadata.row_group(group).num_rows
            if row.row < first + count:
                column = table.read_row_group(group, columns=[row.column]).column(row.column)
                return column[row.row - first].as_py()
            first += count
    elif row.kind == "arrow":
        # Memory-mapped: the batches skipped on the way are never read into memory.
        with pa.memory_map(row.file) as mapped:
            first = 0
            for batch in pa.ipc.open_stream(mapped):
                if row.row < first + batch.num_rows:
                    return batch.column(batch.schema.get_field_index(row.column))[row.row - first].as_py()
                first += batch.num_rows
    else:
        raise AudioError(name, f"{row.file}: unknown table kind {row.kind!r} (expected arrow or parquet)")
    raise AudioError(name, f"{row.file} has no row {row.row} ({first} rows)")


# ---- pipes (Kaldi wav.scp lines ending in '|') ----------------------------------------------

def pipe_command(command: str) -> str:
    """The shell command of a wav.scp pipe entry: without its trailing '|'."""
    text = command.rstrip()
    return text[:-1].rstrip() if text.endswith("|") else text


@contextmanager
def pipe_output(pipe: PipeCommand) -> Iterator[BinaryIO]:
    """What the command writes on its standard output, as a seekable file. It runs with bash
    in its own process group, which is killed on KeyboardInterrupt, SIGTERM or any other
    exit before it ends: no shell or child of it outlives the run. A nonzero exit or no
    output is an AudioError naming the wav.scp line."""
    output = tempfile.SpooledTemporaryFile(max_size=_PIPE_SPOOL_BYTES)
    errors = tempfile.TemporaryFile()
    process = None
    previous = _raise_on_sigterm()  # before the shell starts: a SIGTERM from then on kills it too
    try:
        try:
            process = subprocess.Popen(["bash", "-c", pipe_command(pipe.command)], stdin=subprocess.DEVNULL,
                                       stdout=subprocess.PIPE, stderr=errors, start_new_session=True)
        except OSError as error:
            raise AudioError(pipe.where, f"cannot run bash: {(error.strerror or str(error)).lower()}") from None
        for block in iter(lambda: process.stdout.read(_COPY_BLOCK), b""):
            output.write(block)
        status = process.wait()
    except BaseException as error:
        if process is not None:
            _kill_group(process)
            process.stdout.close()
        output.close()
        errors.close()
        _restore_sigterm(previous)
        if isinstance(error, _Terminated):
            os.kill(os.getpid(), signal.SIGTERM)  # now with its default action: the process ends as it would have
        raise
    _restore_sigterm(previous)
    process.stdout.close()
    try:
        if status != 0:
            raise AudioError(pipe.where, f"command failed (exit {status}): {_last_line(errors)}")
        if not output.tell():
            raise AudioError(pipe.where, "command wrote no audio")
    except AudioError:
        output.close()
        raise
    finally:
        errors.close()
    output.seek(0)
    try:
        yield output
    finally:
        output.close()


class _Terminated(BaseException):
    """SIGTERM while a pipe runs: raised so that its process group is killed first, then
    the signal is sent again under its default action."""


def _raise_on_sigterm():
    import threading

    if threading.current_thread() is not threading.main_thread():
        return None
    previous = signal.getsignal(signal.SIGTERM)
    if previous not in (signal.SIG_DFL, None):
        return None  # the run's own handler (stop_signals) stops it: the except above still kills the group

    def terminated(signum, frame):
        raise _Terminated()

    signal.signal(signal.SIGTERM, terminated)
    return previous


def _restore_sigterm(previous) -> None:
    if previous is not None:
        signal.signal(signal.SIGTERM, previous)


def _kill_group(process: subprocess.Popen) -> None:
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    process.wait()


def _last_line(errors: BinaryIO) -> str:
    size = errors.seek(0, io.SEEK_END)
    errors.seek(max(0, size - 4096))
    lines = [line.strip() for line in errors.read().decode("utf-8", "replace").splitlines() if line.strip()]
    return lines[-1] if lines else "no message"


# ---- plain files ----------------------------------------------------------------------------

_NOT_REGULAR = {stat.S_IFIFO: "a FIFO", stat.S_IFSOCK: "a socket", stat.S_IFCHR: "a character device",
                stat.S_IFBLK: "a block device"}


def check_regular_file(path):
    """AudioError with the OS's reason unless `path` opens as a regular file of at least a byte."""
    # libsndfile reports every OS failure as "System error."; ask the OS for the reason.
    # O_NONBLOCK: opening a FIFO without a writer would otherwise wait forever.
    try:
        with open(path, "rb", opener=_open_nonblocking) as file:
            status = os.fstat(file.fileno())
    except OSError as error:
        raise AudioError(path, _OS_REASONS.get(error.errno) or lower_first(error.strerror or str(error))) from None
    if stat.S_ISDIR(status.st_mode):
        raise AudioError(path, "is a directory")
    if not stat.S_ISREG(status.st_mode):
        kind = _NOT_REGULAR.get(stat.S_IFMT(status.st_mode), "not a regular file")
        raise AudioError(path, f"not a regular file ({kind})")
    if status.st_size == 0:
        raise AudioError(path, "empty file (0 bytes)")


def _open_nonblocking(path, flags: int) -> int:
    return os.open(path, flags | os.O_NONBLOCK)


def lower_first(message: str) -> str:
    # Lowercase the first word only when it is not an acronym ("MPEG", "FLAC").
    return message[:1].lower() + message[1:] if message[1:2].islower() else message
