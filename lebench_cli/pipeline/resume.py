"""Resume: what a run still has to extract, given what the output folder already holds.

An id already stored is skipped when its features came from the same bytes: the same
resolved path, size and modification time (one `stat`, no read), or else the same size and
content hash (xxh3-64 of the whole file), wherever the file now lies: a corpus copied or
moved resumes, and where it was found is recorded (storage/relocations.py), so that the next
run takes the fast path there. Anything else under a stored id is a conflict, recorded as a
failure with its reason, unless the run updates (`--update`): then the id is extracted again
and its old features are replaced (storage/update.py). Stores written before lebench kept hashes are
compared by path, size and modification time, as they were.

Sources that are no plain file are stored under a key that names where their bytes are
(`source_key`, docs/format.md): a tar member, a table row, a pipe's command; a segment adds
its times, so that a segment whose times changed is a changed source, never skipped.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field
from datetime import datetime
from typing import Optional

from ..storage.source_keys import split_source_key

_HASH_BLOCK = 1024**2
_HASH_BATCH = 4096
_KEPT = "; the stored features are kept: use --update to extract it again"


@dataclass(frozen=True)
class Fingerprint:
    """What tells a file from another one: size, modification time and, when computed, the
    xxh3-64 hash of its bytes (16 hex digits; "" when not computed)."""

    size: int
    mtime_ns: int
    content_hash: str = ""


def fingerprint(path, with_hash: bool = False) -> Optional[Fingerprint]:
    """The file's fingerprint now, or None when it cannot be read (it fails later, when
    decoded, with the system's reason). The size and time are taken before the bytes are
    hashed: a change while hashing shows on the next run. `path` may be an AudioSource:
    then its recording's fingerprint (source_fingerprint)."""
    if hasattr(path, "utt_id"):
        return source_fingerprint(path, with_hash)
    try:
        status = os.stat(path)
        # Only a regular file ends: a FIFO or /dev/zero would be read for ever (they fail
        # when decoded, with their reason).
        digest = content_hash(path) if with_hash and stat.S_ISREG(status.st_mode) else ""
    except (OSError, ValueError):
        return None
    return Fingerprint(status.st_size, status.st_mtime_ns, digest)


def source_fingerprint(source, with_hash: bool = False) -> Optional[Fingerprint]:
    """The fingerprint of a source's recording (a segment's is its recording's): for a file,
    fingerprint(); for a tar member or a table row, the size and modification time of the
    tar or table file (one stat for the fast path) and the xxh3 of the audio's own bytes;
    for a pipe, its command text (below). None when the bytes cannot be had."""
    from ..audio.sources import PipeCommand

    origin = source.origin
    if origin is None:
        return fingerprint(source.path, with_hash)
    if isinstance(origin, PipeCommand):
        # Bound by its command text, not re-run: checking a pipe means running it (a decode,
        # often a sox or ffmpeg conversion, per utterance and per resume), and what the
        # corpus declares is the command. A change in the files it reads is not seen: use
        # --overwrite, or remove the ids, to extract those again (docs/extract.md).
        import xxhash

        text = origin.command.strip().encode("utf-8", "surrogateescape")
        return Fingerprint(len(text), 0, xxhash.xxh3_64(text).hexdigest())
    container = getattr(origin, "tar", None) or getattr(origin, "file", None)
    try:
        status = os.stat(container)
    except (OSError, TypeError, ValueError):
        return None
    digest = ""
    if with_hash:
        from ..audio.origins import open_bytes
        from ..errors import AudioError

        try:
            with open_bytes(source) as audio:
                digest = _hashed(audio)
        except (AudioError, OSError):
            return None
    return Fingerprint(status.st_size, status.st_mtime_ns, digest)


def fingerprints(paths: list, threads: int = 8) -> list:
    """fingerprint(path, with_hash=True) of every path (or AudioSource), `threads` at a
    time: reading is what a hash costs, and reads in flight together overlap
    (docs/performance.md). Segments of one recording share one hash of it."""
    from concurrent.futures import ThreadPoolExecutor

    from ..audio.segments import recording_key

    keys = [recording_key(path) if hasattr(path, "utt_id") else (os.fspath(path),) for path in paths]
    first = {}
    for index, key in enumerate(keys):
        first.setdefault(key, index)
    unique = sorted(set(first.values()))
    found = {}
    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        for start in range(0, len(unique), _HASH_BATCH):  # not a million futures at once
            batch = unique[start: start + _HASH_BATCH]
            found.update(zip(batch, pool.map(lambda index: fingerprint(paths[index], with_hash=True), batch)))
    return [found[first[key]] for key in keys]


def content_hash(path) -> str:
    """xxh3-64 of the whole file, as 16 hex digits (docs/performance.md: its cost)."""
    # O_NONBLOCK: a FIFO put in the file's place since it was looked at cannot hang the open.
    with open(path, "rb", opener=lambda name, flags: os.open(name, flags | os.O_NONBLOCK)) as file:
        if not stat.S_ISREG(os.fstat(file.fileno()).st_mode):
            raise ValueError(f"{path} is not a regular file")
        return _hashed(file)


def _hashed(file) -> str:
    import xxhash

    digest = xxhash.xxh3_64()
    for block in iter(lambda: file.read(_HASH_BLOCK), b""):
        digest.update(block)
    return digest.hexdigest()


def stored_path(path) -> str:
    """The path a source is stored under: absolute, so that it means the same file whatever
    folder a later run starts from; printable (`names.printable`): HDF5 stores UTF-8."""
    from ..names import printable

    return printable(os.path.abspath(os.fspath(path)))


def source_key(source) -> str:
    """What the shard's `sources` column holds for `source` (docs/format.md): the stored path
    of a file; TAR/MEMBER for a tar member; TABLE[ROW] for a table row; the command, as
    written, for a pipe; then, for a segment, #START,END (seconds as Python writes floats,
    END empty when it runs to the recording's end)."""
    return _place_key(source) + _segment_key(source.segment)


def _place_key(source) -> str:
    from ..audio.sources import PipeCommand, TableRow, TarMember
    from ..names import printable

    origin = source.origin
    if isinstance(origin, TarMember):
        return f"{stored_path(origin.tar)}/{printable(origin.member)}"
    if isinstance(origin, TableRow):
        return f"{stored_path(origin.file)}[{origin.row}]"
    if isinstance(origin, PipeCommand):
        return printable(origin.command.strip())
    return stored_path(source.path)


def _segment_key(segment) -> str:
    if segment is None:
        return ""
    return f"#{float(segment.start)!r},{'' if segment.end is None else repr(float(segment.end))}"


@dataclass
class ResumePlan:
    todo: list = field(default_factory=list)  # sources to extract (replacements included)
    already_stored: int = 0  # sources whose features are there, from the same bytes
    conflicts: list = field(default_factory=list)  # (source, reason): a stored id, another file
    replaced: list = field(default_factory=list)  # ids in todo whose stored features go (--update)
    relocated: list = field(default_factory=list)  # (id, stored path, Fingerprint): matched by content


def plan_resume(sources: list, stored: dict, update: bool = False, part: tuple = (1, 1)) -> ResumePlan:
    """Sorts `sources` (AudioSource) against `stored` ({id: StoredSource}). With `update`,
    a conflicting id stored by this part (K, N) is extracted again instead of failing."""
    plan = ResumePlan()
    settled, slow = set(), []  # ids the fast path settles; sources to hash, several at a time
    for source in sources:
        known = stored.get(source.utt_id)
        if known is None or not known.content_hash:
            continue
        if _fast_path(source, known):
            settled.add(source.utt_id)
        else:
            slow.append(source)
    hashed = dict(zip([source.utt_id for source in slow], fingerprints(slow)))
    for source in sources:
        known = stored.get(source.utt_id)
        if known is None:
            plan.todo.append(source)
            continue
        now = hashed.get(source.utt_id)
        reason = None if source.utt_id in settled else conflict(source, known, now)
        if reason is None:
            plan.already_stored += 1
            if now is not None and _same_bytes(source, now, known):
                plan.relocated.append((source.utt_id, source_key(source), now))
        elif update and tuple(known.part) == tuple(part):
            plan.todo.append(source)
            plan.replaced.append(source.utt_id)
        elif update:
            k, n = known.part
            plan.conflicts.append((source, f"{reason.removesuffix(_KEPT)}; the stored features are kept: they "
                                           f"belong to part {k}/{n}, and --update replaces only this part's "
                                           f"({part[0]}/{part[1]})"))
        else:
            plan.conflicts.append((source, reason))
    return plan


def _fast_path(source, known) -> bool:
    """Same resolved path, size and modification time as stored, or as where a later run
    found the same bytes: the same file, not read."""
    now = source_fingerprint(source)
    if now is None:
        return False
    places = [(known.path, known.size, known.mtime_ns), *known.also_at]
    return any((now.size, now.mtime_ns) == (size, mtime) and _same_key(source, path)
               for path, size, mtime in places)


def conflict(source, known, now: Optional[Fingerprint] = None) -> Optional[str]:
    """Why `source` may not be skipped although its id is stored, or None when it may. `now`:
    its fingerprint with the hash, when already taken. A segment is also bound to its times:
    other times, or no longer a segment, is a change."""
    if not known.content_hash:
        return _conflict_without_hash(source, known, _same_path(source.path, known.path))
    place, stored_segment = _stored_parts(source, known.path)
    same_path = _same_place(source, place)
    if stored_segment != _segment_key(source.segment):
        now = now or source_fingerprint(source, with_hash=True)
        if same_path or (now is not None and _same_bytes(source, now, known)):
            return (f"changed since its features were stored (segment {_times(stored_segment)} -> "
                    f"{_times(_segment_key(source.segment))}){_KEPT}")
        return _another_file(source, known)
    if now is None and _fast_path(source, known):
        return None
    now = now or source_fingerprint(source, with_hash=True)
    if now is None:  # gone since, or unreadable: nothing to compare
        return None if same_path else _another_file(source, known)
    if _same_bytes(source, now, known):
        return None  # the same bytes, copied, moved or touched
    if not same_path:
        return _another_file(source, known)
    return _changed(known, now, content_differs=now.size == known.size or source.origin is not None)


def _same_bytes(source, now: Fingerprint, known) -> bool:
    """The same audio bytes: for a file, its size and hash; for a tar member or table row,
    the hash of the audio alone (their size is the tar's or the table's, which other
    members change)."""
    if now.content_hash != known.content_hash:
        return False
    return source.origin is not None or now.size == known.size


def _same_key(source, stored_key: str) -> bool:
    place, segment = _stored_parts(source, stored_key)
    return segment == _segment_key(source.segment) and _same_place(source, place)


def _stored_parts(source, stored_key: str) -> tuple:
    """(place, segment suffix) of a stored key, as they compare with `source`: a whole file
    whose own name ends like a segment's times ("a#1,2") is that file, not a segment."""
    place, segment = split_source_key(stored_key)
    if segment and source.segment is None and _same_place(source, stored_key):
        return stored_key, ""
    return place, segment


def _same_place(source, stored_place: str) -> bool:
    from ..audio.sources import PipeCommand

    if isinstance(source.origin, PipeCommand):
        return _place_key(source) == stored_place
    return _same_path(_place_key(source), stored_place)


def _times(segment_key: str) -> str:
    if not segment_key:
        return "the whole recording"
    start, end = segment_key[1:].split(",")
    return f"{start}-{end or 'end'} s"


def _conflict_without_hash(source, known, same_path: bool) -> Optional[str]:
    """A store written before lebench kept hashes: path, size and modification time."""
    if not same_path:
        return _another_file(source, known)
    if known.size < 0:
        return None  # stored before lebench kept fingerprints: the path is all there is to compare
    now = fingerprint(source.path)
    if now is None:
        return None  # gone since: its stored features are all that is left of it
    if now.size == known.size and (known.mtime_ns < 0 or now.mtime_ns == known.mtime_ns):
        return None
    return _changed(known, now, content_differs=False)


def _another_file(source, known) -> str:
    return f"id {source.utt_id} already stored from {known.path}"


def _changed(known, now: Fingerprint, content_differs: bool) -> str:
    changes = []
    if now.size != known.size:
        changes.append(f"size {known.size} -> {now.size} bytes")
    if known.mtime_ns >= 0 and now.mtime_ns != known.mtime_ns:
        changes.append(f"modified {_when(known.mtime_ns)} -> {_when(now.mtime_ns)}")
    if content_differs:
        changes.append("other content")
    return f"changed since its features were stored ({', '.join(changes)}){_KEPT}"


def _same_path(new, stored) -> bool:
    from ..names import printable

    # Compared as stored: a name that is not UTF-8 was stored with its bytes as \xNN.
    return printable(os.path.realpath(os.fspath(new))) == printable(os.path.realpath(stored))


def _when(mtime_ns: int) -> str:
    return datetime.fromtimestamp(mtime_ns / 1e9).isoformat(sep=" ", timespec="seconds")
