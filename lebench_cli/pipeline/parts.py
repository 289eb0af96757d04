"""Parts of a run (`--shard K/N`, `--devices`): the input list split by audio duration.

Every part of a job array computes the same split from the same input list, whatever is
already stored: the whole list is split first, then each part skips what OUT holds. So a
resumed part, a requeued one and its concurrent siblings all agree on who owns which file.
"""

from __future__ import annotations

import heapq
from dataclasses import replace
from typing import Optional, Sequence

from ..errors import AudioError, InputError
from ..frames import SAMPLE_RATE


def parse_part(text: str) -> tuple:
    """'K/N' (1-based) -> (K, N). Raises InputError."""
    try:
        k, n = (int(v) for v in str(text).split("/"))
    except ValueError:
        raise InputError(f"invalid --shard '{text}': expected K/N, e.g. 3/8") from None
    if not 1 <= k <= n:
        raise InputError(f"invalid --shard '{text}': K must be between 1 and N"
                         + (" (parts count from 1; --shard auto reads SLURM array ids)" if k == 0 else ""))
    return k, n


def split_by_duration(seconds: Sequence[float], keys: Sequence[str], parts: int) -> list:
    """The part (1..parts) of each item, so that the parts' total seconds are as even as the
    items allow: longest first, each to the part with the least audio so far (ties: the lower
    part; equal lengths: the smaller key). Depends only on the (key, seconds) pairs, not on
    their order, so every machine computes the same split. An item longer than a part's share
    makes that part alone bigger: nothing splits one file."""
    order = sorted(range(len(seconds)), key=lambda i: (-seconds[i], keys[i]))
    loads = [(0.0, part) for part in range(1, parts + 1)]
    assigned = [0] * len(seconds)
    for index in order:
        load, part = loads[0]
        assigned[index] = part
        heapq.heapreplace(loads, (load + seconds[index], part))
    return assigned


def samples_16k(source) -> Optional[int]:
    """The source's length in 16 kHz samples: its manifest's count, a segment's from its
    times, else its header's (converted from the file's own rate; a segment that runs to the
    end: from its start); None when the header cannot be read."""
    from ..audio.loading import probe
    from ..audio.segments import segment_seconds

    if source.num_samples is not None:
        return source.num_samples
    seconds = segment_seconds(source)
    if seconds is not None:
        return round(seconds * SAMPLE_RATE)
    try:
        info = probe(source)
    except AudioError:
        return None
    samples = (info.frames * SAMPLE_RATE + info.sample_rate // 2) // info.sample_rate
    if source.segment is not None:
        samples = max(0, samples - round(source.segment.start * SAMPLE_RATE))
    return samples


def select_part(sources: list, part: tuple) -> list:
    """The K-th of N parts, balanced by audio duration. With N > 1 every source's length is
    needed (from the manifest, else by reading its header): the sources come back with
    `num_samples` filled, so that nothing is probed twice. A source whose header cannot be
    read counts as 0 s; it still belongs to exactly one part, and fails there with its reason."""
    k, n = part
    return sources if n == 1 else split_parts(sources, n)[k - 1]


def split_parts(sources: list, n: int) -> list:
    """All N parts (lists of sources, lengths filled in), each source in exactly one."""
    measured = [replace(s, num_samples=samples_16k(s)) if s.num_samples is None else s for s in sources]
    seconds = [(s.num_samples or 0) / SAMPLE_RATE for s in measured]
    owners = split_by_duration(seconds, [s.utt_id for s in measured], n)
    parts = [[] for _ in range(n)]
    for source, owner in zip(measured, owners):
        parts[owner - 1].append(source)
    return parts
