"""SpeechBrain manifests: CSV with a header (`ID, duration, wav, spk_id, wrd, ...`) and JSON
(`{"<id>": {"wav": ..., ...}}`), with `$data_root` placeholders and optional start/stop.

Units of start/stop: columns named `start_sec`/`stop_sec` (or `_seconds`, `_s`) count seconds,
`start_samples`/`stop_samples` samples at the file's own rate; plain `start`/`stop` count what
`--time-unit` says. Without it, a value with a decimal point is seconds and a nonzero whole
number is refused, since recipes write both (SpeechBrain's own `read_audio` takes samples).
A JSON `wav` given as `{"file", "start", "stop"}` is `read_audio`'s form: samples."""

from __future__ import annotations

import csv
import json
import re
from functools import lru_cache

from ...errors import InputError
from ...names import printable
from ..sources import AudioSource, Segment
from .common import CorpusOptions, RecordingLengths, UniqueIds, existing_file, metadata_of, read_text_lines, where

PATH_COLUMNS = ("wav", "path", "file", "audio")
_UNIT_SUFFIXES = {"": None, "_sec": "seconds", "_seconds": "seconds", "_s": "seconds", "_samples": "samples"}
_PLACEHOLDER = re.compile(r"\$\{(\w+)\}|\$(\w+)|\{(\w+)\}")
_WHOLE = re.compile(r"[0-9]+")
_DECIMAL = re.compile(r"[0-9]*\.[0-9]*([eE][-+]?[0-9]+)?|[0-9]+[eE][-+]?[0-9]+")


def read_csv(path: str, options: CorpusOptions) -> list:
    rows = list(csv.reader(read_text_lines(path)))
    if not rows:
        raise InputError(f"{printable(path)}: empty manifest (expected a header line)")
    header = [name.strip() for name in rows[0]]
    id_column = _column(where(path, 1), header, options.id_column, ("ID", "id"), "--id-column", "id")
    path_column = _column(where(path, 1), header, options.path_column, PATH_COLUMNS, "--path-column", "audio path")
    times = _time_columns(header, options.time_unit)
    used = {id_column, path_column, *(name for name, _ in times.values())}
    sources, seen, lengths = [], UniqueIds(), RecordingLengths()
    for number, row in enumerate(rows[1:], start=2):
        if not any(field.strip() for field in row):
            continue
        at = where(path, number)
        if len(row) != len(header):
            raise InputError(f"{at}: {len(row)} fields, the header has {len(header)}")
        fields = dict(zip(header, (field.strip() for field in row)))
        entry = {"id": fields[id_column], "path": fields[path_column],
                 **{key: (fields[name], unit) for key, (name, unit) in times.items()}}
        metadata = metadata_of(((name, fields[name]) for name in header), skip=used)
        sources.append(_source(entry, metadata, at, seen, options, lengths))
    return sources


def read_json(path: str, options: CorpusOptions) -> list:
    try:
        entries = json.loads("\n".join(read_text_lines(path)))
    except json.JSONDecodeError as error:
        raise InputError(f"{where(path, error.lineno)}: not JSON ({error.msg})") from None
    if not isinstance(entries, dict):
        raise InputError(f"{printable(path)}: expected an object of entries by id, found {json.dumps(entries)[:40]}")
    sources, seen, lengths = [], UniqueIds(), RecordingLengths()
    for utt_id, fields in entries.items():
        at = f"{printable(path)}: entry '{printable(utt_id)}'"
        if not isinstance(fields, dict):
            raise InputError(f"{at}: expected an object of fields, found {json.dumps(fields)[:40]}")
        audio_key = _column(at, list(fields), options.path_column, PATH_COLUMNS, "--path-column", "audio path")
        audio = fields[audio_key]
        if isinstance(audio, dict):  # read_audio's {"file", "start", "stop"}, in samples
            entry = {"path": audio.get("file")}
            entry.update({key: (audio[key], options.time_unit or "samples") for key in ("start", "stop") if key in audio})
        else:
            entry = {"path": audio}
            times = _time_columns(list(fields), options.time_unit)
            entry.update({key: (fields[name], unit) for key, (name, unit) in times.items()})
        entry["id"] = utt_id
        used = {audio_key, *(name for name, _ in _time_columns(list(fields), None).values())}
        metadata = metadata_of(((name, _scalar(value)) for name, value in fields.items()), skip=used)
        sources.append(_source(entry, metadata, at, seen, options, lengths))
    return sources


def _source(entry: dict, metadata: tuple, at: str, seen: UniqueIds, options: CorpusOptions,
            lengths: RecordingLengths) -> AudioSource:
    utt_id = str(entry["id"]).strip()
    if not utt_id:
        raise InputError(f"{at}: empty id")
    seen.add(utt_id, at)
    if not isinstance(entry["path"], str) or not entry["path"].strip():
        raise InputError(f"{at}: no audio path")
    path = existing_file(_fill_placeholders(entry["path"].strip(), at, options.root), at)
    segment = None
    if "start" in entry or "stop" in entry:
        start = _seconds(entry.get("start", (0, "seconds")), "start", path, at)
        stop = _seconds(entry.get("stop", ("", "seconds")), "stop", path, at)
        if stop is not None and stop <= start:
            raise InputError(f"{at}: stop {entry['stop'][0]} is not after start {entry.get('start', (0,))[0]}")
        segment = Segment(start or 0.0, stop)
        lengths.check_end(at, utt_id, segment, path, path)
    return AudioSource(utt_id, path, segment=segment, metadata=metadata)


def _column(at: str, header: list, asked, defaults: tuple, flag: str, role: str) -> str:
    if asked is not None:
        if asked not in header:
            raise InputError(f"{at}: no column '{asked}' ({', '.join(header)}): name the {role} column with {flag}")
        return asked
    for name in defaults:
        if name in header:
            return name
    raise InputError(f"{at}: no {role} column ({' or '.join(defaults)}) among {', '.join(header)}: "
                     f"name it with {flag}")


def _time_columns(header: list, time_unit) -> dict:
    """{"start"/"stop": (column, unit or None)}, the unit from the column's name or --time-unit."""
    found = {}
    for key in ("start", "stop"):
        for suffix, unit in _UNIT_SUFFIXES.items():
            if key + suffix in header:
                found[key] = (key + suffix, unit or time_unit)
                break
    return found


def _seconds(value_and_unit: tuple, name: str, path: str, at: str):
    value, unit = value_and_unit
    text = str(value).strip()
    if text == "" or value is None:
        return None
    if isinstance(value, float) or _DECIMAL.fullmatch(text):
        if unit == "samples":
            raise InputError(f"{at}: {name} {text} is not a whole number of samples")
        return float(text)
    if not _WHOLE.fullmatch(text):
        raise InputError(f"{at}: {name} '{text}' is not a number")
    if unit == "samples":
        return int(text) / _sample_rate(path, at)
    if unit is None and int(text) != 0:
        raise InputError(f"{at}: {name} {text} is a whole number: seconds or samples? say --time-unit seconds "
                         f"or --time-unit samples (or name the columns {name}_sec / {name}_samples)")
    return float(text)


@lru_cache(maxsize=4096)
def _rate_of(path: str) -> int:
    import soundfile

    return soundfile.info(path).samplerate


def _sample_rate(path: str, at: str) -> int:
    try:
        return _rate_of(path)
    except Exception as error:  # soundfile's errors are not one type
        raise InputError(f"{at}: {printable(path)}: cannot read its sample rate to convert samples to seconds "
                         f"({' '.join(str(error).split())})") from None


def _fill_placeholders(path: str, at: str, root) -> str:
    def fill(match):
        name = next(group for group in match.groups() if group)
        if name == "data_root" and root is not None:
            return root.rstrip("/")
        fix = "give its folder with --root DIR" if name == "data_root" else "only $data_root is filled (by --root)"
        raise InputError(f"{at}: the path {path} holds the placeholder {match.group(0)}: {fix}")

    return _PLACEHOLDER.sub(fill, path)


def _scalar(value):
    return value if isinstance(value, (str, int, float)) and not isinstance(value, bool) else json.dumps(value)
