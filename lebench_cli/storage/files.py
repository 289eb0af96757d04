"""Files written whole (atomic replace, fsync) and the OS's words for a failed write."""

from __future__ import annotations

import errno
import os
import re
from pathlib import Path

# What h5py raises when HDF5 cannot write: OSError from the call that failed, RuntimeError
# from HDF5's own flushes (closing a file, releasing an object).
WRITE_ERRORS = (OSError, RuntimeError)
_ERRNO_IN_TEXT = re.compile(r"errno = (\d+)")


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


def os_reason(error: Exception) -> str:
    """The OS's words for a failed file operation ("No space left on device"), whether it
    comes from Python, or from h5py, whose text is HDF5's whole error record on many lines."""
    code = _errno_of(error)
    if code:
        reason = os.strerror(code)
        if code == errno.EFBIG:
            reason += " (a file size limit, see ulimit -f; a smaller --shard-size stays under it)"
        return reason
    text = getattr(error, "strerror", None) or str(error)
    return one_line(text.splitlines()[0] if text.strip() else type(error).__name__)


def _errno_of(error: Exception):
    code = getattr(error, "errno", None)
    if code:
        return code
    match = _ERRNO_IN_TEXT.search(str(error))
    return int(match[1]) if match else None


def is_disk_full(error: Exception) -> bool:
    """Whether a failed write ran out of space or quota."""
    return _errno_of(error) in (errno.ENOSPC, errno.EDQUOT)


def one_line(text) -> str:
    """Text (an error's, often on many lines) on one line, at most 300 characters."""
    return " ".join(str(text).split())[:300]
