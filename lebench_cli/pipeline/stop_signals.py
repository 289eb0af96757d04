"""How a run stops on a signal. Ctrl-C (SIGINT), a scheduler's stop (SIGTERM) and the warning
that a SLURM time limit is near (SIGUSR1, what `lebench slurm`'s script forwards) raise
KeyboardInterrupt once: the run commits its finished work and exits 130. Which one it was is
kept, because a time-limit stop is recorded (scaleout.time_limit) and a cancel is not."""

from __future__ import annotations

import signal

SIGNALS = ("SIGINT", "SIGTERM", "SIGUSR1")
TIME_LIMIT_SIGNAL = signal.SIGUSR1

_time_limit = {"reached": False}  # per process: signals are
_stop = {"requested": False}


def stopped_by_time_limit() -> bool:
    """Whether this process was told that its time limit is near."""
    return _time_limit["reached"]


def note_stop_signal(signum) -> None:
    if signum == TIME_LIMIT_SIGNAL:
        _time_limit["reached"] = True


def ignore_stop_signals() -> None:
    for name in SIGNALS:
        signal.signal(getattr(signal, name), signal.SIG_IGN)


class StopSignals:
    """While active, the first stop signal raises KeyboardInterrupt and later ones are ignored
    until the process ends, so that a second Ctrl-C cannot break the commit or the workers'
    shutdown midway (it would print a traceback and lose the pending shard).

    `decide()` once the run's outcome is known: from then on every stop signal is ignored, so
    a finished run cannot be turned into an interrupted one (exit 130, which a SLURM task
    would requeue) in the seconds it takes to print its summary and exit."""

    def __enter__(self) -> "StopSignals":
        def interrupt(signum, frame):
            ignore_stop_signals()
            if self.decided:
                return
            note_stop_signal(signum)
            self.interrupted = _stop["requested"] = True
            raise KeyboardInterrupt

        self.interrupted = self.decided = _stop["requested"] = False
        # A signal ignored from the start (a background job's SIGINT, nohup) stays ignored.
        self.previous = {name: signal.getsignal(getattr(signal, name)) for name in SIGNALS}
        for name, handler in self.previous.items():
            if handler is not signal.SIG_IGN:
                signal.signal(getattr(signal, name), interrupt)
        return self

    def decide(self) -> None:
        self.decided = True
        ignore_stop_signals()

    def __exit__(self, exc_type, *exc):
        _stop["requested"] = False  # the run is over: a later run in this process starts afresh
        if self.decided or self.interrupted or exc_type is KeyboardInterrupt:
            ignore_stop_signals()
        else:
            for name, handler in self.previous.items():
                signal.signal(getattr(signal, name), handler)
        return False


def on_stop_signals(on_int, on_term=None, on_usr1=None) -> tuple:
    """Installs handlers for SIGINT, SIGTERM and SIGUSR1 (the time-limit warning; `on_int`
    for those left None); returns the previous ones."""
    previous = (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM),
                signal.getsignal(signal.SIGUSR1))
    signal.signal(signal.SIGINT, on_int)
    signal.signal(signal.SIGTERM, on_int if on_term is None else on_term)
    signal.signal(signal.SIGUSR1, on_int if on_usr1 is None else on_usr1)
    return previous


def stop_on_first_signal() -> None:
    """For a worker process: SIGINT (Ctrl-C reaches every process of the terminal) or
    SIGTERM (the parent's) raises KeyboardInterrupt, once; a second signal during the commit
    must not break it."""

    def stop(signum, frame):
        _stop["requested"] = True
        ignore_stop_signals()
        note_stop_signal(signum)  # SIGUSR1: the parent passed on the time-limit warning
        raise KeyboardInterrupt

    for name in SIGNALS:
        signal.signal(getattr(signal, name), stop)


def stop_requested() -> bool:
    """Whether a stop signal's handler (`stop_on_first_signal`'s, or StopSignals' during its
    run) raised KeyboardInterrupt in this process."""
    return _stop["requested"]


def stop_if_requested() -> None:
    """Raises the KeyboardInterrupt of a stop signal again. Python drops an exception raised
    in a weakref callback or a `__del__` ("Exception ignored in ..."): a signal that landed
    there would otherwise be lost and the run would go on as if never stopped. The engine
    asks before each batch."""
    if _stop["requested"]:
        raise KeyboardInterrupt
