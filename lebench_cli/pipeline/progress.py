"""Progress of a run, counted in audio seconds: files run longest first, so a count of files
would promise an end far too early at the start and far too late at the end.

`Extraction` reports to a `Progress` (start once, then `advance` per finished or failed
file); `ProgressBar` draws it with tqdm, and anything with the same three methods (a
multi-process aggregator, a test) can stand in for it.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from typing import Optional, Protocol

FALLBACK_SIZE = (80, 24)  # columns, rows


class Progress(Protocol):
    def start(self, files: int, audio_seconds: float) -> None:
        """The work of this run: files to extract and their audio seconds."""

    def advance(self, files: int = 1, audio_seconds: float = 0.0) -> None:
        """Files done (stored or failed) since the last call, and their audio seconds."""

    def close(self) -> None:
        ...


class ProgressBar:
    """One tqdm bar whose length is the run's audio seconds; files and the rate in x real
    time (audio seconds per second of processing) are shown beside it."""

    def __init__(self, stream=None):
        self.stream = stream if stream is not None else sys.stderr
        self._bar = None
        self._files = self._done_files = 0
        self._started: Optional[float] = None

    def start(self, files: int, audio_seconds: float) -> None:
        from tqdm import tqdm

        self._files = files
        self._started = time.monotonic()
        columns, rows = _terminal_size(self.stream)
        self._bar = tqdm(
            total=max(audio_seconds, 1e-9), file=self.stream, ncols=columns, nrows=rows,
            dynamic_ncols=False, smoothing=0.1, mininterval=0.5,
            bar_format="{percentage:3.0f}%|{bar}| {desc} [{elapsed}<{remaining}]",
        )
        self._describe(0.0)

    def advance(self, files: int = 1, audio_seconds: float = 0.0) -> None:
        if self._bar is None:
            return
        self._done_files += files
        done = self._bar.n + audio_seconds
        if done > self._bar.total:
            # The total comes from headers and manifests before decoding; a file can turn out
            # longer. Past the total, tqdm warns (clamping frac) and shows a negative ETA.
            self._bar.total = done
        self._describe(done)
        self._bar.update(audio_seconds)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def _describe(self, done: float) -> None:
        from .summary import human_duration

        elapsed = max(1e-9, time.monotonic() - self._started)
        self._bar.set_description_str(
            f"{self._done_files}/{self._files} files, {human_duration(done)} of "
            f"{human_duration(self._bar.total)} audio, {done / elapsed:.0f}x real time",
            refresh=False,
        )


def _terminal_size(stream) -> tuple:
    """(columns, rows) of the terminal; some report 0 of each (a pty opened by `script`, some
    CI runners), and tqdm then draws nothing at all: the bar gets FALLBACK_SIZE instead."""
    try:
        size = os.get_terminal_size(stream.fileno())
    except (AttributeError, OSError, ValueError):
        size = shutil.get_terminal_size(FALLBACK_SIZE)
    return (size.columns if size.columns > 0 else FALLBACK_SIZE[0],
            size.lines if size.lines > 0 else FALLBACK_SIZE[1])
