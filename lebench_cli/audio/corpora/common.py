"""What the corpus readers share: their options, line-numbered errors, field names, checks."""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass
from typing import Iterable, Optional

from ...errors import InputError, MissingExtraError, install_extra_hint
from ...names import printable
from ..segments import END_TOLERANCE_SECONDS
from ..sources import AudioSource

TIME_UNITS = ("seconds", "samples")

# Column names of the corpora that mean what the standard metadata names mean (sources.py).
STANDARD_NAMES = {
    "spk_id": "speaker", "speaker_id": "speaker", "client_id": "speaker", "spk": "speaker",
    "wrd": "text", "sentence": "text", "transcription": "text", "transcript": "text",
    "locale": "language", "lang": "language",
}


@dataclass(frozen=True)
class CorpusOptions:
    """How to read manifests: `allow_pipes` runs wav.scp commands; `id_column` and `path_column`
    name the table columns holding the id and the audio; `time_unit` ("seconds" or "samples")
    says what SpeechBrain start/stop columns count; `root` fills $data_root placeholders."""

    allow_pipes: bool = False
    id_column: Optional[str] = None
    path_column: Optional[str] = None
    time_unit: Optional[str] = None
    root: Optional[str] = None


def where(file: str, line: int) -> str:
    return f"{printable(file)}:{line}"


def standard_name(column: str) -> str:
    return STANDARD_NAMES.get(column, column)


def metadata_of(fields: Iterable, skip: Iterable = ()) -> tuple:
    """(name, value) pairs of the fields not in `skip`, named by `standard_name`; empty
    values left out (a table's empty cell says nothing)."""
    skipped = set(skip)
    return tuple((standard_name(name), value) for name, value in fields
                 if name not in skipped and value is not None and value != "")


def existing_file(path: str, at: str) -> str:
    """`path` when it is a file; else an InputError naming the manifest line `at`."""
    if not os.path.isfile(path):
        reason = "is a folder, not an audio file" if os.path.isdir(path) else "no such file"
        raise InputError(f"{at}: {printable(path)}: {reason}")
    return path


def pipe_refused(at: str, what: str) -> InputError:
    return InputError(f"{at}: {what} runs shell code written in the data file; "
                      "pass --allow-pipes to run it")


class UniqueIds:
    """Remembers where each id was first seen, to name both places of a duplicate."""

    def __init__(self):
        self.first = {}

    def add(self, utt_id: str, at: str) -> None:
        seen = self.first.setdefault(utt_id, at)
        if seen != at:
            raise InputError(f"{at}: duplicate id '{printable(utt_id)}' (first at {seen})")


class RecordingLengths:
    """Refuses, while a manifest is read, a segment that ends past its recording: the length
    of each recording file comes from its header (loading.declared_seconds, nothing decoded),
    read once however many segments it has. A header that cannot be read checks nothing here
    (the file fails when decoded, with its reason); a segment within what a truncated file's
    header declares passes, and fails alone when decoded (audio/segments.py). Pipes, tar
    members and table rows are not opened to be checked: callers pass plain files only."""

    def __init__(self):
        self._seconds = {}

    def check_end(self, at: str, utt_id: str, segment, path: str, recording: str) -> None:
        if segment is None or segment.end is None:
            return
        length = self._length(path)
        if length is not None and segment.end > length + END_TOLERANCE_SECONDS:
            raise InputError(f"{at}: segment '{printable(utt_id)}' ends at {segment.end:g} s, past the end of "
                             f"recording '{printable(recording)}' ({length:.3f} s)")

    def _length(self, path: str):
        if path not in self._seconds:
            from ..loading import declared_seconds

            self._seconds[path] = declared_seconds(path)
        return self._seconds[path]


def require(module: str, extra: str, what: str):
    """Imports an optional dependency, or says in one line which extra installs it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise MissingExtraError(f"{what} needs {module}: {install_extra_hint(extra)}") from None


def read_text_lines(path: str) -> list:
    try:
        with open(path, encoding="utf-8", newline="") as file:
            return file.read().splitlines()
    except UnicodeDecodeError:
        raise InputError(f"{printable(path)}: not UTF-8 text") from None
    except OSError as error:
        raise InputError(f"cannot read {printable(path)}: {(error.strerror or str(error)).lower()}") from None


def source(utt_id: str, path: str, **fields) -> AudioSource:
    return AudioSource(utt_id, path, **fields)
