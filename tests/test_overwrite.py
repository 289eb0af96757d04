"""`lebench extract --overwrite` removes nothing while a writer lives, lets no writer start while
it removes, and survives a kill -9 half-way through the removal (docs/reliability.md)."""

import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from click.testing import CliRunner

from lebench_cli.cli import main
from lebench_cli.reading.store import open_features
from lebench_cli.storage import REMOVING_DIR, StoreLock

REPO = Path(__file__).resolve().parents[1]
COUNT = 40


@pytest.fixture
def corpus(tmp_path):
    generator = np.random.default_rng(0)
    root = tmp_path / "corpus"
    for index in range(COUNT):
        path = root / f"spk{index % 2}" / f"utt{index:03d}.wav"
        path.parent.mkdir(parents=True, exist_ok=True)
        sf.write(path, (0.1 * generator.standard_normal(int(2.0 * 16000))).astype(np.float32), 16000)
    return root


def args(corpus, out, checkpoint, *extra):
    return ["extract", str(corpus), "-o", str(out), "-m", str(checkpoint), "--device", "cpu", "--workers", "0",
            "--batch-seconds", "2", "--commit-seconds", "1", "-q", *extra]


def start(corpus, out, checkpoint, *extra) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "lebench_cli", *args(corpus, out, checkpoint, *extra)], cwd=REPO,
                            env={**os.environ, "PYTHONPATH": str(REPO)}, stderr=subprocess.PIPE, text=True)


def run(*arguments):
    return CliRunner().invoke(main, list(map(str, arguments)), catch_exceptions=False)


def freeze_when_locked(process: subprocess.Popen, out: Path, tag: str, timeout: float = 300) -> None:
    """SIGSTOPs the writer of part `tag` as soon as its pid shows in the part's lock file (it
    writes it just after taking its locks): from then on it is mid-run, holding them, for as
    long as the test needs, however fast the machine."""
    lock, deadline = out / f".lock-{tag}", time.monotonic() + timeout
    while time.monotonic() < deadline:
        if lock.exists() and lock.read_text().strip() == str(process.pid):
            os.kill(process.pid, signal.SIGSTOP)
            return
        if process.poll() is not None:
            raise AssertionError(f"the writer ended before it was frozen: {process.stderr.read()}")
        time.sleep(0.001)
    raise AssertionError(f"{lock}: never taken by pid {process.pid}")


def digests(out: Path) -> dict:
    return {str(path.relative_to(out)): hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(out.rglob("*")) if path.is_file() and not path.name.startswith(".lock-")}


def resume_and_finish(process: subprocess.Popen) -> None:
    os.kill(process.pid, signal.SIGCONT)
    _, stderr = process.communicate(timeout=600)
    assert process.returncode == 0, stderr


@pytest.mark.parametrize("part", ["1/1", "2/3"])
def test_overwrite_removes_nothing_while_a_part_is_written(checkpoints, corpus, tmp_path, part):
    checkpoint, out = checkpoints("base"), tmp_path / "out"
    # A committed store (the spk0 half), then a run that resumes into it, frozen mid-run.
    first = run(*args(corpus / "spk0", out, checkpoint, "--layers", "all", "--root", corpus))
    assert first.exit_code == 0, first.output
    writer = start(corpus, out, checkpoint, "--layers", "all", "--root", corpus, "--shard", part)
    tag = part.replace("/", "of")
    try:
        freeze_when_locked(writer, out, tag)
        before = digests(out)
        result = run(*args(corpus, out, checkpoint, "--layers", "last", "--overwrite"))
        assert (result.exit_code, result.output) == (
            1, f"Error: another lebench extract is writing part {part} of {out} (pid {writer.pid}): "
               "--overwrite removed nothing\n")
        assert digests(out) == before and not (out / REMOVING_DIR).exists()
    finally:
        resume_and_finish(writer)
    with open_features(out) as store:
        assert len(store.ids) == COUNT if part == "1/1" else COUNT // 2 < len(store.ids) < COUNT
        assert len(store.layers) > 1  # the writer's `--layers all`, not the refused `last`


def test_no_writer_starts_while_overwrite_removes(checkpoints, corpus, tmp_path):
    checkpoint, out = checkpoints("base"), tmp_path / "out"
    out.mkdir()
    with StoreLock(out, exclusive=True):  # what --overwrite holds from before it removes until it ends
        result = run(*args(corpus, out, checkpoint, "--layers", "last"))
    assert (result.exit_code, result.output) == (
        1, f"Error: lebench extract --overwrite (pid {os.getpid()}) is replacing the content of {out}: "
           "rerun when it ends\n")
    assert sorted(path.name for path in out.iterdir()) == [".lock-store", "shards"]  # nothing written
    assert not list((out / "shards").iterdir())


# Runs `lebench extract ... --overwrite` and kills it (SIGKILL, itself) when it has moved
# KILL_AFTER of the old store's files aside: a crash half-way through the removal.
CRASH = textwrap.dedent("""
    import os, signal, sys
    from lebench_cli.cli import main
    real_replace, moved = os.replace, []
    def replace(source, target):
        real_replace(source, target)
        if "{removing}" in str(target):
            moved.append(target)
            if len(moved) == int(sys.argv[1]):
                os.kill(os.getpid(), signal.SIGKILL)
    os.replace = replace
    main(sys.argv[2:])
""")


@pytest.mark.parametrize("rerun", ["--overwrite", "without --overwrite"])
def test_a_removal_killed_half_way_is_finished_by_the_next_run(checkpoints, corpus, tmp_path, rerun):
    checkpoint, out = checkpoints("base"), tmp_path / "out"
    assert run(*args(corpus, out, checkpoint, "--layers", "all", "--shard-size", "64KB")).exit_code == 0
    old_shards = sorted(path.name for path in (out / "shards").iterdir())
    assert len(old_shards) > 3
    crash = subprocess.run([sys.executable, "-c", CRASH.replace("{removing}", REMOVING_DIR), "3",
                            *args(corpus, out, checkpoint, "--layers", "last", "--overwrite")],
                           cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True)
    assert crash.returncode == -signal.SIGKILL, crash.stderr
    assert (out / REMOVING_DIR).is_dir() and not (out / "lebench.json").exists()  # moved first: no store to read
    assert (out / "shards").exists() and list((out / "shards").iterdir())  # shards left behind
    extra = ["--overwrite"] if rerun == "--overwrite" else []
    result = run(*args(corpus, out, checkpoint, "--layers", "last", *extra))
    assert (result.exit_code, result.output) == (0, "")
    assert not (out / REMOVING_DIR).exists()
    with open_features(out) as store:
        assert len(store.ids) == COUNT and len(store.layers) == 1


def test_the_store_lock_on_a_filesystem_without_locks_names_it(tmp_path, monkeypatch):
    import errno
    import fcntl

    from lebench_cli.errors import OutputError
    from lebench_cli.storage import mounts

    def no_locks(fd, operation):
        raise OSError(errno.ENOSYS, os.strerror(errno.ENOSYS))

    mountinfo = tmp_path / "mountinfo"
    mountinfo.write_text("22 1 0:21 / / rw,relatime shared:1 - ext4 /dev/sda1 rw\n"
                         f"98 22 0:50 / {tmp_path} rw,relatime shared:7 - lustre 10.0.0.1@tcp:/scratch rw\n")
    monkeypatch.setattr(mounts, "MOUNTINFO", str(mountinfo))
    monkeypatch.setattr(fcntl, "flock", no_locks)
    with pytest.raises(OutputError) as caught:
        StoreLock(tmp_path, exclusive=False).acquire()
    assert str(caught.value) == (
        f"cannot lock {tmp_path}/.lock-store: Function not implemented: {tmp_path} is on a lustre filesystem "
        f"({tmp_path}) without flock support; mount it with -o flock (-o localflock locks within one node only), "
        "or write the output to a filesystem with locks (local disk, NFSv4, Lustre with -o flock, GPFS)")


def test_a_removal_cut_short_is_finished_only_by_a_run_alone_in_out(tmp_path):
    from lebench_cli.errors import OutputError
    from lebench_cli.storage import writing_part

    out = tmp_path / "out"
    (out / REMOVING_DIR).mkdir(parents=True)
    (out / "lebench.json").write_text('{"identity": {"layers": ["1"]}}')  # left by the cut-short removal
    metadata = {"identity": {"layers": ["2"]}}
    with StoreLock(out, exclusive=False):  # another run into OUT
        with pytest.raises(OutputError) as caught:
            with writing_part(out, metadata, 1, 1, overwrite=False):
                pass
    assert str(caught.value) == (f"{out} holds a removal that a crash cut short and another lebench extract is "
                                 "using it: rerun when that run ends")
    assert (out / REMOVING_DIR).is_dir() and (out / "lebench.json").exists()
    with writing_part(out, metadata, 1, 1, overwrite=False):
        assert not (out / REMOVING_DIR).exists()
        assert json.loads((out / "lebench.json").read_text())["identity"] == {"layers": ["2"]}
