"""Where stored sources are now: OUT/relocated-KofN.jsonl, a resume cache.

A shard records the path, size and modification time of each source as it was read, and
resume takes a source whose path, size and time are those as the same file without reading
it. A corpus moved or copied since (or touched) matches by content only, which costs a hash
of every file at every rerun. So a run that matched an id by content records, under its
part's lock, where that content is now: one JSON line per id, {"id", "path", "size",
"mtime_ns", "xxh3"}, the whole file replaced atomically. A later run takes the fast path on
any of an id's recorded places whose hash is still the stored one (an --update gives the id
another hash, so the old places no longer count). A lost or damaged record only costs one
more hash of those files.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import OutputError
from .files import os_reason, write_atomic

PREFIX = "relocated-"


def record_path(out: Path, tag: str) -> Path:
    return Path(out) / f"{PREFIX}{tag}.jsonl"


def read_relocations(out: Path) -> dict:
    """{id: [(path, size, mtime_ns, xxh3)]} from every part's record (lines that do not
    parse are skipped: they cost a hash, nothing else)."""
    found: dict = {}
    for path in sorted(Path(out).glob(f"{PREFIX}*of*.jsonl")):
        for entry in _entries(path).values():
            found.setdefault(entry["id"], []).append(
                (entry["path"], entry["size"], entry["mtime_ns"], entry["xxh3"]))
    return found


def record_relocations(out: Path, tag: str, moved: list) -> None:
    """Adds `moved`, [(id, path, Fingerprint)] matched by content, to this part's record;
    call it holding the part's lock."""
    if not moved:
        return
    path = record_path(out, tag)
    entries = _entries(path)
    for utt_id, source_path, found in moved:
        entries[utt_id] = {"id": utt_id, "path": source_path, "size": found.size, "mtime_ns": found.mtime_ns,
                           "xxh3": found.content_hash}
    text = "".join(json.dumps(entry, ensure_ascii=False) + "\n" for entry in entries.values())
    try:
        write_atomic(path, text)
    except OSError as error:
        raise OutputError(f"cannot write {path}: {os_reason(error)}") from error


def _entries(path: Path) -> dict:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError):
        return {}
    entries = {}
    for line in lines:
        try:
            entry = json.loads(line)
            if (isinstance(entry, dict) and isinstance(entry.get("id"), str) and isinstance(entry.get("path"), str)
                    and isinstance(entry.get("size"), int) and isinstance(entry.get("mtime_ns"), int)
                    and isinstance(entry.get("xxh3"), str)):
                entries[entry["id"]] = entry
        except ValueError:
            continue
    return entries
