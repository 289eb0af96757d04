"""Byte sizes as options take them: 500MB, 2GB (1 KB = 1024 bytes), for --shard-size."""

from __future__ import annotations

from ..errors import InputError


def parse_size(text: str) -> int:
    units = {"": 1, "B": 1, "K": 1024, "KB": 1024, "M": 1024**2, "MB": 1024**2, "G": 1024**3, "GB": 1024**3,
             "T": 1024**4, "TB": 1024**4}
    value = str(text).strip().upper()
    number = value.rstrip("KMGTB")
    try:
        size = int(float(number) * units[value[len(number):]])
    except (ValueError, KeyError):
        raise InputError(f"invalid size '{text}': expected e.g. 500MB or 2GB") from None
    if size <= 0:
        raise InputError(f"invalid size '{text}': must be positive")
    return size
