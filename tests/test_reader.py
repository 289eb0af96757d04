"""Reading stores back: round trips, parts, large shards, the docs' h5py examples, torch."""

import pickle
import re
from pathlib import Path

import h5py
import numpy as np
import pytest

from lebench_cli.errors import InputError
from lebench_cli.reading.store import open_features
from lebench_cli.storage import PartLock, ShardWriter, StoredUtterance, WriterOptions, prepare_output
from support.stores import LAYERS, WIDTHS, random_utterances, write

FORMAT_DOC = Path(__file__).resolve().parents[1] / "docs" / "format.md"


@pytest.mark.parametrize("save_dtype", ["float16", "float32"])
@pytest.mark.parametrize("compression", [None, "gzip", "lzf"])
def test_frames_and_means_round_trip(tmp_path, save_dtype, compression):
    utts = random_utterances(12)
    write(tmp_path, utts, save_dtype=save_dtype, compression=compression, store_mean=True,
          shard_size_bytes=4000)
    with open_features(tmp_path) as features:
        assert features.metadata["model"] == "tiny"
        assert features.ids == [utt.utt_id for utt in utts]
        assert features.layers == ["cnn", 0, 12]
        for utt in utts:
            for name, layer in [("0", 0), ("12", "12"), ("cnn", "cnn")]:
                frames = features.read(utt.utt_id, layer)
                assert frames.dtype == np.dtype(save_dtype)
                np.testing.assert_array_equal(frames, utt.states[name].astype(save_dtype))
                mean = utt.states[name].mean(axis=0).astype(save_dtype)
                np.testing.assert_allclose(features.read_mean(utt.utt_id, layer), mean,
                                           rtol=1e-3, atol=1e-3)


def test_means_given_by_the_caller_are_stored(tmp_path):
    utt = random_utterances(1)[0]
    utt.means = {name: np.full(WIDTHS[name], 7.0) for name in LAYERS}
    write(tmp_path, [utt], store_frames=False, store_mean=True)
    with open_features(tmp_path) as features:
        assert features.read_mean("u0", 12).tolist() == [7.0] * 8
        with pytest.raises(KeyError, match="layer 12 frames are not stored in "
                                           "shards/part-1of1-00000.h5 .means only.: use read_mean"):
            features.read("u0", 12)


def test_info_utterances_and_clear_key_errors(tmp_path):
    utts = random_utterances(3)
    write(tmp_path, utts, shard_size_bytes=1)
    with open_features(tmp_path) as features:
        assert len(features) == 3 and "u2" in features and "u9" not in features
        assert features.info("u2") == {
            "frames": utts[2].frames, "duration": utts[2].duration, "source": "/audio/u2.wav",
            "flags": "", "shard": "shards/part-1of1-00002.h5", "position": 0, "metadata": {}}
        assert list(features.utterances())[0] == {
            "id": "u0", "frames": utts[0].frames, "duration": utts[0].duration,
            "source": "/audio/u0.wav", "flags": "", "metadata": {}}
        with pytest.raises(KeyError, match=re.escape(f"utterance 'u9' is not in {tmp_path}")):
            features.read("u9", 12)
        with pytest.raises(KeyError, match="layer 6 is not stored in .* .stored: cnn, 0, 12."):
            features.read("u0", 6)
        with pytest.raises(KeyError, match="'first' is not a layer"):
            features.read("u0", "first")
        with pytest.raises(KeyError, match="layer 12 means are not stored"):
            features.read_mean("u0", 12)


def test_a_folder_without_metadata_is_refused(tmp_path):
    with pytest.raises(InputError, match="is not a lebench output folder .no lebench.json.$"):
        open_features(tmp_path)


def test_job_array_parts_read_back_as_one_dataset(tmp_path):
    first, second = random_utterances(5, prefix="a"), random_utterances(4, seed=1, prefix="b")
    write(tmp_path, second, part=2, num_parts=2, shard_size_bytes=1000)
    write(tmp_path, first, part=1, num_parts=2, shard_size_bytes=1000)
    assert (tmp_path / "index-1of2.tsv").exists() and (tmp_path / "index-2of2.tsv").exists()
    with open_features(tmp_path) as features:
        assert features.ids == [utt.utt_id for utt in first + second]  # part, sequence, row
        for utt in first + second:
            np.testing.assert_array_equal(features.read(utt.utt_id, "cnn"),
                                          utt.states["cnn"].astype(np.float16))


def test_an_id_stored_twice_is_reported(tmp_path):
    write(tmp_path, random_utterances(2))
    shards = tmp_path / "shards"
    (shards / "part-1of2-00000.h5").write_bytes((shards / "part-1of1-00000.h5").read_bytes())
    with pytest.raises(InputError, match="^u0 is stored twice .shards/part-1of1-00000.h5 and "
                                         "shards/part-1of2-00000.h5.: remove one of these shards$"):
        open_features(tmp_path)


def test_a_shard_of_20k_utterances_opens_and_reads(tmp_path):
    states = {"12": np.ones((3, 4), np.float32)}
    utts = (StoredUtterance(f"utt{i:05d}", f"/a/{i}.wav", 0.06, 3, states) for i in range(20000))
    write(tmp_path, utts, layers=["12"])
    assert len(list((tmp_path / "shards").iterdir())) == 1
    with open_features(tmp_path) as features:
        assert len(features) == 20000
        assert features.info("utt19999")["position"] == 19999
        assert features.read("utt12345", 12).shape == (3, 4)


def test_the_docs_examples_run(tmp_path, monkeypatch):
    utts = random_utterances(6)
    utts[3].utt_id = "spk1/utt001"
    utts[3].metadata = {"speaker": "spk1", "text": "bonjour", "start": 0.5}
    write(tmp_path / "features", utts, shard_size_bytes=2000)
    monkeypatch.chdir(tmp_path)
    blocks = re.findall(r"```python\n(.*?)```", FORMAT_DOC.read_text(), re.DOTALL)
    assert len(blocks) == 5
    namespaces = []
    for block in blocks:
        namespaces.append({})
        exec(compile(block, str(FORMAT_DOC), "exec"), namespaces[-1])
    assert namespaces.pop(0)["i"] == 1  # the checksums of the first shard's two utterances hold
    expected = utts[3].states["12"].astype(np.float16)
    np.testing.assert_array_equal(namespaces[0]["features"], expected)
    assert sorted(namespaces[1]["utterance_means"]) == sorted(utt.utt_id for utt in utts)
    assert namespaces[2]["metadata"] == {utt.utt_id: utt.metadata for utt in utts}
    np.testing.assert_array_equal(namespaces[3]["x"], expected)
    stacked = np.stack([utts[3].states[name] for name in ("0", "12")])[:, 25:75]
    np.testing.assert_array_equal(namespaces[3]["xs"], stacked.astype(np.float16))


def test_a_feature_set_pickles_without_its_handles(tmp_path):
    write(tmp_path, random_utterances(2))
    with open_features(tmp_path) as features:
        features.read("u0", 0)
        copy = pickle.loads(pickle.dumps(features))
        np.testing.assert_array_equal(copy.read("u1", 0), features.read("u1", 0))
        copy.close()


def test_feature_dataset_with_dataloader_workers(tmp_path):
    torch = pytest.importorskip("torch")
    from torch.utils.data import DataLoader

    from lebench_cli.reading.dataset import FeatureDataset

    utts = random_utterances(10)
    write(tmp_path, utts, store_mean=True, shard_size_bytes=2000)
    frames = FeatureDataset(tmp_path, 12)
    assert isinstance(frames, torch.utils.data.Dataset) and len(frames) == 10
    frames[0]  # opens a shard in the parent before the workers fork
    items = dict(DataLoader(frames, batch_size=None, num_workers=2))
    assert sorted(items) == sorted(utt.utt_id for utt in utts)
    for utt in utts:
        expected = torch.from_numpy(utt.states["12"].astype(np.float16).astype(np.float32))
        assert torch.equal(items[utt.utt_id], expected)
    pooled = FeatureDataset(open_features(tmp_path), "cnn", pooled=True)
    # spawned workers get the dataset pickled: FeatureSet and the lazy class must survive it
    batches = list(DataLoader(pooled, batch_size=4, num_workers=2, multiprocessing_context="spawn"))
    assert [tuple(batch[1].shape) for batch in batches] == [(4, 4), (4, 4), (2, 4)]
    with pytest.raises(KeyError, match="layer 6 is not stored"):
        FeatureDataset(tmp_path, 6)


FOUR_LAYERS = ["0", "5", "12", "cnn"]


def stored_offset(out, utt_id: str) -> int:
    """The utterance's first row in its shard's frames matrices, as the shard says."""
    for path in sorted((out / "shards").glob("part-*.h5")):
        with h5py.File(path, "r", locking=False) as shard:
            rows = np.flatnonzero(shard["ids"].asstr()[:] == utt_id)
            if rows.size:
                return int(shard["offsets"][rows[0]])
    raise KeyError(utt_id)


def record_reads(monkeypatch):
    """The (dataset, first row, rows) of every read from a shard."""
    from lebench_cli.reading.rows import LayerRows

    reads, real = [], LayerRows.runs
    monkeypatch.setattr(LayerRows, "runs", lambda self, utterance, skip, out: (
        reads.append((self.dataset.name, int(self._offsets[utterance]) + skip, len(out))),
        real(self, utterance, skip, out))[1])
    return reads


@pytest.mark.parametrize("save_dtype", ["float16", "float32"])
def test_a_list_of_layers_stacks_in_its_order_each_layer_read_once(tmp_path, monkeypatch, save_dtype):
    utts = random_utterances(6, layers=FOUR_LAYERS)
    write(tmp_path, utts, layers=FOUR_LAYERS, save_dtype=save_dtype, shard_size_bytes=3000)
    reads = record_reads(monkeypatch)
    with open_features(tmp_path) as features:
        for utt in utts:
            reads.clear()
            stacked = features.read(utt.utt_id, [12, "0", 12, 5])
            assert stacked.dtype == np.dtype(save_dtype) and stacked.shape == (4, utt.frames, 8)
            assert [name for name, _, _ in reads] == ["/layers/12/frames", "/layers/0/frames", "/layers/5/frames"]
            for position, name in enumerate(["12", "0", "12", "5"]):
                np.testing.assert_array_equal(stacked[position], utt.states[name].astype(save_dtype))
            np.testing.assert_array_equal(features.read(utt.utt_id, "all"), stacked[[1, 3, 0]])
            np.testing.assert_array_equal(features.read(utt.utt_id, range(0, 1)), stacked[[1]])
            np.testing.assert_array_equal(features.read(utt.utt_id, np.array([5, 12])), stacked[[3, 0]])
            np.testing.assert_array_equal(features.read(utt.utt_id, np.int64(12)), stacked[0])
            np.testing.assert_array_equal(features.read(utt.utt_id, np.array(12)), stacked[0])
            np.testing.assert_array_equal(features.read(utt.utt_id, ["cnn"])[0],
                                          utt.states["cnn"].astype(save_dtype))


def test_stacking_refuses_layers_of_different_widths_and_bad_selections(tmp_path):
    write(tmp_path, random_utterances(2, layers=FOUR_LAYERS), layers=FOUR_LAYERS)
    with open_features(tmp_path) as features:
        with pytest.raises(ValueError, match=re.escape(
                "cannot stack layers of different widths (cnn: 4 wide; 0, 12: 8 wide): read cnn separately")):
            features.read("u0", [0, "cnn", 12])
        with pytest.raises(KeyError, match="'all' stands for every stored layer 0..L: pass it alone"):
            features.read("u0", ["all", "cnn"])
        with pytest.raises(KeyError, match="an empty list of layers: give at least one layer"):
            features.read("u0", [])
        with pytest.raises(KeyError, match=r"layer 7 is not stored in .* \(stored: cnn, 0, 5, 12\)"):
            features.read("u0", [0, 7])
        with pytest.raises(KeyError, match="1.5 is not a layer"):
            features.read("u0", [0, 1.5])


def test_all_means_the_numbered_layers_and_never_cnn(tmp_path):
    write(tmp_path, random_utterances(1, layers=["cnn"]), layers=["cnn"])
    with open_features(tmp_path) as features:
        with pytest.raises(KeyError, match=re.escape(
                "'all' means the stored layers 0..L, and none is stored (stored: cnn): read 'cnn' by its name")):
            features.read("u0", "all")


def write_with_model(out, utts, num_layers, layers=FOUR_LAYERS):
    options = WriterOptions(layers=layers, store_mean=True)
    model = {} if num_layers is None else {"num_layers": num_layers}
    prepare_output(out, {"identity": {"layers": layers}, "model": model}, overwrite=False)
    with PartLock(out, 1, 1), ShardWriter(out, options) as writer:
        for utt in utts:
            writer.add(utt)


def test_last_is_the_models_last_layer(tmp_path):
    utts = random_utterances(2, layers=FOUR_LAYERS)
    write_with_model(tmp_path / "a", utts, num_layers=12)
    write_with_model(tmp_path / "b", utts, num_layers=None)
    write_with_model(tmp_path / "c", utts, num_layers=24)
    with open_features(tmp_path / "a") as features:
        np.testing.assert_array_equal(features.read("u1", "last"), features.read("u1", 12))
        np.testing.assert_array_equal(features.read("u1", ["last", 0]), features.read("u1", [12, 0]))
        np.testing.assert_array_equal(features.read_mean("u1", "last"), features.read_mean("u1", 12))
    with open_features(tmp_path / "b") as features, pytest.raises(KeyError, match=re.escape(
            "'last' needs the model's number of layers, which lebench.json does not record: "
            "name the layer (stored: cnn, 0, 5, 12)")):
        features.read("u0", "last")
    with open_features(tmp_path / "c") as features, pytest.raises(KeyError, match=re.escape(
            "layer 24 ('last') is not stored in ")):
        features.read("u0", "last")


def test_means_of_several_layers(tmp_path):
    utts = random_utterances(3, layers=FOUR_LAYERS)
    write(tmp_path, utts, layers=FOUR_LAYERS, save_dtype="float32", store_mean=True)
    with open_features(tmp_path) as features:
        means = features.read_mean("u2", [5, 0, 5])
        assert means.shape == (3, 8) and means.dtype == np.float32
        for position, name in enumerate(["5", "0", "5"]):
            np.testing.assert_allclose(means[position], utts[2].states[name].mean(axis=0), rtol=1e-5, atol=1e-6)
        every = features.read_mean("u2", "all")
        np.testing.assert_array_equal(every, features.read_mean("u2", [0, 5, 12]))
        np.testing.assert_array_equal(every[:2], means[[1, 0]])


def utterance_of(frames, layers=FOUR_LAYERS, seed=0):
    rng = np.random.default_rng(seed)
    states = {name: rng.normal(size=(frames, WIDTHS.get(name, 8))).astype(np.float32) for name in layers}
    return StoredUtterance("long", "/audio/long.wav", frames * 0.02 + 0.005, frames, states)


def test_a_segment_reads_only_its_frames(tmp_path, monkeypatch):
    utt = utterance_of(500)
    first = StoredUtterance("first", "/audio/first.wav", 0.205, 10, utterance_of(10).states)
    write(tmp_path, [first, utt], layers=FOUR_LAYERS)
    reads = record_reads(monkeypatch)
    with open_features(tmp_path, verify=False) as features:  # checked, a segment reads its utterance's rows
        segment = features.read("long", 12, start=1.0, end=1.5)  # frames 50..74
        np.testing.assert_array_equal(segment, utt.states["12"][50:75].astype(np.float16))
        long_starts = stored_offset(tmp_path, "long")  # after "first" (10 rows), on a chunk boundary
        assert long_starts >= 10
        assert reads == [("/layers/12/frames", long_starts + 50, 25)]
        reads.clear()
        stacked = features.read("long", [0, 12], start=0.1, end=0.3)  # 0.1 / 0.02 is 5.000000000000001
        np.testing.assert_array_equal(stacked, np.stack([utt.states[name][5:15] for name in ("0", "12")])
                                      .astype(np.float16))
        assert reads == [("/layers/0/frames", long_starts + 5, 10), ("/layers/12/frames", long_starts + 5, 10)]
        assert features.frame_range("long", 0.101, 0.3) == range(6, 15)  # frame 5 starts at 0.1 s
        assert features.frame_range("long", 0.1, 0.301) == range(5, 16)
        assert features.frame_range("long", start=9.5) == range(475, 500)
        assert features.frame_range("long", end=0.02) == range(0, 1)
        assert features.frame_range("long", 3, 3) == range(150, 150)
        assert features.frame_range("long", 9.99, 20) == range(500, 500)  # past the last frame's start
        assert features.read("long", [0, 5], start=12).shape == (2, 0, 8)
        np.testing.assert_array_equal(features.read("long", "cnn", end=100), features.read("long", "cnn"))
        with pytest.raises(ValueError, match=re.escape("end=1.0 comes before start=2.0")):
            features.read("long", 12, start=2.0, end=1.0)
        with pytest.raises(ValueError, match=re.escape("start=-0.5 seconds: give a finite time >= 0")):
            features.read("long", 12, start=-0.5)
        with pytest.raises(ValueError, match=re.escape("end=nan seconds: give a finite time >= 0")):
            features.read("long", 12, end=float("nan"))
        with pytest.raises(ValueError, match=re.escape("start='1' is not a number of seconds")):
            features.read("long", 12, start="1")


def test_a_checked_segment_reads_the_utterances_rows_and_serves_only_its_own(tmp_path, monkeypatch):
    utt = utterance_of(500)
    write(tmp_path, [utt], layers=FOUR_LAYERS)
    reads = record_reads(monkeypatch)
    with open_features(tmp_path) as features:
        segment = features.read("long", [0, 12], start=1.0, end=1.5)
        np.testing.assert_array_equal(segment, np.stack([utt.states[name][50:75] for name in ("0", "12")])
                                      .astype(np.float16))
        assert segment.flags.c_contiguous
        assert reads == [("/layers/0/frames", 0, 500), ("/layers/12/frames", 0, 500)]
