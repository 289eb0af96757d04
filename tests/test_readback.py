"""Readback: a batch's states as per-utterance host arrays, each utterance checked for NaN and inf."""

import numpy as np
import pytest
import torch

from lebench_cli.model.encoder import EncodedBatch
from lebench_cli.model.readback import Readback


def batch_of(dtype, device="cpu", poison=False):
    generator = torch.Generator().manual_seed(0)
    states = {3: torch.randn(3, 7, 5, generator=generator), "cnn": torch.randn(3, 7, 4, generator=generator)}
    if poison:
        states["cnn"][2, 6, 1] = float("inf")  # in padding: the check takes the whole batch
    states = {layer: value.to(device=device, dtype=dtype) for layer, value in states.items()}
    return EncodedBatch(states, torch.tensor([7, 2, 5])), states


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_per_utterance_views_of_the_valid_frames(dtype, device):
    batch, states = batch_of(dtype, device)
    finite, host = Readback(batch, check_finite=dtype != torch.float32).result()
    assert finite
    assert list(host) == [3, "cnn"]
    for layer, value in states.items():
        expected = value.float().cpu().numpy()
        for index, count in enumerate([7, 2, 5]):
            array = host[layer][index]
            assert array.dtype == (np.float16 if dtype == torch.float16 else np.float32)
            np.testing.assert_array_equal(array, expected[index, :count])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_each_utterance_is_checked_on_its_valid_frames_naming_the_first_layer(dtype, device):
    batch, _ = batch_of(dtype, device, poison=True)  # inf in utterance 2's padding only
    readback = Readback(batch)
    finite, _ = readback.result()
    assert finite and readback.non_finite() == {}
    batch.states[3][1, 1, 4] = float("nan")  # utterance 1's last valid frame
    batch.states["cnn"][0, 0, 0] = float("-inf")
    batch.states[3][0, 6, 0] = float("inf")
    readback = Readback(batch)
    finite, host = readback.result()
    assert not finite
    assert readback.non_finite() == {0: "cnn", 1: 3}  # "cnn" comes first in the model
    assert np.isfinite(host[3][2]).all()  # utterance 2 untouched
    # Not asked: not checked.
    assert Readback(batch, check_finite=False).result()[0] and Readback(batch, check_finite=False).non_finite() == {}


def test_the_conv_features_are_checked_even_when_not_stored(device):
    batch, states = batch_of(torch.float32, device)
    features = torch.zeros(3, 7, 4, device=device)
    features[2, 4, 3] = float("inf")
    readback = Readback(EncodedBatch({3: states[3]}, batch.frames, conv_features=features))
    assert readback.non_finite() == {2: "cnn"}
    assert list(readback.result()[1]) == [3]


def test_huge_finite_values_are_finite_in_every_dtype(device):
    """A frame's sum is taken wider than its values: finite values near the dtype's largest
    never add up to an infinity that would fail the utterance."""
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        largest = torch.finfo(dtype).max
        states = {1: torch.full((2, 3, 1024), largest, dtype=dtype, device=device)}
        readback = Readback(EncodedBatch(states, torch.tensor([3, 2])))
        assert readback.result()[0] and readback.non_finite() == {}, dtype


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_states_arrive_in_page_locked_memory_after_later_work_is_queued():
    batch, states = batch_of(torch.float16, device="cuda")
    torch.cuda._sleep(100_000_000)  # the copies queue behind this: result() must wait for them
    readback = Readback(batch, check_finite=True)
    for value in states.values():
        value.mul_(0)  # queued after the copies: must not show in what was read back
    del batch
    finite, host = readback.result()
    expected, _ = batch_of(torch.float16)
    assert finite
    for layer, value in expected.states.items():
        for index, count in enumerate([7, 2, 5]):
            np.testing.assert_array_equal(host[layer][index], value[index, :count].numpy())
    assert all(tensor.is_pinned() for tensor in readback._states.values())
