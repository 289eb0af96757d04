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


def cpu_half_precision_lines() -> list[str]:
    """What half precision buys on this CPU, for `lebench info`: whether it computes bfloat16
    and float16 natively (torch's own CPU feature checks), and the default that stays."""
    bfloat16 = [name for name, has in (("AVX512-BF16", _has("_is_avx512_bf16_supported")),
                                        ("AMX", _has("_is_amx_tile_supported"))) if has]
    if bfloat16:
        lines = [f"CPU bfloat16: native here ({', '.join(bfloat16)}): `--device cpu --dtype bfloat16` "
                 "runs the model faster than float32 (about 2.5x for the base model on such a CPU, "
                 "errors near 2e-2 of a layer's scale: docs/performance.md); float32 stays the "
                 "default, the exact reference."]
    else:
        lines = ["CPU bfloat16: not native here (no AVX512-BF16 or AMX found): `--dtype bfloat16` "
                 "is likely no faster than float32, the default on CPU."]
    if _has("_is_amx_fp16_supported"):
        lines.append("CPU float16: native here (AMX-FP16).")
    else:
        lines.append("CPU float16: not native here (no AMX-FP16): at best float32's speed, far slower "
                     "on some CPUs; use " + ("bfloat16 or " if bfloat16 else "") + "float32 on the CPU.")
    return lines


def _has(feature: str) -> bool:
    check = getattr(torch.cpu, feature, None)  # private in torch 2.x: absent means unknown
    try:
        return bool(check()) if check is not None else False
    except RuntimeError:
        return False
