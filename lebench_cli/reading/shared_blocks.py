"""Read blocks in shared memory, for reads made in a DataLoader worker: a tensor of one crosses
to the main process as the block's descriptor and place, not as a copy.

torch sends a worker's tensor by copying it into a new shared-memory file, whose pages the
kernel zero-fills and the worker faults in, item after item: with all 25 layers of the large
model that copy was most of what a worker did (docs/performance.md, "Reads through DataLoader
workers"). A read made in a worker lands in a block of its own memfd instead; pickling a tensor
that lies in one sends a duplicate of the descriptor (as torch does for its own files), the
receiver maps the block and counts the item returned in the block's header once the last
array of it is gone. The worker hands the block out again only when it holds nothing of it
and every item it sent has been returned, so a tensor the trainer keeps is never overwritten.
Any other tensor (a collated copy, a slice that is not contiguous, a tensor that needs grad)
goes through torch's own reduction, unchanged.
"""

from __future__ import annotations

import mmap
import os
import struct
import sys
import threading
import weakref
from math import prod

import numpy as np

_HEADER = 64  # int64 items sent (the worker writes it), int64 items returned (the receiver writes it)
_RETURNED = 8  # the returned count's byte offset
_DTYPES = ("float16", "float32", "float64", "int8", "int16", "int32", "int64", "uint8", "bool")

MOST_BLOCKS = 128  # each holds a descriptor: past this many, reads go to private memory (and torch's copy)

_registry = []  # this process's SharedBlocks whose tensors are sent by place
_registry_lock = threading.Lock()
_returned_lock = threading.Lock()
_reducer_pid = None  # the process whose ForkingPickler sends tensors of blocks by place
received = 0  # tensors this process has received by place


def available() -> bool:
    return hasattr(os, "memfd_create")


def in_a_dataloader_worker() -> bool:
    data = sys.modules.get("torch.utils.data")
    return data is not None and data.get_worker_info() is not None


class SharedBlock:
    """One memfd block: its data array is what reads are made into."""

    def __init__(self, size: int):
        descriptor = os.memfd_create("lebench-read", os.MFD_CLOEXEC)
        try:
            os.ftruncate(descriptor, _HEADER + size)
            self._mapping = mmap.mmap(descriptor, _HEADER + size)
        except BaseException:
            os.close(descriptor)
            raise
        self.descriptor, self.length = descriptor, _HEADER + size
        self._counts = np.frombuffer(self._mapping, np.int64, 2)
        self.size = size
        self.start = self.data().ctypes.data
        self.stop = self.start + size

    def data(self) -> np.ndarray:
        """A new array over the block's data (the block keeps none: the pool counts its holders)."""
        return np.frombuffer(self._mapping, np.uint8, self.size, _HEADER)

    def all_returned(self) -> bool:
        sent, returned = self._counts
        return sent == returned

    def close(self) -> None:
        """No tensor of it is sent by place any more; the memory goes with the last mapping."""
        with _registry_lock:
            if self in _registry:
                _registry.remove(self)
        if self.descriptor >= 0:
            os.close(self.descriptor)
            self.descriptor = -1


def new_block(size: int):
    """(data array, SharedBlock), the block registered so that its tensors are sent by place;
    None where this process has MOST_BLOCKS already or the system refuses one (descriptors,
    memory): the caller reads into private memory then."""
    with _registry_lock:
        if len(_registry) >= MOST_BLOCKS:
            return None
    _register_reducer()
    try:
        block = SharedBlock(size)
    except OSError:
        return None
    with _registry_lock:
        _registry.append(block)
    return block.data(), block


def _register_reducer() -> None:
    global _reducer_pid
    if _reducer_pid == os.getpid():
        return
    import torch
    import torch.multiprocessing.reductions as reductions
    from multiprocessing.reduction import ForkingPickler

    torch_reduce = reductions.reduce_tensor

    def reduce_tensor(tensor):
        found = _sent_by_place(tensor)
        return torch_reduce(tensor) if found is None else found

    ForkingPickler.register(torch.Tensor, reduce_tensor)
    _reducer_pid = os.getpid()


def _sent_by_place(tensor):
    import torch

    if (type(tensor) is not torch.Tensor or tensor.device.type != "cpu" or tensor.requires_grad
            or tensor.layout != torch.strided or not tensor.is_contiguous() or tensor.numel() == 0):
        return None
    dtype = str(tensor.dtype).removeprefix("torch.")
    if dtype not in _DTYPES:
        return None
    start = tensor.data_ptr()
    stop = start + tensor.numel() * tensor.element_size()
    with _registry_lock:
        for block in _registry:
            if block.start <= start and stop <= block.stop and block.descriptor >= 0:
                block._counts[0] += 1
                from multiprocessing.reduction import DupFd

                place = _HEADER + start - block.start
                return _rebuild_tensor, (DupFd(block.descriptor), block.length, place, tuple(tensor.shape), dtype)
    return None


def _rebuild_tensor(duplicate, length: int, place: int, shape: tuple, dtype: str):
    """In the receiving process: the tensor over the mapped block; the item is counted returned
    when the last array of it is gone."""
    import torch

    global received
    descriptor = duplicate.detach()
    try:
        mapping = mmap.mmap(descriptor, length)
    finally:
        os.close(descriptor)
    flat = np.frombuffer(mapping, np.dtype(dtype), prod(shape), place)
    weakref.finalize(flat, _count_returned, mapping, os.getpid())
    received += 1
    return torch.from_numpy(flat.reshape(shape))


def _count_returned(mapping, receiver: int) -> None:
    if os.getpid() != receiver:  # a forked child's copy of the array: the receiver may still hold its own
        return
    # Two receivers racing on one block could lose a count: the block is then never reused, never overwritten.
    with _returned_lock:
        (returned,) = struct.unpack_from("q", mapping, _RETURNED)
        struct.pack_into("q", mapping, _RETURNED, returned + 1)
