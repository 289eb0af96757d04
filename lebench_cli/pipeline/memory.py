"""Process-wide memory settings of the processes that run an extraction."""

from __future__ import annotations


def return_large_blocks_to_the_os(threshold: int = 8 * 1024**2) -> bool:
    """Have glibc serve every allocation of `threshold` bytes or more with a mapping of its
    own, unmapped when freed. By default glibc raises that threshold (up to 32 MB) each time
    such a block is freed and then serves blocks that size from its heap, which fragments as
    batch shapes vary: a CPU run's peak RSS grew with the corpus (1.8 GB for 5 minutes of
    audio, 2.4 GB for 60; docs/performance.md). A process-wide setting, so the command sets
    it, not the library; MALLOC_MMAP_THRESHOLD_, when set, is left alone. True when set."""
    import ctypes
    import os
    import platform

    if "MALLOC_MMAP_THRESHOLD_" in os.environ or platform.libc_ver()[0] != "glibc":
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    return mallopt(-3, threshold) == 1  # -3: M_MMAP_THRESHOLD in malloc.h
