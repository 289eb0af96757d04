"""Half precision on CPUs: the kernels whose low-precision result cannot be trusted here.

oneDNN's bfloat16 grouped convolution (torch 2.13, on CPUs with AMX/AVX512-BF16) returns
wrong values, not rounded ones, for some group widths: 2 to 12 channels per group gave
relative errors near 1.0 where the right result is within 4e-3. The LeBenchmark models'
positional convolution has 48 to 80 channels per group and computes right, but a model of
another shape, on another CPU or torch, may not: the shape is checked once against float32
before the model runs, and a wrong kernel is routed around.
"""

from __future__ import annotations

from contextlib import nullcontext
from functools import lru_cache

import torch
import torch.nn.functional as F

from ..errors import InputError

# A right bfloat16 result is within ~4e-3 of float32 relative to its scale; a wrong kernel
# is off by its whole scale. Anything in between is no rounding this check accepts.
_TRUSTED_ERROR = 0.05


def grouped_conv_context(conv: torch.nn.Conv1d, device: torch.device, dtype: torch.dtype):
    """A context to run `conv` in (nullcontext when its kernel computes right here; oneDNN
    switched off when only oneDNN gets it wrong). InputError when no CPU kernel computes it
    right in `dtype`: float32 is then the way."""
    if device.type != "cpu" or dtype == torch.float32 or conv.groups == 1:
        return nullcontext
    shape = (conv.in_channels, conv.out_channels, conv.kernel_size[0], conv.groups)
    if _computes_right(*shape, dtype, True):
        return nullcontext
    if _computes_right(*shape, dtype, False):
        return lambda: torch.backends.mkldnn.flags(enabled=False)
    raise InputError(f"this CPU computes the model's grouped convolution ({shape[3]} groups of "
                     f"{shape[0] // shape[3]} channels) wrongly in {str(dtype).replace('torch.', '')}: "
                     "use --dtype float32")


@lru_cache(maxsize=None)
def _computes_right(in_channels: int, out_channels: int, kernel: int, groups: int,
                    dtype: torch.dtype, onednn: bool) -> bool:
    generator = torch.Generator().manual_seed(0)
    weight = torch.randn(out_channels, in_channels // groups, kernel, generator=generator)
    inputs = torch.randn(2, in_channels, 2 * kernel, generator=generator)
    with torch.inference_mode():
        reference = F.conv1d(inputs, weight, padding=kernel // 2, groups=groups)
        with torch.backends.mkldnn.flags(enabled=onednn):
            low = F.conv1d(inputs.to(dtype), weight.to(dtype), padding=kernel // 2, groups=groups).float()
    error = (low - reference).abs().max() / reference.abs().max().clamp_min(1e-30)
    return bool(error < _TRUSTED_ERROR)
