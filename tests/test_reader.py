"""Reading stores back: round trips, parts, large shards, the docs' h5py examples, torch."""

import pickle
import re
from pathlib import Path

import numpy as np
import pytest

from lebench_cli.errors import InputError
from lebench_cli.reader import open_features
from lebench_cli.storage import PartLock, ShardWriter, StoredUtterance, WriterOptions, prepare_output

FORMAT_DOC = Path(__file__).resolve().parents[1] / "docs" / "format.md"
LAYERS = ["0", "12", "cnn"]
WIDTHS = {"0": 8, "12": 8, "cnn": 4}


def random_utterances(count, seed=0, prefix="u"):
    rng = np.random.default_rng(seed)
    utts = []
    for i in range(count):
        frames = int(rng.integers(1, 30))
        states = {name: rng.normal(size=(frames, WIDTHS[name])).astype(np.float32)
                  for name in LAYERS}
        utts.append(StoredUtterance(f"{prefix}{i}", f"/audio/{prefix}{i}.wav",
                                    frames * 0.02 + 0.005, frames, states))
    return utts


def write(out, utts, **options):
    options = WriterOptions(**{"layers": LAYERS, **options})
    prepare_output(out, {"identity": {"layers": LAYERS}, "model": "tiny"}, overwrite=False)
    with PartLock(out, options.part, options.num_parts), ShardWriter(out, options) as writer:
        for utt in utts:
            writer.add(utt)


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
            "flags": "", "shard": "shards/part-1of1-00002.h5", "position": 0}
        assert list(features.utterances())[0] == {
            "id": "u0", "frames": utts[0].frames, "duration": utts[0].duration,
            "source": "/audio/u0.wav", "flags": ""}
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
    write(tmp_path / "features", utts, shard_size_bytes=2000)
    monkeypatch.chdir(tmp_path)
    blocks = re.findall(r"```python\n(.*?)```", FORMAT_DOC.read_text(), re.DOTALL)
    assert len(blocks) == 3
    namespaces = []
    for block in blocks:
        namespaces.append({})
        exec(compile(block, str(FORMAT_DOC), "exec"), namespaces[-1])
    expected = utts[3].states["12"].astype(np.float16)
    np.testing.assert_array_equal(namespaces[0]["features"], expected)
    assert sorted(namespaces[1]["utterance_means"]) == sorted(utt.utt_id for utt in utts)
    np.testing.assert_array_equal(namespaces[2]["x"], expected)


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

    from lebench_cli.dataset import FeatureDataset

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
