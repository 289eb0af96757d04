"""Grouping utterances into padded batches by length, capped by padded audio seconds."""

from __future__ import annotations

from typing import Iterable, Iterator, Optional, Sequence

import numpy as np

from ..frames import SAMPLE_RATE


def padded_shape(waveforms: Sequence[np.ndarray]) -> tuple[int, int]:
    return len(waveforms), max(len(w) for w in waveforms)


def pad_batch(waveforms: Sequence[np.ndarray], out: Optional[np.ndarray] = None) -> tuple[np.ndarray, np.ndarray]:
    """(padded [B, longest] float32, lengths [B]); into `out` (zeros of `padded_shape`) if given."""
    lengths = np.array([len(w) for w in waveforms], dtype=np.int64)
    padded = np.zeros(padded_shape(waveforms), dtype=np.float32) if out is None else out
    for row, waveform in enumerate(waveforms):
        padded[row, : len(waveform)] = waveform
    return padded, lengths


def length_batches(
    items: Iterable, length_of, batch_seconds: float, max_batch_size: int = 256, max_padding: float = 0.1
) -> Iterator[list]:
    """Group `items`, given in length order (either direction), into lists whose padded size
    (longest length x count) stays within `batch_seconds`, of which padding is at most
    `max_padding`; an item longer than the cap alone makes a batch of one.

    The padding cap matters where lengths are sparse (small corpora, the long tail): there
    a batch would spend more on padding than it saves. On a CPU, where one utterance already
    keeps every core busy, padding is all loss."""
    cap = batch_seconds * SAMPLE_RATE
    group: list = []
    longest = total = 0
    for item in items:
        length = length_of(item)
        candidate = max(longest, length)
        padded = candidate * (len(group) + 1)
        if group and (padded > cap or len(group) >= max_batch_size
                      or padded - total - length > max_padding * padded):
            yield group
            group, candidate, total = [], length, 0
        group.append(item)
        longest = candidate
        total += length
    if group:
        yield group
