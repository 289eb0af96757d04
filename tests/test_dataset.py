"""Training reads: FeatureDataset items of several layers, collate_features, LengthBucketSampler,
and DataLoader workers putting them together."""

import re

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from torch.utils.data import DataLoader  # noqa: E402

from lebench_cli import FeatureBatch, FeatureDataset, LengthBucketSampler, collate_features  # noqa: E402
from lebench_cli.reading.store import open_features  # noqa: E402
from support.stores import random_utterances, write  # noqa: E402

LAYERS = ["0", "1", "2", "cnn"]


@pytest.fixture
def store(tmp_path):
    utts = random_utterances(24, layers=LAYERS)
    write(tmp_path, utts, layers=LAYERS, store_mean=True, shard_size_bytes=3000)
    return tmp_path, {utt.utt_id: utt for utt in utts}


def stored(utt, names, dtype=np.float16):
    return torch.from_numpy(np.stack([utt.states[name] for name in names]).astype(dtype).astype(np.float32))


def test_items_of_several_layers_and_their_means(store):
    path, utts = store
    dataset = FeatureDataset(path, [2, 0])
    utt_id, item = dataset[3]
    assert utt_id == "u3" and item.dtype == torch.float32
    assert torch.equal(item, stored(utts["u3"], ["2", "0"]))
    assert dataset.lengths.tolist() == [utts[i].frames for i in dataset.ids]
    assert FeatureDataset(path, "all")[0][1].shape == (3, utts["u0"].frames, 8)
    assert FeatureDataset(path, 1, dtype="float16")[0][1].dtype == torch.float16
    pooled = FeatureDataset(path, "all", pooled=True)[5][1]
    assert pooled.shape == (3, 8)
    assert torch.equal(pooled, torch.from_numpy(open_features(path).read_mean("u5", "all").astype(np.float32)))
    subset = FeatureDataset(path, 0, ids=["u7", "u2"])
    assert len(subset) == 2 and subset[0][0] == "u7"
    assert subset.lengths.tolist() == [utts["u7"].frames, utts["u2"].frames]
    with pytest.raises(KeyError, match="utterance 'nope' is not in"):
        FeatureDataset(path, 0, ids=["u1", "nope"])
    with pytest.raises(ValueError, match="cannot stack layers of different widths"):
        FeatureDataset(path, [0, "cnn"])
    assert torch.equal(FeatureDataset(path, layer=2)[3][1], stored(utts["u3"], ["2"])[0])  # its earlier name
    with pytest.raises(TypeError, match="FeatureDataset takes the layers to read: give layers= .or layer=., once"):
        FeatureDataset(path, 0, layer=0)


def test_collate_pads_to_the_longest_item():
    items = [("a", torch.ones(2, 3, 4)), ("b", torch.full((2, 5, 4), 2.0)), ("c", torch.ones(2, 1, 4))]
    batch = collate_features(items)
    assert isinstance(batch, FeatureBatch) and batch.ids == ["a", "b", "c"]
    assert batch.features.shape == (3, 2, 5, 4) and batch.lengths.dtype == torch.int64
    assert batch.lengths.tolist() == [3, 5, 1]
    assert torch.equal(batch.features[0, :, :3], torch.ones(2, 3, 4))
    assert batch.features[0, :, 3:].abs().sum() == 0 and batch.features[2, :, 1:].abs().sum() == 0
    assert torch.equal(batch.features[1], torch.full((2, 5, 4), 2.0))
    assert batch.mask().tolist() == [[True] * 3 + [False] * 2, [True] * 5, [True] + [False] * 4]
    one_layer = collate_features([("a", torch.ones(3, 4)), ("b", torch.ones(1, 4))])
    assert one_layer.features.shape == (2, 3, 4) and one_layer.mask().shape == (2, 3)
    pooled = collate_features([("a", torch.ones(2, 4)), ("b", torch.zeros(2, 4))], pooled=True)
    assert pooled.features.shape == (2, 2, 4) and pooled.lengths is None
    with pytest.raises(ValueError, match="pooled items have no frames to mask"):
        pooled.mask()
    with pytest.raises(ValueError, match="cannot collate an empty batch"):
        collate_features([])


def lognormal_frames(count, seed=0):
    """Utterances of 1 to 20 s, log-normal around 5 s (a read-speech corpus), in frames."""
    rng = np.random.default_rng(seed)
    seconds = np.exp(rng.normal(np.log(5), 0.6, count * 2))
    seconds = seconds[(seconds >= 1) & (seconds <= 20)][:count]
    return ((seconds * 16000 - 400) // 320 + 1).astype(np.int64)


def test_sampler_batches_every_item_once_within_budget_deterministically():
    lengths = lognormal_frames(5000)
    sampler = LengthBucketSampler(lengths, max_frames=5000, seed=3)
    epochs = []
    for epoch in range(3):
        sampler.set_epoch(epoch)
        batches = list(sampler)
        assert len(batches) == len(sampler)
        assert sorted(i for batch in batches for i in batch) == list(range(len(lengths)))
        assert all(len(batch) * lengths[batch].max() <= 5000 for batch in batches)
        epochs.append(batches)
    assert epochs[0] != epochs[1] != epochs[2]
    again = LengthBucketSampler(lengths, max_frames=5000, seed=3)
    again.set_epoch(1)
    assert list(again) == epochs[1]
    other_seed = LengthBucketSampler(lengths, max_frames=5000, seed=4)
    assert list(other_seed) != epochs[0]
    in_order = list(LengthBucketSampler(lengths, max_frames=5000, shuffle=False))
    assert [i for batch in in_order for i in batch] == np.argsort(lengths, kind="stable").tolist()


@pytest.mark.parametrize("count, budget", [(300, 5000), (5000, 5000), (50000, 5000), (5000, 1500)])
def test_padding_stays_under_10_percent_on_a_realistic_length_mix(count, budget):
    lengths = lognormal_frames(count)
    sampler = LengthBucketSampler(lengths, max_frames=budget, seed=0)
    paddings = []
    for epoch in range(3):
        sampler.set_epoch(epoch)
        batches = list(sampler)
        real = sum(int(lengths[batch].sum()) for batch in batches)
        padded = sum(len(batch) * int(lengths[batch].max()) for batch in batches)
        paddings.append(1 - real / padded)
        assert sampler.padding() == pytest.approx(paddings[-1])
    print(f"{count} utterances, {budget} frames per batch: padding {max(paddings):.1%}")
    assert max(paddings) < 0.10


def test_sampler_ranks_split_the_batches_evenly():
    lengths = lognormal_frames(1001)
    whole = LengthBucketSampler(lengths, max_frames=3000, seed=1)
    ranks = [LengthBucketSampler(lengths, max_frames=3000, seed=1, rank=rank, world_size=3) for rank in range(3)]
    for sampler in [whole, *ranks]:
        sampler.set_epoch(2)
    per_rank = [list(sampler) for sampler in ranks]
    assert len({len(batches) for batches in per_rank}) == 1 and len(ranks[0]) == len(per_rank[0])
    assert len(per_rank[0]) == -(-len(whole) // 3)
    seen = [i for batches in per_rank for batch in batches for i in batch]
    assert set(seen) == set(range(len(lengths)))
    assert len(seen) - len(lengths) == sum(len(batch) for batch in list(whole)[:3 * len(per_rank[0]) - len(whole)])


def test_sampler_takes_a_dataset_and_keeps_long_items_alone(store):
    path, utts = store
    dataset = FeatureDataset(path, 0)
    longest = int(dataset.lengths.max())
    batches = list(LengthBucketSampler(dataset, max_frames=longest - 1))
    assert sorted(i for batch in batches for i in batch) == list(range(len(dataset)))
    over_budget = [batch for batch in batches if len(batch) * dataset.lengths[batch].max() > longest - 1]
    assert over_budget == [[i] for i in np.flatnonzero(dataset.lengths == longest)]


@pytest.mark.parametrize("arguments, message", [
    (dict(max_frames=0), "max_frames=0: give a whole number of frames >= 1"),
    (dict(max_frames=10.5), "max_frames=10.5: give a whole number of frames >= 1"),
    (dict(max_frames=10, spread=-1), "spread=-1: give a fraction between 0 and 10 (0.1 is 10%)"),
    (dict(max_frames=10, rank=2, world_size=2), "rank=2, world_size=2: need 0 <= rank < world_size"),
])
def test_sampler_refuses_bad_arguments(arguments, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        LengthBucketSampler([3, 4, 5], **arguments)
    with pytest.raises(ValueError, match="lengths: give one whole number of frames >= 0 per item"):
        LengthBucketSampler([[3, 4]], max_frames=10)


@pytest.mark.filterwarnings("ignore:This DataLoader will create 4 worker processes")
def test_dataloader_workers_with_several_layers_the_sampler_and_collate(store):
    path, utts = store
    dataset = FeatureDataset(path, [0, 2, 1])
    dataset[0]  # opens a shard in the parent before the workers fork
    sampler = LengthBucketSampler(dataset, max_frames=60, seed=5)
    loader = DataLoader(dataset, batch_sampler=sampler, collate_fn=dataset.collate, num_workers=4,
                        persistent_workers=True)
    for epoch in range(2):
        sampler.set_epoch(epoch)
        seen = []
        for batch in loader:
            assert batch.features.shape[:2] == (len(batch.ids), 3)
            assert batch.features.shape[2] == int(batch.lengths.max())
            assert batch.features.shape[0] * batch.features.shape[2] <= max(60, int(batch.lengths.max()))
            for position, utt_id in enumerate(batch.ids):
                frames = utts[utt_id].frames
                assert batch.lengths[position] == frames
                assert torch.equal(batch.features[position, :, :frames], stored(utts[utt_id], ["0", "2", "1"]))
                assert batch.features[position, :, frames:].abs().sum() == 0
            seen.extend(batch.ids)
        assert sorted(seen) == sorted(utts)
    pooled = FeatureDataset(path, "all", pooled=True)
    # spawned workers get the dataset pickled, its bound collate method too
    batches = list(DataLoader(pooled, batch_size=10, collate_fn=pooled.collate, num_workers=2,
                              multiprocessing_context="spawn"))
    assert [tuple(batch.features.shape) for batch in batches] == [(10, 3, 8), (10, 3, 8), (4, 3, 8)]
    assert [utt_id for batch in batches for utt_id in batch.ids] == pooled.ids


def test_sampler_num_batches_gives_every_epoch_that_many_batches_on_every_rank():
    lengths = lognormal_frames(300)
    natural = len(LengthBucketSampler(lengths, max_frames=3000, seed=2))
    for num_batches in (3, natural + 5):  # fewer than one pass; more: the next pass's reshuffle
        ranks = [LengthBucketSampler(lengths, max_frames=3000, seed=2, rank=rank, world_size=2,
                                     num_batches=num_batches) for rank in range(2)]
        stream = []  # both ranks' batches, epoch after epoch, in stream order
        for epoch in range(3):
            per_rank = []
            for sampler in ranks:
                sampler.set_epoch(epoch)
                per_rank.append(list(sampler))
                assert len(per_rank[-1]) == len(sampler) == num_batches
            stream += [batch for pair in zip(*per_rank) for batch in pair]
        assert all(len(batch) * lengths[batch].max() <= 3000 or len(batch) == 1 for batch in stream)
        # The stream is pass after pass, each pass every item once, in that pass's own order.
        passes = [LengthBucketSampler(lengths, max_frames=3000, seed=2) for _ in range(8)]
        expected = []
        for number, sampler in enumerate(passes):
            sampler.set_epoch(number)
            expected += list(sampler)
        assert len(expected) >= len(stream) and stream == expected[:len(stream)]
    fresh = LengthBucketSampler(lengths, max_frames=3000, seed=2, num_batches=3)
    fresh.set_epoch(2)  # the same epoch, whatever came before
    again = LengthBucketSampler(lengths, max_frames=3000, seed=2, num_batches=3)
    for epoch in range(3):
        again.set_epoch(epoch)
        last = list(again)
    assert list(fresh) == last
    with pytest.raises(ValueError, match="num_batches=0: give a whole number of batches >= 1, or None"):
        LengthBucketSampler(lengths, max_frames=3000, num_batches=0)
    with pytest.raises(ValueError, match="there are no items"):
        LengthBucketSampler([], max_frames=3000, num_batches=2)
