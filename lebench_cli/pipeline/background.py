"""The shard writer on a thread of its own, so that the model never waits for the disk."""

from __future__ import annotations

import functools
import queue
import threading
from typing import TYPE_CHECKING, Callable, Optional

if TYPE_CHECKING:  # storage imports h5py: not on the path of `lebench --help`
    from ..storage import ShardWriter, StoredUtterance


class BackgroundWriter:
    """ShardWriter's writing methods, each queued and run on a thread of its own in the order
    they were called, so that the model never waits for the disk. The first call that fails
    is re-raised on the caller's thread, by the next call or by finish(); the calls queued
    after it are dropped."""

    def __init__(self, writer: "ShardWriter", depth: int = 8):
        self.writer = writer
        self.queue: queue.Queue = queue.Queue(maxsize=depth)
        self.error: Optional[BaseException] = None
        self.thread = threading.Thread(target=self._run, name="lebench-writer", daemon=True)
        self.thread.start()

    def add(self, utt: "StoredUtterance") -> None:
        self._put(functools.partial(self.writer.add, utt))

    def begin_utterance(self, utt_id: str, source: str, duration: float, frames: int, flags: str = "",
                        source_size: int = -1, source_mtime_ns: int = -1, source_xxh3: str = "",
                        metadata: Optional[dict] = None) -> None:
        self._put(functools.partial(self.writer.begin_utterance, utt_id, source, duration, frames, flags,
                                    source_size, source_mtime_ns, source_xxh3, metadata))

    def append_frames(self, states: dict) -> None:
        self._put(functools.partial(self.writer.append_frames, states))

    def end_utterance(self) -> None:
        self._put(self.writer.end_utterance)

    def abort_utterance(self) -> None:
        self._put(self.writer.abort_utterance)

    def finish(self):
        self.queue.put(None)
        self.thread.join()
        self._raise_if_failed()

    def _run(self):
        while True:
            call = self.queue.get()
            if call is None:
                return
            if self.error is None:
                try:
                    call()
                except BaseException as error:  # re-raised on the main thread
                    self.error = error

    def _put(self, call: Callable[[], None]) -> None:
        self._raise_if_failed()
        self.queue.put(call)

    def _raise_if_failed(self):
        if self.error is not None:
            raise self.error
