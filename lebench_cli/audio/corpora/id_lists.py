"""Explicit id lists (`id<TAB>path` lines, in a file or on stdin) and Common Voice tables
(`train.tsv` and the like: a header with `path`, `client_id`, `sentence`, ...)."""

from __future__ import annotations

import csv
import os

from ...errors import InputError
from ...names import printable
from ..sources import AudioSource
from .common import CorpusOptions, UniqueIds, existing_file, metadata_of, read_text_lines, where

COMMON_VOICE_CLIPS = "clips"


def read_id_list(lines: list, name: str) -> list:
    """`name`: the list's file, or "stdin"; relative paths are from the current folder."""
    sources, seen = [], UniqueIds()
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        at = where(name, number)
        fields = line.rstrip("\r\n").split("\t")
        if len(fields) != 2 or not fields[0].strip() or not fields[1].strip():
            raise InputError(f"{at}: expected 'id<TAB>path', found {len(fields)} tab-separated "
                             f"field{'s' if len(fields) != 1 else ''}" + (" (an empty one)" if len(fields) == 2 else ""))
        utt_id, path = fields[0].strip(), fields[1].strip()
        seen.add(utt_id, at)
        sources.append(AudioSource(utt_id, existing_file(path, at)))
    return sources


def read_id_list_file(path: str) -> list:
    return read_id_list(read_text_lines(path), path)


def looks_like_common_voice(path: str) -> bool:
    """A .tsv whose first line is a header naming a `path` column (a fairseq manifest's first
    line is one folder)."""
    try:
        with open(path, encoding="utf-8", errors="replace") as file:
            header = file.readline().rstrip("\r\n").split("\t")
    except OSError:
        return False
    return len(header) > 1 and "path" in header


def read_common_voice(table: str, options: CorpusOptions) -> list:
    """Clips are in `clips/` beside the table. The id is `--id-column`'s value, by default the
    clip's name without extension (Common Voice names every clip uniquely)."""
    clips = os.path.join(os.path.dirname(table), COMMON_VOICE_CLIPS)
    path_column = options.path_column or "path"
    rows = _tsv_rows(table)
    header = rows[0] if rows else []
    for flag, column in (("--path-column", path_column), ("--id-column", options.id_column)):
        if column is not None and column not in header:
            raise InputError(f"{where(table, 1)}: no column '{column}' in the header ({', '.join(header)}): "
                             f"name the right one with {flag}")
    sources, seen = [], UniqueIds()
    for number, row in enumerate(rows[1:], start=2):
        if not any(row):
            continue
        at = where(table, number)
        if len(row) != len(header):
            raise InputError(f"{at}: {len(row)} tab-separated fields, the header has {len(header)}")
        fields = dict(zip(header, row))
        clip = fields[path_column]
        if not clip:
            raise InputError(f"{at}: empty '{path_column}'")
        utt_id = fields[options.id_column] if options.id_column else os.path.splitext(clip)[0]
        if not utt_id:
            raise InputError(f"{at}: empty '{options.id_column}'")
        seen.add(utt_id, at)
        path = existing_file(os.path.join(clips, clip), at)
        sources.append(AudioSource(utt_id, path, metadata=metadata_of(zip(header, row),
                                                                       skip=(path_column, options.id_column))))
    return sources


def _tsv_rows(table: str) -> list:
    # QUOTE_NONE: Common Voice sentences hold quotes, and its tables do not quote fields.
    lines = read_text_lines(table)
    if not lines:
        raise InputError(f"{printable(table)}: empty table (expected a header line)")
    return list(csv.reader(lines, delimiter="\t", quoting=csv.QUOTE_NONE))
