"""`lebench extract`: paths -> waveforms -> batches -> hidden states -> shards.

The stages live in their own modules (inputs, decoding, batching, windows, encoder,
readback, storage) and `engine` runs them from probed sources to layer states; this one is
the engine's sink that stores them: writing on a background thread, and bookkeeping
(resume, failures, progress)."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Optional

import numpy as np

from ..audio.decoding import TRUNCATED_FLAG, joined_flags
from ..audio.loading import PADDED_FLAG
from ..errors import AudioError, InputError
from ..frames import CNN, SAMPLE_RATE, frame_count
from .background import BackgroundWriter
from .engine import Engine, Item as _Item, Sink, batches_in_flight, probe_item as _probe, probed  # noqa: F401
from .options import ExtractOptions
from .parts import select_part
from .run_metadata import build_metadata
from .summary import DryRunReport, ExtractSummary
from .time_limit import TimeLimitStops

CHUNKED_FLAG = "chunked"  # computed in overlapping windows (the stored word: docs/format.md)


# ---- planning ---------------------------------------------------------------------------

def discover_sources(options: ExtractOptions, stdin=None) -> list:
    from ..audio.inputs import AUDIO_EXTENSIONS, discover

    sources = discover(options.inputs, options.extensions or AUDIO_EXTENSIONS, stdin=stdin,
                       root=options.root, id_prefix=options.id_prefix, **options.discovery())
    if not sources:
        raise InputError("no audio files found in " + ", ".join(map(str, options.inputs)))
    return select_part(sources, options.part)


def _fingerprint_all(items: list) -> None:
    """Fill item.fingerprint (size, modification time, content hash) of every item, before
    any is decoded: a change after it shows on the next run."""
    from .resume import fingerprints

    for item, found in zip(items, fingerprints([item.source for item in items])):
        item.fingerprint = found


def plan_extract(options: ExtractOptions, stdin=None) -> DryRunReport:
    """What a run would do: file count, duration and estimated output size; writes nothing."""
    from ..model.hashing import sha256_file
    from ..layers import canonical_layers, parse_layers
    from ..model.models import load_checkpoint
    from .resume import plan_resume
    from .run_metadata import build_identity
    from ..storage import check_same_run, stored_sources
    from ..storage.sizing import estimate_store_bytes

    options = options.validate().resolved()
    sources = discover_sources(options, stdin)
    checkpoint = load_checkpoint(options.model, trust=options.trust_checkpoint)
    layers = parse_layers(options.layers, checkpoint.layers)
    output = Path(options.output)
    stored = {}
    if output.is_dir() and not options.overwrite:  # the checks of the real run, on the same folder
        identity = build_identity(options, sha256_file(checkpoint.weights_path), canonical_layers(layers))
        check_same_run(output, identity)
        stored = stored_sources(output, identity)
    resume = plan_resume(sources, stored, update=options.update, part=options.part)
    todo = [_Item(s) for s in resume.todo]
    readable = [item for item in todo if _probe(item) is None]
    unreadable = len(todo) - len(readable)
    seconds = sum(item.seconds for item in todo)
    widths = [_cnn_width(checkpoint) if layer == CNN else checkpoint.width for layer in layers]
    size = estimate_store_bytes(
        frames=[max(1, frame_count(int(item.seconds * SAMPLE_RATE))) for item in readable],
        text_bytes=[len(item.source.utt_id.encode()) + len(os.fsencode(item.source.path)) for item in readable],
        widths=widths, itemsize=np.dtype(options.save_dtype).itemsize, store_frames=options.store_frames,
        store_mean=options.pool == "mean", shard_size_bytes=options.shard_size)
    return DryRunReport(len(todo) - unreadable, resume.already_stored, unreadable, seconds, size,
                        conflicts=len(resume.conflicts))


def _cnn_width(checkpoint) -> int:
    from ..model.conversion import parse_conv_layers

    return parse_conv_layers(checkpoint.weights_path, checkpoint.model_config["conv_feature_layers"])[-1][0]


# ---- the run --------------------------------------------------------------------------------


class Extraction(Sink):
    """One run of `lebench extract`; `run()` returns an ExtractSummary.

    progress: a `progress.Progress` to report to (True: a ProgressBar on stderr).
    sources: this part's sources, already listed (`--devices` lists once for all its workers);
    by default the inputs of `options` are listed and split here.
    task_started: when the task began (time.monotonic(); `--devices`: before its listing), for
    what a time-limit stop says of the time the task had; by default when run() is called."""

    def __init__(self, options: ExtractOptions, stdin=None, progress=None, sources=None,
                 task_started: Optional[float] = None):
        from .progress import ProgressBar

        self.options = options.validate().resolved()
        self.stdin = stdin
        self.sources = sources
        self.progress = ProgressBar() if progress is True else (progress or None)
        self.summary = ExtractSummary()
        self.streaming = None  # the long recording being encoded: a time_limit.InProgress
        self.task_started = task_started
        self.time_limit = None  # while run() runs: its TimeLimitStops

    def run(self) -> ExtractSummary:
        started = time.monotonic()
        self.time_limit = TimeLimitStops(self, self.options.part, self.task_started or started)
        with self.time_limit as time_limit:
            return self._run(started, time_limit)

    def _run(self, started: float, time_limit) -> ExtractSummary:
        from ..model.hashing import sha256_file
        from ..model.compute_device import describe_device, dtype_name
        from ..model.encoder import Encoder, check_device
        from ..layers import canonical_layers, parse_layers
        from ..model.models import load_checkpoint
        from .resume import plan_resume
        from ..storage import (FailureLog, ShardWriter, WriterOptions, check_writable_destination, stored_sources,
                               writing_part)
        from ..storage.layout import part_tag, shard_tables
        from ..storage.relocations import record_relocations
        from ..storage.update import check_carried, remove_superseded

        options = self.options
        sources = self.sources if self.sources is not None else discover_sources(options, self.stdin)
        output = Path(options.output)
        # Every check before the first side effect: a run that cannot start leaves OUT as it
        # found it (absent stays absent), and the cheap checks come before the model loads.
        check_writable_destination(output)
        check_device(options.device)
        checkpoint = load_checkpoint(options.model, trust=options.trust_checkpoint)
        layers = canonical_layers(parse_layers(options.layers, checkpoint.layers))
        encoder = Encoder(checkpoint, device=options.device, dtype=options.dtype)
        self.summary.device, self.summary.dtype = describe_device(encoder.device), dtype_name(encoder.dtype)
        self.encoder, self.checkpoint, self.layers = encoder, checkpoint, layers
        metadata = build_metadata(options, checkpoint, sha256_file(checkpoint.weights_path), layers, encoder)
        part, parts = options.part
        writer_options = WriterOptions(
            layers=[str(layer) for layer in layers], store_frames=options.store_frames,
            store_mean=options.pool == "mean", save_dtype=options.save_dtype,
            shard_size_bytes=options.shard_size, compression=options.compression,
            commit_seconds=options.commit_seconds, part=part, num_parts=parts,
            compute={"dtype": options.dtype, "device": encoder.device.type},
        )
        with writing_part(output, metadata, part, parts, overwrite=options.overwrite):
            remove_superseded(output, writer_options)  # what an --update cut short left
            tables = shard_tables(output, metadata["identity"])  # read once: the resume scan, then the writer
            resume = plan_resume(sources, stored_sources(output, metadata["identity"], tables), update=options.update,
                                 part=options.part)
            if resume.replaced:
                check_carried(output, writer_options, resume.replaced, tables)  # before anything is written
            record_relocations(output, part_tag(part, parts), resume.relocated)  # the next run does not hash them
            todo = [_Item(s) for s in resume.todo]
            self.summary.files = len(sources)
            self.summary.already_stored = resume.already_stored
            failures = FailureLog(output, part, parts)
            self.summary.failures_path = str(failures.path)
            for source, reason in resume.conflicts:
                self._fail(failures, _Item(source), reason)
            with time_limit.under_lock(output) as part_work:
                todo, given_up = part_work.split(todo)
                for item, reason in given_up:
                    self._fail(failures, item, reason)
                with ShardWriter(output, writer_options, tables) as writer:
                    writer.replace(resume.replaced)
                    background = BackgroundWriter(writer)
                    try:
                        self._process(todo, failures, background)
                    finally:
                        background.finish()
            self.summary.updated = remove_superseded(output, writer_options)
        self.summary.elapsed_seconds = time.monotonic() - started
        return self.summary

    # -- the engine's sink (engine.Sink)

    def done(self, item: _Item):
        if self.progress is not None:
            self.progress.advance(1, item.seconds)

    def failed(self, item: _Item, reason: str):
        self._fail(self._failures, item, reason)

    def stored(self, item: _Item, states: dict):
        self._store(item, states, self._background)

    def recomputed_float32(self):
        self.summary.recomputed_float32 += 1

    def begin(self, item: _Item, windows: list):
        from .resume import source_key
        from .time_limit import InProgress

        source, samples = item.source, item.statistics.samples
        flags = joined_flags(CHUNKED_FLAG if len(windows) > 1 else "", item.flags)
        self._background.begin_utterance(source.utt_id, source_key(source), samples / SAMPLE_RATE,
                                         frame_count(samples), flags=flags, **_fingerprint_fields(item),
                                         metadata=utterance_metadata(source, samples / SAMPLE_RATE))
        self.streaming = InProgress(source.utt_id, str(source.path), time.monotonic(), len(windows))

    def append(self, item: _Item, windows: list, states: dict, non_finite: dict):
        self._append_windows(item.source, windows, states, non_finite, self._background)
        self.streaming.windows_done += len(windows)

    def abort(self, item: _Item, reason):
        self._background.abort_utterance()
        if reason is not None:
            self.streaming = None
            self._fail(self._failures, item, reason)

    def end(self, item: _Item, windows: list):
        self.streaming = None
        self._background.end_utterance()
        self.summary.chunked += int(len(windows) > 1)
        self.summary.truncated += int(TRUNCATED_FLAG in item.flags)
        self.summary.extracted += 1
        self.summary.audio_seconds += item.statistics.samples / SAMPLE_RATE

    # -- stages

    def _process(self, todo: list, failures, background):
        self._failures, self._background = failures, background
        _fingerprint_all(todo)
        readable, unreadable = probed(todo)
        processing_started = time.monotonic()  # the bar's start too: their rates agree
        if self.progress is not None:
            self.progress.start(len(todo), sum(item.seconds for item in readable))
        for item, reason in unreadable:
            self._fail(failures, item, reason)
            self.done(item)
        try:
            engine = Engine(self.encoder, self.layers, self.options, self, batches_in_flight(self.encoder.device))
            engine.run(readable)
        finally:
            self.summary.processing_seconds = time.monotonic() - processing_started
            if self.progress is not None:
                self.progress.close()

    def _fail(self, failures, item: _Item, reason: str):
        from ..names import printable

        failures.record(item.source.utt_id, printable(item.source.path), reason)
        self.summary.failed += 1
        if self.summary.first_failure is None:
            self.summary.first_failure = f"{printable(item.source.path)}: {reason}"
        if self.options.strict:
            raise AudioError(item.source.path, reason)

    @staticmethod
    def _append_windows(source, windows: list, states: dict, non_finite: dict, background):
        if non_finite:  # one window is enough to drop the recording
            raise AudioError(source.path, next(iter(non_finite.values())))
        for index, window in enumerate(windows):
            background.append_frames({
                str(layer): value[index][window.keep_from: window.keep_to] for layer, value in states.items()
            })

    def _store(self, item: _Item, states: dict, background):
        from .resume import source_key
        from ..storage import StoredUtterance

        frames = len(next(iter(states.values())))
        duration = item.original_samples / SAMPLE_RATE
        utterance = StoredUtterance(
            utt_id=item.source.utt_id, source=source_key(item.source),
            duration=duration, frames=frames, flags=item.flags,
            states={str(layer): value for layer, value in states.items()}, **_fingerprint_fields(item),
            metadata=utterance_metadata(item.source, duration),
        )
        flags = item.flags.split(",")
        self.summary.padded += int(PADDED_FLAG in flags)
        self.summary.truncated += int(TRUNCATED_FLAG in flags)
        background.add(utterance)
        self.summary.extracted += 1
        self.summary.audio_seconds += utterance.duration


def utterance_metadata(source, duration: float) -> dict:
    """What the store keeps of the source's metadata pairs: those, and for a segment of a
    recording its "start" and "end" in the recording (seconds; an open end is the start plus
    the stored duration) and the "recording" (the source's path as stored when it names none)."""
    from .resume import stored_path

    metadata = {}
    for name, value in source.metadata:
        if not isinstance(name, str) or isinstance(value, bool) or not isinstance(value, (str, int, float)) \
                or (isinstance(value, float) and not np.isfinite(value)):
            raise InputError(f"{source.path}: metadata {name!r}={value!r} of {source.utt_id}: "
                             "names are strings, values strings or finite numbers")
        metadata[name] = value
    segment = source.segment
    if segment is not None:
        start = float(segment.start)
        metadata["start"] = start
        metadata["end"] = float(segment.end) if segment.end is not None else start + duration
        metadata.setdefault("recording", stored_path(source.path))
    return metadata


def _fingerprint_fields(item: _Item) -> dict:
    """The source's size, modification time and content hash (its recording's: resume.py),
    for resume to tell files apart and to find them again once copied or moved."""
    if item.fingerprint is None:
        return {}
    return {"source_size": item.fingerprint.size, "source_mtime_ns": item.fingerprint.mtime_ns,
            "source_xxh3": item.fingerprint.content_hash}


def run_extract(options: ExtractOptions, stdin=None, progress=None) -> ExtractSummary:
    return Extraction(options, stdin=stdin, progress=progress).run()
