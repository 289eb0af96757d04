"""The shard writer on a thread of its own, so that the model never waits for the disk."""

from __future__ import annotations

import queue
import threading
from typing import Optional


class BackgroundWriter:
    """Calls the shard writer on a thread of its own, in order, so that the model never
    waits for the disk: put("add", utterance), put("append_frames", states), ..."""

    def __init__(self, writer, depth: int = 8):
        self.writer = writer
        self.queue: queue.Queue = queue.Queue(maxsize=depth)
        self.error: Optional[BaseException] = None
        self.thread = threading.Thread(target=self._run, name="lebench-writer", daemon=True)
        self.thread.start()

    def _run(self):
        while True:
            call = self.queue.get()
            if call is None:
                return
            if self.error is None:
                method, args, kwargs = call
                try:
                    getattr(self.writer, method)(*args, **kwargs)
                except BaseException as error:  # re-raised on the main thread
                    self.error = error

    def put(self, method: str, *args, **kwargs):
        self._raise_if_failed()
        self.queue.put((method, args, kwargs))

    def finish(self):
        self.queue.put(None)
        self.thread.join()
        self._raise_if_failed()

    def _raise_if_failed(self):
        if self.error is not None:
            raise self.error
