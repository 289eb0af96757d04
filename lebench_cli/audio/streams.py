"""Reading a listing that may come slowly (a pipe, a FIFO, standard input) so that a stop
signal still stops the wait."""

from __future__ import annotations

import io
import os
import select
import signal
import stat
import threading

_BLOCK = 1 << 16


def read_to_end(file) -> bytes:
    """Every byte of a binary file object until its end.

    A pipe is waited on with select, beside the signal wakeup descriptor. The kernel may hand
    a process's signal to any of its threads (a library's thread pool), and Python runs the
    handler in the main thread only once that thread runs: a main thread blocked in read()
    would sleep through the time-limit warning as long as the writer stays quiet. The signal's
    C handler writes to the wakeup descriptor from whichever thread got it, which ends the
    select, and the handler runs (raising KeyboardInterrupt during a run)."""
    try:
        descriptor = file.fileno()
    except (AttributeError, OSError, io.UnsupportedOperation):
        return file.read()
    if stat.S_ISREG(os.fstat(descriptor).st_mode) or threading.current_thread() is not threading.main_thread():
        return file.read()
    wake_read, wake_write = os.pipe()
    try:
        os.set_blocking(wake_read, False)
        os.set_blocking(wake_write, False)
        previous = signal.set_wakeup_fd(wake_write)
        try:
            return _read_with_wakeup(descriptor, wake_read)
        finally:
            signal.set_wakeup_fd(previous)
    finally:
        os.close(wake_read)
        os.close(wake_write)


def _read_with_wakeup(descriptor: int, wake_read: int) -> bytes:
    chunks = []
    while True:
        ready, _, _ = select.select([descriptor, wake_read], [], [])
        if wake_read in ready:
            _drain(wake_read)  # the signal's Python handler runs as soon as this returns to Python
        if descriptor in ready:
            chunk = os.read(descriptor, _BLOCK)
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)


def _drain(descriptor: int) -> None:
    try:
        while os.read(descriptor, 512):
            pass
    except BlockingIOError:
        pass
