"""Batches for training: padding items to the longest (collate_features), and grouping items of
similar length under a budget of padded frames (LengthBucketSampler).

Neither imports torch before it is called: the sampler is plain Python, which DataLoader takes
as a `batch_sampler`.
"""

from __future__ import annotations

from typing import Iterator, NamedTuple, Optional

import numpy as np


class FeatureBatch(NamedTuple):
    """features: float tensor [batch, (layers,) frames_max, width], zero past each length
    ([batch, (layers,) width] for pooled items); lengths: int64 tensor [batch], each item's
    frames (None for pooled items); ids: the utterance ids, in batch order; metadata: each
    item's metadata dict, in batch order, for items of a FeatureDataset(metadata=True) (else None)."""

    features: "object"
    lengths: "object"
    ids: list
    metadata: Optional[list] = None

    def mask(self):
        """bool tensor [batch, frames_max]: True on real frames, False on padding."""
        import torch

        if self.lengths is None:
            raise ValueError("pooled items have no frames to mask")
        frames = torch.arange(self.features.shape[-2], device=self.lengths.device)
        return frames[None, :] < self.lengths[:, None]


def collate_features(items: list, pooled: bool = False, empty=None) -> FeatureBatch:
    """(id, tensor) or (id, tensor, metadata) items of a FeatureDataset -> one FeatureBatch.
    Frames items ([frames, width] or [layers, frames, width]) are padded with zeros along frames
    to the longest; pooled items (pooled=True: [width] or [layers, width]) are stacked.
    empty(shape, dtype): where the padded features are made (default: a new zeroed tensor)."""
    import torch

    if not items:
        raise ValueError("cannot collate an empty batch")
    ids = [item[0] for item in items]
    values = [torch.as_tensor(item[1]) for item in items]
    metadata = [item[2] for item in items] if len(items[0]) > 2 else None
    if pooled:
        return FeatureBatch(torch.stack(values), None, ids, metadata)
    lengths = torch.tensor([value.shape[-2] for value in values], dtype=torch.int64)
    first = values[0]
    shape = (len(values), *first.shape[:-2], int(lengths.max()), first.shape[-1])
    features = first.new_zeros(shape) if empty is None else empty(shape, first.dtype)
    for position, value in enumerate(values):
        features[position, ..., : value.shape[-2], :] = value
        if empty is not None:
            features[position, ..., value.shape[-2]:, :] = 0
    return FeatureBatch(features, lengths, ids, metadata)


class LengthBucketSampler:
    """Batches of item indices of similar length, for `DataLoader(dataset, batch_sampler=...)`.

    Each epoch, items are sorted by their length times a random factor in [1, 1 + spread), the
    sorted list is cut into batches whose padded size (items x longest item) stays within
    max_frames, and the batches are shuffled. Every item comes exactly once per epoch (an item
    longer than max_frames makes a batch of its own); the order depends only on seed and epoch:
    call set_epoch(epoch) before each epoch, or every epoch repeats the first one's batches.

    With world_size > 1 (one process per GPU), rank r takes every world_size-th batch; the
    first batches are repeated where needed so that every rank gets as many batches (as
    torch's DistributedSampler repeats items).

    With num_batches=N, every epoch yields exactly N batches on every rank (what a learning-rate
    schedule counts on), taken from an endless stream of passes over the items, each pass
    batched and shuffled as above with its own seed: epoch e is the stream's batches e x N x
    world_size onwards. So an epoch longer than a pass continues into the next pass (a new
    shuffle: items repeat), and one shorter stops inside it, the next epoch continuing where it
    stopped; the stream depends only on seed, so any epoch comes out the same whatever came before.
    """

    def __init__(self, lengths, max_frames: int, *, spread: float = 0.1, shuffle: bool = True,
                 seed: int = 0, rank: int = 0, world_size: int = 1, num_batches: Optional[int] = None):
        """lengths: a FeatureDataset (its `lengths`) or each item's frames. max_frames: the
        budget of padded frames per batch (50 frames per second of audio). num_batches: the
        batches of every epoch on each rank (default: one pass over the items)."""
        self.lengths = _checked_lengths(getattr(lengths, "lengths", lengths))
        if isinstance(max_frames, bool) or not isinstance(max_frames, (int, np.integer)) or max_frames < 1:
            raise ValueError(f"max_frames={max_frames!r}: give a whole number of frames >= 1")
        if isinstance(spread, bool) or not isinstance(spread, (int, float, np.number)) or not 0 <= spread <= 10:
            raise ValueError(f"spread={spread!r}: give a fraction between 0 and 10 (0.1 is 10%)")
        if not (isinstance(world_size, int) and world_size >= 1 and isinstance(rank, int) and 0 <= rank < world_size):
            raise ValueError(f"rank={rank!r}, world_size={world_size!r}: need 0 <= rank < world_size")
        if num_batches is not None and (isinstance(num_batches, bool) or not isinstance(num_batches, (int, np.integer))
                                        or num_batches < 1):
            raise ValueError(f"num_batches={num_batches!r}: give a whole number of batches >= 1, or None")
        if num_batches is not None and not len(self.lengths):
            raise ValueError("num_batches: there are no items to make batches of")
        self.num_batches = None if num_batches is None else int(num_batches)
        self._pass_sizes: dict = {}  # pass -> its number of batches (num_batches)
        self.max_frames = int(max_frames)
        self.spread = float(spread)
        self.shuffle = shuffle
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.epoch = 0
        self._cached: Optional[tuple] = None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[list]:
        for batch in self._batches_of_rank():
            yield batch.tolist()

    def __len__(self) -> int:
        return len(self._batches_of_rank())

    def padding(self) -> float:
        """The fraction of padded frames in this epoch's batches (all ranks together)."""
        batches = self._epoch_batches()
        real = sum(int(self.lengths[batch].sum()) for batch in batches)
        padded = sum(len(batch) * int(self.lengths[batch].max()) for batch in batches)
        return 1 - real / padded if padded else 0.0

    def _batches_of_rank(self) -> list:
        batches = self._epoch_batches()
        if self.world_size > 1 and batches:
            per_rank = -(-len(batches) // self.world_size)
            repeats = per_rank * self.world_size - len(batches)
            batches = (batches + batches[:repeats])[self.rank::self.world_size]
        return batches

    def _epoch_batches(self) -> list:
        if self._cached is None or self._cached[0] != self.epoch:
            made = self._make_batches(self.epoch) if self.num_batches is None else self._stream_slice(self.epoch)
            self._cached = (self.epoch, made)
        return self._cached[1]

    def _stream_slice(self, epoch: int) -> list:
        """num_batches: epoch's num_batches x world_size batches of the stream of passes."""
        count = self.num_batches * self.world_size
        first, pass_number, pass_start = epoch * count, 0, 0
        while pass_start + self._pass_size(pass_number) <= first:
            pass_start += self._pass_size(pass_number)
            pass_number += 1
        batches, skip = [], first - pass_start
        while len(batches) < count:
            batches += self._make_batches(pass_number)[skip: skip + count - len(batches)]
            pass_number, skip = pass_number + 1, 0
        return batches

    def _pass_size(self, pass_number: int) -> int:
        if pass_number not in self._pass_sizes:
            self._pass_sizes[pass_number] = len(self._make_batches(pass_number))
        return self._pass_sizes[pass_number]

    def _make_batches(self, epoch: int) -> list:
        if not self.shuffle:
            return _cut(np.argsort(self.lengths, kind="stable"), self.lengths, self.max_frames)
        rng = np.random.default_rng([self.seed, epoch])
        jitter = 1 + rng.uniform(0, self.spread, len(self.lengths))
        order = np.argsort(self.lengths * jitter, kind="stable")
        batches = _cut(order, self.lengths, self.max_frames)
        return [batches[i] for i in rng.permutation(len(batches))]


def _cut(order: np.ndarray, lengths: np.ndarray, max_frames: int) -> list:
    """Consecutive runs of `order` whose count x longest length stays within max_frames."""
    batches, start, longest = [], 0, 0
    for position, length in enumerate(lengths[order].tolist()):
        longest_with = max(longest, length)
        if position > start and (position - start + 1) * longest_with > max_frames:
            batches.append(order[start:position])
            start, longest_with = position, length
        longest = longest_with
    if start < len(order):
        batches.append(order[start:])
    return batches


def _checked_lengths(lengths) -> np.ndarray:
    array = np.asarray(lengths)
    if array.ndim != 1 or (array.size and (not np.issubdtype(array.dtype, np.integer) or array.min() < 0)):
        raise ValueError("lengths: give one whole number of frames >= 0 per item")
    return array.astype(np.int64)
