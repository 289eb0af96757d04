"""Readback: a batch's states as per-utterance host arrays, with one finite flag."""

import numpy as np
import pytest
import torch

from lebench_cli.encoder import EncodedBatch
from lebench_cli.readback import Readback


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


def test_one_flag_for_any_non_finite_value(device):
    batch, _ = batch_of(torch.float16, device, poison=True)
    finite, _ = Readback(batch, check_finite=True).result()
    assert not finite
    # Not asked: not checked (float32 batches are never recomputed).
    finite, _ = Readback(batch_of(torch.float16, device, poison=True)[0], check_finite=False).result()
    assert finite


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
