"""Which device a run computes on, said plainly: its name for the summary, and, when the
default device falls back to the CPU, why (no GPU visible, or a driver too old for this
torch's CUDA): a node that cannot run CUDA would otherwise extract on the CPU without a word."""

from __future__ import annotations

import ctypes
import os
import warnings
from typing import Optional


def describe_device(device) -> str:
    """`cpu`, or `cuda:0 (NVIDIA H100 80GB HBM3)`, for a torch.device."""
    import torch

    if device.type != "cuda":
        return str(device)
    index = device.index if device.index is not None else torch.cuda.current_device()
    return f"cuda:{index} ({torch.cuda.get_device_name(index)})"


def dtype_name(dtype) -> str:
    return str(dtype).replace("torch.", "")


def cpu_fallback_reason() -> Optional[str]:
    """Why the default device (cuda when available) is the CPU here; None when CUDA is
    available. Call it before anything else asks torch about CUDA: torch warns of a failed
    CUDA initialisation (a driver too old, say) once per process."""
    import torch

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if torch.cuda.is_available():
            return None
    if torch.version.cuda is None:
        return "this torch is built for the CPU only"
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and visible.strip() in ("", "-1"):
        return f"no GPU visible (CUDA_VISIBLE_DEVICES={visible!r})"
    driver = driver_cuda_version()
    text = next((str(warning.message).strip() for warning in caught if "CUDA" in str(warning.message)), "")
    needed = _version_of(torch.version.cuda)
    if "too old" in text or (driver is not None and driver[0] < needed[0]):
        runs = f" (the driver here runs CUDA up to {driver[0]}.{driver[1]})" if driver is not None else ""
        return f"this torch's CUDA {torch.version.cuda} needs a newer NVIDIA driver{runs}"
    if driver is None:
        return "no GPU visible (no NVIDIA driver found)"
    if text:
        return f"CUDA did not start: {text.splitlines()[0]}"
    return "no GPU visible"


def driver_cuda_version() -> Optional[tuple]:
    """(major, minor) of the newest CUDA the installed NVIDIA driver runs, None without one."""
    try:
        libcuda = ctypes.CDLL("libcuda.so.1")
        version = ctypes.c_int()
        if libcuda.cuDriverGetVersion(ctypes.byref(version)) != 0:
            return None
    except (OSError, AttributeError):
        return None
    return version.value // 1000, version.value % 1000 // 10


def _version_of(text: str) -> tuple:
    parts = [int(part) for part in text.split(".")[:2] if part.isdigit()]
    return tuple(parts + [0] * (2 - len(parts)))
