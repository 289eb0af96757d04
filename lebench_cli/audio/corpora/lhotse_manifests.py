"""lhotse manifests (`*.jsonl.gz`, `*.jsonl`): RecordingSet, SupervisionSet and CutSet, read
with lhotse itself (lazily: one line at a time), an optional extra (`lebench[lhotse]`).

One source per supervision, its span relative to its recording (for a cut's supervision: the
cut's offset plus the supervision's start); a cut without supervisions, or a recording that
none names, is one source. The channel is the supervision's (else the cut's); a recording
stored as one file per channel reads the file of that channel."""

from __future__ import annotations

import os

from ...errors import InputError, one_line
from ...names import printable
from ..segments import END_TOLERANCE_SECONDS
from ..sources import AudioSource, PipeCommand, Segment
from .common import CorpusOptions, UniqueIds, existing_file, pipe_refused, require, where

LHOTSE_SUFFIXES = (".jsonl.gz", ".jsonl")


def is_lhotse_manifest(path: str) -> bool:
    return path.lower().endswith(LHOTSE_SUFFIXES)


def read_lhotse(paths: list, options: CorpusOptions) -> list:
    """Every manifest of `paths` together: a SupervisionSet finds its recordings in the
    RecordingSets given with it, or else in the file beside it named with "recordings"
    for "supervisions" (lhotse recipes' names)."""
    lhotse = require("lhotse", "lhotse", "reading lhotse manifests")
    kinds = {path: _open(lhotse, path) for path in paths}
    recording_sets = [path for path, manifest in kinds.items() if isinstance(manifest, lhotse.RecordingSet)]
    supervision_sets = [path for path, manifest in kinds.items() if isinstance(manifest, lhotse.SupervisionSet)]
    if supervision_sets and not recording_sets:
        recording_sets = [_sibling_recordings(lhotse, path) for path in supervision_sets]
        kinds.update({path: _open(lhotse, path) for path in recording_sets})
    recordings = _recordings(kinds, recording_sets)
    sources, seen = [], UniqueIds()
    supervised = set()
    for path in supervision_sets:
        for number, supervision in _items(kinds[path], path):
            at = where(path, number)
            if supervision.recording_id not in recordings:
                raise InputError(f"{at}: supervision '{supervision.id}' names recording '{supervision.recording_id}', "
                                 "which no RecordingSet given holds")
            recording, _ = recordings[supervision.recording_id]
            supervised.add(recording.id)
            sources.append(_supervision_source(supervision, recording, 0.0, None, at, options, seen))
    for recording_id, (recording, at) in recordings.items():
        if recording_id not in supervised:
            sources.append(_whole(recording_id, recording, None, 0.0, None, at, options, seen, ()))
    for path, manifest in kinds.items():
        if isinstance(manifest, lhotse.CutSet):
            for number, cut in _items(manifest, path):
                sources.extend(_cut_sources(lhotse, cut, where(path, number), options, seen))
    return sources


def _open(lhotse, path: str):
    try:
        manifest = lhotse.load_manifest_lazy(path)
    except Exception as error:  # lhotse raises what json, gzip and its classes raise
        raise InputError(f"{printable(path)}: not a lhotse manifest ({one_line(error)})") from None
    if manifest is None:
        return lhotse.RecordingSet()
    return manifest


def _items(manifest, path: str):
    iterator = iter(manifest)
    number = 0
    while True:
        number += 1
        try:
            item = next(iterator)
        except StopIteration:
            return
        except Exception as error:
            raise InputError(f"{where(path, number)}: not a lhotse manifest item ({one_line(error)})") from None
        yield number, item


def _sibling_recordings(lhotse, supervisions: str) -> str:
    folder, name = os.path.split(supervisions)
    candidate = os.path.join(folder, name.replace("supervisions", "recordings"))
    if candidate == supervisions or not os.path.isfile(candidate):
        raise InputError(f"{printable(supervisions)}: a SupervisionSet names recordings but not their audio: "
                         "give its RecordingSet manifest too")
    return candidate


def _recordings(kinds: dict, paths: list) -> dict:
    recordings = {}
    for path in paths:
        for number, recording in _items(kinds[path], path):
            at = where(path, number)
            if recording.id in recordings:
                raise InputError(f"{at}: duplicate recording '{recording.id}' (first at {recordings[recording.id][1]})")
            recordings[recording.id] = (recording, at)
    return recordings


def _cut_sources(lhotse, cut, at: str, options: CorpusOptions, seen: UniqueIds) -> list:
    if isinstance(cut, (lhotse.cut.MixedCut, lhotse.cut.PaddingCut)):
        raise InputError(f"{at}: cut '{cut.id}' is a {type(cut).__name__} (mixed or padded audio): lebench "
                         "extracts recordings, not mixes; give the cuts before mixing or padding")
    if getattr(cut, "recording", None) is None:
        raise InputError(f"{at}: cut '{cut.id}' has no recording (features only)")
    if not cut.supervisions:
        return [_whole(cut.id, cut.recording, cut.channel, cut.start, cut.start + cut.duration, at, options, seen,
                       (("recording", cut.recording.id),))]
    return [_supervision_source(supervision, cut.recording, cut.start, cut.channel, at, options, seen)
            for supervision in cut.supervisions]


def _supervision_source(supervision, recording, offset: float, cut_channel, at: str, options, seen) -> AudioSource:
    if supervision.duration <= 0:
        raise InputError(f"{at}: supervision '{supervision.id}' has duration {supervision.duration:g}: its end is "
                         "not after its start")
    start = max(0.0, offset + supervision.start)
    end = offset + supervision.start + supervision.duration
    if end > recording.duration + END_TOLERANCE_SECONDS:  # within it: cut to the recording, as Kaldi does
        raise InputError(f"{at}: segment '{printable(supervision.id)}' ends at {end:g} s, past the end of "
                         f"recording '{printable(recording.id)}' ({recording.duration:.3f} s)")
    end = min(recording.duration, end)
    channel = supervision.channel if supervision.channel is not None else cut_channel
    metadata = [(name, getattr(supervision, name)) for name in ("speaker", "text", "language", "gender")
                if getattr(supervision, name, None) not in (None, "")]
    metadata.append(("recording", recording.id))
    metadata.extend((name, value) for name, value in (supervision.custom or {}).items()
                    if isinstance(value, (str, int, float)) and not isinstance(value, bool))
    return _whole(supervision.id, recording, channel, start, end, at, options, seen, tuple(metadata))


def _whole(utt_id, recording, channels, start, end, at, options, seen, metadata) -> AudioSource:
    seen.add(utt_id, at)
    path, origin, channel = _audio(recording, channels, at, options)
    segment = None if end is None else Segment(float(start), float(end))
    return AudioSource(utt_id, path, segment=segment, channel=channel, origin=origin, metadata=metadata)


def _audio(recording, channels, at: str, options: CorpusOptions) -> tuple:
    """(path, origin, channel index in that file) of `channels` of `recording`."""
    for transform in recording.transforms or ():
        name = transform.get("name") if isinstance(transform, dict) else type(transform).__name__
        if name != "Resample":  # lebench resamples anyway; speed or volume changes alter the audio
            raise InputError(f"{at}: recording '{recording.id}' has a {name} transform: lebench extracts the "
                             "recorded audio; give the manifest without augmentation")
    wanted = [channels] if isinstance(channels, int) else list(channels) if channels is not None else None
    all_channels = sorted(c for s in recording.sources for c in s.channels)
    if wanted is not None and sorted(wanted) == all_channels:
        wanted = None  # every channel: the mix, as for any file
    if len(recording.sources) == 1 and wanted is None:
        return _read(recording.sources[0], recording, at, options) + (None,)
    if wanted is None or len(wanted) != 1:
        raise InputError(f"{at}: recording '{recording.id}' ({len(recording.sources)} files, channels "
                         f"{all_channels}): lebench reads one channel or one file's mix per utterance, not channels "
                         f"{wanted or all_channels} of several files")
    for source in recording.sources:
        if wanted[0] in source.channels:
            index = source.channels.index(wanted[0])
            return _read(source, recording, at, options) + (index if len(source.channels) > 1 else None,)
    raise InputError(f"{at}: channel {wanted[0]} is not among recording '{recording.id}''s channels {all_channels}")


def _read(source, recording, at: str, options: CorpusOptions) -> tuple:
    if source.type == "file":
        return existing_file(source.source, at), None
    if source.type == "command":
        if not options.allow_pipes:
            raise pipe_refused(at, "a command source")
        return at, PipeCommand(source.source, at)
    raise InputError(f"{at}: recording '{recording.id}' has a source of type {source.type}: lebench reads files "
                     "(and commands with --allow-pipes); store the audio as files first")
