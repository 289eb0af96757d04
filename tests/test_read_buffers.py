"""Large reads land in reused blocks, and a block is reused only once no array of it is alive."""

import pickle

import numpy as np
import pytest
import torch

from lebench_cli.reading import buffers as buffers_module
from lebench_cli.reading.buffers import ReusedBuffers
from lebench_cli.reading.dataset import FeatureDataset
from lebench_cli.reading.store import open_features
from support.stores import random_utterances, write

MB = 1024**2


def address(array) -> int:
    return array.__array_interface__["data"][0]


def test_a_dropped_array_s_block_serves_the_next_read_of_its_size():
    pool = ReusedBuffers()
    first = pool.empty((3, 1000, 1024), np.float16)
    at = address(first)
    del first
    again = pool.empty((3, 990, 1024), np.float16)
    assert address(again) == at and again.shape == (3, 990, 1024) and again.dtype == np.float16
    assert again.flags.c_contiguous and again.flags.writeable


def hold(holder: str, array):
    return {"view": array[5:], "tensor": torch.from_numpy(array), "memoryview": memoryview(array),
            "list": [array]}[holder]


def values_held(holder: str, kept) -> np.ndarray:
    return kept.numpy() if holder == "tensor" else kept[0] if holder == "list" else np.asarray(kept)


@pytest.mark.parametrize("holder", ["view", "tensor", "memoryview", "list"])
def test_a_block_is_not_reused_while_anything_made_of_it_is_alive(holder):
    pool = ReusedBuffers()
    first = pool.empty((2 * MB,), np.uint8)
    first[:] = 7
    kept, at = hold(holder, first), address(first)
    del first
    second = pool.empty((2 * MB,), np.uint8)
    second[:] = 1
    assert address(second) != at
    assert (values_held(holder, kept) == 7).all()
    second_at = address(second)
    del kept, second
    assert address(pool.empty((2 * MB,), np.uint8)) in (at, second_at)  # both blocks are free again


def test_small_arrays_are_plain_and_sizes_far_apart_get_their_own_block():
    pool = ReusedBuffers()
    small = pool.empty((10, 8), np.float32)
    assert small.base is None  # owns its memory: nothing pooled
    big = pool.empty((8 * MB,), np.uint8)
    at = address(big)
    del big
    assert address(pool.empty((2 * MB,), np.uint8)) != at  # an 8 MB block is not spent on 2 MB


def test_unused_blocks_kept_are_bounded(monkeypatch):
    monkeypatch.setattr(buffers_module, "FREE_BYTES_KEPT", 4 * MB)
    monkeypatch.setattr(buffers_module, "TRACKED_BYTES", 8 * MB)
    pool = ReusedBuffers()
    held = [pool.empty((MB + 4096 * index,), np.uint8) for index in range(12)]
    assert sum(entry[0].nbytes for entry in pool._blocks) <= 8 * MB  # the rest are the caller's alone
    del held
    pool.empty((MB,), np.uint8)
    free = [entry for entry in pool._blocks if buffers_module._is_free(entry)]
    assert sum(entry[0].nbytes for entry in free) <= 4 * MB


def test_a_block_unused_for_long_is_let_go(monkeypatch):
    monkeypatch.setattr(buffers_module, "UNUSED_TAKES", 3)
    pool = ReusedBuffers()
    del_me = pool.empty((6 * MB,), np.uint8)
    del del_me
    for _ in range(5):
        pool.empty((MB,), np.uint8)
    assert all(entry[0].nbytes < 6 * MB for entry in pool._blocks)


@pytest.fixture
def pool_every_read(monkeypatch):
    """Every read of a tiny store drawn from the pool, any free block large enough reused."""
    monkeypatch.setattr(buffers_module, "SMALLEST_BYTES", 1)
    monkeypatch.setattr(buffers_module, "_FIT", 1e9)


def test_reads_held_by_the_caller_keep_their_values_while_later_reads_reuse_blocks(tmp_path, pool_every_read):
    utts = random_utterances(40, seed=3)
    write(tmp_path, utts, save_dtype="float32")
    expected = {utt.utt_id: np.stack([utt.states["0"], utt.states["12"]]) for utt in utts}
    with open_features(tmp_path) as features:
        held = {}
        for round_ in range(3):
            for index, utt in enumerate(utts):
                values = features.read(utt.utt_id, [0, 12])
                np.testing.assert_array_equal(values, expected[utt.utt_id])
                if index % 3 == round_:
                    held[(round_, utt.utt_id)] = torch.from_numpy(features.read(utt.utt_id, "12"))
                del values
        for (_, utt_id), tensor in held.items():
            np.testing.assert_array_equal(tensor.numpy(), expected[utt_id][1])
        assert features._buffers._reused > 0


def test_the_dataset_s_float32_items_are_intact_across_batches(tmp_path, pool_every_read):
    utts = random_utterances(30, seed=4)
    write(tmp_path, utts, save_dtype="float16")
    dataset = FeatureDataset(tmp_path, layers=[0, 12])
    loader = torch.utils.data.DataLoader(dataset, batch_size=4, collate_fn=list)
    batches = [batch for batch in loader]  # every batch held while the next ones are read
    for batch in batches:
        for utt_id, tensor in batch:
            utt = utts[int(utt_id[1:])]
            stored = np.stack([utt.states["0"], utt.states["12"]]).astype(np.float16).astype(np.float32)
            assert tensor.dtype == torch.float32
            np.testing.assert_array_equal(tensor.numpy(), stored)


def test_a_pickled_store_brings_no_blocks(tmp_path, monkeypatch):
    monkeypatch.setattr(buffers_module, "SMALLEST_BYTES", 1)
    utts = random_utterances(3)
    write(tmp_path, utts)
    with open_features(tmp_path) as features:
        features.read("u0", 12)
        assert features._buffers._blocks
        assert pickle.loads(pickle.dumps(features))._buffers._blocks == []
