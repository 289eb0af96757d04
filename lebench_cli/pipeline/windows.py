"""Long recordings as overlapping windows whose kept frames add up to those of the whole recording.

Windows start on frame boundaries (multiples of 320 samples), so window frames line up with
the frames of the whole recording. Each frame is taken from the window where it sits
furthest from an edge: cuts fall in the middle of each overlap. The convolutional stack
sees exactly its full context there; the transformer's attention sees the window, not the
whole recording (see docs/extract.md for the trade-off)."""

from __future__ import annotations

from dataclasses import dataclass

from ..frames import RECEPTIVE_FIELD, SAMPLE_RATE, SAMPLES_PER_FRAME, frame_count  # noqa: F401


@dataclass(frozen=True)
class Window:
    start_sample: int
    end_sample: int
    keep_from: int  # first kept frame, counted within the window
    keep_to: int    # one past the last kept frame, within the window
    first_frame: int  # global index of the window's frame 0

    @property
    def kept(self) -> int:
        return self.keep_to - self.keep_from


def plan_windows(samples: int, window_seconds: float, overlap_seconds: float, sample_rate: int = SAMPLE_RATE) -> list[Window]:
    """Windows covering a recording of `samples`; one window when it fits in one.

    As few windows as cover the recording with at least `overlap_seconds` between
    neighbours, all of one length (at most `window_seconds`), spread evenly: the overlap is
    all the extra computation, with no tail window mostly re-running the one before."""
    total = frame_count(samples)
    window_samples = int(round(window_seconds * sample_rate))
    if samples <= window_samples or total == 0:
        return [Window(0, samples, 0, total, 0)]
    most_frames = frame_count(window_samples)
    overlap_frames = min(max(0, int(round(overlap_seconds * sample_rate)) // SAMPLES_PER_FRAME), most_frames - 1)
    count = -(-(total - overlap_frames) // (most_frames - overlap_frames))
    if count == 1:  # a few samples over the window, none of them a frame
        return [Window(0, samples, 0, total, 0)]
    window_frames = min(most_frames, -(-(total + (count - 1) * overlap_frames) // count))
    starts = [index * (total - window_frames) // (count - 1) for index in range(count)]
    windows = []
    for index, first in enumerate(starts):
        last = first + window_frames
        cut_before = 0 if index == 0 else (first + starts[index - 1] + window_frames) // 2
        cut_after = total if index == count - 1 else (starts[index + 1] + last) // 2
        start_sample = first * SAMPLES_PER_FRAME
        end_sample = start_sample + (window_frames - 1) * SAMPLES_PER_FRAME + RECEPTIVE_FIELD
        windows.append(Window(start_sample, end_sample, cut_before - first, cut_after - first, first))
    return windows


def normalised_window_batches(source, channel, windows: list, batch_seconds: float, window_seconds: float,
                              mean: float, std: float):
    """(windows, waveforms) for a long recording's `windows`, as many at a time as
    `batch_seconds` holds, each waveform normalised with the whole recording's mean and std.
    `source`: a path or an AudioSource (its segment, origin and channel: audio/loading.py).
    The file is read a block at a time: memory holds about one batch of windows, not the
    recording. AudioError when it cannot be read, or ends before its last window (it changed
    since it was measured)."""
    import numpy as np

    from ..audio.loading import stream_audio
    from ..audio.origins import name_of
    from ..errors import AudioError

    per_batch = max(1, int(batch_seconds // window_seconds))
    blocks = stream_audio(source, channel=channel, keep_truncated=True)  # the first pass failed it, or kept it
    buffer, buffer_start = np.zeros(0, dtype=np.float32), 0
    for first in range(0, len(windows), per_batch):
        group = windows[first: first + per_batch]
        while buffer_start + len(buffer) < group[-1].end_sample:
            try:
                buffer = np.concatenate([buffer, next(blocks)])
            except StopIteration:
                raise AudioError(name_of(source), "changed while being read") from None
        yield group, [(buffer[w.start_sample - buffer_start: w.end_sample - buffer_start] - mean) / std
                      for w in group]
        following = windows[first + per_batch].start_sample if first + per_batch < len(windows) else buffer_start
        buffer, buffer_start = buffer[following - buffer_start:], following
