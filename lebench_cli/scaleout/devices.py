"""`lebench extract --devices cuda:0,cuda:1,...`: one worker process per device, one part each,
into one output folder, with one progress bar and one summary.

The inputs are listed (and their lengths read) once, here, and split into parts by audio
duration; each worker runs the library's Extraction on its part. With `--shard K/N` and D
devices, the run is part K of N split D ways: the workers run parts (K-1)*D+1 .. K*D of N*D,
so every task of a job array must use the same N and D. Workers send their progress through a
pipe each (a worker killed while writing to a shared queue would hold its lock and block the
others); a worker that dies stops the others (they commit) and the run ends with one line
naming its device; rerunning the same command resumes.
"""

from __future__ import annotations

import os
import signal
import time
from dataclasses import asdict, dataclass, replace
from typing import Optional

from ..errors import InputError, LebenchError, WorkerError, one_line
from ..pipeline.options import ExtractOptions
from ..pipeline.summary import ExtractSummary, merged_summaries


def parse_devices(text: str) -> list:
    """'cuda:0,cuda:1', 'all' (every CUDA device) or 'cpu,cpu' -> ['cuda:0', 'cuda:1', ...]."""
    import torch

    available = torch.cuda.device_count()
    if text.strip() == "all":
        if available == 0:
            raise InputError("--devices all: no CUDA device found (--devices cpu,cpu runs CPU workers)")
        return [f"cuda:{index}" for index in range(available)]
    devices = [item.strip() for item in text.split(",")]
    for device in devices:
        if device == "cpu":
            continue
        index = device[len("cuda:"):] if device.startswith("cuda:") else None
        if index is None or not index.isdigit():
            raise InputError(f"--devices: '{device}' is not a device (expected cpu, cuda:N or all)")
        if int(index) >= available:
            raise InputError(f"--devices: {device} does not exist (this machine has {available} CUDA devices)")
    return devices


@dataclass(frozen=True)
class _Worker:
    index: int
    device: str
    part: int
    num_parts: int

    def name(self) -> str:
        return f"the worker on {self.device} (part {self.part}/{self.num_parts})"


class DeviceRun:
    """Like Extraction (same options, `run()` returns one ExtractSummary, `summary` holds the
    work done so far), over one worker process per device."""

    def __init__(self, options: ExtractOptions, devices: list, stdin=None, progress: bool = False):
        if options.overwrite:
            raise InputError("--overwrite cannot be combined with --devices: each worker would delete the "
                             "others' features; empty OUTPUT first")
        options.validate()
        self.options, self.devices, self.stdin, self.show_progress = options, devices, stdin, progress
        self.summary = ExtractSummary()

    def run(self) -> ExtractSummary:
        from ..pipeline.extract import discover_sources
        from ..pipeline.parts import split_parts

        from ..pipeline.time_limit import stopped_before_work
        from ..pipeline.stop_signals import stopped_by_time_limit

        started = time.monotonic()
        k, n = self.options.part
        count = len(self.devices)
        workers = [_Worker(j, device, (k - 1) * count + j + 1, n * count) for j, device in enumerate(self.devices)]
        self._listening = False  # True once the workers' signal handling is in place
        try:
            sources = discover_sources(replace(self.options, shard=(1, 1)), self.stdin)
            parts = split_parts(sources, n * count)
            outcome = self._run_workers(workers, parts, started)
        except KeyboardInterrupt:
            # A time-limit stop while the inputs are listed: a requeued task would list them
            # as long, and be stopped there again.
            if stopped_by_time_limit() and not self._listening:
                raise stopped_before_work(started, f"{_parts_named(workers)} started their work (listing the "
                                                   "inputs)") from None
            raise
        self.summary = merged_summaries(outcome.summaries, self.options.output, n * count)
        self.summary.elapsed_seconds = time.monotonic() - started
        if outcome.error is not None:
            raise WorkerError(outcome.error)
        if outcome.interrupted:
            raise KeyboardInterrupt
        return self.summary

    def _run_workers(self, workers: list, parts: list, started: float) -> "_Outcome":
        import multiprocessing

        from ..pipeline.stop_signals import on_stop_signals

        context = multiprocessing.get_context("spawn")  # CUDA cannot run in a forked process
        pipes = [context.Pipe(duplex=False) for _ in workers]
        processes = [
            context.Process(target=_work, name=f"lebench-{w.device}-{w.part}", args=(
                self._worker_options(w), parts[w.part - 1], _threads(w.device, self.devices), sender, w.index,
                started))
            for w, (_, sender) in zip(workers, pipes)
        ]
        bar = self._progress_bar()
        collector = _Collector(workers, processes, [receiver for receiver, _ in pipes], bar)
        # Before the first worker starts: a signal from here on reaches every worker (once it
        # can take it) instead of leaving the started ones running behind an exiting parent.
        previous = on_stop_signals(collector.interrupt)
        self._listening = True
        try:
            for process, (_, sender) in zip(processes, pipes):
                process.start()
                sender.close()  # the worker holds the only writing end: its exit closes the pipe
            return collector.collect()
        finally:
            on_stop_signals(*previous)
            if bar is not None:
                bar.close()

    def _worker_options(self, worker: _Worker) -> ExtractOptions:
        from ..pipeline.options import default_workers

        workers = self.options.workers
        if workers is None and worker.device.startswith("cuda"):
            workers = default_workers(True, len(self.devices))
        return replace(self.options, device=worker.device, shard=(worker.part, worker.num_parts), workers=workers)

    def _progress_bar(self):
        from ..pipeline.progress import ProgressBar

        return ProgressBar() if self.show_progress else None


def _parts_named(workers: list) -> str:
    first, last = workers[0].part, workers[-1].part
    return f"part {first}/{workers[0].num_parts}" if first == last else f"parts {first}-{last}/{workers[0].num_parts}"


def _threads(device: str, devices: list) -> int:
    """CPU workers share the cores instead of each starting one thread per core."""
    cpu_workers = sum(1 for d in devices if d == "cpu")
    return max(1, (os.cpu_count() or 1) // max(1, cpu_workers)) if device == "cpu" else 0


@dataclass
class _Outcome:
    summaries: list
    error: Optional[str] = None
    interrupted: bool = False


class _Collector:
    """The parent's loop: progress into the one bar, each worker's last word, deaths."""

    def __init__(self, workers, processes, receivers, bar):
        self.workers, self.processes, self.bar = workers, processes, bar
        self.open = dict(zip(receivers, workers))  # pipes not yet closed by their worker
        self.finished: dict = {}  # worker index -> its summary (a dict), None when it died
        self.done: set = set()  # workers that finished their part
        self.ready: set = set()  # workers whose stop handling is in place: they can be signalled
        self.stop_signum = signal.SIGTERM
        self.error: Optional[str] = None
        self.interrupted = False
        self.stopping = False
        self.starts: dict = {}  # worker index -> (files, audio seconds) it has to do
        self.early: list = []  # advances that came before the bar could start

    def collect(self) -> _Outcome:
        """Until every worker has ended (the stop signals are this collector's, see interrupt)."""
        from multiprocessing.connection import wait

        while self.open:
            for receiver in wait(list(self.open), timeout=1.0):
                self._read(receiver)
        for process in self.processes:
            process.join()
        summaries = [summary for summary in self.finished.values() if summary is not None]
        # A signal that came once every worker had finished its part stops nothing.
        interrupted = self.interrupted and len(self.done) < len(self.workers)
        return _Outcome(summaries, self.error, interrupted)

    def _read(self, receiver):
        worker = self.open[receiver]
        try:
            message = receiver.recv()
        except (EOFError, OSError):  # the worker exited (a partial last message, if killed mid-write)
            del self.open[receiver]
            receiver.close()
            if worker.index not in self.finished:
                self.finished[worker.index] = None
                process = self.processes[worker.index]
                process.join(timeout=10)
                self._fail(f"{worker.name()} died ({_how(process.exitcode)}); the other workers committed "
                           "their work: rerun the same command to resume")
            return
        self._handle(message)

    def _handle(self, message):
        kind, index, *rest = message
        if kind == "ready":
            self.ready.add(index)
            if self.stopping:  # the stop came while it started
                self._signal(index, self.stop_signum)
            return
        if kind in ("start", "advance"):
            self._progress(kind, index, *rest)
            return
        summary, *detail = rest
        self.finished[index] = summary
        if kind == "done":
            self.done.add(index)
        if kind == "error":
            self._fail(f"{self.workers[index].name()} stopped: {detail[0]}")
        elif kind == "interrupted" and not self.stopping:  # signalled directly (scancel, srun): all stop
            self.interrupted = True
            self._stop_all()

    def _progress(self, kind: str, index: int, files: int, seconds: float):
        """One bar for all workers: it starts once every worker has said how much it has to
        do (after loading its model); advances that come before then are replayed."""
        if self.bar is None:
            return
        if kind == "advance":
            if len(self.starts) < len(self.workers):
                self.early.append((files, seconds))
            else:
                self.bar.advance(files, seconds)
            return
        self.starts[index] = (files, seconds)
        if len(self.starts) == len(self.workers):
            self.bar.start(sum(f for f, _ in self.starts.values()), sum(s for _, s in self.starts.values()))
            for files, seconds in self.early:
                self.bar.advance(files, seconds)

    def interrupt(self, signum=None, frame=None):
        """Ctrl-C or SIGTERM: every worker commits, then 130. A flag rather than an exception:
        one raised in the middle of reading a message would garble the pipe. The time-limit
        warning (SIGUSR1) is passed on as it is: each worker records its stop."""
        from ..pipeline.stop_signals import TIME_LIMIT_SIGNAL, note_stop_signal

        note_stop_signal(signum)
        self.interrupted = True
        self._stop_all(TIME_LIMIT_SIGNAL if signum == TIME_LIMIT_SIGNAL else signal.SIGTERM)

    def _fail(self, message: str):
        if self.error is None:
            self.error = message
        self._stop_all()

    def _stop_all(self, signum=signal.SIGTERM):
        """Signals the workers that can take it; the others when they say they are ready (a
        signal before a worker has its handlers in place would kill it, uncommitted)."""
        if self.stopping:
            return
        self.stopping, self.stop_signum = True, signum
        for index in sorted(self.ready):
            self._signal(index, signum)

    def _signal(self, index: int, signum) -> None:
        process = self.processes[index]
        if process.pid is not None and process.exitcode is None:
            try:
                os.kill(process.pid, signum)
            except ProcessLookupError:
                pass


def _how(exitcode: Optional[int]) -> str:
    if exitcode is None:
        return "closed its pipe"
    if exitcode < 0:
        try:
            return f"killed by {signal.Signals(-exitcode).name}"
        except ValueError:
            return f"killed by signal {-exitcode}"
    return f"exit status {exitcode}"


# ---- in the worker process ------------------------------------------------------------------

def _work(options: ExtractOptions, sources: list, threads: int, messages, index: int, task_started: float):
    """One worker: its part through Extraction; its progress and its last word sent through
    `messages`, the writing end of its pipe."""
    from ..pipeline.stop_signals import stop_on_first_signal, stop_requested

    stop_on_first_signal()
    messages.send(("ready", index))
    summary, extraction = ExtractSummary(), None
    try:
        from ..pipeline.extract import Extraction
        from ..pipeline.memory import return_large_blocks_to_the_os

        return_large_blocks_to_the_os()
        if threads:
            import torch

            torch.set_num_threads(threads)
        extraction = Extraction(options, sources=sources, progress=_PipeProgress(messages, index),
                                task_started=task_started)
        summary = extraction.summary
        finished = extraction.run()
        from ..pipeline.stop_signals import ignore_stop_signals

        ignore_stop_signals()  # decided: a late signal must not turn it into an interruption
        messages.send(("done", index, asdict(finished)))
    except KeyboardInterrupt:
        messages.send(_stopped(index, summary, extraction, options, task_started))
    except LebenchError as error:
        messages.send(("error", index, asdict(summary), str(error)))
    except BaseException as error:  # CUDA out of memory, or a bug: one line in the parent
        if stop_requested():  # the stop landed mid-import or in a callback and broke something there
            messages.send(_stopped(index, summary, extraction, options, task_started))
            return
        messages.send(("error", index, asdict(summary), one_line(error, first_line=True)))


def _stopped(index: int, summary: ExtractSummary, extraction, options: ExtractOptions, task_started: float) -> tuple:
    """A worker's last word on a stop: a time-limit stop before its part's work began (before
    Extraction.run, which says it itself from there on) is an error, as for one process."""
    from ..pipeline.time_limit import stopped_before_work
    from ..pipeline.stop_signals import stopped_by_time_limit

    if stopped_by_time_limit() and (extraction is None or extraction.time_limit is None):
        error = stopped_before_work(task_started, "part {}/{} started its work".format(*options.part))
        return ("error", index, asdict(summary), str(error))
    return ("interrupted", index, asdict(summary))


class _PipeProgress:
    """A worker's `progress.Progress`: every call goes to the parent, which draws the bar."""

    def __init__(self, messages, index: int):
        self.messages, self.index = messages, index

    def start(self, files: int, audio_seconds: float) -> None:
        self.messages.send(("start", self.index, files, audio_seconds))

    def advance(self, files: int = 1, audio_seconds: float = 0.0) -> None:
        self.messages.send(("advance", self.index, files, audio_seconds))

    def close(self) -> None:
        pass
