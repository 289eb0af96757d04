"""Resume: what a run still has to extract, given what the output folder already holds.

An id already stored is skipped only when its features came from the same file, unchanged
since: same resolved path, same size and same modification time. Anything else under a
stored id is a conflict, recorded as a failure with its reason: skipping it would leave
features of another file under its name, and nobody would know.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from datetime import datetime
from typing import Optional


@dataclass(frozen=True)
class Fingerprint:
    """What tells a file from the same path rewritten: size and modification time."""

    size: int
    mtime_ns: int


def fingerprint(path) -> Optional[Fingerprint]:
    """The file's fingerprint now, or None when it cannot be read (it fails later, when
    decoded, with the system's reason)."""
    try:
        status = os.stat(path)
    except (OSError, ValueError):
        return None
    return Fingerprint(status.st_size, status.st_mtime_ns)


def stored_path(path) -> str:
    """The path a source is stored under: absolute, so that it means the same file whatever
    folder a later run starts from; printable (`names.printable`): HDF5 stores UTF-8."""
    from .names import printable

    return printable(os.path.abspath(os.fspath(path)))


@dataclass
class ResumePlan:
    todo: list = field(default_factory=list)  # sources to extract
    already_stored: int = 0  # sources whose features are there, from the same file
    conflicts: list = field(default_factory=list)  # (source, reason): a stored id, another file


def plan_resume(sources: list, stored: dict) -> ResumePlan:
    """Sorts `sources` (AudioSource) against `stored` ({id: StoredSource})."""
    plan = ResumePlan()
    for source in sources:
        known = stored.get(source.utt_id)
        if known is None:
            plan.todo.append(source)
            continue
        reason = conflict(source, known)
        if reason is None:
            plan.already_stored += 1
        else:
            plan.conflicts.append((source, reason))
    return plan


def conflict(source, known) -> Optional[str]:
    """Why `source` may not be skipped although its id is stored, or None when it may."""
    if not _same_path(source.path, known.path):
        return f"id {source.utt_id} already stored from {known.path}"
    if known.size < 0:
        return None  # stored before lebench kept fingerprints: the path is all there is to compare
    now = fingerprint(source.path)
    if now is None:
        return None  # gone since: its stored features are all that is left of it
    changes = []
    if now.size != known.size:
        changes.append(f"size {known.size} -> {now.size} bytes")
    if known.mtime_ns >= 0 and now.mtime_ns != known.mtime_ns:
        changes.append(f"modified {_when(known.mtime_ns)} -> {_when(now.mtime_ns)}")
    if not changes:
        return None
    return (f"changed since its features were stored ({', '.join(changes)}); the stored features are "
            "kept: use --overwrite or another output folder to extract it again")


def _same_path(new, stored) -> bool:
    from .names import printable

    # Compared as stored: a name that is not UTF-8 was stored with its bytes as \xNN.
    return printable(os.path.realpath(os.fspath(new))) == printable(os.path.realpath(stored))


def _when(mtime_ns: int) -> str:
    return datetime.fromtimestamp(mtime_ns / 1e9).isoformat(sep=" ", timespec="seconds")
