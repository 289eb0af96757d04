"""One writer per part (PartLock, an flock on OUT/.lock-KofN), one store-wide lock
(StoreLock, OUT/.lock-store): every writer holds it shared, --overwrite exclusive; and one
export per destination (ExportLock, DEST/.lock-export; `lebench verify DEST` holds it shared)."""

from __future__ import annotations

import errno
import fcntl
import os
import re
import time
from contextlib import ExitStack, contextmanager
from pathlib import Path

from ..errors import OutputError
from .files import os_reason
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
        fd = _open_lock_file(self.path)
        _flock_or_refuse(fd, self.path, self.out, fcntl.LOCK_EX, lambda fd: OutputError(
            f"another lebench extract is writing part {self.part}/{self.num_parts} of {self.out} "
            f"(pid {lock_holder(fd)})"))
        _write_holder(fd)
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


def lock_holder(fd: int, patience: float = 1.0) -> str:
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


def holds_part_lock(out: Path, part: int, num_parts: int) -> bool:
    """Whether this process holds PartLock(out, part, num_parts): what writing the part needs."""
    return lock_key(out, part, num_parts) in _HELD_LOCKS


STORE_LOCK = ".lock-store"
_PART_LOCK = re.compile(r"^\.lock-(\d+)of(\d+)$")


class StoreLock:
    """The right to write into OUT (shared: any number of parts at once) or to replace its
    content (exclusive: no part writes, none starts). Every writer takes it, shared, before
    it reads OUT's metadata and keeps it until it ends; --overwrite takes it exclusive
    before it removes anything, so a writer that starts during the removal is refused
    instead of writing into a folder being emptied."""

    def __init__(self, out: Path, exclusive: bool):
        self.out, self.exclusive = Path(out), exclusive
        self.path = self.out / STORE_LOCK
        self._fd = None

    def acquire(self) -> None:
        fd = _open_lock_file(self.path)
        _flock_or_refuse(fd, self.path, self.out, fcntl.LOCK_EX if self.exclusive else fcntl.LOCK_SH,
                         lambda fd: self._refusal())
        if self.exclusive:  # the sole holder: its pid tells a refused writer who replaces OUT
            _write_holder(fd)
        self._fd = fd

    def make_exclusive(self) -> None:
        """Upgrades a shared hold (to finish a removal a crash cut short); refused while
        another run holds it."""
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.release()  # a failed conversion has dropped the shared hold too
            raise OutputError(f"{self.out} holds a removal that a crash cut short and another lebench extract "
                              "is using it: rerun when that run ends") from None
        self.exclusive = True
        _write_holder(self._fd)

    def make_shared(self) -> None:
        """Back to a shared hold. Linux drops a flock before it converts it: an --overwrite that
        took OUT in between makes this refuse, rather than wait and write into its store."""
        self.exclusive = False
        try:
            fcntl.flock(self._fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            self.release()
            raise self._refusal() from None

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def _refusal(self) -> OutputError:
        if not self.exclusive:
            holder = _lock_holder_of(self.path)
            return OutputError(f"lebench extract --overwrite (pid {holder}) is replacing the content of "
                               f"{self.out}: rerun when it ends")
        busy = live_part(self.out)
        if busy is None:
            return OutputError(f"another lebench extract is using {self.out}: --overwrite removed nothing")
        part, num_parts, holder = busy
        return OutputError(f"another lebench extract is writing part {part}/{num_parts} of {self.out} "
                           f"(pid {holder}): --overwrite removed nothing")

    def __enter__(self) -> "StoreLock":
        self.acquire()
        return self

    def __exit__(self, *exc_info) -> None:
        self.release()


EXPORT_LOCK = ".lock-export"


class ExportLock:
    """Exclusive right to write an export into DEST (DEST/.lock-export): two exports into one
    folder would interleave their files and their records. A DEST that the holder made and
    left empty (the export was refused) goes again on release, lock file included, so that a
    refused export leaves nothing behind; a run that opened that lock file before it went sees
    that its file is no longer DEST's and takes the new one.

    shared: the right to read an existing export (`lebench verify DEST`): any number at once,
    none while an export writes."""

    def __init__(self, destination: Path, shared: bool = False):
        self.destination = Path(destination)
        self.path = self.destination / EXPORT_LOCK
        self.shared = shared
        self._fd, self._made = None, False

    def acquire(self) -> None:
        if self.shared:
            self._acquire_shared()
        while self._fd is None:
            self._made = self._made or not self.destination.exists()
            try:
                self.destination.mkdir(parents=True, exist_ok=True)
            except OSError as error:
                raise OutputError(f"cannot create {self.destination}: {os_reason(error)}") from error
            fd = _open_lock_file(self.path)
            _flock_or_refuse(fd, self.path, self.destination, fcntl.LOCK_EX, self._refusal)
            if _same_file(fd, self.path):
                _write_holder(fd)
                self._fd = fd
            else:  # removed by its holder's release between our open and our lock
                os.close(fd)

    def _acquire_shared(self) -> None:
        try:  # read-only: an export that lies on storage this user cannot write verifies too
            fd = os.open(self.path, os.O_RDONLY)
        except FileNotFoundError:
            fd = _open_lock_file(self.path)
        except OSError as error:
            raise OutputError(f"cannot open {self.path}: {os_reason(error)}") from error
        _flock_or_refuse(fd, self.path, self.destination, fcntl.LOCK_SH, lambda fd: OutputError(
            f"a lebench export (pid {lock_holder(fd)}) is writing into {self.destination}: "
            "verify it when that export ends"))
        self._fd = fd

    def _refusal(self, fd: int) -> OutputError:
        """Who holds DEST: readers (lebench verify) hold it shared, an export exclusive."""
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            return OutputError(f"another lebench export (pid {lock_holder(fd)}) is writing into "
                               f"{self.destination}: rerun when it ends")
        fcntl.flock(fd, fcntl.LOCK_UN)
        return OutputError(f"a lebench verify is reading {self.destination}: rerun when it ends")

    def release(self) -> None:
        if self._fd is None:
            return
        if self._made:
            try:
                if [entry.name for entry in os.scandir(self.destination)] == [EXPORT_LOCK]:
                    self.path.unlink()
                    self.destination.rmdir()
            except OSError:
                pass  # left as it is: an empty folder with a lock file is harmless
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> "ExportLock":
        self.acquire()
        return self

    def __exit__(self, *exc_info) -> None:
        self.release()


def _same_file(fd: int, path: Path) -> bool:
    try:
        opened, named = os.fstat(fd), os.stat(path)
    except OSError:
        return False
    return (opened.st_dev, opened.st_ino) == (named.st_dev, named.st_ino)


def _open_lock_file(path: Path) -> int:
    try:
        return os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as error:
        raise OutputError(f"cannot create {path}: {os_reason(error)}") from error


def _write_holder(fd: int) -> None:
    """This process's pid in the held lock file: what a refused run names."""
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)


def part_locks(out: Path) -> list:
    """(part, num_parts) of every part lock file in OUT: each part that ever wrote there."""
    found = []
    for path in Path(out).glob(".lock-*of*"):
        match = _PART_LOCK.match(path.name)
        if match:
            found.append((int(match.group(1)), int(match.group(2))))
    return sorted(found, key=lambda tag: (tag[1], tag[0]))


def live_part(out: Path):
    """(part, num_parts, pid) of a part being written in OUT, or None."""
    for part, num_parts in part_locks(out):
        path = Path(out) / f".lock-{part_tag(part, num_parts)}"
        try:
            fd = os.open(path, os.O_RDWR)  # NFS emulates flock with fcntl locks: exclusive needs write access
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            fcntl.flock(fd, fcntl.LOCK_UN)
        except BlockingIOError:
            return part, num_parts, lock_holder(fd)
        except OSError:
            continue
        finally:
            os.close(fd)
    return None


@contextmanager
def every_part_locked(out: Path):
    """Holds the lock of every part that ever wrote in OUT (writers of lebench versions
    without StoreLock take only theirs); refused, naming the part, while one is held."""
    with ExitStack() as stack:
        for part, num_parts in part_locks(out):
            lock = PartLock(out, part, num_parts)
            try:
                lock.acquire()
            except OutputError as error:
                raise OutputError(f"{error}: --overwrite removed nothing") from None
            stack.callback(lock.release)
        yield


def _flock(fd: int, path: Path, out: Path, mode: int) -> None:
    """flock without waiting: BlockingIOError while another holds it, OutputError where the
    filesystem has no locks."""
    try:
        fcntl.flock(fd, mode | fcntl.LOCK_NB)
    except BlockingIOError:
        raise
    except OSError as error:
        if error.errno in _NO_LOCKS:
            raise OutputError(f"cannot lock {path}: {os_reason(error)}: {_locking_advice(out)}") from error
        raise OutputError(f"cannot lock {path}: {os_reason(error)} "
                          "(the filesystem must support flock)") from error


def _flock_or_refuse(fd: int, path: Path, out: Path, mode: int, refusal) -> None:
    """_flock; on failure fd is closed: while another holds the lock, after `refusal(fd)` (which
    may read the holder's pid from it) made the OutputError raised."""
    try:
        _flock(fd, path, out, mode)
    except BlockingIOError:
        error = refusal(fd)
        os.close(fd)
        raise error from None
    except OutputError:
        os.close(fd)
        raise


def _lock_holder_of(path: Path) -> str:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return "unknown"
    try:
        return lock_holder(fd)
    finally:
        os.close(fd)
