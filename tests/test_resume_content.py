"""Resume by content: a corpus copied or moved resumes, a changed file is caught, and
`--update` replaces exactly the changed ids' features, atomically, shard by shard."""

import json
import os
import shutil
import signal
import subprocess
import sys

import h5py
import numpy as np
import pytest
from click.testing import CliRunner

from lebench_cli.cli import main
from lebench_cli.reading.store import open_features
from lebench_cli.storage import committed_shards, read_shard_table
from lebench_cli.testing.audio import write_audio


def extract(*args):
    return CliRunner().invoke(main, ["extract", *map(str, args)], catch_exceptions=False)


def run_args(checkpoint, out, *extra):
    # One utterance per batch: a batch of one and a batch of three may differ in the last bit.
    return ["-o", out, "--model", checkpoint, "--device", "cpu", "--workers", "0", "--batch-seconds", "1", *extra]


def make_corpus(folder, count=3):
    return [write_audio(folder / "spk1" / f"u{index}.wav", 0.5 + index / 10, seed=index) for index in range(count)]


def features_of(out) -> dict:
    with open_features(out) as store:
        return {utt_id: store.read(utt_id, "last") for utt_id in store.ids}


def stored_id_counts(out) -> dict:
    """How many shard rows hold each id, over every committed shard."""
    counts = {}
    for _, path in committed_shards(out):
        for utt_id in read_shard_table(path).ids:
            counts[utt_id] = counts.get(utt_id, 0) + 1
    return counts


def index_ids(out) -> list:
    lines = (out / "index-1of1.tsv").read_text().splitlines()[1:]
    return sorted(line.split("\t")[0] for line in lines)


def failures_of(out) -> list:
    return [json.loads(line) for line in (out / "failures-1of1.jsonl").read_text().splitlines()]


# ---- copied and moved corpora ---------------------------------------------------------------


def test_a_corpus_copied_with_cp_resumes(checkpoints, tmp_path):
    corpus = tmp_path / "corpus"
    make_corpus(corpus)
    out = tmp_path / "out"
    assert extract(corpus, *run_args(checkpoints("base"), out, "-q")).exit_code == 0
    copy = tmp_path / "copy"
    shutil.copytree(corpus, copy, copy_function=shutil.copyfile)  # as `cp -r`: new modification times
    shutil.rmtree(corpus)
    shutil.copytree(copy, corpus, copy_function=shutil.copyfile)  # and copied back in place
    for source in (corpus, copy):
        result = extract(source, *run_args(checkpoints("base"), out))
        assert (result.exit_code, result.stderr) == (0, "nothing to extract: all 3 files already stored\n")


def test_a_corpus_moved_to_another_folder_resumes(checkpoints, tmp_path):
    corpus = tmp_path / "scratch" / "corpus"
    make_corpus(corpus)
    out = tmp_path / "out"
    assert extract(corpus, *run_args(checkpoints("base"), out, "-q")).exit_code == 0
    moved = tmp_path / "work" / "corpus"
    moved.parent.mkdir()
    os.rename(corpus, moved)
    write_audio(moved / "spk1" / "new.wav", 0.7, seed=9)
    result = extract(moved, *run_args(checkpoints("base"), out))
    assert result.exit_code == 0, result.output
    assert result.stderr.startswith("extracted 1 file (0.7 s of audio) in ")
    assert result.stderr.endswith("; 3 already stored, skipped\n")
    with open_features(out) as store:
        assert sorted(store.ids) == ["spk1/new", "spk1/u0", "spk1/u1", "spk1/u2"]
        assert store.info("spk1/u0")["source"] == str(corpus / "spk1" / "u0.wav")  # where it was read


def test_a_moved_corpus_is_hashed_once_then_resumes_without_reading_it(checkpoints, tmp_path, monkeypatch):
    """The first rerun after a move matches every file by content (one hash each) and
    records where they are now; the next one takes the fast path there and reads nothing."""
    from lebench_cli.pipeline import resume

    corpus = tmp_path / "scratch" / "corpus"
    make_corpus(corpus)
    out = tmp_path / "out"
    assert extract(corpus, *run_args(checkpoints("base"), out, "-q")).exit_code == 0
    shards = {path.name: path.read_bytes() for _, path in committed_shards(out)}
    moved = tmp_path / "work" / "corpus"
    moved.parent.mkdir()
    os.rename(corpus, moved)
    hashed = []
    original = resume.content_hash
    monkeypatch.setattr(resume, "content_hash", lambda path: hashed.append(path) or original(path))
    for hashes in (3, 0):
        hashed.clear()
        result = extract(moved, *run_args(checkpoints("base"), out))
        assert (result.exit_code, result.stderr) == (0, "nothing to extract: all 3 files already stored\n")
        assert len(hashed) == hashes, hashed
        assert {path.name: path.read_bytes() for _, path in committed_shards(out)} == shards  # nothing stored
    recorded = [json.loads(line) for line in (out / "relocated-1of1.jsonl").read_text().splitlines()]
    assert sorted((entry["id"], entry["path"]) for entry in recorded) == [
        (f"spk1/u{index}", str(moved / "spk1" / f"u{index}.wav")) for index in range(3)]
    # Not read, and so not hashed: other bytes of the same size under the recorded time go unseen.
    target = moved / "spk1" / "u0.wav"
    status = target.stat()
    target.write_bytes(bytes(status.st_size))
    os.utime(target, ns=(status.st_atime_ns, status.st_mtime_ns))
    hashed.clear()
    result = extract(moved, *run_args(checkpoints("base"), out))
    assert (result.exit_code, len(hashed)) == (0, 0), result.output
    # Touched, it is hashed again, and its other content is caught.
    os.utime(target)
    result = extract(moved, *run_args(checkpoints("base"), out, "-q"))
    assert result.exit_code == 3, result.output
    assert [failure["reason"] for failure in failures_of(out)] == [
        f"id spk1/u0 already stored from {corpus / 'spk1' / 'u0.wav'}"]


def test_a_store_without_hashes_compares_paths_as_before(checkpoints, tmp_path):
    corpus = tmp_path / "corpus"
    make_corpus(corpus, 1)
    out = tmp_path / "out"
    assert extract(corpus, *run_args(checkpoints("base"), out, "-q")).exit_code == 0
    for _, path in committed_shards(out):  # as shards of format 1 were written: no hashes, no checksums
        with h5py.File(path, "a") as shard:
            del shard["source_xxh3"]
            for key in ("identity", "tables_xxh3", "tables_xxh3_covers", "compute"):
                shard.attrs.pop(key, None)
            shard.attrs["format_version"] = 1
            for name in list(shard["layers"]):
                del shard[f"layers/{name}/frames_xxh3"]
    moved = tmp_path / "moved"
    os.rename(corpus, moved)
    result = extract(moved, *run_args(checkpoints("base"), out, "-q"))
    assert result.exit_code == 3
    assert failures_of(out)[0]["reason"] == f"id spk1/u0 already stored from {corpus / 'spk1' / 'u0.wav'}"


# ---- --update ---------------------------------------------------------------------------------


@pytest.fixture
def changed_store(checkpoints, tmp_path):
    """OUT with 3 ids, then spk1/u1's file rewritten (same length, other audio); and a fresh
    run's features of the corpus as it is now."""
    corpus = tmp_path / "corpus"
    paths = make_corpus(corpus)
    out = tmp_path / "out"
    assert extract(corpus, *run_args(checkpoints("base"), out, "-q")).exit_code == 0
    old = features_of(out)
    mtime = paths[1].stat().st_mtime_ns
    write_audio(paths[1], 0.6, seed=7)
    os.utime(paths[1], ns=(mtime, mtime + 3 * 10**9))
    fresh = tmp_path / "fresh"
    assert extract(corpus, *run_args(checkpoints("base"), fresh, "-q")).exit_code == 0
    return corpus, out, old, features_of(fresh)


def test_a_changed_file_fails_without_update_and_is_replaced_with_it(checkpoints, changed_store):
    corpus, out, old, fresh = changed_store
    result = extract(corpus, *run_args(checkpoints("base"), out))
    assert result.exit_code == 3
    (failure,) = failures_of(out)
    assert failure["path"] == str(corpus / "spk1" / "u1.wav")
    assert failure["reason"].endswith(", other content); the stored features are kept: use --update to "
                                      "extract it again")
    np.testing.assert_array_equal(features_of(out)["spk1/u1"], old["spk1/u1"])
    result = extract(corpus, *run_args(checkpoints("base"), out, "--update"))
    assert result.exit_code == 0, result.output
    assert result.stderr.startswith("extracted 1 file (0.6 s of audio) in ")
    assert result.stderr.endswith("; 2 already stored, skipped; 1 updated (old features replaced)\n")
    assert stored_id_counts(out) == {"spk1/u0": 1, "spk1/u1": 1, "spk1/u2": 1}
    assert index_ids(out) == ["spk1/u0", "spk1/u1", "spk1/u2"]
    now = features_of(out)
    assert now.keys() == fresh.keys()
    for utt_id in fresh:
        np.testing.assert_array_equal(now[utt_id], fresh[utt_id])
    result = extract(corpus, *run_args(checkpoints("base"), out, "--update"))
    assert (result.exit_code, result.stderr) == (0, "nothing to extract: all 3 files already stored\n")


def test_update_removes_an_old_shard_left_empty(checkpoints, tmp_path):
    corpus = tmp_path / "corpus"
    paths = make_corpus(corpus)
    out = tmp_path / "out"
    one_per_shard = ["--shard-size", "1KB", "-q"]
    assert extract(corpus, *run_args(checkpoints("base"), out, *one_per_shard)).exit_code == 0
    with open_features(out) as store:
        old_shard = store.info("spk1/u0")["shard"]
    assert len(committed_shards(out)) == 3
    write_audio(paths[0], 0.5, seed=8)
    result = extract(corpus, *run_args(checkpoints("base"), out, "--update", *one_per_shard))
    assert result.exit_code == 0, result.output
    assert not (out / old_shard).exists() and len(committed_shards(out)) == 3
    assert stored_id_counts(out) == {"spk1/u0": 1, "spk1/u1": 1, "spk1/u2": 1}
    fresh = tmp_path / "fresh"
    assert extract(corpus, *run_args(checkpoints("base"), fresh, "-q")).exit_code == 0
    np.testing.assert_array_equal(features_of(out)["spk1/u0"], features_of(fresh)["spk1/u0"])


def test_update_leaves_a_file_that_now_fails_with_its_old_features(checkpoints, changed_store):
    corpus, out, old, _ = changed_store
    path = corpus / "spk1" / "u1.wav"
    path.write_bytes(b"RIFF" + bytes(200))  # not audio any more
    result = extract(corpus, *run_args(checkpoints("base"), out, "--update", "-q"))
    assert result.exit_code == 3
    assert [failure["path"] for failure in failures_of(out)] == [str(path)]
    np.testing.assert_array_equal(features_of(out)["spk1/u1"], old["spk1/u1"])
    assert stored_id_counts(out) == {"spk1/u0": 1, "spk1/u1": 1, "spk1/u2": 1}


# Each point: a function of lebench_cli.storage.update patched to kill the process there.
KILL_POINTS = {
    "new shards committed, old ones untouched": (
        "calls = []\n"
        "original = update.remove_superseded\n"
        "def patched(*args):\n"
        "    calls.append(1)\n"
        "    if len(calls) == 2:\n"  # the first call is the start-of-run recovery
        "        die()\n"
        "    return original(*args)\n"
        "update.remove_superseded = patched\n"),
    "old shard rewritten into its .tmp, not renamed": (
        "original = update._Rewriter._write_table\n"
        "def patched(self):\n"
        "    original(self)\n"
        "    die()\n"
        "update._Rewriter._write_table = patched\n"),
    "old shard renamed over, index not rewritten": "update._write_part_index = lambda *args: die()\n",
}


@pytest.mark.parametrize("point", list(KILL_POINTS))
def test_kill_9_during_update_leaves_one_copy_of_each_id(checkpoints, changed_store, point):
    corpus, out, old, fresh = changed_store
    code = ("import os, signal, sys\n"
            "from lebench_cli.storage import update\n"
            "def die():\n"
            "    os.kill(os.getpid(), signal.SIGKILL)\n"
            + KILL_POINTS[point] +
            "from lebench_cli.cli import main\n"
            "main(sys.argv[1:], prog_name='lebench')\n")
    run = subprocess.run([sys.executable, "-c", code, "extract", corpus,
                          *map(str, run_args(checkpoints("base"), out, "--update", "-q"))],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == -signal.SIGKILL, run.stderr
    served = features_of(out)  # readable, each id once
    assert sorted(served) == ["spk1/u0", "spk1/u1", "spk1/u2"]
    for utt_id in ("spk1/u0", "spk1/u2"):
        np.testing.assert_array_equal(served[utt_id], old[utt_id])
    # Every point comes after the new features were committed: they are the ones served.
    np.testing.assert_array_equal(served["spk1/u1"], fresh["spk1/u1"])
    result = extract(corpus, *run_args(checkpoints("base"), out))  # the next run finishes the removal
    assert (result.exit_code, result.stderr) == (0, "nothing to extract: all 3 files already stored\n")
    assert stored_id_counts(out) == {"spk1/u0": 1, "spk1/u1": 1, "spk1/u2": 1}
    assert index_ids(out) == ["spk1/u0", "spk1/u1", "spk1/u2"]
    assert not list((out / "shards").glob("*.tmp"))
    now = features_of(out)
    for utt_id in fresh:
        np.testing.assert_array_equal(now[utt_id], fresh[utt_id])


def test_update_replaces_only_what_its_own_part_stores(checkpoints, tmp_path):
    corpus = tmp_path / "corpus"
    (path,) = make_corpus(corpus, 1)
    out = tmp_path / "out"
    assert extract(corpus, *run_args(checkpoints("base"), out, "-q")).exit_code == 0
    old = features_of(out)
    write_audio(path, 0.9, seed=5)
    result = extract(corpus, *run_args(checkpoints("base"), out, "--update", "--shard", "1/2", "-q"))
    assert result.exit_code == 3
    (failure,) = [json.loads(line) for line in (out / "failures-1of2.jsonl").read_text().splitlines()]
    assert failure["reason"].startswith("changed since its features were stored (size ")
    assert failure["reason"].endswith("); the stored features are kept: they belong to part 1/1, and --update "
                                      "replaces only this part's (1/2)")
    np.testing.assert_array_equal(features_of(out)["spk1/u0"], old["spk1/u0"])


def test_fingerprints_never_read_what_does_not_end(tmp_path):
    from lebench_cli.pipeline.resume import content_hash, fingerprint, fingerprints

    fifo = tmp_path / "fifo.wav"
    os.mkfifo(fifo)  # no writer: reading it would wait for ever
    endless = tmp_path / "endless.wav"
    os.symlink("/dev/zero", endless)
    regular = write_audio(tmp_path / "u.wav", 0.3)
    assert fingerprint(fifo, with_hash=True).content_hash == ""
    assert fingerprint(endless, with_hash=True).content_hash == ""
    with pytest.raises(ValueError):
        content_hash(fifo)
    found = fingerprints([fifo, endless, regular, tmp_path / "missing.wav"], threads=2)
    assert [None if f is None else len(f.content_hash) for f in found] == [0, 0, 16, None]
    assert found[2].content_hash == content_hash(regular)


def test_a_moved_long_recording_resumes_too(checkpoints, tmp_path):
    corpus = tmp_path / "corpus"
    write_audio(corpus / "long.wav", 5.0, seed=3)  # streamed in windows: begin_utterance's path
    out = tmp_path / "out"
    windows = ["--chunk-seconds", "2", "--overlap-seconds", "0.5"]
    result = extract(corpus, *run_args(checkpoints("base"), out, *windows))
    assert result.exit_code == 0 and "; 1 chunked" in result.stderr, result.stderr
    (_, shard), = committed_shards(out)
    assert len(read_shard_table(shard).source_xxh3[0]) == 16
    os.rename(corpus, tmp_path / "moved")
    result = extract(tmp_path / "moved", *run_args(checkpoints("base"), out, *windows))
    assert (result.exit_code, result.stderr) == (0, "nothing to extract: all 1 file already stored\n")


def test_dry_run_counts_what_update_would_extract(checkpoints, changed_store):
    corpus, out, _, _ = changed_store
    result = extract(corpus, *run_args(checkpoints("base"), out, "--dry-run"))
    assert result.stdout.startswith("0 files to extract (0.0 s of audio), 2 already stored, 1 id conflict (would "
                                    "fail), 0 unreadable; estimated output ")
    result = extract(corpus, *run_args(checkpoints("base"), out, "--dry-run", "--update"))
    assert result.stdout.startswith("1 file to extract (0.6 s of audio), 2 already stored, 0 unreadable; "
                                    "estimated output ")
