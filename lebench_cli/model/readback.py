"""Hidden states from the device to the host, without stalling the model.

On a GPU, reading a batch's states back right after launching it keeps the host waiting
while the GPU computes, and then the GPU idle while the host stores them, pads the next
batch and launches it. A `Readback` queues the batch's copies behind its kernels, into
page-locked host memory, and waits for them only when asked: the caller launches the
next batch first, so the GPU always has work queued. On a CPU the states are already on
the host: nothing is copied and nothing waits."""

from __future__ import annotations

import numpy as np
import torch

from .encoder import CNN, EncodedBatch


class Readback:
    """One batch's states on their way to the host; `result()` waits for them.

    With `check_finite`, each utterance's valid frames are checked for NaN and infinity on
    the device, layer by layer in the model's order, the conv features first even when they
    are not stored (where an overflow of loud audio starts): one small [layers, batch]
    flag copy, not one read-back per layer. `non_finite()` then names, per utterance that
    has such a value, the first layer that does."""

    def __init__(self, batch: EncodedBatch, check_finite: bool = True):
        self.frames = batch.frames.tolist()
        self._checked: list = []
        self._finite = None
        if check_finite:
            checked = dict(batch.states)
            if batch.conv_features is not None:
                checked[CNN] = batch.conv_features
            self._checked = sorted(checked, key=lambda layer: -1 if layer == CNN else layer)  # the model's order
            flags = finite_per_utterance([checked[layer] for layer in self._checked], batch.frames)
            self._finite = _to_host(flags)
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
        """(every checked value finite, {layer: [one [frames, width] numpy array per
        utterance]}); the arrays are views of the batch's host copy."""
        self._wait()
        states = {}
        for layer, host in self._states.items():
            array = host.numpy()
            states[layer] = [array[index, :count] for index, count in enumerate(self.frames)]
        return not self.non_finite(), states

    def non_finite(self) -> dict:
        """{utterance index: the first layer with a NaN or infinite value in its valid frames}
        ({} when not checked)."""
        if self._finite is None:
            return {}
        self._wait()
        flags = self._finite.numpy()
        return {index: self._checked[int(np.argmin(flags[:, index]))]
                for index in range(flags.shape[1]) if not flags[:, index].all()}

    def failures(self) -> dict:
        """{utterance index: the reason it fails} for `non_finite()`: the caller has already
        recomputed a half-precision batch in float32, so what is left is float32's."""
        return {index: f"non-finite features (NaN or inf) at layer {layer} in float32"
                for index, layer in self.non_finite().items()}

    def _wait(self):
        if self._copied is not None:
            self._copied.synchronize()


def finite_per_utterance(values: list, frames: torch.Tensor) -> torch.Tensor:
    """[len(values), batch] bool on the device: whether every value of each utterance's
    valid frames (frames[i] of them) is finite, for each [batch, frames, width] tensor.

    Each frame's sum, accumulated wider than the values (float32 for float16; float64 for
    float32 and bfloat16, whose range no sum of a frame's finite values leaves), is finite
    exactly when every value of the frame is: one read of the states, no boolean copy of
    them."""
    # non_blocking: a blocking copy would wait for the device to catch up with the host
    counts = frames.to(values[0].device, non_blocking=True)[:, None]
    flags = []
    for value in values:
        wide = torch.float32 if value.dtype == torch.float16 else torch.float64
        sums = value.sum(dim=2, dtype=wide)
        padding = torch.arange(sums.shape[1], device=sums.device)[None, :] >= counts
        flags.append((torch.isfinite(sums) | padding).all(dim=1))
    return torch.stack(flags)


def _to_host(tensor: torch.Tensor) -> torch.Tensor:
    if tensor.device.type == "cpu":
        return tensor
    # Page-locked, so that the copy runs asynchronously; the caching host allocator reuses
    # these buffers from one batch to the next.
    host = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=True)
    host.copy_(tensor, non_blocking=True)
    return host
