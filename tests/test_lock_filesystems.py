"""PartLock on filesystems without locks: one line naming the filesystem and the fix."""

import errno
import fcntl
import os

import pytest

from lebench_cli.errors import OutputError
from lebench_cli.storage import PartLock, mounts


def no_locks(code):
    def flock(fd, operation):
        raise OSError(code, os.strerror(code))

    return flock


def fake_mountinfo(tmp_path, fs_type, mount_point, options="rw"):
    path = tmp_path / "mountinfo"
    path.write_text(
        "22 1 0:21 / / rw,relatime shared:1 - ext4 /dev/sda1 rw\n"
        f"98 22 0:50 / {mount_point.replace(' ', chr(92) + '040')} rw,relatime shared:7 - {fs_type} "
        f"10.0.0.1@tcp:/scratch {options}\n"
    )
    return str(path)


def test_lustre_without_flock_is_named_with_its_fix(tmp_path, monkeypatch):
    out = tmp_path / "my out"
    out.mkdir()
    monkeypatch.setattr(mounts, "MOUNTINFO", fake_mountinfo(tmp_path, "lustre", str(out)))
    monkeypatch.setattr(fcntl, "flock", no_locks(errno.ENOSYS))
    with pytest.raises(OutputError) as caught:
        PartLock(out, 2, 4).acquire()
    assert str(caught.value) == (
        f"cannot lock {out}/.lock-2of4: Function not implemented: {out} is on a lustre filesystem ({out}) "
        "without flock support; mount it with -o flock (-o localflock locks within one node only), or write "
        "the output to a filesystem with locks (local disk, NFSv4, Lustre with -o flock, GPFS)")


def test_nfs3_without_lockd(tmp_path, monkeypatch):
    monkeypatch.setattr(mounts, "MOUNTINFO", fake_mountinfo(tmp_path, "nfs", str(tmp_path)))
    monkeypatch.setattr(fcntl, "flock", no_locks(errno.ENOLCK))
    with pytest.raises(OutputError) as caught:
        PartLock(tmp_path).acquire()
    assert str(caught.value) == (
        f"cannot lock {tmp_path}/.lock-1of1: No locks available: {tmp_path} is on a nfs filesystem ({tmp_path}) "
        "without flock support; NFSv3 needs the lock daemon: mount without -o nolock, or use NFSv4, or write "
        "the output to a filesystem with locks (local disk, NFSv4, Lustre with -o flock, GPFS)")


def test_the_real_mount_table_names_the_output_folders_filesystem(tmp_path, monkeypatch):
    mount = mounts.mount_of(tmp_path)
    if mount is None:
        pytest.skip("no /proc/self/mountinfo on this system")
    monkeypatch.setattr(fcntl, "flock", no_locks(errno.EOPNOTSUPP))
    with pytest.raises(OutputError) as caught:
        PartLock(tmp_path).acquire()
    assert str(caught.value).startswith(
        f"cannot lock {tmp_path}/.lock-1of1: Operation not supported: {tmp_path} is on a {mount.fs_type} "
        f"filesystem ({mount.mount_point}) without flock support; ")
    assert "\n" not in str(caught.value)


def test_the_longest_mount_point_above_the_folder_wins(tmp_path, monkeypatch):
    monkeypatch.setattr(mounts, "MOUNTINFO", fake_mountinfo(tmp_path, "gpfs", "/scratch/a b"))
    assert mounts.mount_of("/scratch/a b/run/out") == mounts.Mount("/scratch/a b", "gpfs", "10.0.0.1@tcp:/scratch", "rw")
    assert mounts.mount_of("/scratch/a bc").fs_type == "ext4"
