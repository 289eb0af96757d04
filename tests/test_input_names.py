"""`lebench extract` on the names corpora really have: names that are not UTF-8 (Latin-1,
from old corpora), NFD names (macOS), two spellings of one name, and files beside the audio
that libsndfile reads but that are not speech (.mat, .htk). docs/extract.md#utterance-ids."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import unicodedata
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from click.testing import CliRunner

from lebench_cli.cli import main
from lebench_cli.reading.store import open_features
from lebench_cli.testing import audio

RATE = 16_000
LATIN1 = b"caf\xe9"  # 'café' in Latin-1: not UTF-8
NFC, NFD = "caf\u00e9", "cafe\u0301"


def tone(seconds: float = 0.5, seed: int = 0) -> np.ndarray:
    return audio.tone(seconds, RATE, seed=seed).astype(np.float32)


def write(path, samples: np.ndarray, **kwargs):
    """`path` as str or bytes (a name that is not UTF-8)."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as file:
        sf.write(file, samples, RATE, format=kwargs.pop("format", "WAV"), **kwargs)
    return path


def extract(*args):
    return CliRunner().invoke(main, ["extract", *map(str, args)], catch_exceptions=False)


def run_args(checkpoint, out, *extra):
    return ["-o", out, "--model", checkpoint, "--device", "cpu", "-q", "--layers", "1,3", *extra]


def failures_of(out: Path) -> dict:
    lines = (out / "failures-1of1.jsonl").read_text(encoding="utf-8").splitlines()
    return {entry["id"]: (entry["path"], entry["reason"]) for entry in map(json.loads, lines)}


@pytest.mark.parametrize("workers", ["0", "2"])
def test_a_latin1_name_is_read_and_stored_under_an_escaped_id(checkpoints, tmp_path, workers):
    corpus = tmp_path / "corpus"
    folder = os.fsencode(corpus)
    write(os.path.join(folder, LATIN1 + b".wav"), tone(seed=1))
    write(os.path.join(folder, b"ok.wav"), tone(seed=1))  # the same audio under a plain name
    with open(os.path.join(folder, b"bad-" + LATIN1 + b".wav"), "w") as file:
        file.write("not audio")
    out = tmp_path / "out"
    result = extract(corpus, *run_args(checkpoints("base"), out, "--workers", workers))
    assert result.exit_code == 3, result.output
    assert result.output == f"Error: 1 files failed (see {out}/failures-1of1.jsonl)\n"
    assert failures_of(out) == {
        "bad-caf\\xe9": (f"{corpus}/bad-caf\\xe9.wav", "not a readable audio file (format not recognised)")}
    with open_features(out) as store:
        assert sorted(store.ids) == ["caf\\xe9", "ok"]
        assert store.info("caf\\xe9")["source"] == f"{corpus}/caf\\xe9.wav"
        np.testing.assert_array_equal(store.read("caf\\xe9", 3), store.read("ok", 3))
        # The name as Python spells it (os.listdir, os.fsdecode) finds it too.
        np.testing.assert_array_equal(store.read(os.fsdecode(LATIN1), 3), store.read("ok", 3))
    rerun = extract(corpus, *run_args(checkpoints("base"), out, "--workers", workers))
    assert rerun.exit_code == 3
    with open_features(out) as store:
        assert len(store) == 2  # resumed: skipped as already stored, not failed as another file
    assert "bad-caf\\xe9" in failures_of(out) and len(failures_of(out)) == 1


def test_a_latin1_name_on_stdin_and_in_a_manifest(checkpoints, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write(os.path.join(b"corpus", LATIN1 + b".wav"), tone())
    out = tmp_path / "out"
    # A real pipe, as from `find`: click's stdin is not CliRunner's
    result = subprocess.run([sys.executable, "-m", "lebench_cli", "extract", "-",
                             *map(str, run_args(checkpoints("base"), out, "--workers", "0"))],
                            input=b"corpus/" + LATIN1 + b".wav\n", capture_output=True, timeout=300)
    assert result.returncode == 0, result.stderr.decode(errors="replace")
    with open_features(out) as store:
        assert store.ids == ["corpus/caf\\xe9"]
    listing = extract("corpus", "-o", tmp_path / "dry", "--model", checkpoints("base"), "--dry-run",
                      "--manifest", tmp_path / "list.tsv")
    assert listing.exit_code == 1
    assert listing.output == ("Error: corpus/caf\\xe9.wav: a name that is not UTF-8 cannot be written "
                              "to a .tsv manifest (UTF-8 text); rename it, or extract without --manifest\n")
    assert not (tmp_path / "list.tsv").exists()


def test_an_nfd_name_is_stored_nfc_and_read_with_either_spelling(checkpoints, tmp_path):
    corpus = tmp_path / "corpus"
    write(str(corpus / NFD / f"{NFD}.wav"), tone(seed=2))
    out = tmp_path / "out"
    assert extract(corpus, *run_args(checkpoints("base"), out, "--workers", "0")).exit_code == 0
    with open_features(out) as store:
        assert store.ids == [f"{NFC}/{NFC}"]
        assert store.info(f"{NFD}/{NFD}")["source"] == str(corpus / NFD / f"{NFD}.wav")  # the file as named
        nfc, nfd = store.read(f"{NFC}/{NFC}", 1), store.read(f"{NFD}/{NFD}", 1)
        np.testing.assert_array_equal(nfc, nfd)
        assert f"{NFD}/{NFD}" in store and f"{NFC}/{NFC}" in store
        with pytest.raises(KeyError, match="utterance 'caf' is not in"):
            store.read("caf", 1)
    # Resume and a manifest keep the one id.
    rerun = extract(corpus, *run_args(checkpoints("base"), out, "--workers", "0"))
    assert rerun.exit_code == 0 and rerun.output == ""
    with open_features(out) as store:
        assert store.ids == [f"{NFC}/{NFC}"]
    listing = extract(corpus, "-o", tmp_path / "dry", "--model", checkpoints("base"), "--dry-run",
                      "--manifest", tmp_path / "list.tsv")
    assert listing.exit_code == 0, listing.output
    assert (tmp_path / "list.tsv").read_text(encoding="utf-8").splitlines()[1].startswith(f"{NFD}/{NFD}.wav\t")


def test_two_spellings_of_one_name_are_refused_naming_both(checkpoints, tmp_path):
    corpus = tmp_path / "corpus"
    write(str(corpus / f"{NFC}.wav"), tone(seed=1))
    write(str(corpus / f"{NFD}.wav"), tone(seed=2))
    out = tmp_path / "out"
    result = extract(corpus, *run_args(checkpoints("base"), out, "--workers", "0"))
    assert result.exit_code == 1
    first, second = sorted([f"{corpus}/{NFC}.wav", f"{corpus}/{NFD}.wav"])
    assert result.output == (f"Error: duplicate utterance id '{NFC}': {first} and {second} (their names differ "
                             "only in Unicode normalisation, NFC and NFD: rename one)\n")
    assert not out.exists()  # refused before anything is written
    assert unicodedata.normalize("NFC", NFD) == NFC


def test_mat_and_htk_files_beside_the_audio_are_skipped_unless_asked_for(checkpoints, tmp_path):
    corpus = tmp_path / "corpus"
    write(str(corpus / "a.wav"), tone(seed=1))
    write(str(corpus / "a.mat"), np.random.default_rng(0).standard_normal(RATE), format="MAT5", subtype="DOUBLE")
    write(str(corpus / "labels" / "b.mat"), np.arange(10.0), format="MAT5", subtype="DOUBLE")
    write(str(corpus / "mfcc" / "c.htk"), tone(seed=3), format="HTK", subtype="PCM_16")
    (corpus / "mfcc" / "d.htk").write_bytes(b"\x00\x00\x00\x10\x00\x01\x86\xa0\x00\x34\x00\x06" + bytes(52 * 16))
    out = tmp_path / "out"
    result = extract(corpus, *run_args(checkpoints("base"), out, "--workers", "0"))
    assert result.exit_code == 0, result.output
    with open_features(out) as store:
        assert store.ids == ["a"]
    taken = extract(corpus, *run_args(checkpoints("base"), tmp_path / "taken", "--workers", "0", "--ext", "wav,htk"))
    assert taken.exit_code == 3
    assert failures_of(tmp_path / "taken") == {
        "mfcc/d": (f"{corpus}/mfcc/d.htk", "not a readable audio file (format not recognised)")}  # MFCC, not PCM
    with open_features(tmp_path / "taken") as store:
        assert sorted(store.ids) == ["a", "mfcc/c"]
    clash = extract(corpus, *run_args(checkpoints("base"), tmp_path / "clash", "--workers", "0", "--ext", "wav,mat"))
    assert clash.exit_code == 1
    assert clash.output == (f"Error: duplicate utterance id 'a': {corpus}/a.mat and {corpus}/a.wav (two formats "
                            "of one file? pick one with --ext mat or --ext wav)\n")


def test_a_store_written_before_ids_were_nfc_is_read_with_either_spelling(tmp_path):
    from lebench_cli.storage import PartLock, ShardWriter, StoredUtterance, WriterOptions, prepare_output

    states = {"3": np.arange(8, dtype=np.float32).reshape(2, 4)}
    options = WriterOptions(layers=["3"], save_dtype="float32")
    prepare_output(tmp_path, {"identity": {"layers": ["3"]}, "model": "tiny"}, overwrite=False)
    with PartLock(tmp_path, 1, 1), ShardWriter(tmp_path, options) as writer:
        writer.add(StoredUtterance(f"old/{NFD}", f"/audio/{NFD}.wav", 0.045, 2, states))
    with open_features(tmp_path) as store:
        assert store.ids == [f"old/{NFD}"]
        for spelling in (NFD, NFC):
            np.testing.assert_array_equal(store.read(f"old/{spelling}", 3), states["3"])
            assert f"old/{spelling}" in store
        assert "old/cafe" not in store
