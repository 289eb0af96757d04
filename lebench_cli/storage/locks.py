"""One writer per part: PartLock, an flock on OUT/.lock-KofN."""

from __future__ import annotations

import errno
import fcntl
import os
import time
from pathlib import Path

from ..errors import OutputError
from .files import _reason
from .layout import part_tag

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
            if error.errno in _NO_LOCKS:
                raise OutputError(f"cannot lock {self.path}: {_reason(error)}: {_locking_advice(self.out)}") from error
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


# What flock raises where the filesystem has no locks: NFSv3 without lockd (ENOLCK), Lustre
# mounted without -o flock (ENOSYS), FUSE and others (EOPNOTSUPP).
_NO_LOCKS = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOTSUP, errno.ENOSYS}

_FIXES = {
    "lustre": "mount it with -o flock (-o localflock locks within one node only)",
    "nfs": "NFSv3 needs the lock daemon: mount without -o nolock, or use NFSv4",
    "nfs4": "ask for locks through the server (mount without -o local_lock=...)",
}


def _locking_advice(out: Path) -> str:
    """Which filesystem refused the lock, and how to get one: lebench keeps one writer per
    part only with working locks, so it stops rather than risk two writers."""
    from .mounts import mount_of

    mount = mount_of(out)
    where = f"a {mount.fs_type} filesystem ({mount.mount_point})" if mount else "a filesystem"
    fix = _FIXES.get(mount.fs_type if mount else "", "")
    return (f"{out} is on {where} without flock support; {fix + ', or ' if fix else ''}"
            "write the output to a filesystem with locks (local disk, NFSv4, Lustre with -o flock, GPFS)")


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
