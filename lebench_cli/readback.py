"""Hidden states from the device to the host, without stalling the model.

On a GPU, reading a batch's states back right after launching it keeps the host waiting
while the GPU computes, and then the GPU idle while the host stores them, pads the next
batch and launches it. A `Readback` queues the batch's copies behind its kernels, into
page-locked host memory, and waits for them only when asked: the caller launches the
next batch first, so the GPU always has work queued. On a CPU the states are already on
the host: nothing is copied and nothing waits."""

from __future__ import annotations

import torch

from .encoder import EncodedBatch


class Readback:
    """One batch's states on their way to the host; `result()` waits for them."""

    def __init__(self, batch: EncodedBatch, check_finite: bool):
        self.frames = batch.frames.tolist()
        self._finite = None
        if check_finite:
            # One flag for the whole batch, computed on the device: one small copy, not one
            # read-back per layer.
            self._finite = _to_host(torch.stack([torch.isfinite(value).all() for value in batch.states.values()]).all())
        # numpy has no bfloat16: that one becomes float32; float16 stays float16.
        self._states = {
            layer: _to_host(value if value.dtype in (torch.float16, torch.float32) else value.float())
            for layer, value in batch.states.items()
        }
        self._copied = None
        devices = {value.device for value in batch.states.values() if value.device.type == "cuda"}
        if devices:
            # blocking: the host sleeps while it waits, leaving its core to the decoders
            self._copied = torch.cuda.Event(blocking=True)
            self._copied.record(torch.cuda.current_stream(devices.pop()))

    def result(self) -> tuple[bool, dict]:
        """(every value finite, {layer: [one [frames, width] numpy array per utterance]});
        the arrays are views of the batch's host copy."""
        if self._copied is not None:
            self._copied.synchronize()
        finite = True if self._finite is None else bool(self._finite)
        states = {}
        for layer, host in self._states.items():
            array = host.numpy()
            states[layer] = [array[index, :count] for index, count in enumerate(self.frames)]
        return finite, states


def _to_host(tensor: torch.Tensor) -> torch.Tensor:
    if tensor.device.type == "cpu":
        return tensor
    # Page-locked, so that the copy runs asynchronously; the caching host allocator reuses
    # these buffers from one batch to the next.
    host = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=True)
    host.copy_(tensor, non_blocking=True)
    return host
