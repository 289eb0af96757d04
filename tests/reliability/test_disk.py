"""A full disk, a file size limit and outputs that cannot be written.
The harness: tests/support/reliability.py."""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
from pathlib import Path

import pytest

from support.reliability import (CORPUS_FILES, Reference, Run, check_complete, check_shards, extract_args, is_root,
                                 leftover_tmp, manifest_of, shard_files)


# ---- 3. a full disk ------------------------------------------------------------------------


def digests(out: Path) -> dict:
    return {path.name: hashlib.sha256(path.read_bytes()).hexdigest() for path in shard_files(out)}


def check_failed_write(out: Path, reference: Reference, before: dict, run: Run, message: re.Pattern) -> None:
    assert run.status == 1, run.stderr
    assert message.fullmatch(run.stderr), run.stderr
    after = digests(out)
    assert {name: after.get(name) for name in before} == before  # committed shards untouched
    check_shards(out, reference)  # ...and readable
    assert not leftover_tmp(out)  # the failed shard does not keep the space
    index = (out / "index-1of1.tsv").read_text().splitlines()[1:]
    assert sorted(line.split("\t")[0] for line in index) == sorted(check_shards(out, reference))


@pytest.fixture
def small_filesystem(tmp_path):
    """A 16 MiB tmpfs; skipped where mounting is not permitted (not root, no CAP_SYS_ADMIN)."""
    mountpoint = tmp_path / "fs"
    mountpoint.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(mountpoint)],
                            capture_output=True, text=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {result.stderr.strip() or result.returncode}")
    yield mountpoint
    subprocess.run(["umount", "-l", str(mountpoint)], check=True)


def test_disk_full_during_a_shard_write(zygote, corpus, model, reference, small_filesystem, tmp_path):
    out = small_filesystem / "out"
    half = manifest_of(corpus, CORPUS_FILES // 2, tmp_path / "half.tsv")
    assert zygote.run(extract_args(half, out, model)).status == 0
    before = digests(out)
    # Leave 320 KiB free: a few more small shards may commit before one runs out of space (the
    # amount is such that the space runs out inside a shard, not in the index written after one).
    filler = small_filesystem / "filler"
    free = os.statvfs(small_filesystem).f_bavail * os.statvfs(small_filesystem).f_frsize
    filler.write_bytes(b"\0" * (free - 320 * 1024))
    run = zygote.run(extract_args(corpus, out, model))
    check_failed_write(out, reference, before, run, re.compile(
        r"Error: disk full while writing shards/part-1of1-\d{5}\.h5: No space left on device\n"))
    filler.unlink()
    assert zygote.run(extract_args(corpus, out, model)).status == 0
    check_complete(out, reference)


def test_file_size_limit_during_a_shard_write(zygote, corpus, model, reference, tmp_path):
    """ulimit -f: writes past the limit fail with EFBIG (Python ignores SIGXFSZ)."""
    out = tmp_path / "out"
    half = manifest_of(corpus, CORPUS_FILES // 2, tmp_path / "half.tsv")
    assert zygote.run(extract_args(half, out, model)).status == 0
    before = digests(out)
    run = zygote.run(extract_args(corpus, out, model), fsize=16 * 1024)  # under one shard (about 26 KB)
    check_failed_write(out, reference, before, run, re.compile(
        r"Error: cannot write shards/part-1of1-\d{5}\.h5: File too large \(a file size limit, see ulimit -f; "
        r"a smaller --shard-size stays under it\)\n"))
    assert zygote.run(extract_args(corpus, out, model)).status == 0
    check_complete(out, reference)


# ---- 4. an output that cannot be written ---------------------------------------------------


def test_unwritable_outputs_fail_before_the_model_loads(zygote, corpus, model, tmp_path):
    a_file = tmp_path / "a-file"
    a_file.write_text("")
    read_only = tmp_path / "read-only"
    read_only.mkdir()
    read_only.chmod(0o555)
    cases = {a_file / "out": "Not a directory", read_only / "out": "Permission denied"}
    mounted = tmp_path / "ro-mount"
    mounted.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(mounted)],
                      capture_output=True).returncode == 0:
        cases[mounted / "out"] = "Read-only file system"
    try:
        for out, reason in cases.items():
            marker = tmp_path / "model-loaded"
            run = zygote.run(extract_args(corpus, out, model), drop_dac=is_root(), forbid_model=str(marker))
            assert (run.status, run.stderr) == (1, f"Error: cannot write to {out}: {reason}\n")
            assert not marker.exists(), f"{out}: the model was loaded before the output was checked"
            assert not out.exists()
    finally:
        subprocess.run(["umount", "-l", str(mounted)], capture_output=True)
    print(f"\nunwritable outputs refused before loading the model: {', '.join(cases.values())}")
