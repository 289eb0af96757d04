"""The harness of tests/reliability: a zygote that forks `lebench extract` runs, the
settings every fault shares, and the checks of what a run left against the uninterrupted
reference. The fixtures that build them are in tests/reliability/conftest.py."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from lebench_cli.reading.store import open_features

SOAK = os.environ.get("LEBENCH_SOAK") == "1"
SEED = int(os.environ.get("LEBENCH_RELIABILITY_SEED") or random.SystemRandom().randrange(10**6))
LAYERS = (1, 3)
CORPUS_FILES = 40
SHARD_SIZE = "8KB"  # with 2 s batches, a commit every batch or two: many moments to be killed in
RATE = 16_000

soak_only = pytest.mark.skipif(not SOAK, reason="soak variant: set LEBENCH_SOAK=1")


def seeded(name: str) -> random.Random:
    return random.Random(f"{SEED}:{name}")


def replay(name: str) -> str:
    return f"(replay with LEBENCH_RELIABILITY_SEED={SEED}, test {name})"


# ---- the zygote -------------------------------------------------------------------------

ZYGOTE = textwrap.dedent(r'''
    import ctypes, io, json, os, resource, signal, sys, time
    import torch  # noqa: F401  imported once, before any thread exists: forking is safe
    from lebench_cli.audio import loading as audio  # noqa: F401
    from lebench_cli.model import conversion, encoder, formats, models  # noqa: F401
    from lebench_cli import cli, storage  # noqa: F401
    from lebench_cli.pipeline import extract  # noqa: F401
    from lebench_cli.reading import store as reader  # noqa: F401
    conversion.import_fairseq_wav2vec2()

    def drop_dac_override():
        """Root without CAP_DAC_OVERRIDE/CAP_DAC_READ_SEARCH: file modes apply again,
        also in processes it executes (dropped from the bounding set too)."""
        libc = ctypes.CDLL(None, use_errno=True)
        for cap in (1, 2):
            if libc.prctl(24, cap, 0, 0, 0):  # PR_CAPBSET_DROP
                raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")
        class Header(ctypes.Structure):
            _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]
        class Data(ctypes.Structure):
            _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                        ("inheritable", ctypes.c_uint32)]
        header, data = Header(0x20080522, 0), (Data * 2)()
        if libc.capget(ctypes.byref(header), data):
            raise OSError(ctypes.get_errno(), "capget")
        for item in data:
            item.effective &= ~0b110; item.permitted &= ~0b110; item.inheritable &= ~0b110
        if libc.capset(ctypes.byref(header), data):
            raise OSError(ctypes.get_errno(), "capset")

    def child(request):
        os.dup2(os.open(request.get("stdin") or os.devnull, os.O_RDONLY), 0)
        os.dup2(os.open(request["stdout"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644), 1)
        os.dup2(os.open(request["stderr"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644), 2)
        sys.stdin = io.TextIOWrapper(open(0, "rb", closefd=False))
        if request.get("group"):
            os.setpgid(0, 0)
        if request.get("fsize") is not None:
            resource.setrlimit(resource.RLIMIT_FSIZE, (request["fsize"], request["fsize"]))
        if request.get("drop_dac"):
            drop_dac_override()
        if request.get("forbid_model"):  # loading or running the model leaves this marker
            def forbidden(*args, **kwargs):
                open(request["forbid_model"], "w").close()
                raise RuntimeError("the model was used")
            models.load_checkpoint = encoder.Encoder.forward = forbidden
        if request.get("hoard_audio"):  # a control: decoded audio kept, as if the recording were held whole
            kept, streamed = [], audio.stream_audio
            def hoarding(*args, **kwargs):
                for block in streamed(*args, **kwargs):
                    kept.append(block.copy())
                    yield block
            audio.stream_audio = hoarding
        try:
            cli.main(args=request["argv"], prog_name="lebench")
            return 0
        except SystemExit as stop:
            return stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)

    sys.stdout.write("ready\n"); sys.stdout.flush()
    for line in sys.stdin:
        request = json.loads(line)
        if request["op"] == "run":
            pid = os.fork()
            if pid == 0:
                code = 70
                try:
                    code = child(request)
                finally:
                    sys.stdout.flush(); sys.stderr.flush()
                    if request.get("maxrss"):  # KiB; counts the pages shared with the zygote too
                        with open(request["maxrss"], "w") as file:
                            file.write(str(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss))
                    os._exit(code)
            reply = {"pid": pid}
        else:  # wait: the child's exit status (-N: killed by signal N), or None at the timeout
            deadline = None if request["timeout"] is None else time.monotonic() + request["timeout"]
            reply = {"status": None}
            while True:
                done, raw = os.waitpid(request["pid"], os.WNOHANG)
                if done:
                    reply["status"] = os.waitstatus_to_exitcode(raw)
                    break
                if deadline is not None and time.monotonic() >= deadline:
                    break
                time.sleep(0.002)
        sys.stdout.write(json.dumps(reply) + "\n"); sys.stdout.flush()
''')


class Run:
    def __init__(self, pid: int, stdout: Path, stderr: Path):
        self.pid, self.stdout_path, self.stderr_path = pid, stdout, stderr
        self.status = None

    @property
    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")


class Zygote:
    """Forks `lebench extract` runs from a process that has already imported everything."""

    def __init__(self, workdir: Path):
        self.workdir = workdir
        self.process = subprocess.Popen([sys.executable, "-c", ZYGOTE], stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, text=True)
        assert self.process.stdout.readline() == "ready\n"
        self.live: set = set()
        self.count = 0

    def _ask(self, **request) -> dict:
        self.process.stdin.write(json.dumps(request) + "\n")
        self.process.stdin.flush()
        return json.loads(self.process.stdout.readline())

    def start(self, argv: list, **options) -> Run:
        self.count += 1
        stdout, stderr = (self.workdir / f"run{self.count}.{name}" for name in ("out", "err"))
        pid = self._ask(op="run", argv=[str(a) for a in argv], stdout=str(stdout),
                        stderr=str(stderr), **options)["pid"]
        self.live.add(pid)
        return Run(pid, stdout, stderr)

    def wait(self, run: Run, timeout: float | None = None):
        """The exit status (negative: killed by that signal), None if still running."""
        status = self._ask(op="wait", pid=run.pid, timeout=timeout)["status"]
        if status is not None:
            run.status = status
            self.live.discard(run.pid)
        return status

    def run(self, argv: list, timeout: float = 120, **options) -> Run:
        run = self.start(argv, **options)
        if self.wait(run, timeout) is None:
            os.kill(run.pid, signal.SIGKILL)
            self.wait(run)
            raise AssertionError(f"lebench extract {argv} did not finish in {timeout} s")
        return run

    def close(self) -> None:
        for pid in self.live:  # only runs this zygote started and nobody waited for
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.process.stdin.close()
        self.process.wait(timeout=30)


# ---- a corpus and its uninterrupted reference -----------------------------------------------


def extract_args(corpus, out, model, *extra, batch_seconds: float = 120) -> list:
    """Small shards; 2-second batches spread the commits over the run (a signal or a kill
    then lands between commits), the default 120 s makes a quick run."""
    return ["extract", corpus, "-o", out, "--model", model, "--device", "cpu", "--workers", "0", "-q",
            "--shard-size", SHARD_SIZE, "--batch-seconds", batch_seconds, "--layers", ",".join(map(str, LAYERS)),
            *extra]


class Reference:
    def __init__(self, out: Path, startup_seconds: float, work_seconds: float):
        self.out, self.startup_seconds, self.work_seconds = out, startup_seconds, work_seconds
        with open_features(out) as store:
            self.arrays = {utt_id: {layer: store.read(utt_id, layer) for layer in LAYERS} for utt_id in store.ids}


def lock_holder(out: Path):
    try:
        return int((Path(out) / ".lock-1of1").read_text())
    except (OSError, ValueError):
        return None


def wait_for_lock(zygote, run: Run, out: Path, timeout: float = 120) -> bool:
    """True once `run` holds OUT's lock (it is past start-up); False if it exited first."""
    deadline = time.monotonic() + timeout
    while lock_holder(out) != run.pid:
        if zygote.wait(run, timeout=0.005) is not None:
            return False
        assert time.monotonic() < deadline, f"run {run.pid} did not take the lock in {timeout} s"
    return True


def shard_files(out: Path) -> list:
    return sorted((Path(out) / "shards").glob("part-*.h5"))


def leftover_tmp(out: Path) -> list:
    return sorted((Path(out) / "shards").glob("part-1of1-*.h5.tmp"))


ROUNDING = {"values": 0, "differing": 0}


def assert_same_features(actual: np.ndarray, expected: np.ndarray, what: str) -> None:
    """Equal up to float16 rounding. An utterance batched with different neighbours after a
    resume gets float32 states that differ in the last bits (summation order: ~1e-6 of the
    layer's scale), and a value near a float16 rounding boundary then rounds the other way."""
    assert actual.shape == expected.shape and actual.dtype == expected.dtype, what
    expected32 = expected.astype(np.float32)
    tolerance = np.spacing(np.abs(expected)).astype(np.float32) + 1e-5 * np.abs(expected32).max()
    difference = np.abs(actual.astype(np.float32) - expected32)
    assert (difference <= tolerance).all(), \
        f"{what}: {int((difference > tolerance).sum())} values beyond float16 rounding, max {difference.max()}"
    ROUNDING["values"] += expected.size
    ROUNDING["differing"] += int((difference > 0).sum())


def check_shards(out: Path, reference: Reference, context: str = "") -> dict:
    """Every committed shard opens with plain h5py, is internally consistent, holds the
    reference's values; no id twice. Returns {id: shard file name}."""
    where = {}
    for path in shard_files(out):
        with h5py.File(path, "r") as shard:
            assert shard.attrs["format"] == "lebench-shard", (path, context)
            ids = list(shard["ids"].asstr()[:])
            offsets, frames = shard["offsets"][:], shard["frames"][:]
            assert len(ids) == len(offsets) == len(frames) == len(shard["durations"]) > 0, (path, context)
            chunk_rows = shard[f"layers/{LAYERS[0]}/frames"].chunks[0]
            ends = [-(-(start + count) // chunk_rows) * chunk_rows for start, count in zip(offsets, frames)]
            assert list(offsets) == [0, *ends[:-1]], (path, context)  # each from a chunk boundary
            for layer in LAYERS:
                dataset = shard[f"layers/{layer}/frames"]
                assert dataset.chunks[0] == chunk_rows, (path, layer, context)
                table = shard[f"layers/{layer}/frames_chunk_offsets"][:]
                assert table.tolist() == [dataset.id.get_chunk_info_by_coord((number * chunk_rows, 0)).byte_offset
                                          for number in range(len(table))], (path, layer, context)
                matrix = dataset[:]
                assert len(matrix) == offsets[-1] + frames[-1], (path, layer, context)
                for utt_id, start, count in zip(ids, offsets, frames):
                    assert_same_features(matrix[start:start + count], reference.arrays[utt_id][layer],
                                         f"{utt_id} layer {layer} in {path.name} {context}")
        for utt_id in ids:
            assert utt_id not in where, f"{utt_id} stored twice: {where[utt_id]} and {path.name} {context}"
            where[utt_id] = path.name
    return where


def check_complete(out: Path, reference: Reference, context: str = "", ids=None) -> None:
    """OUT holds exactly `ids` (default: the whole corpus), as the reference, indexed."""
    ids = sorted(reference.arrays if ids is None else ids)
    where = check_shards(out, reference, context)
    assert sorted(where) == ids, context
    assert not leftover_tmp(out), context
    with open_features(out) as store:
        assert sorted(store.ids) == ids, context
    index = (Path(out) / "index-1of1.tsv").read_text().splitlines()
    assert index[0] == "id\tshard\tposition\tframes\tduration\tflags\tsource"
    listed = {line.split("\t")[0]: line.split("\t")[1] for line in index[1:]}
    assert listed == {utt_id: f"shards/{name}" for utt_id, name in where.items()}, context


def plant_decoy(out: Path) -> None:
    """A valid-looking shard under a .tmp name of another part, as a crashed job-array part
    leaves: nothing may ever read it."""
    (out / "shards").mkdir(parents=True, exist_ok=True)
    with h5py.File(out / "shards" / "part-2of2-00000.h5.tmp", "w") as decoy:
        decoy.attrs.update({"format": "lebench-shard", "format_version": 1, "part": 2, "num_parts": 2,
                            "sequence": 0})
        strings = h5py.string_dtype()
        for key, value in (("ids", ["decoy/never-read"]), ("sources", ["x"]), ("flags", [""])):
            decoy[key] = np.array(value, dtype=strings)
        decoy["offsets"], decoy["frames"], decoy["durations"] = [0], [1], [0.02]
        for layer in LAYERS:
            decoy[f"layers/{layer}/frames"] = np.zeros((1, 32), np.float16)


def manifest_of(corpus: Path, count: int, path: Path) -> Path:
    """A .tsv manifest of the first `count` files: the same ids as the folder walk."""
    files = sorted(p.relative_to(corpus).as_posix() for p in corpus.rglob("*.wav"))[:count]
    path.write_text(f"{corpus}\n" + "".join(f"{name}\n" for name in files))
    return path


def subset_ids(manifest: Path) -> list:
    return [line.rsplit(".", 1)[0] for line in manifest.read_text().splitlines()[1:]]


def is_root() -> bool:
    return os.geteuid() == 0
