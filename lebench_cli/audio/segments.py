"""Segments: a slice of a recording as an utterance of its own (AudioSource.segment).

A segment's samples are frames round(start x rate) to round(end x rate) of the recording
at its own rate; they are then resampled and normalised alone, exactly as if they had been
cut out into a file. Many segments of one recording are decoded in one opening of it
(`recording_groups`, loading.read_segments)."""

from __future__ import annotations

import math

from ..errors import AudioError
from .origins import name_of, origin_of

GROUP_SECONDS = 600.0  # the most segment audio decoded in one opening: bounds a worker's memory
# An end this little past the recording's is cut to it, as Kaldi's extract-segments does (its
# --max-overshoot default): segmenters round ends up, and a dir Kaldi takes must not fail here.
END_TOLERANCE_SECONDS = 0.5


def segment_frames(name, segment, rate: int, frames: int) -> tuple:
    """(first, end) frames of `segment` in a recording of `frames` at `rate` Hz; end is
    `frames` when the segment runs to the end, or ends at most END_TOLERANCE_SECONDS past it.
    AudioError naming the recording and the times when the segment is empty or lies past its
    end."""
    start = segment.start
    end = segment.end
    length = frames / rate
    times = f"segment {start:g}-{'' if end is None else f'{end:g}'} s"
    if not math.isfinite(start) or start < 0:
        raise AudioError(name, f"{times}: the start must be a time of 0 s or more")
    if end is not None and (not math.isfinite(end) or end <= start):
        raise AudioError(name, f"{times}: ends before it starts")
    first = round(start * rate)
    if first >= frames:
        raise AudioError(name, f"{times}: starts after the recording's end ({length:.3f} s)")
    if end is None:
        return first, frames
    last = round(end * rate)
    if last > frames + END_TOLERANCE_SECONDS * rate:
        raise AudioError(name, f"{times}: ends after the recording's end ({length:.3f} s)")
    last = min(last, frames)
    if last <= first:
        raise AudioError(name, f"{times}: holds no sample at {rate} Hz")
    return first, last


def segment_seconds(source):
    """The segment's length from its times, without reading the recording; None when it runs
    to the recording's end (or is no segment)."""
    segment = getattr(source, "segment", None)
    if segment is None or segment.end is None:
        return None
    return max(0.0, segment.end - segment.start)


def recording_key(source) -> tuple:
    """What tells the recordings apart: the same key, the same bytes to decode."""
    origin = origin_of(source)
    return (name_of(source),) if origin is None else (type(origin).__name__, origin)


def recording_groups(items: list, source_of=lambda item: item, seconds_of=lambda item: 0.0) -> list:
    """`items` as lists to decode together: the segments of one recording with the same
    channel, in lists of at most GROUP_SECONDS of audio, each list where its first item was;
    every other item alone."""
    groups, open_groups = [], {}
    for item in items:
        source = source_of(item)
        if getattr(source, "segment", None) is None:
            groups.append([item])
            continue
        key = (recording_key(source), getattr(source, "channel", None))
        group = open_groups.get(key)
        if group is None or group[1] + seconds_of(item) > GROUP_SECONDS:
            group = open_groups[key] = ([], 0.0)
            groups.append(group[0])
        group[0].append(item)
        open_groups[key] = (group[0], group[1] + seconds_of(item))
    return groups
