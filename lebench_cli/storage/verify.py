"""`lebench verify`: every shard, table and checksum of an output folder read and checked, and
`--repair`: damaged shards moved aside so that rerunning the extraction extracts their
utterances again (docs/reliability.md#integrity).

A shard is checked utterance by utterance, each layer's rows read whole and hashed: memory
holds one utterance's layer. With workers, shards are checked in that many processes.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from ..errors import InputError, OutputError, StoreIntegrityError, StoreReadError
from .checksums import digest
from .files import one_line
from .identity import first_difference
from .layout import (METADATA_FILE, SHARD_READ_ERRORS, SHARDS_DIR, committed_shards, open_h5, part_tag,
                     read_shard_table, superseded_ids)
from .locks import PartLock
from .placement import CHUNK_OFFSETS

DAMAGED_DIR = "damaged"
_PART_OF = re.compile(r"^part-(\d+)of(\d+)-\d+\.h5(\.tmp)?$")


@dataclass
class Problem:
    """One thing wrong: the file (relative to OUT), the utterance and layer where it is known."""

    path: str
    what: str
    utt_id: str = ""
    layer: str = ""

    def line(self) -> str:
        where = [self.path] + ([f"utterance {self.utt_id}"] if self.utt_id else []) + \
                ([f"layer {self.layer}"] if self.layer else [])
        return f"{', '.join(where)}: {self.what}"


@dataclass
class ShardCheck:
    """What checking one shard found. damaged: it should be moved aside."""

    path: Path
    ids: list = field(default_factory=list)
    checked: int = 0  # utterance-layer blocks whose checksum matched
    problems: list = field(default_factory=list)
    unchecked: list = field(default_factory=list)  # what could not be checked (format 1)
    damaged: bool = False


@dataclass
class VerifyReport:
    out: Path
    shards: int = 0
    utterances: int = 0
    checked: int = 0
    problems: list = field(default_factory=list)
    unchecked: list = field(default_factory=list)
    to_move: list = field(default_factory=list)  # damaged shards, foreign shards, stray .tmp files
    moved: list = field(default_factory=list)  # (from, to) after repair

    @property
    def clean(self) -> bool:
        return not self.problems

    def line(self) -> str:
        text = (f"{self.shards} shards, {self.utterances} utterances, {self.checked} utterance-layers checked: "
                + ("no problem found" if self.clean else f"{len(self.problems)} problems"))
        if self.unchecked:
            text += f", {len(self.unchecked)} shards not fully checked (format 1)"
        if self.moved:
            text += (f"; {len(self.moved)} files moved into {self.out / DAMAGED_DIR}: rerun the same extraction "
                     "to extract their utterances again")
        return text


def verify_store(out, workers: int = 1, on_shard: Optional[Callable[[], None]] = None) -> VerifyReport:
    """Checks every shard of OUT (see module doc); on_shard() after each."""
    out = Path(out)
    if not out.is_dir():
        raise InputError(f"{out} is not a folder")
    report = VerifyReport(out)
    identity = _stored_identity(out, report)
    named = committed_shards(out)
    shards = [path for _, path in named]
    report.shards = len(shards)
    ids_of = {}
    for check in _checked_shards(shards, identity, workers, on_shard):
        ids_of[check.path] = check.ids
        report.utterances += len(check.ids)
        report.checked += check.checked
        report.problems.extend(check.problems)
        report.unchecked.extend(check.unchecked)
        if check.damaged:
            report.to_move.append(check.path)
    _find_duplicates(out, named, ids_of, report)
    _find_missing_shards(out, shards, report)
    _find_stray_files(out, report)
    return report


def repair(report: VerifyReport) -> None:
    """Moves each shard or file of report.to_move into OUT/damaged/, under its part's lock
    (a part being written is left alone: OutputError names it). Nothing is deleted."""
    out = report.out
    target = out / DAMAGED_DIR
    for path in report.to_move:
        part, num_parts = _part_of(path)
        with PartLock(out, part, num_parts):
            if not path.exists():
                continue
            target.mkdir(exist_ok=True)
            destination = _free_name(target / path.name)
            try:
                os.replace(path, destination)
            except OSError as error:
                raise OutputError(f"cannot move {path} into {target}: {error.strerror or error}") from error
            report.moved.append((path, destination))


# -- one shard ------------------------------------------------------------------------------


def check_shard(path: Path, out: Path, identity: Optional[dict]) -> ShardCheck:
    check = ShardCheck(path)
    name = path.relative_to(out).as_posix()
    try:
        table = read_shard_table(path)
    except (StoreReadError, StoreIntegrityError, InputError) as error:
        check.problems.append(Problem(name, _without_path(str(error), path)))
        check.damaged = "newer lebench" not in str(error)  # a newer lebench reads that one
        return check
    if table.identity is None:
        check.unchecked.append(f"{name}: format {table.format_version}: no identity recorded, "
                               "taken as this store's")
    elif identity is not None and first_difference(identity, table.identity) is not None:
        difference = first_difference(identity, table.identity)
        check.problems.append(Problem(name, f"written by another run than lebench.json records ({difference}, "
                                            "lebench.json's value first)"))
        check.damaged = True
        return check  # its utterances are not this store's
    check.ids = table.ids
    blocks = [(layer, kind) for layer, kinds in sorted(table.layers.items()) for kind in sorted(kinds)]
    missing = [f"{layer} {kind}" for layer, kind in blocks if kind not in table.checksums.get(layer, {})]
    if missing:
        check.unchecked.append(f"{name}: format {table.format_version}: no checksums of "
                               f"{', '.join(missing)}: their values were read, not checked")
    try:
        with open_h5(path) as shard:
            _check_blocks(shard, table, blocks, name, check)
    except SHARD_READ_ERRORS as error:
        check.problems.append(Problem(name, f"read error: {one_line(error)}"))
        check.damaged = True
    return check


def _check_blocks(shard, table, blocks: list, name: str, check: ShardCheck) -> None:
    datasets = {(layer, kind): shard[f"layers/{layer}/{kind}"] for layer, kind in blocks}
    for layer in table.layers:
        key = f"layers/{layer}/{CHUNK_OFFSETS}"
        if key in shard:
            shard[key][()]  # readers find the rows with it: it must read
    for row, utt_id in enumerate(table.ids):
        start, frames = int(table.offsets[row]), int(table.frames[row])
        for layer, kind in blocks:
            dataset = datasets[layer, kind]
            try:
                values = dataset[start: start + frames] if kind == "frames" else dataset[row]
            except SHARD_READ_ERRORS as error:
                check.problems.append(Problem(name, f"{kind}: read error: {one_line(error)}", utt_id, layer))
                check.damaged = True
                continue
            expected = table.checksums.get(layer, {}).get(kind)
            if expected is None:
                continue
            if digest(np.ascontiguousarray(values)) != int(expected[row]):
                check.problems.append(Problem(name, f"{kind} do not match their checksum", utt_id, layer))
                check.damaged = True
            else:
                check.checked += 1


def _checked_shards(shards: list, identity, workers: int, on_shard):
    if not shards:
        return
    out = shards[0].parents[1]
    if workers <= 1 or len(shards) == 1:
        for path in shards:
            yield check_shard(path, out, identity)
            if on_shard:
                on_shard()
        return
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    # spawn: a forked child would share the parent's HDF5 state.
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        for check in pool.map(check_shard, shards, [out] * len(shards), [identity] * len(shards)):
            yield check
            if on_shard:
                on_shard()


# -- across shards --------------------------------------------------------------------------


def _stored_identity(out: Path, report: VerifyReport) -> Optional[dict]:
    path = out / METADATA_FILE
    try:
        identity = json.loads(path.read_text(encoding="utf-8")).get("identity")
    except FileNotFoundError:
        report.problems.append(Problem(METADATA_FILE, "missing: the shards' identity cannot be checked against it "
                                                      "(rerun the extraction to write it again)"))
        return None
    except (OSError, ValueError, AttributeError) as error:
        report.problems.append(Problem(METADATA_FILE, f"not lebench metadata ({one_line(error)})"))
        return None
    if not isinstance(identity, dict):
        report.problems.append(Problem(METADATA_FILE, "holds no run identity"))
        return None
    return identity


def _find_duplicates(out: Path, named: list, ids_of: dict, report: VerifyReport) -> None:
    """An id in shards of two parts is damage (a copied shard); in two shards of one part it
    is an --update cut short, which every reader resolves (the later copy) and the part's next
    run finishes: said, not moved."""
    superseded = superseded_ids([(name, path, table) for name, path, table in _tables_of(named, ids_of)])
    for path, ids in superseded.items():
        report.unchecked.append(f"{path.relative_to(out).as_posix()}: {len(ids)} ids also in a later shard of "
                                "its part (an --update cut short): the part's next run removes these old copies")
    first_shard = {}
    for _, path in named:
        repeated = []
        for utt_id in ids_of.get(path, []):
            first = first_shard.setdefault(utt_id, path)
            if first == path or utt_id in superseded.get(path, ()):
                continue
            if utt_id in superseded.get(first, ()):  # the older copy of its part: this one is it
                first_shard[utt_id] = path
            else:
                repeated.append(utt_id)
        for utt_id in repeated:
            report.problems.append(Problem(path.relative_to(out).as_posix(),
                                           f"also stored in {first_shard[utt_id].relative_to(out).as_posix()}",
                                           utt_id))
        if repeated and path not in report.to_move:
            report.to_move.append(path)


def _tables_of(named: list, ids_of: dict) -> list:
    """(name, path, table) of the shards that hold ids and whose tables read (the others are
    reported already)."""
    tables = []
    for name, path in named:
        if ids_of.get(path):
            try:
                tables.append((name, path, read_shard_table(path)))
            except (InputError, StoreIntegrityError, StoreReadError):
                continue
    return tables


def _find_missing_shards(out: Path, shards: list, report: VerifyReport) -> None:
    present = {path.relative_to(out).as_posix() for path in shards}
    for index in sorted(out.glob("index-*of*.tsv")):
        counts: dict = {}
        try:
            lines = index.read_text(encoding="utf-8").splitlines()[1:]
        except (OSError, ValueError) as error:
            report.problems.append(Problem(index.name, f"read error: {one_line(error)}"))
            continue
        for line in lines:
            fields = line.split("\t", 2)
            if len(fields) > 1:
                counts[fields[1]] = counts.get(fields[1], 0) + 1
        for shard in sorted(set(counts) - present):
            report.problems.append(Problem(shard, f"missing ({index.name} lists its {counts[shard]} utterances): "
                                                  "rerun the extraction to extract them again"))


def _find_stray_files(out: Path, report: VerifyReport) -> None:
    folder = out / SHARDS_DIR
    for path in sorted(folder.glob("*.h5.tmp")) if folder.is_dir() else ():
        name = path.relative_to(out).as_posix()
        part = _part_of(path, strict=False)
        if part is not None and _part_is_being_written(out, *part):
            report.unchecked.append(f"{name}: the shard part {part[0]}/{part[1]} is writing now: not checked")
            continue
        report.problems.append(Problem(name, "a stray .tmp file left by an interrupted run (never read)"))
        if part is not None:
            report.to_move.append(path)


def _part_of(path: Path, strict: bool = True):
    match = _PART_OF.match(path.name)
    if match is None:
        if strict:
            raise OutputError(f"{path} is not named as a shard of a part")
        return None
    part, num_parts = int(match[1]), int(match[2])
    part_tag(part, num_parts)
    return part, num_parts


def _part_is_being_written(out: Path, part: int, num_parts: int) -> bool:
    lock = out / f".lock-{part_tag(part, num_parts)}"
    try:
        fd = os.open(lock, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        return True
    finally:
        os.close(fd)
    return False


def _free_name(path: Path) -> Path:
    candidate, number = path, 1
    while candidate.exists():
        candidate = path.with_name(f"{path.name}.{number}")
        number += 1
    return candidate


def _without_path(message: str, path: Path) -> str:
    """A library error's message without the shard's path in front (the line starts with it)."""
    for prefix in (f"{path}: ", f"{path} "):
        if message.startswith(prefix):
            return message[len(prefix):]
    return message
