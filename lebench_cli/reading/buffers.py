"""Blocks that large reads land in, used again once nobody holds the arrays made of them.

A training loop reads a batch of utterances, drops it and reads the next. Each array of a
few MB that glibc frees is unmapped or trimmed, and the next batch's arrays fault the same
amount in again, zero-filled page by page: with all 25 layers of the large model that took
a third of a warm read's time (docs/performance.md, "Three warm runs in a row"). Here a
block is handed out again only when the pool's own reference is the last one: every array
made from it (a view, a torch tensor of it) keeps the block alive and out of reach. In a
DataLoader worker the blocks are shared memory, and a tensor of one goes to the main process
without a copy (shared_blocks.py).
"""

from __future__ import annotations

import os
import sys
import threading
from math import prod

import numpy as np

from . import shared_blocks

SMALLEST_BYTES = 1024**2  # below this glibc serves arrays from its heap, without page faults
FREE_BYTES_KEPT = 512 * 1024**2  # at most this much kept unused, per open store
TRACKED_BYTES = 2 * FREE_BYTES_KEPT  # blocks beyond this (arrays a caller keeps) are not pooled
UNUSED_TAKES = 256  # a free block not used again within this many large reads is let go
_FIT = 1.5  # a free block serves a request at least 1/_FIT of its size
_CLASSES_PER_DOUBLING = 4  # blocks are allocated rounded up to one of these sizes: at most 25% spare
_ENTRY_AND_CALL_REFERENCES = 2  # the pool entry's, getrefcount's argument


class ReusedBuffers:
    """np.empty for reads, drawing large arrays from blocks nobody holds any more."""

    def __init__(self):
        self._blocks = []  # [block, take number of its last use, SharedBlock or None], oldest use first
        self._takes = 0
        self._reused = 0  # takes served by a block used before
        self._lock = threading.Lock()
        # Without the GIL a reference count read here may be stale: do not reuse then.
        self._enabled = getattr(sys, "_is_gil_enabled", lambda: True)()
        self._pid = os.getpid()
        self._shared = None  # decided at the first large read: in a DataLoader worker, blocks are shared

    def empty(self, shape: tuple, dtype) -> np.ndarray:
        dtype = np.dtype(dtype)
        size = prod(shape) * dtype.itemsize
        if size < SMALLEST_BYTES or not self._enabled:
            return np.empty(shape, dtype)
        with self._lock:
            self._follow_process()
            block = self._take(size)
            return block[:size].view(dtype).reshape(shape)

    def __reduce__(self):
        return ReusedBuffers, ()  # a pickled store (a spawned worker's) starts with no blocks

    def clear(self) -> None:
        with self._lock:
            for entry in self._blocks:
                _close(entry)
            self._blocks.clear()

    def _follow_process(self) -> None:
        if self._pid != os.getpid():  # a forked copy: the parent's blocks are not this process's to hand out
            self._blocks, self._pid, self._shared = [], os.getpid(), None
        if self._shared is None:
            self._shared = shared_blocks.available() and shared_blocks.in_a_dataloader_worker()

    def _take(self, size: int) -> np.ndarray:
        self._takes += 1
        self._let_go_of_unused()
        fits = [entry for entry in self._blocks if _is_free(entry) and size <= entry[0].nbytes <= size * _FIT]
        if fits:
            chosen = min(fits, key=lambda entry: entry[0].nbytes)
            chosen[1] = self._takes
            self._reused += 1
            return chosen[0]
        rounded = _rounded_up(size)
        if sum(entry[0].nbytes for entry in self._blocks) + rounded > TRACKED_BYTES:
            return np.empty(rounded, np.uint8)  # never handed out again, so never shared
        made = shared_blocks.new_block(rounded) if self._shared else None
        block, shared = made or (np.empty(rounded, np.uint8), None)
        self._blocks.append([block, self._takes, shared])
        return block

    def _let_go_of_unused(self) -> None:
        """Free blocks: the stale ones go, then the least recently used past FREE_BYTES_KEPT."""
        kept, free_bytes = [], 0
        for entry in sorted(self._blocks, key=lambda entry: -entry[1]):  # most recently used first
            if not _is_free(entry):
                kept.append(entry)
            elif self._takes - entry[1] <= UNUSED_TAKES and free_bytes + entry[0].nbytes <= FREE_BYTES_KEPT:
                kept.append(entry)
                free_bytes += entry[0].nbytes
            else:
                _close(entry)
        self._blocks = sorted(kept, key=lambda entry: entry[1])


def _is_free(entry: list) -> bool:
    """No array made from the block is alive (the entry's own reference is the only one) and,
    for a shared block, every item sent from it has been returned (checked second: a tensor
    being sent is held until it is, so its count is already up)."""
    return sys.getrefcount(entry[0]) == _ENTRY_AND_CALL_REFERENCES and (entry[2] is None or entry[2].all_returned())


def _close(entry: list) -> None:
    if entry[2] is not None:
        entry[2].close()


def _rounded_up(size: int) -> int:
    step = max((1 << (size.bit_length() - 1)) // _CLASSES_PER_DOUBLING, 4096)
    return -(-size // step) * step
