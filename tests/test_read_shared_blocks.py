"""Reads made in a DataLoader worker go to the main process by place (a shared block's
descriptor), and a block is used again only once every tensor sent from it has been dropped."""

import gc
import os
import pickle
from multiprocessing.reduction import ForkingPickler

import numpy as np
import pytest
import torch

from lebench_cli.reading import buffers as buffers_module
from lebench_cli.reading import shared_blocks
from lebench_cli.reading.dataset import FeatureDataset
from support.stores import random_utterances, write

pytestmark = pytest.mark.skipif(not shared_blocks.available(), reason="os.memfd_create: Linux only")

LAYERS = [0, 12]


@pytest.fixture
def pool_every_read(monkeypatch):
    """Every read of a tiny store drawn from the pool, any free block large enough reused
    (set before the workers fork, so they have it too)."""
    monkeypatch.setattr(buffers_module, "SMALLEST_BYTES", 1)
    monkeypatch.setattr(buffers_module, "_FIT", 1e9)


@pytest.fixture
def own_reducer(monkeypatch):
    """This process sends tensors of its blocks by place for the test only."""
    monkeypatch.setattr(shared_blocks, "_reducer_pid", None)
    monkeypatch.setitem(ForkingPickler._extra_reducers, torch.Tensor, ForkingPickler._extra_reducers[torch.Tensor])


def stored(utt) -> np.ndarray:
    return np.stack([utt.states[str(layer)] for layer in LAYERS])


def loader_of(dataset, **options):
    return torch.utils.data.DataLoader(dataset, batch_size=4, num_workers=2, persistent_workers=True,
                                       multiprocessing_context="fork", **options)


def test_items_held_by_the_trainer_keep_their_values_while_workers_read_on(tmp_path, pool_every_read):
    utts = random_utterances(40, seed=5)
    write(tmp_path, utts, save_dtype="float32")
    loader = loader_of(FeatureDataset(tmp_path, layers=LAYERS), collate_fn=list)
    before = shared_blocks.received
    held = [batch for batch in loader]  # the first epoch kept whole
    for _ in range(3):
        for batch in loader:
            for utt_id, tensor in batch:
                np.testing.assert_array_equal(tensor.numpy(), stored(utts[int(utt_id[1:])]))
    assert shared_blocks.received - before == 4 * len(utts)  # every item came by place
    for batch in held:
        for utt_id, tensor in batch:
            np.testing.assert_array_equal(tensor.numpy(), stored(utts[int(utt_id[1:])]))


class WorkerBlocks(torch.utils.data.Dataset):
    """Item i: (the dataset's item i, how many reads the worker's pool has served from a block used before)."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, index):
        item = self.dataset[index]
        return item, self.dataset.features._buffers._reused


def test_workers_use_blocks_again_once_the_trainer_drops_them(tmp_path, pool_every_read):
    utts = random_utterances(24, seed=6)
    write(tmp_path, utts, save_dtype="float32")
    loader = loader_of(WorkerBlocks(FeatureDataset(tmp_path, layers=LAYERS)), collate_fn=list)
    reused = 0
    for _ in range(3):
        for batch in loader:
            reused = max(reused, max(count for _, count in batch))
            del batch
    assert reused > 0


def test_padded_batches_from_workers_are_exact_and_held_ones_stay_so(tmp_path, pool_every_read):
    utts = random_utterances(30, seed=7)
    write(tmp_path, utts, save_dtype="float16")
    dataset = FeatureDataset(tmp_path, layers=LAYERS, dtype="float32")
    loader = loader_of(dataset, collate_fn=dataset.collate)
    before = shared_blocks.received
    epochs = [[batch for batch in loader] for _ in range(3)]  # all held at once
    assert shared_blocks.received - before == sum(len(epoch) for epoch in epochs)  # every batch by place
    for epoch in epochs:
        for batch in epoch:
            for position, utt_id in enumerate(batch.ids):
                expected = stored(utts[int(utt_id[1:])]).astype(np.float16).astype(np.float32)
                frames = int(batch.lengths[position])
                assert frames == expected.shape[1]
                np.testing.assert_array_equal(batch.features[position, :, :frames].numpy(), expected)
                assert not batch.features[position, :, frames:].any()  # padding is zeros, not a block's old values


def test_without_memfd_workers_send_copies_as_before(tmp_path, pool_every_read, monkeypatch):
    monkeypatch.setattr(shared_blocks, "available", lambda: False)
    utts = random_utterances(12, seed=8)
    write(tmp_path, utts, save_dtype="float32")
    before = shared_blocks.received
    for batch in loader_of(FeatureDataset(tmp_path, layers=LAYERS), collate_fn=list):
        for utt_id, tensor in batch:
            np.testing.assert_array_equal(tensor.numpy(), stored(utts[int(utt_id[1:])]))
    assert shared_blocks.received == before


def test_reads_in_the_main_process_are_not_shared(tmp_path, pool_every_read):
    utts = random_utterances(3)
    write(tmp_path, utts)
    dataset = FeatureDataset(tmp_path, layers=LAYERS)
    dataset[0]
    assert dataset.features._buffers._shared is False
    assert all(entry[2] is None for entry in dataset.features._buffers._blocks)


def sent_and_returned(block) -> tuple:
    return tuple(int(count) for count in block._counts)


def test_an_item_is_returned_when_its_last_array_is_gone(own_reducer):
    data, block = shared_blocks.new_block(4 * 1024**2)
    values = data[: 2 * 1024**2].view(np.float32).reshape(512, 1024)
    values[:] = np.arange(512 * 1024, dtype=np.float32).reshape(512, 1024)
    received = pickle.loads(ForkingPickler.dumps(torch.from_numpy(values)))
    assert sent_and_returned(block) == (1, 0)
    np.testing.assert_array_equal(received.numpy(), values)
    view = received[3:5]
    del received
    gc.collect()
    assert sent_and_returned(block) == (1, 0)  # the view still holds it
    del view
    gc.collect()
    assert sent_and_returned(block) == (1, 1) and block.all_returned()
    block.close()


def test_a_forked_child_dropping_its_copy_does_not_return_the_item(own_reducer):
    data, block = shared_blocks.new_block(2 * 1024**2)
    received = pickle.loads(ForkingPickler.dumps(torch.from_numpy(data[: 1024**2])))
    child = os.fork()
    if child == 0:
        del received
        gc.collect()
        os._exit(0)
    os.waitpid(child, 0)
    assert sent_and_returned(block) == (1, 0)  # the parent still holds the tensor
    del received
    gc.collect()
    assert block.all_returned()
    block.close()


@pytest.mark.parametrize("kind", ["strided", "needs grad", "outside"])
def test_other_tensors_go_through_torch_s_own_reduction(own_reducer, kind):
    data, block = shared_blocks.new_block(2 * 1024**2)
    values = torch.from_numpy(data[: 1024**2].view(np.float32).reshape(512, 512))
    tensor = {"strided": lambda: values[:, ::2], "needs grad": lambda: values.requires_grad_(),
              "outside": lambda: torch.ones(512, 512)}[kind]()
    before = shared_blocks.received
    received = pickle.loads(ForkingPickler.dumps(tensor))
    assert shared_blocks.received == before and sent_and_returned(block) == (0, 0)
    torch.testing.assert_close(received.detach(), tensor.detach())
    block.close()


def test_spawned_workers_send_by_place_too(tmp_path):
    utts = [utt for utt in random_utterances(20, seed=9) if utt.frames >= 16][:6]
    assert len(utts) == 6
    rng = np.random.default_rng(1)
    for utt in utts:  # items of 1 MiB and more, pooled without patching (a spawned worker would not see it)
        utt.states = {**utt.states, **{str(layer): rng.normal(size=(utt.frames, 8192)).astype(np.float32)
                                       for layer in LAYERS}}
    write(tmp_path, utts, save_dtype="float32")
    by_id = {utt.utt_id: utt for utt in utts}
    loader = torch.utils.data.DataLoader(FeatureDataset(tmp_path, layers=LAYERS), batch_size=2, num_workers=1,
                                         multiprocessing_context="spawn", collate_fn=list)
    before = shared_blocks.received
    held = [batch for batch in loader]
    assert shared_blocks.received - before == len(utts)
    for batch in held:
        for utt_id, tensor in batch:
            np.testing.assert_array_equal(tensor.numpy(), stored(by_id[utt_id]))


def test_collate_keeps_the_dtype_of_items_converted_after_reading(tmp_path, pool_every_read):
    utts = random_utterances(4, seed=10)
    write(tmp_path, utts, save_dtype="float32")
    dataset = FeatureDataset(tmp_path, layers=LAYERS, dtype="float16")
    items = [(utt_id, tensor.double()) for utt_id, tensor in (dataset[index] for index in range(4))]
    batch = dataset.collate(items)
    assert batch.features.dtype == torch.float64
    for position, (_, tensor) in enumerate(items):
        assert torch.equal(batch.features[position, :, : tensor.shape[1]], tensor)


@pytest.mark.parametrize("limit", ["blocks", "descriptors"])
def test_past_the_blocks_a_worker_may_hold_reads_go_to_private_memory(tmp_path, pool_every_read, monkeypatch, limit):
    if limit == "blocks":
        monkeypatch.setattr(shared_blocks, "MOST_BLOCKS", 2)
    else:
        calls = {"count": 0}
        real = os.memfd_create

        def memfd_create(*args):
            calls["count"] += 1
            if calls["count"] > 2:
                raise OSError(24, "Too many open files")
            return real(*args)

        monkeypatch.setattr(os, "memfd_create", memfd_create)
    utts = random_utterances(20, seed=11)
    write(tmp_path, utts, save_dtype="float32")
    loader = torch.utils.data.DataLoader(FeatureDataset(tmp_path, layers=LAYERS), batch_size=4, num_workers=1,
                                         multiprocessing_context="fork", collate_fn=list)
    before = shared_blocks.received
    held = [batch for batch in loader]  # every item held: the worker cannot reuse a block
    assert 0 < shared_blocks.received - before <= 2
    for batch in held:
        for utt_id, tensor in batch:
            np.testing.assert_array_equal(tensor.numpy(), stored(utts[int(utt_id[1:])]))
