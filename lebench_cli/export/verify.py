"""`lebench verify DEST` on an export destination: every array the export holds, read back
with its format's own reader (numpy, kaldiio, lhotse), compared exactly with what `lebench
export` would write now from the store DEST/lebench-export.json names (docs/cli.md,
"lebench verify").

Per entry of the record (a layer folder, or npy's stacked files) and utterance it finds:
files and keys missing, unreadable, of another shape or dtype, other values, stale ones (the
store's features changed since, or the utterance is gone from it, or new in it), and files
the record does not list; and a store that is missing or now holds another run. It holds
DEST's export lock shared, so that no export writes while it reads, and memory holds one
exported array and its expected one at a time.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from ..errors import InputError, LebenchError, one_line
from ..storage.verify import Problem
from . import FORMATS, MEANS_FORMATS, MEANS_VARIANT, EntryFileMissing, writer_module
from .record import RECORD_FILE, RECORD_FORMAT, _first_difference, utterance_fingerprints

_RERUN = "rerun lebench export"


def is_export(folder) -> bool:
    """Whether FOLDER is an export destination (it holds lebench-export.json)."""
    return (Path(folder) / RECORD_FILE).is_file()


@dataclass
class ExportReport:
    destination: Path
    store: str = ""
    entries: int = 0
    utterances: int = 0
    checked: int = 0  # arrays read back and equal to what the export writes now
    problems: list = field(default_factory=list)

    @property
    def clean(self) -> bool:
        return not self.problems

    def line(self) -> str:
        found = _counted(len(self.problems), "problem") if self.problems else "no problem found"
        return (f"{_counted(self.entries, 'entry', 'entries')}, {_counted(self.utterances, 'utterance')}, "
                f"{_counted(self.checked, 'array')} checked against {self.store}: {found}")


def _counted(count: int, one: str, many: str = "") -> str:
    return f"{count} {one if count == 1 else many or one + 's'}"


def repair_refusal(destination) -> InputError:
    """--repair mends stores; an export is mended by exporting again."""
    record = read_record(Path(destination))
    store, export_format = record["store"].get("path"), record.get("export_format")
    return InputError(f"--repair moves a store's damaged shards; {destination} is an export: rerun "
                      f"`lebench export {store} --format {export_format} -o {destination}`, which adds, "
                      "replaces and removes what differs")


def verify_export(destination, on_utterance: Optional[Callable[[], None]] = None) -> ExportReport:
    """Checks the export in DEST (see module doc); on_utterance() after each array."""
    from ..reading.store import open_features
    from ..storage.locks import ExportLock

    destination = Path(destination)
    report = ExportReport(destination)
    with ExportLock(destination, shared=True):
        record = read_record(destination)
        report.store = str(record["store"].get("path"))
        report.entries = len(record["entries"])
        report.utterances = len({utt_id for entry in record["entries"].values()
                                 for utt_id in _utterances(entry)})
        if record.get("export_format") not in FORMATS:
            raise InputError(f"{destination / RECORD_FILE} names an unknown export format "
                             f"{record.get('export_format')!r}")
        export_format = record["export_format"]
        writer_module(export_format)  # a missing extra: the line that installs it
        try:
            store = open_features(report.store)
        except LebenchError as error:
            report.problems.append(Problem(RECORD_FILE, f"made from {report.store}, which cannot be opened now "
                                                        f"({error}): nothing was checked"))
            return report
        with store:
            identity = store.metadata.get("identity")
            if identity != record["store"].get("identity"):
                difference = _first_difference(record["store"].get("identity"), identity)
                report.problems.append(Problem(RECORD_FILE, f"made from {report.store}, which now holds another "
                                                            f"run ({difference}): nothing was checked; {_RERUN}"))
                return report
            fingerprints = utterance_fingerprints(store)
            for key in sorted(record["entries"]):
                others = [other for other in record["entries"] if other != key]
                entry = record["entries"][key]
                _check_entry(destination, key, entry, others, store, _entry_writer(export_format, entry), fingerprints,
                             report, on_utterance)
    return report


def read_record(destination: Path) -> dict:
    path = destination / RECORD_FILE
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        if record.get("format") != RECORD_FORMAT or not isinstance(record.get("entries"), dict) \
                or not isinstance(record.get("store"), dict):
            raise ValueError("not an export record")
    except (OSError, ValueError, AttributeError) as error:
        raise InputError(f"cannot read {path}: {getattr(error, 'strerror', None) or error}") from error
    return record


def _entry_writer(export_format: str, entry):
    """The module that wrote ENTRY: its format's, or the one of utterance means where its
    variant says so."""
    variant = entry.get("variant") if isinstance(entry, dict) else None
    means = isinstance(variant, str) and MEANS_VARIANT in variant.split(";") and export_format in MEANS_FORMATS
    return writer_module(export_format, means=means)


def _utterances(entry) -> dict:
    utterances = entry.get("utterances") if isinstance(entry, dict) else None
    return utterances if isinstance(utterances, dict) else {}


def _check_entry(destination: Path, key: str, entry, others: list, store, writer, fingerprints: dict,
                 report: ExportReport, on_utterance) -> None:
    def problem(what: str, utt_id: str = "") -> None:
        report.problems.append(Problem(key, what, utt_id))

    recorded = _utterances(entry)
    try:
        layer, layers, dtype = _variant(key, entry.get("variant") if isinstance(entry, dict) else None, store)
    except ValueError as error:
        problem(f"{error}: not checked; {_RERUN}")
        return
    seen = set()
    try:
        for utt_id, load in writer.stored_arrays(destination, key, others):
            if utt_id in seen:
                problem("exported twice", utt_id)
                continue
            seen.add(utt_id)
            what = _staleness(utt_id, recorded, fingerprints)
            if what is None:
                what = _difference(load, lambda: writer.exported_array(store, utt_id, layer, layers, dtype))
            if what is None:
                report.checked += 1
            else:
                problem(what, utt_id)
            if on_utterance:
                on_utterance()
    except EntryFileMissing as error:
        problem(f"{error}: none of its {len(recorded)} utterances can be read; {_RERUN}")
        return
    except Exception as error:  # a damaged index (scp, gzip, json): what its reader raises, any type
        problem(f"unreadable after {len(seen)} utterances: {one_line(error)}; {_RERUN}")
        return
    for utt_id in recorded:
        if utt_id not in seen:
            problem(f"missing (in the record, not in the export); {_RERUN}", utt_id)
    for utt_id in fingerprints:
        if utt_id not in recorded:
            problem(f"stale: in the store, not exported; {_RERUN}", utt_id)


def _staleness(utt_id: str, recorded: dict, fingerprints: dict) -> Optional[str]:
    if utt_id not in recorded:
        return "not in the record (a file lebench export did not write, or an export cut short)"
    if utt_id not in fingerprints:
        return f"stale: gone from the store since the export; {_RERUN}"
    if recorded[utt_id] != fingerprints[utt_id]:
        return f"stale: the store's features changed since the export; {_RERUN}"
    return None


def _difference(load, expected) -> Optional[str]:
    """What differs between the exported array and the one the export writes now, or None."""
    try:
        array = load()
    except Exception as error:  # numpy's, kaldiio's and lhotse's readers raise many types on damage
        return f"unreadable: {one_line(error)}"
    try:
        wanted = expected()
    except LebenchError as error:
        return f"the store cannot be read: {error}"
    if array.shape != wanted.shape:
        return f"shape {_shape(array)} differs from the store's {_shape(wanted)}"
    if array.dtype != wanted.dtype:
        return f"dtype {array.dtype} differs from the store's {wanted.dtype}"
    if array.tobytes() == wanted.tobytes():
        return None
    differ = np.ascontiguousarray(array).view(np.uint8).reshape(array.size, -1) != \
        np.ascontiguousarray(wanted).view(np.uint8).reshape(wanted.size, -1)
    flat = np.flatnonzero(differ.any(axis=1))
    first = np.unravel_index(flat[0], array.shape)
    return (f"values differ from the store's ({len(flat)} of {array.size}, the first at "
            f"[{', '.join(map(str, first))}])")


def _shape(array: np.ndarray) -> str:
    return "x".join(map(str, array.shape)) or "scalar"


def _variant(key: str, variant, store) -> tuple:
    """(layer, stacked layers, dtype) of an entry, as the export wrote it: layer None with
    the stacked layers for npy --stack; dtype None for the stored one."""
    if not isinstance(variant, str):
        raise ValueError("the record holds no variant for it")
    fields = dict(part.split("=", 1) for part in variant.split(";") if "=" in part)
    dtype = fields.get("dtype")
    dtype = None if dtype in (None, "stored") else dtype
    if key == "stack":
        layers = [_layer(name) for name in fields.get("stack", "").split(",") if name]
        layer = None
    elif key.startswith("layer_"):
        layer = _layer(key[len("layer_"):])
        layers = [layer]
    else:
        raise ValueError("not an entry lebench export writes")
    gone = [str(one) for one in layers if one not in store.layers]
    if gone or not layers:
        raise ValueError(f"layer {', '.join(gone) or '?'} is not stored in {store.path}")
    return layer, layers, dtype


def _layer(name: str):
    return int(name) if name.isdigit() else name
