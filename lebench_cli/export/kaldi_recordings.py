"""wav.scp of a Kaldi export: each recording id -> its audio, from the sources the store
recorded (docs/format.md, "Source keys"), so that `segments` names recordings the data
directory defines (Kaldi's validate_data_dir.sh, fix_data_dir.sh and ESPnet want wav.scp
beside it).

A recording that was a plain file is written as its absolute path, one that was a Kaldi
pipe as its command and " |", as Kaldi writes pipes. wav.scp is all or nothing: where one
recording cannot be written (a tar member, a table row, a file gone from this machine, a
path Kaldi's line would split at its whitespace, or two sources under one recording id), no
wav.scp is written and the export's summary line says which and why."""

from __future__ import annotations

import os

from ..storage.source_keys import split_source_key

WAV_SCP = "wav.scp"


def recording_place(row: dict) -> str:
    """Where the audio of a store row's ({"source", "metadata"}) recording is: its source key
    without a segment's `#START,END`."""
    metadata = row["metadata"]
    if "start" in metadata or "end" in metadata:
        return split_source_key(row["source"])[0]
    return row["source"]


def rxfilename(place: str, pipes) -> tuple:
    """(what the wav.scp line says after the recording id: a path or "COMMAND |", "") for the
    place of a recording; ("", why it cannot be written) when it cannot. `pipes()`: the places
    the store recorded as pipe commands (`pipe_places`), asked only of a place that is no file."""
    if not os.path.isfile(place):
        if place in pipes():
            return f"{place} |", ""
        return "", f"{place} is not a file here (a tar member, a table row, or moved since)"
    if any(character.isspace() or not character.isprintable() for character in place) or place.endswith("|"):
        return "", (f"its path {place!r} holds whitespace or ends in '|', which a wav.scp line cannot hold "
                    "(link it under another path and extract from there)")
    return place, ""


def pipe_places(store) -> frozenset:
    """The places of the store's sources that were Kaldi pipes: a pipe is fingerprinted by
    its command text (modification time 0, the xxh3 of the text: pipeline/resume.py), which
    no file's content hash matches."""
    import xxhash

    from ..storage import stored_sources

    pipes = set()
    for stored in stored_sources(store.path).values():
        if stored.mtime_ns != 0 or not stored.content_hash:
            continue
        place = split_source_key(stored.path)[0]
        for candidate in (place, stored.path):  # a whole pipe's command may end like a segment's times
            text = candidate.encode("utf-8", "surrogateescape")
            if xxhash.xxh3_64(text).hexdigest() == stored.content_hash:
                pipes.add(candidate)
    return frozenset(pipes)


def wav_scp_lines(places: dict, pipes) -> tuple:
    """({Kaldi recording id: its wav.scp line}, "") from {Kaldi recording id: {places}}, each
    place looked at once; ({}, the reason) when one recording cannot be written or names two
    audio sources. `pipes()`: pipe_places of the store, read at most once, and only when a
    place is no file (it reads every shard's table of sources again)."""
    lines, known_pipes = {}, []

    def pipes_once() -> frozenset:
        if not known_pipes:
            known_pipes.append(pipes())
        return known_pipes[0]

    for key, found in places.items():
        if len(found) > 1:
            first, second = sorted(found)[:2]
            return {}, f"no {WAV_SCP}: recording {key!r} names two audio sources, {first} and {second}"
        written, problem = rxfilename(next(iter(found)), pipes_once)
        if problem:
            return {}, f"no {WAV_SCP}: recording {key!r}: {problem}"
        lines[key] = f"{key} {written}"
    return lines, ""
