"""SLURM time limits without endless requeues.

A task stopped by its time limit (SIGUSR1 from `lebench slurm`'s script) commits, exits 130
and requeues itself. A recording being encoded then is lost and restarts from zero at the
rerun, so a recording that needs more than a task's time would requeue forever. So each such
stop is recorded in OUT/interrupted-KofN.json, which survives requeues (the failure records are
started afresh by each run): a recording stopped twice fails, with the time it needs, unless
the task now has that time; a part stopped twice in a row before it stored anything stops
requeueing (exit 1). Every requeue therefore stores a file, or counts towards one of those
two bounds.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Optional

from ..errors import InputError, LebenchError, OutputError
from ..storage.layout import part_tag
from .stop_signals import stopped_by_time_limit

STOP_ENV = "LEBENCH_STOP_SECONDS"  # set by `lebench slurm`'s script: how long before the limit it stops
RECORD_PREFIX = "interrupted-"
STOPS_BEFORE_GIVING_UP = 2
EARLY_SIGNAL_SECONDS = 60  # how much earlier than asked SLURM may send the time-limit warning

_TIME = re.compile(r"^(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?$")
TIME_FORMATS = "minutes, MM:SS, HH:MM:SS, D-HH, D-HH:MM or D-HH:MM:SS"


def parse_slurm_time(text: str) -> Optional[int]:
    """Seconds of a SLURM time (sbatch --time, squeue %L), None for UNLIMITED/INFINITE."""
    text = str(text).strip()
    if text.upper() in ("UNLIMITED", "INFINITE"):
        return None
    match = _TIME.match(text)
    if not match:
        raise InputError(f"invalid --time '{text}': expected {TIME_FORMATS}")
    days, first, second, third = (int(group) if group is not None else None for group in match.groups())
    if days is not None:  # D-HH, D-HH:MM, D-HH:MM:SS
        seconds = days * 86400 + first * 3600 + (second or 0) * 60 + (third or 0)
    elif third is not None:  # HH:MM:SS
        seconds = first * 3600 + second * 60 + third
    elif second is not None:  # MM:SS
        seconds = first * 60 + second
    else:  # minutes
        seconds = first * 60
    return seconds or None  # 0: no limit, as for sbatch


def time_left_in_task(env: Mapping[str, str]) -> Optional[float]:
    """Seconds this SLURM task has for work before `lebench slurm`'s stop signal (its end time
    as squeue says, less the lead); infinity outside such a task (nothing will stop it), None
    when squeue cannot say."""
    stop, job = env.get(STOP_ENV), env.get("SLURM_JOB_ID")
    if not stop or not job:
        return float("inf")
    try:
        listed = subprocess.run(["squeue", "-h", "-j", job, "-o", "%L"], capture_output=True, text=True, timeout=30)
        left = parse_slurm_time(listed.stdout.strip().splitlines()[0]) if listed.returncode == 0 else None
        return None if left is None else max(0.0, left - float(stop))
    except (OSError, subprocess.SubprocessError, IndexError, ValueError, InputError):
        return None


@dataclass
class InProgress:
    """The long recording being encoded, and how far it got."""

    utt_id: str
    path: str
    started: float  # time.monotonic()
    windows: int
    windows_done: int = 0

    def needs_seconds(self) -> Optional[float]:
        if self.windows_done <= 0:
            return None
        return (time.monotonic() - self.started) * self.windows / self.windows_done


class TimeLimitError(LebenchError):
    """A part that the time limit stops before it can get anywhere: requeueing it would loop."""


def stopped_before_work(started: float, before: str) -> TimeLimitError:
    """A time-limit stop that came before any work (`before`: "part 2/8 started its work"): a
    requeued task would get as far, and stop there again."""
    return TimeLimitError(f"the time limit came {time.monotonic() - started:.0f} s into the task, before {before}: "
                          "not requeueing; give lebench slurm --time more")


class TimeLimitStops:
    """Around one part's run (`extraction` has `streaming`, an InProgress or None, and
    `summary`). A stop by the time limit before the part's lock is held (loading the model) is
    a TimeLimitError at once: a requeued task has the same time, and would stop there again.
    `under_lock(out)` is the part's work: the recordings given up on are failed first, and a
    stop is recorded on the way out (a TimeLimitError when the part must not be requeued)."""

    def __init__(self, extraction, part: tuple, started: float):
        self.extraction, self.part, self.started = extraction, part, started
        self.record = None

    def __enter__(self) -> "TimeLimitStops":
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is KeyboardInterrupt and stopped_by_time_limit() and self.record is None:
            raise stopped_before_work(self.started, f"part {self._k_of_n()} started its work") from None
        return False

    def under_lock(self, out: Path) -> "_PartWork":
        self.record = InterruptionRecord(out, part_tag(*self.part))
        return _PartWork(self)

    def _k_of_n(self) -> str:
        return "{}/{}".format(*self.part)


class _PartWork:
    def __init__(self, stops: TimeLimitStops):
        self.stops = stops
        self.task_seconds = time_left_in_task(os.environ)

    def __enter__(self) -> "_PartWork":
        return self

    def split(self, todo: list) -> tuple:
        """(items to run, [(item, reason)] of recordings given up on)."""
        kept, given_up = [], []
        for item in todo:
            reason = self.stops.record.given_up(item.source.utt_id, self.task_seconds)
            if reason is None:
                kept.append(item)
            else:
                given_up.append((item, reason))
        return kept, given_up

    def __exit__(self, exc_type, exc, tb):
        if exc_type is KeyboardInterrupt and stopped_by_time_limit():
            stops = self.stops
            error = stops.record.note_stop(stops.extraction.streaming, stops.extraction.summary.extracted,
                                           time.monotonic() - stops.started, stops._k_of_n())
            if error is not None:
                raise TimeLimitError(error) from None
        return False


class InterruptionRecord:
    """OUT/interrupted-KofN.json: {"files": {id: {path, stops, had_seconds, needs_seconds}},
    "stops_without_progress": n}. Read and written under the part's lock."""

    def __init__(self, out: Path, tag: str):
        self.path = Path(out) / f"{RECORD_PREFIX}{tag}.json"
        self.data = {"files": {}, "stops_without_progress": 0}
        try:
            self.data.update(json.loads(self.path.read_text(encoding="utf-8")))
        except FileNotFoundError:
            pass
        except (OSError, ValueError):
            pass  # a record torn by a crash: at worst one more requeue

    def given_up(self, utt_id: str, task_seconds: Optional[float]) -> Optional[str]:
        """The failure reason of a recording stopped twice by the time limit, unless this task
        has the time it needs (more time was given since)."""
        entry = self.data["files"].get(utt_id)
        if not entry or entry["stops"] < STOPS_BEFORE_GIVING_UP:
            return None
        needs = entry.get("needs_seconds")
        # More than it needs, and more than the stops had: SLURM's warning comes up to a minute
        # early, so a requeue with the same --time can look that much longer; it must not count.
        enough = max(needs or 0.0, entry["had_seconds"] + EARLY_SIGNAL_SECONDS)
        if task_seconds is not None and task_seconds > enough:
            return None
        return _given_up_reason(needs, task_seconds if task_seconds is not None else entry["had_seconds"])

    def note_stop(self, in_progress: Optional[InProgress], stored: int, had_seconds: float,
                  part: str) -> Optional[str]:
        """Records a time-limit stop; the error that must end the requeues (a part stopped
        twice in a row before it stored or recorded anything), else None."""
        progressed = stored > 0
        if in_progress is not None:
            entry = self.data["files"].setdefault(in_progress.utt_id, {"path": in_progress.path, "stops": 0})
            entry["stops"] += 1
            entry["had_seconds"] = round(max(entry.get("had_seconds", 0), had_seconds), 1)
            needs = in_progress.needs_seconds()
            if needs is not None:
                entry["needs_seconds"] = round(needs, 1)
            progressed = True
        self.data["stops_without_progress"] = 0 if progressed else self.data["stops_without_progress"] + 1
        self._save()
        if self.data["stops_without_progress"] >= STOPS_BEFORE_GIVING_UP:
            return (f"part {part} was stopped by the time limit {STOPS_BEFORE_GIVING_UP} times in a row before it "
                    f"stored a file (this task had {had_seconds:.0f} s): not requeueing; give lebench slurm "
                    "--time more")
        return None

    def _save(self) -> None:
        partial = self.path.with_name(self.path.name + ".partial")
        try:
            partial.write_text(json.dumps(self.data, indent=1, ensure_ascii=False), encoding="utf-8")
            os.replace(partial, self.path)
        except OSError as error:
            raise OutputError(f"cannot write {self.path}: {error.strerror or error}") from error


def _given_up_reason(needs: Optional[float], has: float) -> str:
    need = f"needs about {needs:.0f} s" if needs is not None else f"needs more than {has:.0f} s"
    return (f"interrupted twice by the time limit: {need}, the task has {has:.0f} s; give lebench slurm --time "
            "more, or split the recording")
