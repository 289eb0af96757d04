"""Re-exports follow the store they were made from (DEST/lebench-export.json): what is new is
added, what changed replaced, what is gone removed, another run refused; ids are checked and
read errors named before or without writing anything (docs/reading.md#exports)."""

import errno
import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from click.testing import CliRunner

from lebench_cli.cli import main
from lebench_cli.reading.store import FeatureSet, open_features
from lebench_cli.storage import PartLock, ShardWriter, StoredUtterance, WriterOptions, prepare_output


def write_store(out: Path, ids: list, width: int = 8, model: str = "a", overwrite: bool = False, seed: int = 0,
                channel=None, sources: dict = None) -> Path:
    """Utterances of layer 1 (one shard each: shard_size_bytes is tiny) added to OUT."""
    generator = np.random.default_rng(seed)
    identity = {"model_sha256": model, "layers": ["1"], "channel": channel}
    prepare_output(out, {"identity": identity, "model": {"num_layers": 1}}, overwrite=overwrite)
    with PartLock(out, 1, 1), ShardWriter(out, WriterOptions(layers=["1"], shard_size_bytes=200)) as writer:
        for utt_id in ids:
            frames = int(generator.integers(3, 20))
            source = (sources or {}).get(utt_id, f"/nowhere/{utt_id}.wav")
            writer.add(StoredUtterance(utt_id, source, frames * 0.02, frames,
                                       {"1": generator.normal(size=(frames, width)).astype(np.float32)}))
    return out


def export(*args):
    return CliRunner().invoke(main, ["export", *map(str, args)], catch_exceptions=False)


def exported(destination: Path, export_format: str) -> dict:
    """id -> array, read back with the format's own reader."""
    folder = destination / "layer_1"
    if export_format == "npy":
        return {str(path.relative_to(folder))[:-4]: np.load(path) for path in sorted(folder.rglob("*.npy"))}
    if export_format == "kaldi":
        import kaldiio

        return {key: np.asarray(value) for key, value in kaldiio.load_scp(str(folder / "feats.scp")).items()}
    from lhotse import CutSet

    return {cut.id: cut.load_features() for cut in CutSet.from_jsonl(folder / "cuts.jsonl.gz")}


def assert_exports(store: Path, destination: Path, export_format: str) -> None:
    read = exported(destination, export_format)
    with open_features(store) as features:
        assert sorted(read) == sorted(features.ids)
        for utt_id in features.ids:
            np.testing.assert_array_equal(read[utt_id], features.read(utt_id, 1).astype(read[utt_id].dtype))


def digests(folder: Path) -> dict:
    return {str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(folder.rglob("*")) if path.is_file()}


def summary(destination: Path, export_format: str, new=0, replaced=0, removed=0, unchanged=0) -> str:
    """The summary line; lhotse counts the cuts it wrote without a recording (here: all, as
    the sources do not exist), and writes a layer whole when anything in it changed."""
    line = f"exported {new} new, replaced {replaced}, removed {removed} in {destination}"
    line += f"; {unchanged} unchanged" if unchanged else ""
    if export_format == "lhotse" and new + replaced + removed:
        line += f"; {new + replaced + unchanged} without a recording (source audio missing)"
    return line + "\n"


FORMATS = ["npy", "kaldi", "lhotse"]
IDS = [f"u{index}" for index in range(5)]


@pytest.mark.parametrize("export_format", FORMATS)
def test_a_store_that_grew_exports_what_is_new(tmp_path, export_format):
    store, destination = write_store(tmp_path / "store", IDS), tmp_path / "dest"
    assert export(store, "--format", export_format, "-o", destination).exit_code == 0
    write_store(store, [f"v{index}" for index in range(11)], seed=1)  # 5 -> 16 utterances
    result = export(store, "--format", export_format, "-o", destination)
    assert (result.exit_code, result.output) == (0, summary(destination, export_format, new=11, unchanged=5))
    assert_exports(store, destination, export_format)
    again = export(store, "--format", export_format, "-o", destination)
    assert again.output == summary(destination, export_format, unchanged=16)


@pytest.mark.parametrize("export_format", FORMATS)
def test_a_store_that_lost_a_shard_loses_its_utterances_in_the_export(tmp_path, export_format):
    store, destination = write_store(tmp_path / "store", IDS), tmp_path / "dest"
    assert export(store, "--format", export_format, "-o", destination).exit_code == 0
    with open_features(store) as features:
        lost = features.info("u2")["shard"]
        gone = [utt_id for utt_id in features.ids if features.info(utt_id)["shard"] == lost]
    (store / lost).unlink()
    # With the index still listing it, the store is refused (tests/test_integrity.py); a shard
    # gone from the index too (as an --update that emptied it leaves the store) is an export's
    # business: its utterances are removed from DEST.
    result = export(store, "--format", export_format, "-o", destination)
    assert result.exit_code == 1 and f"{store / lost} is missing" in result.output
    for index in store.glob("index-*.tsv"):
        lines = index.read_text().splitlines(keepends=True)
        index.write_text("".join(line for line in lines if f"\t{lost}\t" not in line))
    result = export(store, "--format", export_format, "-o", destination)
    assert (result.exit_code, result.output) == (
        0, summary(destination, export_format, removed=len(gone), unchanged=5 - len(gone)))
    assert_exports(store, destination, export_format)
    assert not list(destination.rglob("*tmp*")) and not list(destination.rglob("*partial*"))


@pytest.mark.parametrize("export_format", FORMATS)
def test_a_store_made_again_is_replaced_or_refused(tmp_path, export_format):
    store, destination = write_store(tmp_path / "store", IDS), tmp_path / "dest"
    assert export(store, "--format", export_format, "-o", destination).exit_code == 0
    # The same run made again (--overwrite, same model): other shards, other features.
    write_store(store, IDS, overwrite=True, seed=2)
    result = export(store, "--format", export_format, "-o", destination)
    assert (result.exit_code, result.output) == (0, summary(destination, export_format, replaced=5))
    assert_exports(store, destination, export_format)
    # Another model (--overwrite): 32 wide instead of 8; the export of the old one is refused.
    write_store(store, IDS, width=32, model="b", overwrite=True)
    before = digests(destination)
    result = export(store, "--format", export_format, "-o", destination)
    assert (result.exit_code, result.output) == (
        1, f"Error: {destination} holds an export of another run ({store}, model_sha256: \"a\" != \"b\"): "
           f"export to another folder, or remove {destination} first\n")
    assert digests(destination) == before


def test_a_new_dtype_replaces_every_file(tmp_path):
    store, destination = write_store(tmp_path / "store", IDS), tmp_path / "dest"
    assert export(store, "--format", "npy", "-o", destination).exit_code == 0
    result = export(store, "--format", "npy", "--dtype", "float16", "-o", destination)
    assert result.output == f"exported 0 new, replaced 5, removed 0 in {destination}\n"
    assert {array.dtype for array in exported(destination, "npy").values()} == {np.dtype("float16")}


def test_destinations_that_cannot_be_told_current_are_refused(tmp_path):
    store = write_store(tmp_path / "store", IDS)
    assert export(store, "--format", "kaldi", "-o", tmp_path / "kaldi").exit_code == 0
    result = export(store, "--format", "npy", "-o", tmp_path / "kaldi")
    assert (result.exit_code, result.output) == (
        1, f"Error: {tmp_path / 'kaldi'} holds a kaldi export: export npy to another folder\n")
    old = tmp_path / "old"
    (old / "layer_1").mkdir(parents=True)
    np.save(old / "layer_1" / "u0.npy", np.zeros((2, 256), np.float32))  # an export without a record
    result = export(store, "--format", "npy", "-o", old)
    assert (result.exit_code, result.output) == (
        1, f"Error: {old} holds files but no lebench-export.json (an export by a lebench that kept no record, "
           "or other files): export to an empty or new folder\n")


def test_a_kaldi_id_with_whitespace_is_refused_before_anything_is_written(tmp_path):
    store, destination = write_store(tmp_path / "store", IDS), tmp_path / "dest"
    assert export(store, "--format", "kaldi", "-o", destination).exit_code == 0
    before = digests(destination)
    write_store(store, ["z y"], seed=3)  # stored last: a check on the way would leave .tmp files
    result = export(store, "--format", "kaldi", "-o", destination)
    assert (result.exit_code, result.output) == (
        1, "Error: utterance id 'z y' holds whitespace or an unprintable character, which Kaldi tables cannot: "
           "export with --kaldi-ids sanitize (ids mapped, see DEST/layer_L/id_map), or to npy or lhotse\n")
    assert digests(destination) == before
    result = export(store, "--format", "kaldi", "-o", tmp_path / "new")
    assert result.exit_code == 1 and not (tmp_path / "new").exists()


@pytest.mark.parametrize("export_format", FORMATS)
def test_a_read_error_is_named_as_a_read_and_the_rerun_resumes(tmp_path, monkeypatch, export_format):
    store, destination = write_store(tmp_path / "store", IDS), tmp_path / "dest"
    real_read, reads = FeatureSet.read, []

    def failing_read(self, utt_id, layers, *args, **kwargs):
        reads.append(utt_id)
        if utt_id == "u3":
            raise OSError(errno.EIO, "Input/output error")
        return real_read(self, utt_id, layers, *args, **kwargs)

    monkeypatch.setattr(FeatureSet, "read", failing_read)
    result = export(store, "--format", export_format, "-o", destination)
    assert (result.exit_code, result.output) == (
        1, f"Error: cannot read u3 (layer 1) from {store}: Input/output error\n")
    assert not list(destination.rglob("*tmp*")) and not list(destination.rglob("*partial*"))
    monkeypatch.setattr(FeatureSet, "read", real_read)
    result = export(store, "--format", export_format, "-o", destination)
    kept = 3 if export_format == "npy" else 0  # npy keeps each file; kaldi and lhotse write a layer whole
    assert (result.exit_code, result.output) == (0, summary(destination, export_format, new=5 - kept, unchanged=kept))
    assert_exports(store, destination, export_format)


def test_a_write_error_names_the_destination(tmp_path, monkeypatch):
    store, destination = write_store(tmp_path / "store", IDS), tmp_path / "dest"

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(np, "save", full)
    result = export(store, "--format", "npy", "-o", destination)
    assert (result.exit_code, result.output) == (
        1, f"Error: cannot write under {destination}: No space left on device\n")
    assert not list(destination.rglob("*.tmp"))


LHOTSE_CHANNELS = """
import json, sys
sys.modules["lebench_cli"] = None
from lhotse import CutSet
print(json.dumps({cut.id: [type(cut).__name__, cut.channel, cut.features.channels, cut.custom, cut.has_recording,
                           cut.load_features().shape[1],
                           cut.load_audio().shape[0] if cut.has_recording else None]
                  for cut in CutSet.from_jsonl(sys.argv[1])}))
"""


@pytest.mark.parametrize("channel", [None, 1])
def test_lhotse_cuts_name_the_channels_their_features_come_from(tmp_path, channel):
    audio = tmp_path / "audio"
    audio.mkdir()
    sf.write(audio / "stereo.wav", np.zeros((16000, 2), np.float32), 16000)
    sf.write(audio / "mono.wav", np.zeros(16000, np.float32), 16000)
    sources = {"stereo": str(audio / "stereo.wav"), "mono": str(audio / "mono.wav"), "gone": str(audio / "gone.wav")}
    ids = ["stereo", "gone"] if channel == 1 else ["stereo", "mono", "gone"]
    store = write_store(tmp_path / "store", ids, channel=channel, sources=sources)
    result = export(store, "--format", "lhotse", "-o", tmp_path / "cuts")
    assert result.exit_code == 0, result.output
    cuts_path = tmp_path / "cuts" / "layer_1" / "cuts.jsonl.gz"
    completed = subprocess.run([sys.executable, "-c", LHOTSE_CHANNELS, str(cuts_path)], capture_output=True,
                               text=True, timeout=300, cwd=tmp_path)
    assert completed.returncode == 0, completed.stderr[-3000:]
    cuts = json.loads(completed.stdout)
    if channel == 1:
        assert cuts == {"stereo": ["MonoCut", 1, 1, {"lebench_channel": 1}, True, 8, 1],
                        "gone": ["MonoCut", 1, 1, {"lebench_channel": 1}, False, 8, None]}
    else:
        assert cuts == {"stereo": ["MultiCut", [0, 1], [0, 1], {"lebench_channel": "mix"}, True, 8, 2],
                        "mono": ["MonoCut", 0, 0, {"lebench_channel": "mix"}, True, 8, 1],
                        "gone": ["MonoCut", 0, 0, {"lebench_channel": "mix"}, False, 8, None]}


def test_a_layer_exported_for_the_first_time_adds_its_utterances(tmp_path):
    store = tmp_path / "store"
    generator = np.random.default_rng(0)
    prepare_output(store, {"identity": {"layers": ["1", "2"]}, "model": {"num_layers": 2}}, overwrite=False)
    with PartLock(store, 1, 1), ShardWriter(store, WriterOptions(layers=["1", "2"])) as writer:
        for utt_id in IDS:
            writer.add(StoredUtterance(utt_id, "x.wav", 0.1, 4, {name: generator.normal(size=(4, 3)).astype(np.float32)
                                                                 for name in ("1", "2")}))
    destination = tmp_path / "dest"
    assert export(store, "--format", "kaldi", "--layers", "1", "-o", destination).exit_code == 0
    result = export(store, "--format", "kaldi", "--layers", "1,2", "-o", destination)
    assert result.output == f"exported 5 new, replaced 0, removed 0 in {destination}\n"
    assert sorted(path.name for path in destination.iterdir()) == [".lock-export", "layer_1", "layer_2", "lebench-export.json"]
