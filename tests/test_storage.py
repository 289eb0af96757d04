"""The shard writer, the output folder, the part lock and the failure log; all in tmp_path."""

import errno
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from types import SimpleNamespace

import h5py
import numpy as np
import pytest

from lebench_cli import storage
from lebench_cli.errors import InputError, OutputError
from lebench_cli.reading.store import open_features
from lebench_cli.storage import (
    FailureLog,
    PartLock,
    ShardWriter,
    StoredUtterance,
    WriterOptions,
    prepare_output,
    read_failures,
    stored_ids,
)

REPO = Path(__file__).resolve().parents[1]
IDENTITY = {"model_sha256": "ab" * 32, "layers": ["12", "cnn"], "dtype": "float16"}


def utterance(utt_id, frames=5, layers=("12", "cnn"), width=8, seed=0, **fields):
    rng = np.random.default_rng(seed)
    states = {name: rng.normal(size=(frames, width)).astype(np.float32) for name in layers}
    fields.setdefault("source", f"/audio/{utt_id}.wav")
    return StoredUtterance(utt_id=utt_id, duration=frames * 0.02, frames=frames, states=states,
                           **fields)


def write(out, utterances, **options):
    options = WriterOptions(**{"layers": ["12", "cnn"], **options})
    prepare_output(out, {"identity": IDENTITY}, overwrite=False)
    with PartLock(out, options.part, options.num_parts):
        with ShardWriter(out, options) as writer:
            for utt in utterances:
                writer.add(utt)
    return writer


def shard_names(out):
    return sorted(path.name for path in (out / "shards").iterdir())


def test_shard_holds_the_documented_datasets(tmp_path):
    out = tmp_path / "out"
    write(out, [utterance("a", 3), utterance("b", 4, flags="padded")], store_mean=True,
          compression="gzip:5")
    with h5py.File(out / "shards" / "part-1of1-00000.h5", "r") as shard:
        attrs = dict(shard.attrs)
        assert json.loads(attrs.pop("identity")) == {**IDENTITY, "layers": ["cnn", "12"]}
        assert attrs.pop("tables_xxh3").dtype == np.uint64
        assert attrs.pop("tables_xxh3_covers").split(",") == sorted([
            "durations", "flags", "frames", "ids", "metadata", "offsets", "source_mtimes_ns", "source_sizes", "source_xxh3", "sources",
            *(f"layers/{name}/{kind}_xxh3" for name in ("12", "cnn") for kind in ("frames", "mean"))])
        assert attrs == {"format": "lebench-shard", "format_version": 2, "part": 1, "num_parts": 1, "sequence": 0}
        assert shard["layers/12/frames_xxh3"].dtype == np.uint64 and shard["layers/12/mean_xxh3"].shape == (2,)
        assert list(shard["ids"].asstr()[:]) == ["a", "b"]
        # 8 wide float16: 16 rows a chunk (the most), and "b" starts on the next chunk boundary
        assert shard["offsets"][:].tolist() == [0, 16]
        assert shard["frames"][:].tolist() == [3, 4]
        assert shard["durations"].dtype == np.float64
        assert list(shard["flags"].asstr()[:]) == ["", "padded"]
        frames = shard["layers/12/frames"]
        assert frames.shape == (20, 8) and frames.dtype == np.float16
        assert frames.maxshape == (None, 8) and frames.chunks == (16, 8)
        assert frames.compression == "gzip" and frames.compression_opts == 5
        assert "layers/12/frames_chunk_offsets" not in shard  # compressed: read through HDF5
        assert shard["layers/cnn/mean"].shape == (2, 8)
    write(tmp_path / "raw", [utterance("a", 3)])
    with h5py.File(tmp_path / "raw" / "shards" / "part-1of1-00000.h5", "r") as shard:
        assert set(shard["layers/12"]) == {"frames", "frames_chunk_offsets", "frames_xxh3"}
        assert shard["layers/12/frames_chunk_offsets"].dtype == np.int64


def test_int_layer_keys_from_the_encoder_are_accepted(tmp_path):
    utt = utterance("a", 3)
    utt.states = {12: utt.states["12"], "cnn": utt.states["cnn"]}
    write(tmp_path / "out", [utt], save_dtype="float32")
    with open_features(tmp_path / "out") as features:
        np.testing.assert_array_equal(features.read("a", 12), utt.states[12])


def test_shards_rotate_by_size(tmp_path):
    # 2 layers x 10 frames x 16 wide x 4 bytes = 1280 bytes an utterance: two fit in 3000.
    utts = [utterance(f"u{i}", 10, width=16) for i in range(5)]
    write(tmp_path / "out", utts, save_dtype="float32", shard_size_bytes=3000)
    assert shard_names(tmp_path / "out") == [f"part-1of1-0000{i}.h5" for i in range(3)]
    write(tmp_path / "one", utts[:3], shard_size_bytes=1)
    assert len(shard_names(tmp_path / "one")) == 3
    assert open_features(tmp_path / "out").ids == [f"u{i}" for i in range(5)]


def test_shards_rotate_by_time(tmp_path, monkeypatch):
    clock = iter([0.0, 1.0, 2.0, 10.0, 11.0, 12.0])
    monkeypatch.setattr(storage.writer, "time", SimpleNamespace(monotonic=lambda: next(clock)))
    # shard 0 opens at 0 and commits at add time 10 (>= 5 s); shard 1 opens at 11.
    write(tmp_path / "out", [utterance(f"u{i}") for i in range(4)], commit_seconds=5)
    assert shard_names(tmp_path / "out") == ["part-1of1-00000.h5", "part-1of1-00001.h5"]
    monkeypatch.undo()
    write(tmp_path / "each", [utterance(f"u{i}") for i in range(3)], commit_seconds=0)
    assert len(shard_names(tmp_path / "each")) == 3


def test_resume_skips_stored_ids_and_continues_numbering(tmp_path):
    out = tmp_path / "out"
    write(out, [utterance("a"), utterance("b")])
    assert stored_ids(out) == {"a", "b"}
    todo = [utt for utt in [utterance("a"), utterance("c")] if utt.utt_id not in stored_ids(out)]
    writer = write(out, todo)
    assert writer.stats.utterances == 1 and writer.stats.shards == 1
    assert shard_names(out) == ["part-1of1-00000.h5", "part-1of1-00001.h5"]
    assert open_features(out).ids == ["a", "b", "c"]


def test_an_id_is_never_stored_twice(tmp_path):
    out = tmp_path / "out"
    write(out, [utterance("a")])
    with pytest.raises(OutputError, match=f"^utterance a is already stored in {re.escape(str(out))}$"):
        write(out, [utterance("a")])
    with pytest.raises(OutputError, match="^utterance b is already stored"):
        write(out, [utterance("b"), utterance("b")])
    assert open_features(out).ids == ["a", "b"]  # the first b was committed on the way out


def test_index_tsv_is_exact(tmp_path):
    out = tmp_path / "out"
    write(out, [utterance("a", 3, source="/x/a.wav"),
                utterance("b", 4, source="/x/tab\there.wav", flags="padded"),
                utterance("c", 2, source="/x/c.wav")], shard_size_bytes=1)
    assert (out / "index-1of1.tsv").read_text() == (
        "id\tshard\tposition\tframes\tduration\tflags\tsource\n"
        "a\tshards/part-1of1-00000.h5\t0\t3\t0.06\t\t/x/a.wav\n"
        "b\tshards/part-1of1-00001.h5\t0\t4\t0.08\tpadded\t/x/tab\\there.wav\n"
        "c\tshards/part-1of1-00002.h5\t0\t2\t0.04\t\t/x/c.wav\n"
    )


def test_index_is_rebuilt_from_the_shards(tmp_path):
    out = tmp_path / "out"
    write(out, [utterance("a")])
    expected = (out / "index-1of1.tsv").read_text()
    (out / "index-1of1.tsv").unlink()  # as if killed between the rename and the index write
    write(out, [])
    assert (out / "index-1of1.tsv").read_text() == expected


def test_tmp_leftovers_are_removed_on_start_and_never_read(tmp_path):
    out = tmp_path / "out"
    write(out, [utterance("a")])
    own = out / "shards" / "part-1of1-00001.h5.tmp"
    other = out / "shards" / "part-2of2-00000.h5.tmp"  # another part's, maybe being written
    own.write_bytes(b"half a shard")
    other.write_bytes(b"half a shard")
    assert open_features(out).ids == ["a"] and stored_ids(out) == {"a"}
    write(out, [utterance("b")])
    assert not own.exists() and other.exists()
    assert shard_names(out) == ["part-1of1-00000.h5", "part-1of1-00001.h5", other.name]


def test_interrupt_commits_finished_utterances(tmp_path):
    out = tmp_path / "out"
    prepare_output(out, {"identity": IDENTITY}, overwrite=False)
    with pytest.raises(KeyboardInterrupt):
        with PartLock(out), ShardWriter(out, WriterOptions(layers=["12", "cnn"])) as writer:
            writer.add(utterance("a"))
            raise KeyboardInterrupt
    assert open_features(out).ids == ["a"]
    assert not list((out / "shards").glob("*.tmp"))


def test_disk_full_drops_the_open_shard_only(tmp_path, monkeypatch):
    out = tmp_path / "out"
    write(out, [utterance("a")])

    def no_space(*args):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ShardWriter, "_write_block", no_space)
    with pytest.raises(OutputError) as caught:
        write(out, [utterance("b")])
    assert str(caught.value) == ("disk full while writing shards/part-1of1-00001.h5: "
                                 "No space left on device")
    assert shard_names(out) == ["part-1of1-00000.h5"]
    assert open_features(out).ids == ["a"]


def test_values_beyond_float16_are_refused(tmp_path):
    utt = utterance("a", 2)
    utt.states["12"][0, 0] = 1e6
    with pytest.raises(OutputError, match="^a: layers/12/frames holds values beyond the float16"):
        write(tmp_path / "out", [utt])
    write(tmp_path / "wide", [utt], save_dtype="float32")


@pytest.mark.parametrize("store_mean", [False, True])
def test_buffered_flushed_and_oversized_utterances_read_back_exactly(tmp_path, monkeypatch, store_mean):
    # Buffers of 600 bytes per dataset: 37 frames of 8 float16 values. Utterances fill them,
    # overflow them (a flush first) and exceed them (written straight to the file).
    monkeypatch.setattr(storage.buffers, "_FLUSH_BYTES", 2400 if store_mean else 1200)
    frames = [5, 30, 2, 37, 1, 80, 3, 36, 40, 4]
    utts = [utterance(f"u{i}", count, seed=i) for i, count in enumerate(frames)]
    expected = {utt.utt_id: {name: states.copy() for name, states in utt.states.items()} for utt in utts}
    out = tmp_path / "out"
    prepare_output(out, {"identity": IDENTITY}, overwrite=False)
    options = WriterOptions(layers=["12", "cnn"], store_mean=store_mean)
    with PartLock(out), ShardWriter(out, options) as writer:
        for utt in utts:
            writer.add(utt)
            for states in utt.states.values():
                states[:] = 99.0  # the caller reuses its arrays: what was stored must not change
    with open_features(out) as store:
        assert store.ids == [utt.utt_id for utt in utts]
        for utt_id, states in expected.items():
            for name in ("12", "cnn"):
                np.testing.assert_array_equal(store.read(utt_id, name), states[name].astype(np.float16))
                if store_mean:
                    mean = states[name].mean(axis=0, dtype=np.float64).astype(np.float32).astype(np.float16)
                    np.testing.assert_array_equal(store.read_mean(utt_id, name), mean)


def test_a_refused_utterance_leaves_the_others_intact(tmp_path):
    bad = utterance("b", 3, seed=1)
    bad.states["cnn"][2, 1] = -1e6  # the second dataset: the first one was already copied in
    out = tmp_path / "out"
    prepare_output(out, {"identity": IDENTITY}, overwrite=False)
    good = [utterance("a", 4), utterance("c", 6, seed=2)]
    with PartLock(out), ShardWriter(out, WriterOptions(layers=["12", "cnn"])) as writer:
        writer.add(good[0])
        with pytest.raises(OutputError, match="^b: layers/cnn/frames holds values beyond the float16"):
            writer.add(bad)
        writer.add(good[1])
    with open_features(out) as store:
        assert store.ids == ["a", "c"]
        for utt in good:
            np.testing.assert_array_equal(store.read(utt.utt_id, "12"), utt.states["12"].astype(np.float16))


@pytest.mark.parametrize("options, message", [
    ({"compression": "zstd"}, "unknown compression 'zstd': use gzip, gzip:LEVEL (0-9), lzf or none"),
    ({"save_dtype": "bfloat16"}, "cannot save as 'bfloat16': use float16 or float32"),
    ({"layers": ["first"]}, "'first' is not a layer: use 0..L or cnn"),
    ({"store_frames": False}, "nothing to store: store frames, utterance means or both"),
    ({"part": 3, "num_parts": 2}, "part 3/2 does not exist: use K/N with 1 <= K <= N"),
])
def test_invalid_options_are_refused(tmp_path, options, message):
    with pytest.raises(InputError) as caught:
        ShardWriter(tmp_path, WriterOptions(**{"layers": ["12"], **options}))
    assert str(caught.value) == message


def test_writer_needs_the_part_lock(tmp_path):
    with pytest.raises(RuntimeError, match="hold PartLock"):
        ShardWriter(tmp_path, WriterOptions(layers=["12"]))


# -- lock -------------------------------------------------------------------------------


def test_a_second_lock_holder_is_refused(tmp_path):
    with PartLock(tmp_path, 2, 3):
        with pytest.raises(OutputError) as caught:
            PartLock(tmp_path, 2, 3).acquire()  # a second open file description
        assert str(caught.value) == (f"another lebench extract is writing part 2/3 of "
                                     f"{tmp_path} (pid {os.getpid()})")
        PartLock(tmp_path, 1, 3).acquire()  # other parts are free


HOLD_LOCK = textwrap.dedent("""
    import sys, time
    from lebench_cli.storage import PartLock
    PartLock(sys.argv[1]).acquire()
    print("locked", flush=True)
    time.sleep(60)
""")


def test_a_lock_held_by_a_killed_process_is_recovered(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(tmp_path)], cwd=REPO,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "locked\n"
        with pytest.raises(OutputError, match=rf"\(pid {holder.pid}\)$"):
            PartLock(tmp_path).acquire()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    with PartLock(tmp_path):
        assert (tmp_path / ".lock-1of1").read_text() == f"{os.getpid()}\n"


def test_a_lock_taken_a_moment_ago_names_its_holder(tmp_path):
    """Two runs started together: the loser may look before the winner wrote its pid."""
    import threading

    path = tmp_path / ".lock-1of1"
    path.write_text("")
    fd = os.open(path, os.O_RDWR)
    try:
        threading.Timer(0.05, lambda: os.pwrite(fd, b"4242\n", 0)).start()
        assert storage.lock_holder(fd) == "4242"
        os.ftruncate(fd, 0)
        assert storage.lock_holder(fd, patience=0.05) == "unknown"
    finally:
        os.close(fd)


WRITE_UNTIL_KILLED = textwrap.dedent("""
    import sys, time
    import numpy as np
    from lebench_cli.storage import PartLock, ShardWriter, StoredUtterance, WriterOptions
    out = sys.argv[1]
    with PartLock(out), ShardWriter(out, WriterOptions(layers=["12"], commit_seconds=0.2)) as w:
        for i in range(10**6):
            states = {"12": np.full((50, 16), i, dtype=np.float32)}
            w.add(StoredUtterance(f"u{i}", "src", 1.0, 50, states))
            if w.stats.shards == 3:
                print("committed", flush=True)
            time.sleep(0.01)
""")


def test_kill_9_leaves_readable_shards_and_resume_completes(tmp_path):
    out = tmp_path / "out"
    prepare_output(out, {"identity": IDENTITY}, overwrite=False)
    writer = subprocess.Popen([sys.executable, "-c", WRITE_UNTIL_KILLED, str(out)], cwd=REPO,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert writer.stdout.readline() == "committed\n"
        time.sleep(0.1)
    finally:
        writer.send_signal(signal.SIGKILL)
        writer.wait()
    with open_features(out) as features:
        assert len(features) >= 3
        for utt_id in features.ids:
            assert (features.read(utt_id, 12) == int(utt_id[1:])).all()
        done = set(features.ids)
    todo = [f"u{i}" for i in range(len(done) + 50) if f"u{i}" not in done]
    write(out, [utterance(utt_id, layers=["12"], width=16) for utt_id in todo], layers=["12"])
    assert sorted(open_features(out).ids) == sorted(done | set(todo))
    assert not list((out / "shards").glob("*.tmp"))


# -- output folder ----------------------------------------------------------------------


def test_prepare_output_writes_metadata_once(tmp_path):
    out = tmp_path / "new" / "out"
    prepare_output(out, {"identity": IDENTITY, "tool": "lebench 0.1"}, overwrite=False)
    assert json.loads((out / "lebench.json").read_text())["tool"] == "lebench 0.1"
    assert (out / "shards").is_dir()
    prepare_output(out, {"identity": dict(IDENTITY), "tool": "lebench 0.2"}, overwrite=False)
    assert json.loads((out / "lebench.json").read_text())["tool"] == "lebench 0.1"
    assert sorted(path.name for path in out.iterdir()) == ["lebench.json", "shards"]


def test_a_different_run_is_refused_then_overwritten(tmp_path):
    out = tmp_path / "out"
    write(out, [utterance("a")])
    with FailureLog(out) as failures:
        failures.record("x", "/x.wav", "not audio")
    (out / "notes.txt").write_text("mine")
    other = {**IDENTITY, "layers": ["6"]}
    with pytest.raises(OutputError) as caught:
        prepare_output(out, {"identity": other}, overwrite=False)
    assert str(caught.value) == (f'{out} holds features of other layers (layers: ["cnn", "12"] != ["6"]): '
                                 "to store more layers, extract them into a second output folder, or use "
                                 "--overwrite to replace these features")
    prepare_output(out, {"identity": other}, overwrite=True)
    assert json.loads((out / "lebench.json").read_text())["identity"] == other
    assert sorted(path.name for path in out.iterdir()) == [
        ".lock-1of1", "lebench.json", "notes.txt", "shards"]
    assert stored_ids(out) == set() and not list((out / "shards").iterdir())


def test_a_missing_identity_key_is_named(tmp_path):
    prepare_output(tmp_path, {"identity": IDENTITY}, overwrite=False)
    with pytest.raises(OutputError, match=r"\(pooling: \(none\) != mean\)"):
        prepare_output(tmp_path, {"identity": {**IDENTITY, "pooling": "mean"}}, overwrite=False)


def test_an_output_path_that_is_a_file_is_refused(tmp_path):
    (tmp_path / "out").write_text("")
    with pytest.raises(OutputError, match=f"^cannot write to {re.escape(str(tmp_path / 'out'))}: it exists and is not a folder$"):
        prepare_output(tmp_path / "out", {"identity": IDENTITY}, overwrite=False)
    with pytest.raises(OutputError, match=f"^cannot write to {re.escape(str(tmp_path / 'out' / 'sub'))}: "):
        prepare_output(tmp_path / "out" / "sub", {"identity": IDENTITY}, overwrite=False)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_output_is_refused_early(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out").chmod(0o500)
    try:
        with pytest.raises(OutputError, match=f"^cannot write to {re.escape(str(tmp_path / 'out'))}: "):
            prepare_output(tmp_path / "out", {"identity": IDENTITY}, overwrite=False)
    finally:
        (tmp_path / "out").chmod(0o700)


# -- failures ---------------------------------------------------------------------------


def test_failures_of_the_last_run_of_every_part(tmp_path):
    with FailureLog(tmp_path, 2, 2) as failures:
        failures.record("b", "/b.wav", "cannot decode")
    with FailureLog(tmp_path, 1, 2) as failures:
        failures.record("old", "/old.wav", "fixed since")
    with FailureLog(tmp_path, 1, 2) as failures:  # a new run of part 1 starts afresh
        failures.record("a", Path("/a.wav"), "empty file")
    with open(tmp_path / "failures-2of2.jsonl", "a") as torn:
        torn.write('{"id": "c", "pa')
    assert read_failures(tmp_path) == [
        {"id": "a", "path": "/a.wav", "reason": "empty file"},
        {"id": "b", "path": "/b.wav", "reason": "cannot decode"},
    ]
