"""`lebench verify DEST` on an export: each format's arrays read back with its own reader and
compared with what `lebench export` writes now from the recorded store (docs/cli.md,
"lebench verify")."""

import json
import os
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from click.testing import CliRunner

from lebench_cli.cli import main
from lebench_cli.reading.store import open_features
from lebench_cli.storage import PartLock, ShardWriter, StoredUtterance, WriterOptions, prepare_output
from lebench_cli.storage.locks import ExportLock

FORMATS = ["npy", "kaldi", "lhotse"]
IDS = [f"u{index}" for index in range(5)]
RERUN = "rerun lebench export"


def write_store(out: Path, model: str = "a", overwrite: bool = False, audio: Path = None) -> Path:
    """Five utterances of layer 1, one shard each (shard_size_bytes is tiny); the same values
    whenever it is written again. With AUDIO, each has a two-channel recording there."""
    generator = np.random.default_rng(0)
    prepare_output(out, {"identity": {"model_sha256": model, "layers": ["1"]}, "model": {"num_layers": 1}},
                   overwrite=overwrite)
    with PartLock(out, 1, 1), ShardWriter(out, WriterOptions(layers=["1"], shard_size_bytes=200)) as writer:
        for utt_id in IDS:
            frames = int(generator.integers(3, 20))
            source = Path(f"/nowhere/{utt_id}.wav") if audio is None else audio / f"{utt_id}.wav"
            if audio is not None:
                audio.mkdir(exist_ok=True)
                sf.write(source, np.zeros((frames * 320 + 80, 2), np.float32), 16000)
            writer.add(StoredUtterance(utt_id, str(source), frames * 0.02, frames,
                                       {"1": generator.normal(size=(frames, 8)).astype(np.float32)}))
    return out


def invoke(*args):
    return CliRunner().invoke(main, [*map(str, args)], catch_exceptions=False)


def exported(tmp_path, export_format, *options):
    store, destination = write_store(tmp_path / "store"), tmp_path / export_format
    assert invoke("export", store, "--format", export_format, "-o", destination, "-q", *options).exit_code == 0
    return store, destination


def summary(store: Path, checked: int, problems: int = 0, entries: int = 1) -> str:
    found = {0: "no problem found", 1: "1 problem"}.get(problems, f"{problems} problems")
    entries = "1 entry" if entries == 1 else f"{entries} entries"
    arrays = "1 array" if checked == 1 else f"{checked} arrays"
    return f"{entries}, {len(IDS)} utterances, {arrays} checked against {store.resolve()}: {found}\n"


def verify_finds(destination: Path, store: Path, lines: list, checked: int) -> None:
    result = invoke("verify", destination)
    assert (result.exit_code, result.stdout.splitlines(), result.stderr) == (
        1, lines, summary(store, checked, len(lines)))


def flip_last_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x08
    path.write_bytes(bytes(data))


def frames_of(store: Path, utt_id: str) -> int:
    with open_features(store) as features:
        return features.info(utt_id)["frames"]


@pytest.mark.parametrize("export_format", FORMATS)
def test_a_clean_export_verifies(tmp_path, export_format):
    store, destination = exported(tmp_path, export_format)
    result = invoke("verify", destination)
    assert (result.exit_code, result.stdout, result.stderr) == (0, "", summary(store, len(IDS)))
    quiet = invoke("verify", destination, "-q")
    assert (quiet.exit_code, quiet.output) == (0, "")


def test_a_clean_stacked_npy_export_verifies(tmp_path):
    store, destination = exported(tmp_path, "npy", "--stack", "--dtype", "float16")
    result = invoke("verify", destination)
    assert (result.exit_code, result.stdout, result.stderr) == (0, "", summary(store, len(IDS)))


def test_a_clean_lhotse_export_of_multi_channel_recordings_verifies(tmp_path):
    from lhotse import CutSet

    store, destination = write_store(tmp_path / "store", audio=tmp_path / "audio"), tmp_path / "lhotse"
    assert invoke("export", store, "--format", "lhotse", "-o", destination, "-q").exit_code == 0
    cuts = CutSet.from_jsonl(destination / "layer_1" / "cuts.jsonl.gz")
    assert {type(cut).__name__ for cut in cuts} == {"MultiCut"}  # the down-mix of two channels
    result = invoke("verify", destination)
    assert (result.exit_code, result.stdout, result.stderr) == (0, "", summary(store, len(IDS)))


def test_a_flipped_byte_in_an_npy_file(tmp_path):
    store, destination = exported(tmp_path, "npy")
    flip_last_byte(destination / "layer_1" / "u1.npy")
    frames = frames_of(store, "u1")
    verify_finds(destination, store, [f"layer_1, utterance u1: values differ from the store's "
                                      f"(1 of {frames * 8}, the first at [{frames - 1}, 7])"], checked=4)


def test_a_flipped_byte_in_a_kaldi_ark(tmp_path):
    store, destination = exported(tmp_path, "kaldi")
    flip_last_byte(destination / "layer_1" / "feats.ark")  # the last float of the last utterance
    frames = frames_of(store, "u4")
    verify_finds(destination, store, [f"layer_1, utterance u4: values differ from the store's "
                                      f"(1 of {frames * 8}, the first at [{frames - 1}, 7])"], checked=4)


def test_a_changed_value_in_a_lhotse_feats_h5(tmp_path):
    import h5py

    store, destination = exported(tmp_path, "lhotse")
    with h5py.File(destination / "layer_1" / "feats.h5", "r+") as features:
        (key,) = [key for key in features if key.startswith("u3")]
        features[key][0, 2] = features[key][0, 2] + 1
    frames = frames_of(store, "u3")
    verify_finds(destination, store, [f"layer_1, utterance u3: values differ from the store's "
                                      f"(1 of {frames * 8}, the first at [0, 2])"], checked=4)


def test_a_truncated_npy_file_is_unreadable(tmp_path):
    store, destination = exported(tmp_path, "npy")
    path = destination / "layer_1" / "u3.npy"
    path.write_bytes(path.read_bytes()[:-4])
    result = invoke("verify", destination)
    assert result.exit_code == 1
    assert result.stdout.startswith("layer_1, utterance u3: unreadable: ValueError: ") and \
        len(result.stdout.splitlines()) == 1


def test_a_deleted_npy_file_is_missing(tmp_path):
    store, destination = exported(tmp_path, "npy")
    (destination / "layer_1" / "u2.npy").unlink()
    verify_finds(destination, store, [f"layer_1, utterance u2: missing (in the record, not in the export); {RERUN}"],
                 checked=4)


def test_an_scp_line_removed_is_missing(tmp_path):
    store, destination = exported(tmp_path, "kaldi")
    scp = destination / "layer_1" / "feats.scp"
    scp.write_text("".join(line for line in scp.read_text().splitlines(keepends=True) if not line.startswith("u2 ")))
    verify_finds(destination, store, [f"layer_1, utterance u2: missing (in the record, not in the export); {RERUN}"],
                 checked=4)


@pytest.mark.parametrize("export_format,index", [("kaldi", "feats.scp"), ("lhotse", "cuts.jsonl.gz")])
def test_a_deleted_index_is_one_line(tmp_path, export_format, index):
    store, destination = exported(tmp_path, export_format)
    (destination / "layer_1" / index).unlink()
    verify_finds(destination, store, [f"layer_1: layer_1/{index} is missing: none of its 5 utterances can be read; "
                                      f"{RERUN}"], checked=0)


def test_a_file_the_record_does_not_list(tmp_path):
    store, destination = exported(tmp_path, "npy")
    np.save(destination / "layer_1" / "stray.npy", np.zeros((2, 8), np.float32))
    verify_finds(destination, store, ["layer_1, utterance stray: not in the record (a file lebench export did not "
                                      "write, or an export cut short)"], checked=5)


@pytest.mark.parametrize("export_format", FORMATS)
def test_a_store_extracted_again_after_the_export_is_stale(tmp_path, export_format):
    store, destination = exported(tmp_path, export_format)
    write_store(store, overwrite=True)  # the same values, in new shards
    verify_finds(destination, store, [f"layer_1, utterance {utt_id}: stale: the store's features changed since the "
                                      f"export; {RERUN}" for utt_id in IDS], checked=0)
    assert invoke("export", store, "--format", export_format, "-o", destination, "-q").exit_code == 0
    assert invoke("verify", destination).exit_code == 0


def test_a_store_that_grew_is_stale_for_its_new_utterances(tmp_path):
    store, destination = exported(tmp_path, "npy")
    with PartLock(store, 1, 1), ShardWriter(store, WriterOptions(layers=["1"], shard_size_bytes=200)) as writer:
        writer.add(StoredUtterance("v0", "/nowhere/v0.wav", 0.1, 5, {"1": np.ones((5, 8), np.float32)}))
    verify_finds(destination, store, [f"layer_1, utterance v0: stale: in the store, not exported; {RERUN}"],
                 checked=5)


def test_a_store_of_another_run_is_one_line(tmp_path):
    store, destination = exported(tmp_path, "kaldi")
    write_store(store, model="b", overwrite=True)
    verify_finds(destination, store, [f"lebench-export.json: made from {store.resolve()}, which now holds another run "
                                      f"(model_sha256: \"a\" != \"b\"): nothing was checked; {RERUN}"], checked=0)


@pytest.mark.parametrize("export_format", FORMATS)
def test_a_record_naming_a_store_that_is_gone_is_one_line(tmp_path, export_format):
    store, destination = exported(tmp_path, export_format)
    moved = store.rename(tmp_path / "elsewhere")
    verify_finds(destination, store, [f"lebench-export.json: made from {store.resolve()}, which cannot be opened now "
                                      f"({store.resolve()} does not exist): nothing was checked"], checked=0)
    assert moved.is_dir()


def test_repair_and_workers_on_an_export_are_refused(tmp_path):
    store, destination = exported(tmp_path, "npy")
    before = sorted(path.name for path in destination.rglob("*"))
    result = invoke("verify", destination, "--repair")
    assert (result.exit_code, result.output) == (
        1, f"Error: --repair moves a store's damaged shards; {destination} is an export: rerun `lebench export "
           f"{store.resolve()} --format npy -o {destination}`, which adds, replaces and removes what differs\n")
    result = invoke("verify", destination, "--workers", "2")
    assert (result.exit_code, result.output) == (
        1, f"Error: --workers applies to a store; {destination} is an export, checked in one process: "
           "drop --workers\n")
    assert sorted(path.name for path in destination.rglob("*")) == before


def test_verify_waits_for_no_export_and_no_export_writes_while_it_reads(tmp_path):
    store, destination = exported(tmp_path, "npy")
    with ExportLock(destination):  # an export writing now: its pid is in the lock file
        result = invoke("verify", destination)
    assert (result.exit_code, result.output) == (
        1, f"Error: a lebench export (pid {os.getpid()}) is writing into {destination}: verify it when "
           "that export ends\n")
    with ExportLock(destination, shared=True):  # a verify reading now
        result = invoke("export", store, "--format", "npy", "-o", destination)
        again = invoke("verify", destination)
    assert (result.exit_code, result.output) == (1, f"Error: a lebench verify is reading {destination}: rerun when it "
                                                    "ends\n")
    assert again.exit_code == 0


def test_a_record_that_is_not_one_is_one_line(tmp_path):
    store, destination = exported(tmp_path, "npy")
    (destination / "lebench-export.json").write_text(json.dumps({"format": "other"}))
    result = invoke("verify", destination)
    assert (result.exit_code, result.output) == (
        1, f"Error: cannot read {destination / 'lebench-export.json'}: not an export record\n")


def test_a_record_of_an_unknown_format_is_one_line(tmp_path):
    store, destination = exported(tmp_path, "npy")
    path = destination / "lebench-export.json"
    path.write_text(path.read_text().replace('"export_format": "npy"', '"export_format": "record"'))
    result = invoke("verify", destination)
    assert (result.exit_code, result.output) == (1, f"Error: {path} names an unknown export format 'record'\n")
