"""DEST/lebench-export.json: what an export destination was made from, so that a re-export
adds what is new, replaces what changed and removes what is gone, instead of trusting that a
file that exists is current.

It names the store (its path and lebench.json identity), the format, and per entry (a layer
folder, or the stacked files of npy --stack) a variant (dtype, stacked layers) and one
fingerprint per exported utterance. A destination made from another run, in another format,
or by a lebench that kept no record is refused: its files cannot be told current or stale.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import InputError, OutputError
from ..storage.locks import EXPORT_LOCK

RECORD_FILE = "lebench-export.json"
RECORD_FORMAT = "lebench-export"


def utterance_fingerprints(store) -> dict:
    """id -> a short hash of what its features are, from what the reader knows now: the
    committed shard (its name, inode, size and mtime: a committed shard is never written
    again, and a store made again has new files), the row in it, the frames and the source.
    One place to switch to stored per-layer checksums."""
    shards, fingerprints = {}, {}
    for utt_id in store.ids:
        info = store.info(utt_id)
        shard = info["shard"]
        if shard not in shards:
            path = Path(store.path) / shard
            try:
                stat = path.stat()
            except OSError as error:
                raise InputError(f"cannot read {path}: {error.strerror or error}") from error
            shards[shard] = f"{shard}@{stat.st_ino}:{stat.st_size}:{stat.st_mtime_ns}"
        described = f"{shards[shard]}#{info['position']}:{info['frames']}:{info['source']}"
        fingerprints[utt_id] = hashlib.blake2b(described.encode("utf-8", "surrogateescape"), digest_size=8).hexdigest()
    return fingerprints


@dataclass
class Plan:
    """What one entry's re-export does to each utterance of the store, and which are gone."""

    new: list = field(default_factory=list)
    replaced: list = field(default_factory=list)
    unchanged: list = field(default_factory=list)
    removed: list = field(default_factory=list)

    @property
    def changes(self) -> bool:
        return bool(self.new or self.replaced or self.removed)


@dataclass
class Counts:
    new: int = 0
    replaced: int = 0
    removed: int = 0
    unchanged: int = 0


def count_utterances(plans: list) -> Counts:
    """Per utterance over every entry (layer) exported: unchanged when unchanged in all,
    replaced when replaced in any, else new (a layer exported for the first time adds it);
    removed when gone from any."""
    if not plans:
        return Counts()
    unchanged = set.intersection(*(set(plan.unchanged) for plan in plans))
    replaced = set().union(*(plan.replaced for plan in plans))
    every = set(plans[0].new) | set(plans[0].replaced) | set(plans[0].unchanged)
    removed = set().union(*(plan.removed for plan in plans))
    return Counts(new=len(every - replaced - unchanged), replaced=len(replaced), removed=len(removed),
                  unchanged=len(unchanged))


class ExportRecord:
    """The record of DEST, checked against STORE on opening; changed in memory, written by save()."""

    def __init__(self, destination: Path, store, export_format: str):
        self.destination = Path(destination)
        self.path = self.destination / RECORD_FILE
        self.store_identity = store.metadata.get("identity")
        self.export_format = export_format
        self.entries = self._load(store)
        self.fingerprints = utterance_fingerprints(store)

    def plan(self, key: str, variant: str, exists) -> Plan:
        """exists(utt_id): whether the entry's file of that utterance is there."""
        entry = self.entries.get(key, {})
        recorded, same_variant = entry.get("utterances", {}), entry.get("variant") == variant
        plan = Plan(removed=[utt_id for utt_id in recorded if utt_id not in self.fingerprints])
        for utt_id, fingerprint in self.fingerprints.items():
            if utt_id not in recorded or not exists(utt_id):
                plan.new.append(utt_id)
            elif not same_variant or recorded[utt_id] != fingerprint:
                plan.replaced.append(utt_id)
            else:
                plan.unchanged.append(utt_id)
        return plan

    def set_entry(self, key: str, variant: str, utterances: dict) -> None:
        self.entries[key] = {"variant": variant, "utterances": dict(utterances)}

    def entry(self, key: str, variant: str) -> dict:
        """The entry's utterance map, to change one utterance at a time (npy); a variant that
        changed starts empty (no file of the old one counts as current)."""
        if self.entries.get(key, {}).get("variant") != variant:
            self.set_entry(key, variant, {})
        return self.entries[key]["utterances"]

    def save(self) -> None:
        from ..storage import write_atomic

        record = {"format": RECORD_FORMAT, "version": 1, "export_format": self.export_format,
                  "store": {"path": str(self._store_path), "identity": self.store_identity},
                  "entries": self.entries}
        try:
            self.destination.mkdir(parents=True, exist_ok=True)
            write_atomic(self.path, json.dumps(record, ensure_ascii=False) + "\n")
        except OSError as error:
            raise OutputError(f"cannot write {self.path}: {error.strerror or error}") from error

    def _load(self, store) -> dict:
        self._store_path = Path(store.path).resolve()
        if not self.path.exists():
            if _holds_files(self.destination):
                raise InputError(f"{self.destination} holds files but no {RECORD_FILE} (an export by a lebench "
                                 "that kept no record, or other files): export to an empty or new folder")
            return {}
        try:
            record = json.loads(self.path.read_text(encoding="utf-8"))
            entries, made_from = record["entries"], record["store"]
            if record.get("format") != RECORD_FORMAT or not isinstance(entries, dict):
                raise ValueError("not an export record")
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise InputError(f"cannot read {self.path}: {getattr(error, 'strerror', None) or error}") from error
        if record.get("export_format") != self.export_format:
            raise InputError(f"{self.destination} holds a {record.get('export_format')} export: export "
                             f"{self.export_format} to another folder")
        if made_from.get("identity") != self.store_identity:
            raise InputError(f"{self.destination} holds an export of another run ({made_from.get('path')}, "
                             f"{_first_difference(made_from.get('identity'), self.store_identity)}): export to "
                             f"another folder, or remove {self.destination} first")
        return entries


def _holds_files(folder: Path) -> bool:
    try:
        return folder.is_dir() and any(entry.name != EXPORT_LOCK for entry in os.scandir(folder))
    except OSError:
        return False


def _first_difference(old, new) -> str:
    old = old if isinstance(old, dict) else {}
    new = new if isinstance(new, dict) else {}
    for key in [*new, *(key for key in old if key not in new)]:
        if old.get(key) != new.get(key):
            return f"{key}: {json.dumps(old.get(key))} != {json.dumps(new.get(key))}"
    return "another identity"
