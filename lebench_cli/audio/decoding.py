"""Decoding ahead of the model: sources -> 16 kHz float32 waveforms, in worker processes.

Workers keep the decoders apart from the run: a decoder that crashes, or the OOM killer,
takes a worker, not the run. They hand the samples back through a ring of shared memory,
not the result pipe: pickling each waveform through a pipe cost the main process as much
CPU as decoding the WAV file itself (docs/performance.md), and on a GPU that main process
is the one that keeps the model fed."""

from __future__ import annotations

import os
import threading
from collections import deque
from dataclasses import dataclass
from typing import Iterable, Iterator, Optional

import numpy as np

from ..errors import AudioError, one_line
from .loading import MIN_SAMPLES, NORMALIZE_EPS, SAMPLE_RATE, pad_to_one_frame, read_audio, read_segments
from .segments import recording_groups

TRUNCATED_FLAG = "truncated"  # ended before its header's length, kept with --keep-truncated
_RESERVE_MARGIN = 64  # samples beyond the header's length: resampling may round up
_RING_MAX_BYTES = 64 * 1024**2
_SHM_FOLDER = "/dev/shm"  # where Linux keeps POSIX shared memory


def decode(source, channel: Optional[int] = None, keep_truncated: bool = False):
    """(waveform, flags, samples as decoded) or (None, the failure reason).

    A file shorter than the receptive field gives no frame: it is zero-padded to exactly
    one frame and flagged; a truncated one kept (`keep_truncated`) is flagged too. Whatever
    goes wrong while decoding, running out of memory included, fails this file only."""
    try:
        return _decoded(read_audio(source, channel=channel, keep_truncated=keep_truncated))
    except AudioError as error:
        return None, error.reason
    except Exception as error:  # noqa: BLE001 - a decoder's surprise is this file's failure, not the run's
        return None, unexpected_failure(error)


def decode_segments(sources: list, channel: Optional[int] = None, keep_truncated: bool = False) -> list:
    """decode() of each of `sources`, segments of one recording, which is opened once."""
    try:
        results = read_segments(sources, channel=channel, keep_truncated=keep_truncated)
    except Exception as error:  # noqa: BLE001 - as in decode(): these segments' failure
        return [(None, unexpected_failure(error))] * len(sources)
    return [(None, result.reason) if isinstance(result, AudioError) else _decoded(result) for result in results]


def _decoded(read: tuple):
    waveform, truncated = read
    samples = len(waveform)
    waveform, flags = pad_to_one_frame(waveform)
    return (waveform, joined_flags(flags, TRUNCATED_FLAG if truncated else ""), samples), None


def unexpected_failure(error: BaseException) -> str:
    """The one-line reason of an exception a decoder raised that is no AudioError."""
    if isinstance(error, MemoryError):
        return "decoding failed (out of memory)"
    return f"decoding failed ({one_line(error)})"


def joined_flags(*flags: str) -> str:
    """The flags field of a stored utterance: its flags, comma-separated."""
    return ",".join(flag for flag in flags if flag)


@dataclass(frozen=True)
class RecordingStatistics:
    """What streaming a long recording needs before its first window: its length, and the
    mean and standard deviation of the whole recording the checkpoint normalises it with
    (0 and 1 when it does not normalise)."""

    samples: int
    mean: np.float32
    std: np.float32
    truncated: bool = False  # ended before its header's length, and kept (--keep-truncated)


def recording_statistics(source, channel: Optional[int], normalize: bool, keep_truncated: bool = False):
    """(RecordingStatistics, None) or (None, the failure reason), from one block-wise pass."""
    from . import loading as audio

    count, total, squares = 0, 0.0, 0.0
    report = audio.DecodeReport()
    try:
        for block in audio.stream_audio(source, channel=channel, keep_truncated=keep_truncated, report=report):
            count += len(block)
            if normalize:
                block = block.astype(np.float64)
                total += float(block.sum())
                squares += float(np.dot(block, block))
    except AudioError as error:
        return None, error.reason
    except Exception as error:  # noqa: BLE001 - as in decode()
        return None, unexpected_failure(error)
    if not normalize:
        return RecordingStatistics(count, np.float32(0.0), np.float32(1.0), report.truncated), None
    mean = total / count
    variance = max(squares / count - mean * mean, 0.0)
    std = np.float32(np.sqrt(variance + NORMALIZE_EPS))
    return RecordingStatistics(count, np.float32(mean), std, report.truncated), None


class SampleRing:
    """float32 samples in shared memory, reserved and released first in, first out.

    The main process reserves room for a file before sending it to a worker, the worker
    writes the samples there, and the main process copies them out and releases the room
    when the result arrives. A file that does not fit (the ring is full, or the file is
    longer than its header said) comes back through the result pipe instead."""

    def __init__(self, capacity: int):
        from multiprocessing import shared_memory

        capacity = max(1, capacity)
        self.memory = shared_memory.SharedMemory(create=True, size=capacity * 4)
        self.samples = np.ndarray((capacity,), dtype=np.float32, buffer=self.memory.buf)
        self._reserved: deque = deque()  # (start, end), oldest first
        self._head = 0

    @property
    def name(self) -> str:
        return self.memory.name

    def reserve(self, count: int) -> Optional[int]:
        capacity = len(self.samples)
        if not self._reserved:
            self._head = 0
        tail = self._reserved[0][0] if self._reserved else capacity
        wrapped = bool(self._reserved) and self._head <= tail  # the newest room lies below the oldest
        if not wrapped and capacity - self._head >= count:
            start = self._head
        elif not wrapped and tail >= count:
            start = 0
        elif wrapped and tail - self._head >= count:
            start = self._head
        else:
            return None
        self._reserved.append((start, start + count))
        self._head = start + count
        return start

    def take(self, start: int, count: int) -> np.ndarray:
        """A copy of `count` samples at `start`, whose room is then released."""
        samples = self.samples[start: start + count].copy()
        self.release(start)
        return samples

    def release(self, start: int) -> None:
        if not self._reserved or self._reserved[0][0] != start:
            raise RuntimeError("ring released out of order")
        self._reserved.popleft()

    def close(self) -> None:
        if self.samples is None:
            return
        self.samples = None  # the buffer's export must go before the mapping can close
        self.memory.close()
        self.memory.unlink()


def ring_capacity(wanted: int) -> int:
    """Samples a ring may hold: what is wanted, within 64 MB and half the free space of
    /dev/shm. Containers often give /dev/shm only 64 MB, and a worker that writes past
    its end dies of SIGBUS."""
    try:
        stats = os.statvfs(_SHM_FOLDER)
    except OSError:
        return 0
    return int(min(wanted * 4, stats.f_bavail * stats.f_frsize // 2, _RING_MAX_BYTES) // 4)


def _room(seconds: float) -> int:
    """Samples reserved for a file of `seconds` by its header."""
    return max(MIN_SAMPLES, int(np.ceil(seconds * SAMPLE_RATE)) + _RESERVE_MARGIN)


_ATTACHED: dict = {}  # in a worker: ring name -> its samples


def _decode_into_ring(source, channel, ring_name: str, start: Optional[int], room: int, keep_truncated: bool):
    """Worker task: decode(), with the samples written into the ring when they fit."""
    result, reason = decode(source, channel, keep_truncated)
    if reason is not None or start is None or len(result[0]) > room:
        return result, reason
    try:
        ring = _attached(ring_name)
    except OSError:  # gone: the run is ending or its pool broke; the pipe still works
        return result, reason
    waveform, flags, samples = result
    ring[start: start + len(waveform)] = waveform
    return (len(waveform), flags, samples), None


def _attached(ring_name: str) -> np.ndarray:
    """The ring's samples, mapped in this worker once. Opened as a file, not as
    SharedMemory: before Python 3.13 that registers it with the resource tracker again,
    which then reports it leaked when a worker maps it after the run removed it."""
    if ring_name not in _ATTACHED:
        import mmap

        descriptor = os.open(os.path.join(_SHM_FOLDER, ring_name.lstrip("/")), os.O_RDWR)
        try:
            mapping = mmap.mmap(descriptor, 0)
        finally:
            os.close(descriptor)
        _ATTACHED[ring_name] = np.frombuffer(mapping, dtype=np.float32)
    return _ATTACHED[ring_name]


def _ignore_interrupts():
    """Workers leave Ctrl-C to the main process, which stops them after committing."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)


def decoded_stream(items: Iterable, workers: int, channel: Optional[int], ahead: int,
                   streamed_over: float = float("inf"), normalize: bool = True,
                   keep_truncated: bool = False) -> Iterator:
    """Yield (item, (value, reason)) for items with .source and .seconds, in order, decoding
    up to `ahead` files ahead in `workers` processes (none: in this process).

    Items longer than `streamed_over` seconds are not decoded whole: their value is their
    RecordingStatistics (`normalize`: the checkpoint's), the pass over the whole recording
    that must come before its first window; the windows are then read by the caller.

    Segments of one recording (not streamed) are decoded together, in one opening of it
    (segments.recording_groups: where the first of them comes, at most GROUP_SECONDS each).

    A worker that dies (a decoder crash, the OOM killer, kill -9) breaks the pool and every
    file in flight with it: those files are decoded again one at a time in a fresh pool, so
    that the one that kills its worker again is failed alone and the run goes on."""
    def streamed(item) -> bool:
        return item.seconds > streamed_over

    # A streamed item stands alone: its source is not offered for grouping.
    tasks = recording_groups(list(items), source_of=lambda item: None if streamed(item) else item.source,
                             seconds_of=lambda item: item.seconds)
    if workers <= 0:
        for task in tasks:
            if len(task) > 1:
                yield from zip(task, decode_segments([item.source for item in task], channel, keep_truncated))
                continue
            item = task[0]
            yield item, (recording_statistics(item.source, channel, normalize, keep_truncated) if streamed(item)
                         else decode(item.source, channel, keep_truncated))
        return
    if not tasks:
        return
    items = [item for task in tasks for item in task]
    import multiprocessing
    from concurrent.futures import Future, ProcessPoolExecutor
    from concurrent.futures.process import BrokenProcessPool

    context = multiprocessing.get_context("spawn")  # no fork of a process holding torch threads
    largest_room = max((_room(item.seconds) for item in items if not streamed(item)), default=0)

    def start_pool(with_ring: bool):
        import signal

        # An ignored signal stays ignored across exec: workers are born deaf to Ctrl-C,
        # before their initializer makes it for good. With spawn, submit() starts a worker
        # on demand: every worker starts in the first loop below, in a window of
        # milliseconds. There this thread also blocks SIGINT, so that a Ctrl-C it takes
        # then is kept pending and delivered once the handler is back.
        # Only the main thread may change signal handlers (a library caller may not be it).
        main_thread = threading.current_thread() is threading.main_thread()
        if main_thread:
            blocked = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
            previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            pool = ProcessPoolExecutor(workers, mp_context=context, initializer=_ignore_interrupts)
            started = [pool.submit(int) for _ in range(workers)]
        finally:
            if main_thread:
                signal.signal(signal.SIGINT, previous)
                signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
        try:
            for future in started:
                future.result()
        except BaseException:
            pool.shutdown(wait=False, cancel_futures=True)
            raise
        capacity = ring_capacity((ahead + 1) * largest_room) if with_ring and largest_room else 0
        return pool, (SampleRing(capacity) if capacity >= SAMPLE_RATE else None)

    def submit(task, alone: bool) -> None:
        item, start = task[0], None
        try:
            if len(task) > 1:  # through the result pipe, not the ring
                future = pool.submit(decode_segments, [member.source for member in task], channel, keep_truncated)
            elif streamed(item):
                future = pool.submit(recording_statistics, item.source, channel, normalize, keep_truncated)
            else:
                room = _room(item.seconds)
                start = ring.reserve(room) if ring is not None else None
                future = pool.submit(_decode_into_ring, item.source, channel, ring.name if ring else "", start, room,
                                     keep_truncated)
        except BrokenProcessPool:  # the pool broke before any result said so
            future = Future()
            future.set_exception(BrokenProcessPool("the pool broke before this file was sent"))
            alone = False  # never sent: it cannot be to blame
        pending.append((task, future, alone, start))

    def received(result, start):
        if start is not None:
            value, reason = result
            if reason is None and isinstance(value[0], int):  # the samples are in the ring
                count, flags, samples = value
                return (ring.take(start, count), flags, samples), None
            ring.release(start)
        return result

    pool, ring = start_pool(with_ring=True)
    iterator = iter(tasks)
    pending: deque = deque()  # (task, future, alone, ring start)
    suspects: deque = deque()  # tasks in flight when a worker died
    try:
        while True:
            if suspects:
                if not pending:
                    submit(suspects.popleft(), alone=True)
            else:
                while len(pending) < ahead and (task := next(iterator, None)) is not None:
                    submit(task, alone=False)
            if not pending:
                return
            task, future, alone, start = pending.popleft()
            try:
                result = future.result()
            except BrokenProcessPool:
                pool.shutdown(wait=False, cancel_futures=True)
                if ring is not None:
                    ring.close()
                # Without the ring from here on: a worker of the broken pool may still be
                # writing in the old one, and writing in a ring is one way to die (SIGBUS
                # when /dev/shm fills up).
                pool, ring = start_pool(with_ring=False)
                if alone:
                    for item in task:
                        yield item, (None, "the decoding process died while reading it")
                else:
                    suspects.extendleft(reversed([task] + [entry[0] for entry in pending]))
                pending.clear()
                continue
            except Exception as error:  # noqa: BLE001 - e.g. a result too big to send back: this file's failure
                if start is not None:
                    ring.release(start)
                for item in task:
                    yield item, (None, unexpected_failure(error))
                continue
            if len(task) > 1:
                yield from zip(task, result)
            else:
                yield task[0], received(result, start)
    except BaseException:
        _stop_workers(pool)
        raise
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
        if ring is not None:
            ring.close()


def _stop_workers(pool) -> None:
    """SIGTERM to the workers of a run that stops (Ctrl-C, an error): a worker left running
    a Kaldi pipe would otherwise wait for its command, and the command outlive the run;
    SIGTERM makes the worker kill the command's process group first (origins.pipe_output).
    The executor has no public way to reach its processes before Python 3.14."""
    for process in list((getattr(pool, "_processes", None) or {}).values()):
        try:
            process.terminate()
        except (OSError, ValueError, AttributeError):
            pass
