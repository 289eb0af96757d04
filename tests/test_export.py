"""`lebench export`: each format read back by the other tool's own reader equals store.read."""

import gzip
import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from click.testing import CliRunner

from lebench_cli.cli import main
from lebench_cli.reading.store import open_features
from lebench_cli.storage import PartLock, ShardWriter, StoredUtterance, WriterOptions, prepare_output

LAYERS = ["0", "12", "cnn"]
WIDTHS = {"0": 8, "12": 8, "cnn": 4}
IDS = ["spk1/u0", "spk1/u1", "spk2/u2", "u3"]


def make_store(out: Path, audio: Path, save_dtype="float16"):
    """Four utterances; the audio of all but the last exists (lhotse gets Recordings for those)."""
    generator = np.random.default_rng(0)
    prepare_output(out, {"identity": {"layers": LAYERS}, "model": {"hub_id": "LeBenchmark/wav2vec2-FR-7K-large",
                                                                    "num_layers": 12}}, overwrite=False)
    options = WriterOptions(layers=LAYERS, save_dtype=save_dtype, shard_size_bytes=600)
    with PartLock(out, 1, 1), ShardWriter(out, options) as writer:
        for index, utt_id in enumerate(IDS):
            frames = int(generator.integers(3, 40))
            source = audio / f"{utt_id}.wav"
            if index < 3:
                source.parent.mkdir(parents=True, exist_ok=True)
                sf.write(source, np.zeros(frames * 320 + 80, np.float32), 16000)
            states = {name: generator.normal(size=(frames, WIDTHS[name])).astype(np.float32) for name in LAYERS}
            writer.add(StoredUtterance(utt_id, str(source), (frames * 320 + 80) / 16000, frames, states))
    return out


@pytest.fixture
def store(tmp_path):
    return make_store(tmp_path / "store", tmp_path / "audio")


def export(*args):
    return CliRunner().invoke(main, ["export", *map(str, args)], catch_exceptions=False)


@pytest.mark.parametrize("save_dtype", ["float16", "float32"])
def test_npy_one_file_per_utterance_and_layer_keeps_the_stored_dtype(tmp_path, save_dtype):
    store = make_store(tmp_path / "store", tmp_path / "audio", save_dtype)
    result = export(store, "--format", "npy", "--layers", "12,cnn", "-o", tmp_path / "npy")
    assert result.exit_code == 0 and result.output == f"exported 4 new, replaced 0, removed 0 in {tmp_path / 'npy'}\n"
    with open_features(store) as features:
        for utt_id in IDS:
            for layer in (12, "cnn"):
                array = np.load(tmp_path / "npy" / f"layer_{layer}" / f"{utt_id}.npy")
                assert array.dtype == np.dtype(save_dtype)
                np.testing.assert_array_equal(array, features.read(utt_id, layer))
    assert not (tmp_path / "npy" / "layer_0").exists()
    assert not list((tmp_path / "npy").rglob("*.tmp"))


def test_npy_stack_and_dtype(store, tmp_path):
    result = export(store, "--format", "npy", "--layers", "0,12", "--stack", "--dtype", "float32", "-o", tmp_path / "np")
    assert result.exit_code == 0
    assert (tmp_path / "np" / "layers.txt").read_text() == "0\n12\n"
    with open_features(store) as features:
        for utt_id in IDS:
            array = np.load(tmp_path / "np" / f"{utt_id}.npy")
            assert array.dtype == np.float32 and array.shape[0] == 2
            np.testing.assert_array_equal(array, np.stack([features.read(utt_id, 0), features.read(utt_id, 12)]))
    result = export(store, "--format", "npy", "--stack", "-o", tmp_path / "bad")
    assert result.exit_code == 1
    assert result.output == ("Error: --stack needs layers of one width (cnn: 4, 0: 8, 12: 8): "
                             "export cnn separately\n")


def test_npy_rerun_writes_only_what_is_missing(store, tmp_path):
    destination = tmp_path / "npy"
    assert export(store, "--format", "npy", "--layers", "12", "-o", destination, "-q").output == ""
    (destination / "layer_12" / "spk2" / "u2.npy").unlink()
    (destination / "layer_12" / "spk2" / "u2.npy.tmp").write_bytes(b"cut by a crash")
    result = export(store, "--format", "npy", "--layers", "12", "-o", destination)
    assert result.output == f"exported 1 new, replaced 0, removed 0 in {destination}; 3 unchanged\n"
    with open_features(store) as features:
        np.testing.assert_array_equal(np.load(destination / "layer_12" / "spk2" / "u2.npy"), features.read("spk2/u2", 12))
    assert not (destination / "layer_12" / "spk2" / "u2.npy.tmp").exists()


def test_kaldi_ark_and_scp_read_back_with_kaldiio(store, tmp_path):
    import kaldiio

    result = export(store, "--format", "kaldi", "--layers", "0,12,cnn", "-o", tmp_path / "kaldi")
    assert result.exit_code == 0, result.output
    with open_features(store) as features:
        for layer in (0, 12, "cnn"):
            folder = tmp_path / "kaldi" / f"layer_{layer}"
            assert sorted(path.name for path in folder.iterdir()) == ["feats.ark", "feats.scp", "spk2utt", "utt2spk"]
            scp = kaldiio.load_scp(str(folder / "feats.scp"))
            assert list(scp) == IDS
            from_ark = dict(kaldiio.load_ark(str(folder / "feats.ark")))
            for utt_id in IDS:
                expected = features.read(utt_id, layer).astype(np.float32)
                assert scp[utt_id].dtype == np.float32  # kaldi has no float16 matrices
                np.testing.assert_array_equal(scp[utt_id], expected)
                np.testing.assert_array_equal(from_ark[utt_id], expected)
            first_line = (folder / "feats.scp").read_text().splitlines()[0]
            key, location = first_line.split(" ", 1)
            path, offset = location.rsplit(":", 1)
            assert key == "spk1/u0" and path == str(folder / "feats.ark") and Path(path).is_absolute()
            with open(path, "rb") as ark:
                ark.seek(int(offset))
                assert ark.read(5) == b"\0BFM "  # Kaldi's binary float32 matrix
    again = export(store, "--format", "kaldi", "--layers", "12", "-o", tmp_path / "kaldi")
    assert again.output == f"exported 0 new, replaced 0, removed 0 in {tmp_path / 'kaldi'}; 4 unchanged\n"


def test_kaldi_to_stdout_streams_one_binary_ark(store, tmp_path):
    import kaldiio

    completed = subprocess.run([sys.executable, "-m", "lebench_cli", "export", str(store), "--format", "kaldi",
                                "--layers", "12", "-o", "-"], capture_output=True, timeout=120)
    assert completed.returncode == 0, completed.stderr.decode()
    assert completed.stderr.decode().splitlines()[-1] == "exported 4 utterances"
    read = dict(kaldiio.load_ark(io.BytesIO(completed.stdout)))
    assert list(read) == IDS
    with open_features(store) as features:
        for utt_id in IDS:
            np.testing.assert_array_equal(read[utt_id], features.read(utt_id, 12).astype(np.float32))
    two = export(store, "--format", "kaldi", "--layers", "0,12", "-o", "-")
    assert two.exit_code == 1 and two.output == "Error: -o - (standard output) takes the kaldi format and one layer\n"


LHOTSE_READER = """
import sys
sys.modules["lebench_cli"] = None  # lhotse alone reads the export
import json
import numpy as np
from lhotse import CutSet
from lhotse.dataset import DynamicBucketingSampler
from lhotse.dataset.collation import collate_features
cuts = CutSet.from_jsonl(sys.argv[1])
out = {"cuts": {}}
for cut in cuts:
    features = cut.load_features()
    out["cuts"][cut.id] = {"features": features.tolist(), "dtype": str(features.dtype), "num_frames": cut.num_frames,
                           "recording": cut.has_recording, "type": cut.features.type,
                           "storage": cut.features.storage_type}
sampler = DynamicBucketingSampler(cuts, max_duration=0.5, num_buckets=2, shuffle=True, seed=0)
batches = [[cut.id for cut in batch] for batch in sampler]
out["sampled"] = sorted(utt for batch in batches for utt in batch)
features, lengths = collate_features(CutSet.from_cuts(cuts))
out["collated"] = [list(features.shape), lengths.tolist()]
print(json.dumps(out))
"""


@pytest.mark.parametrize("dtype", [None, "float32"])
def test_lhotse_cuts_load_with_lhotse_alone(store, tmp_path, dtype):
    (tmp_path / "audio" / "spk2" / "u2.wav").unlink()  # a source gone since extraction
    args = ["--dtype", dtype] if dtype else []
    result = export(store, "--format", "lhotse", "--layers", "12", "-o", tmp_path / "lhotse", *args)
    assert result.exit_code == 0, result.output
    assert result.output == (f"exported 4 new, replaced 0, removed 0 in {tmp_path / 'lhotse'}; "
                             "2 without a recording (source audio missing)\n")
    folder = tmp_path / "lhotse" / "layer_12"
    assert sorted(path.name for path in folder.iterdir()) == ["cuts.jsonl.gz", "feats.h5"]
    completed = subprocess.run([sys.executable, "-c", LHOTSE_READER, str(folder / "cuts.jsonl.gz")],
                               capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert completed.returncode == 0, completed.stderr[-3000:]
    read = json.loads(completed.stdout)
    with open_features(store) as features:
        for utt_id in IDS:
            expected = features.read(utt_id, 12)
            cut = read["cuts"][utt_id]
            assert cut["dtype"] == (dtype or "float16") and cut["num_frames"] == len(expected)
            np.testing.assert_array_equal(np.array(cut["features"], dtype=cut["dtype"]), expected.astype(cut["dtype"]))
            assert cut["type"] == "lebench-wav2vec2-FR-7K-large-L12" and cut["storage"] == "numpy_hdf5"
            assert cut["recording"] == (utt_id in ("spk1/u0", "spk1/u1"))
        lengths = [features.info(utt_id)["frames"] for utt_id in IDS]
    assert read["sampled"] == IDS
    assert read["collated"] == [[4, max(lengths), 8], lengths]
    with gzip.open(folder / "cuts.jsonl.gz", "rt") as manifest:
        first = json.loads(manifest.readline())
    assert first["recording"]["sources"][0]["source"] == str(tmp_path / "audio" / "spk1" / "u0.wav")


@pytest.mark.parametrize("export_format, module, extra", [("kaldi", "kaldiio", "kaldi"), ("lhotse", "lhotse", "lhotse")])
def test_a_missing_extra_says_how_to_install_it(store, tmp_path, monkeypatch, export_format, module, extra):
    monkeypatch.setitem(sys.modules, module, None)
    result = export(store, "--format", export_format, "-o", tmp_path / "x")
    assert result.exit_code == 1
    assert result.output == (f"Error: this export needs {module}: "
                             f".venv/bin/pip install -e '.[{extra}]' in the lebench checkout\n")
    assert not (tmp_path / "x").exists()


def test_layers_and_ids_that_cannot_be_exported(store, tmp_path):
    result = export(store, "--format", "npy", "--layers", "5", "-o", tmp_path / "x")
    assert result.exit_code == 1
    assert result.output == f"Error: layer 5 is not stored in {store} (stored: cnn, 0, 12)\n"
    result = export(store, "--format", "npy", "--layers", "0-2", "-o", tmp_path / "x")
    assert result.output == f"Error: layers 1, 2 are not stored in {store} (stored: cnn, 0, 12)\n"
    result = export(store, "--format", "kaldi", "--stack", "-o", tmp_path / "x")
    assert result.output == "Error: --stack applies to --format npy only\n" and result.exit_code == 1
    result = export(store, "--format", "kaldi", "--dtype", "float16", "-o", tmp_path / "x")
    assert result.output == "Error: kaldi matrices are float32 or float64: drop --dtype float16\n"
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("utt_id, export_format, message", [
    ("../up", "npy", "utterance id '../up' cannot name a file under {folder}: export to kaldi or lhotse instead"),
    ("a b", "kaldi", "utterance id 'a b' holds whitespace or an unprintable character, which Kaldi tables cannot: "
                     "export with --kaldi-ids sanitize (ids mapped, see DEST/layer_L/id_map), or to npy or lhotse"),
])
def test_ids_a_format_cannot_hold_are_refused_by_name(tmp_path, utt_id, export_format, message):
    out = tmp_path / "store"
    prepare_output(out, {"identity": {"layers": ["1"]}}, overwrite=False)
    with PartLock(out, 1, 1), ShardWriter(out, WriterOptions(layers=["1"])) as writer:
        writer.add(StoredUtterance(utt_id, "x.wav", 0.1, 2, {"1": np.ones((2, 3), np.float32)}))
    result = export(out, "--format", export_format, "-o", tmp_path / "x")
    assert result.exit_code == 1
    assert result.output == "Error: " + message.format(folder=tmp_path / "x" / "layer_1") + "\n"
