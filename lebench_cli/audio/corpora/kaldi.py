"""Kaldi / ESPnet data directories: `wav.scp` (paths, or pipe commands ending in '|'), and
the optional `segments`, `utt2spk`, `text` and `reco2file_and_channel`.

Only the tables are read here, with their line numbers for messages; kaldiio reads the
audio (and runs the pipes) when it is decoded. Paths are relative to the current folder, as
in Kaldi recipes, which run from the recipe's folder."""

from __future__ import annotations

import os
import re

from ...errors import InputError
from ..sources import AudioSource, PipeCommand, Segment
from .common import CorpusOptions, RecordingLengths, UniqueIds, existing_file, pipe_refused, read_text_lines, where

WAV_SCP = "wav.scp"
_NUMBER = re.compile(r"-?[0-9]+(\.[0-9]*)?([eE][-+]?[0-9]+)?")
# reco2file_and_channel: NIST's 1-based channel numbers, or A/B (Switchboard, Fisher).
_CHANNELS = {"1": 0, "2": 1, "A": 0, "B": 1, "a": 0, "b": 1}


def is_kaldi_dir(folder: str) -> bool:
    return os.path.isfile(os.path.join(folder, WAV_SCP))


def read_kaldi_dir(folder: str, options: CorpusOptions) -> list:
    """One source per utterance: each `segments` line when there is one, else each recording."""
    recordings = _table(os.path.join(folder, WAV_SCP), "recording-id> <path or command |")
    speakers = _optional_values(folder, "utt2spk")
    texts = _optional_values(folder, "text")
    channels = _channels(folder, recordings)
    audio = {rec: _audio(rec, value, at, channels.get(rec), options) for rec, (value, at) in recordings.items()}
    segments_file = os.path.join(folder, "segments")
    if os.path.isfile(segments_file):
        items = _segments(segments_file, recordings)
    else:
        items = [(rec, rec, None, at) for rec, (_, at) in recordings.items()]
    utterances = {utt_id for utt_id, _, _, _ in items}
    listing = "segments" if os.path.isfile(segments_file) else WAV_SCP
    for table in (speakers, texts):
        _require_known(table, utterances, listing)
    sources, lengths = [], RecordingLengths()
    for utt_id, rec, segment, at in items:
        path, origin, channel, extra = audio[rec]
        if origin is None:
            lengths.check_end(at, utt_id, segment, path, rec)
        metadata = [("speaker", speakers[utt_id][0])] if utt_id in speakers else []
        if utt_id in texts:
            metadata.append(("text", texts[utt_id][0]))
        if segment is not None:
            metadata.append(("recording", rec))
        sources.append(AudioSource(utt_id, path, segment=segment, channel=channel, origin=origin,
                                   metadata=tuple(metadata + extra)))
    return sources


def _audio(rec: str, value: str, at: str, channel, options: CorpusOptions):
    """(path, origin, channel, metadata) of one wav.scp entry."""
    if value.endswith("|"):
        if not options.allow_pipes:
            raise pipe_refused(at, "a pipe command (ending in '|')")
        # The recipes' pipes pick the channel themselves (sph2pipe -c 2): applying the
        # reco2file_and_channel one again would ask a mono stream for its second channel.
        extra = [] if channel is None else [("channel", channel)]
        return at, PipeCommand(value[:-1].strip(), at), None, extra
    return existing_file(value, at), None, channel, []


def _table(path: str, expected: str) -> dict:
    """{key: (rest of the line, "file:line")}, keys unique."""
    entries, seen = {}, UniqueIds()
    for number, line in enumerate(read_text_lines(path), start=1):
        if not line.strip():
            continue
        fields = line.strip().split(maxsplit=1)
        at = where(path, number)
        if len(fields) < 2:
            raise InputError(f"{at}: expected '<{expected}>', found one field")
        seen.add(fields[0], at)
        entries[fields[0]] = (fields[1].strip(), at)
    return entries


def _optional_values(folder: str, name: str) -> dict:
    """{utterance id: (value, "file:line")} of utt2spk or text; {} without the file."""
    path = os.path.join(folder, name)
    if not os.path.isfile(path):
        return {}
    if name == "text":  # a blank transcription is a line of one field
        values = {}
        for number, line in enumerate(read_text_lines(path), start=1):
            fields = line.strip().split(maxsplit=1)
            if fields:
                values[fields[0]] = (fields[1] if len(fields) > 1 else "", where(path, number))
        return values
    return _table(path, f"utterance-id> <{name[4:]}")


def _require_known(table: dict, utterances: set, listing: str) -> None:
    """A line for an utterance the dir does not hold is a mistake in the dir (Kaldi's
    validate_data_dir.sh refuses it too), not something to drop without a word."""
    for utt_id, (_, at) in table.items():
        if utt_id not in utterances:
            raise InputError(f"{at}: utterance '{utt_id}' is not in {listing}")


def _channels(folder: str, recordings: dict) -> dict:
    path = os.path.join(folder, "reco2file_and_channel")
    if not os.path.isfile(path):
        return {}
    channels = {}
    for rec, (rest, at) in _table(path, "recording-id> <file> <channel").items():
        fields = rest.split()
        if len(fields) != 2:
            raise InputError(f"{at}: expected '<recording-id> <file> <channel>', found {len(fields) + 1} fields")
        if fields[1] not in _CHANNELS:
            raise InputError(f"{at}: channel '{fields[1]}' is not 1, 2, A or B")
        if rec not in recordings:
            raise InputError(f"{at}: recording '{rec}' is not in {WAV_SCP}")
        channels[rec] = _CHANNELS[fields[1]]
    return channels


def _segments(path: str, recordings: dict) -> list:
    items, seen = [], UniqueIds()
    for number, line in enumerate(read_text_lines(path), start=1):
        fields = line.split()
        if not fields:
            continue
        at = where(path, number)
        if len(fields) != 4:
            raise InputError(f"{at}: expected '<utterance-id> <recording-id> <start> <end>', found "
                             f"{len(fields)} fields")
        utt_id, rec, start, end = fields
        seen.add(utt_id, at)
        if rec not in recordings:
            raise InputError(f"{at}: recording '{rec}' is not in {WAV_SCP}")
        for name, value in (("start", start), ("end", end)):
            if not _NUMBER.fullmatch(value):
                raise InputError(f"{at}: {name} '{value}' is not a number of seconds")
        start_s, end_s = float(start), float(end)
        if start_s < 0:
            raise InputError(f"{at}: start {start} is negative")
        if end_s == -1:  # Kaldi's extract-segments: to the end of the recording
            end_s = None
        elif end_s <= start_s:
            raise InputError(f"{at}: end {end} is not after start {start}")
        items.append((utt_id, rec, Segment(start_s, end_s), at))
    return items
