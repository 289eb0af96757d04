"""`lebench extract`: paths -> waveforms -> batches -> hidden states -> shards.

The stages live in their own modules (inputs, decoding, batching, chunking, encoder,
readback, storage); this one wires them: decoding in worker processes ahead of the model, the
model on the main thread (on a GPU, one batch launched ahead of the one being read back),
writing on a background thread, and bookkeeping (resume, failures, progress)."""

from __future__ import annotations

import os
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

from .background import BackgroundWriter
from .decoding import SHORT_FLAG, TRUNCATED_FLAG, joined_flags
from .errors import AudioError, InputError
from .options import ExtractOptions
from .parts import select_part
from .run_metadata import SAMPLE_RATE, build_metadata
from .scaleout.time_limit import TimeLimitStops
from .summary import DryRunReport, ExtractSummary

CHUNKED_FLAG = "chunked"


def batches_in_flight(device) -> int:
    """Batches launched before the oldest one's states are read back: on a GPU one, so that it
    computes the next batch while the host stores the last; on a CPU none (nothing to overlap)."""
    return 1 if device.type == "cuda" else 0


@dataclass
class _Item:
    """One source on its way through the pipeline."""

    source: object
    seconds: float = 0.0
    waveform: Optional[np.ndarray] = field(default=None, repr=False)
    samples: int = 0  # as computed (short files padded)
    original_samples: int = 0  # as decoded
    flags: str = ""
    statistics: object = None  # a long recording's RecordingStatistics, measured ahead
    fingerprint: object = None  # the file's size, mtime and content hash before it was decoded (resume.Fingerprint)


# ---- planning ---------------------------------------------------------------------------

def discover_sources(options: ExtractOptions, stdin=None) -> list:
    from .inputs import AUDIO_EXTENSIONS, discover

    sources = discover(options.inputs, options.extensions or AUDIO_EXTENSIONS, stdin=stdin,
                       root=options.root, id_prefix=options.id_prefix)
    if not sources:
        raise InputError("no audio files found in " + ", ".join(map(str, options.inputs)))
    return select_part(sources, options.shard)


def _fingerprint_all(items: list) -> None:
    """Fill item.fingerprint (size, modification time, content hash) of every item, before
    any is decoded: a change after it shows on the next run."""
    from .resume import fingerprints

    for item, found in zip(items, fingerprints([item.source.path for item in items])):
        item.fingerprint = found


def _probe(item: _Item) -> Optional[str]:
    """Fill item.seconds; the failure reason when the file cannot be probed."""
    from .audio import probe

    if item.source.num_samples is not None:
        item.seconds = item.source.num_samples / SAMPLE_RATE
        return None
    try:
        item.seconds = probe(item.source.path).duration_seconds
    except AudioError as error:
        return error.reason
    return None


def plan_extract(options: ExtractOptions, stdin=None) -> DryRunReport:
    """What a run would do: file count, duration and estimated output size; writes nothing."""
    from .checkpoints import sha256_file
    from .layers import canonical_layers, parse_layers
    from .models import load_checkpoint
    from .resume import plan_resume
    from .run_metadata import build_identity
    from .storage import check_same_run, stored_sources
    from .storage.sizing import estimate_store_bytes

    options = options.resolved()
    sources = discover_sources(options, stdin)
    checkpoint = load_checkpoint(options.model, trust=options.trust_checkpoint)
    layers = parse_layers(options.layers, checkpoint.layers)
    output = Path(options.output)
    stored = {}
    if output.is_dir() and not options.overwrite:  # the checks of the real run, on the same folder
        identity = build_identity(options, sha256_file(checkpoint.weights_path), canonical_layers(layers))
        check_same_run(output, identity)
        stored = stored_sources(output, identity)
    resume = plan_resume(sources, stored, update=options.update, part=options.shard)
    todo = [_Item(s) for s in resume.todo]
    readable = [item for item in todo if _probe(item) is None]
    unreadable = len(todo) - len(readable)
    seconds = sum(item.seconds for item in todo)
    widths = [_cnn_width(checkpoint) if layer == "cnn" else checkpoint.width for layer in layers]
    size = estimate_store_bytes(
        frames=[max(1, int((item.seconds * SAMPLE_RATE - 400) // 320 + 1)) for item in readable],
        text_bytes=[len(item.source.utt_id.encode()) + len(os.fsencode(item.source.path)) for item in readable],
        widths=widths, itemsize=np.dtype(options.save_dtype).itemsize, store_frames=options.store_frames,
        store_mean=options.pool == "mean", shard_size_bytes=options.shard_size)
    return DryRunReport(len(todo) - unreadable, resume.already_stored, unreadable, seconds, size,
                        conflicts=len(resume.conflicts))


def _cnn_width(checkpoint) -> int:
    from .checkpoints import parse_conv_layers

    return parse_conv_layers(checkpoint.weights_path, checkpoint.model_config["conv_feature_layers"])[-1][0]


# ---- the run --------------------------------------------------------------------------------


class Extraction:
    """One run of `lebench extract`; `run()` returns an ExtractSummary.

    progress: a `progress.Progress` to report to (True: a ProgressBar on stderr).
    sources: this part's sources, already listed (`--devices` lists once for all its workers);
    by default the inputs of `options` are listed and split here.
    task_started: when the task began (time.monotonic(); `--devices`: before its listing), for
    what a time-limit stop says of the time the task had; by default when run() is called."""

    def __init__(self, options: ExtractOptions, stdin=None, progress=None, sources=None,
                 task_started: Optional[float] = None):
        from .progress import ProgressBar

        self.options = options.resolved()
        self.stdin = stdin
        self.sources = sources
        self.progress = ProgressBar() if progress is True else (progress or None)
        self.summary = ExtractSummary()
        self._float32_encoder = None
        self._in_flight: deque = deque()  # (Readback, inputs, normalize, on_ready), oldest first
        self.streaming = None  # the long recording being encoded: a time_limit.InProgress
        self.task_started = task_started
        self.time_limit = None  # while run() runs: its TimeLimitStops

    def run(self) -> ExtractSummary:
        started = time.monotonic()
        self.time_limit = TimeLimitStops(self, self.options.shard, self.task_started or started)
        with self.time_limit as time_limit:
            return self._run(started, time_limit)

    def _run(self, started: float, time_limit) -> ExtractSummary:
        from .checkpoints import sha256_file
        from .compute_device import describe_device, dtype_name
        from .encoder import Encoder, check_device
        from .layers import canonical_layers, parse_layers
        from .models import load_checkpoint
        from .resume import plan_resume
        from .storage import (FailureLog, ShardWriter, WriterOptions, check_writable_destination, stored_sources,
                              writing_part)
        from .storage.layout import part_tag, shard_tables
        from .storage.relocations import record_relocations
        from .storage.update import check_carried, remove_superseded

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
        self._depth = batches_in_flight(encoder.device)
        metadata = build_metadata(options, checkpoint, sha256_file(checkpoint.weights_path), layers, encoder)
        part, parts = options.shard
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
                                 part=options.shard)
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

    def _advance(self, item: _Item):
        if self.progress is not None:
            self.progress.advance(1, item.seconds)

    # -- stages

    def _process(self, todo: list, failures, background):
        from .batching import length_batches

        readable, unreadable = [], []
        _fingerprint_all(todo)
        for item in todo:
            reason = _probe(item)
            if reason is None:
                readable.append(item)
            else:
                unreadable.append((item, reason))
        processing_started = time.monotonic()  # the bar's start too: their rates agree
        if self.progress is not None:
            self.progress.start(len(todo), sum(item.seconds for item in readable))
        for item, reason in unreadable:
            self._fail(failures, item, reason)
            self._advance(item)
        # Longest first: a batch that does not fit in memory shows up at the start.
        readable.sort(key=lambda item: (-item.seconds, item.source.utt_id))
        try:
            # One decoding stream: the workers measure the long recordings (their first
            # pass) ahead of the windows read here, and decode the others whole.
            decoded = self._decoded_items(readable, failures)
            chunk_samples = self.options.chunk_seconds * SAMPLE_RATE
            for group in length_batches(decoded, lambda item: item.samples, self.options.batch_seconds):
                for item in group:
                    if item.samples > chunk_samples:  # measured, or longer than its header or manifest said
                        item.waveform = None
                        self._encode_streamed(item, failures, background)
                        self._advance(item)
                short = [item for item in group if item.samples <= chunk_samples]
                if short:
                    self._encode_batch(short, failures, background)
            self._finish_all()
        finally:
            self.summary.processing_seconds = time.monotonic() - processing_started
            if self.progress is not None:
                self.progress.close()

    def _decoded_items(self, items: list, failures):
        from .decoding import RecordingStatistics, decode, decoded_stream

        ahead = max(4, 4 * max(1, self.options.workers))
        keep = self.options.keep_truncated
        stream = decoded_stream(items, self.options.workers, self.options.channel, ahead,
                                streamed_over=self.options.chunk_seconds, normalize=self.encoder.normalize,
                                keep_truncated=keep)
        for item, (value, reason) in stream:
            if isinstance(value, RecordingStatistics) and value.samples <= self.options.chunk_seconds * SAMPLE_RATE:
                value, reason = decode(item.source, self.options.channel, keep)  # shorter than its manifest said
            if reason is not None:
                self._fail(failures, item, reason)
                self._advance(item)
                continue
            if isinstance(value, RecordingStatistics):
                item.statistics, item.samples = value, value.samples
                item.flags = TRUNCATED_FLAG if value.truncated else ""
            else:
                item.waveform, item.flags, item.original_samples = value
                item.samples = len(item.waveform)
            yield item

    def _fail(self, failures, item: _Item, reason: str):
        from .names import printable

        failures.record(item.source.utt_id, printable(item.source.path), reason)
        self.summary.failed += 1
        if self.summary.first_failure is None:
            self.summary.first_failure = f"{printable(item.source.path)}: {reason}"
        if self.options.strict:
            raise AudioError(item.source.path, reason)

    def _encode_batch(self, items: list, failures, background):
        waveforms = [item.waveform for item in items]
        for item in items:
            item.waveform = None  # the padded batch holds the audio from here on

        def store(states: dict, non_finite: dict):
            for index, item in enumerate(items):
                if index in non_finite:
                    self._fail(failures, item, non_finite[index])
                else:
                    self._store(item, {layer: value[index] for layer, value in states.items()}, background)
                self._advance(item)

        self._launch(waveforms, store)

    def _encode_streamed(self, item: _Item, failures, background):
        """A long recording, read twice a block at a time (its statistics, usually measured
        ahead in a decoding worker, then its windows), its frames written as they come:
        memory is bounded by the window, not the recording."""
        from .chunking import frame_count, normalised_window_batches, plan_windows
        from .decoding import recording_statistics
        from .resume import stored_path
        from .scaleout.time_limit import InProgress

        statistics, reason = item.statistics, None
        if statistics is None:  # decoded whole first: its header or manifest said it was short
            statistics, reason = recording_statistics(item.source, self.options.channel, self.encoder.normalize,
                                                      self.options.keep_truncated)
            item.flags = TRUNCATED_FLAG if reason is None and statistics.truncated else ""
        if reason is not None:
            self._fail(failures, item, reason)
            return
        samples, mean, std = statistics.samples, statistics.mean, statistics.std
        windows = plan_windows(samples, self.options.chunk_seconds, self.options.overlap_seconds)
        source = item.source
        self._finish_all()  # the utterances before this one reach the writer first
        background.put("begin_utterance", source.utt_id, stored_path(source.path), samples / SAMPLE_RATE,
                       frame_count(samples), flags=joined_flags(CHUNKED_FLAG if len(windows) > 1 else "", item.flags),
                       **_fingerprint_fields(item))
        batches = normalised_window_batches(source.path, self.options.channel, windows, self.options.batch_seconds,
                                            self.options.chunk_seconds, mean, std)
        self.streaming = streaming = InProgress(source.utt_id, str(source.path), time.monotonic(), len(windows))

        def append(states, non_finite, group):
            self._append_windows(source, group, states, non_finite, background)
            streaming.windows_done += len(group)

        try:
            for group, waves in batches:
                self._launch(waves, lambda states, non_finite, group=group: append(states, non_finite, group),
                             normalize=False)
            self._finish_all()
        except AudioError as error:
            self._in_flight.clear()  # windows of this recording only: it is dropped
            background.put("abort_utterance")
            self.streaming = None
            self._fail(failures, item, error.reason)
            return
        except BaseException:
            self._in_flight.clear()
            background.put("abort_utterance")
            raise
        self.streaming = None
        background.put("end_utterance")
        self.summary.chunked += int(len(windows) > 1)
        self.summary.truncated += int(TRUNCATED_FLAG in item.flags)
        self.summary.extracted += 1
        self.summary.audio_seconds += samples / SAMPLE_RATE

    @staticmethod
    def _append_windows(source, windows: list, states: dict, non_finite: dict, background):
        if non_finite:  # one window is enough to drop the recording
            raise AudioError(source.path, next(iter(non_finite.values())))
        for index, window in enumerate(windows):
            background.put("append_frames", {
                str(layer): value[index][window.keep_from: window.keep_to] for layer, value in states.items()
            })

    def _launch(self, waveforms: list, on_ready, normalize: Optional[bool] = None):
        """Runs the model on `waveforms` and calls on_ready({layer: [one [frames, width] array
        per waveform]}, {index: reason}) once their states are on the host: on a GPU, after
        the next batch has been launched (`batches_in_flight`). Every batch is checked for
        NaN and infinity (`readback.Readback`); a half-precision batch that has one is
        recomputed in float32, and the waveforms still not finite there are given with the
        reason that fails them (their values must not be stored)."""
        import torch

        from .batching import pad_batch, padded_shape
        from .readback import Readback

        on_gpu = self.encoder.device.type == "cuda"
        # Padded straight into page-locked memory on a GPU: the host-to-device copy then runs
        # asynchronously, with no staging copy.
        padded = torch.zeros(padded_shape(waveforms), dtype=torch.float32, pin_memory=on_gpu)
        _, lengths = pad_batch(waveforms, out=padded.numpy())
        inputs = (padded, torch.from_numpy(lengths), self.layers)
        batch = self.encoder.forward(*inputs, normalize=normalize)
        readback = Readback(batch)
        del batch  # the device memory of its states is reused once their copies have run
        self._in_flight.append((readback, inputs, normalize, on_ready))
        while len(self._in_flight) > self._depth:
            self._finish_oldest()

    def _finish_oldest(self):
        import torch

        from .readback import Readback

        readback, inputs, normalize, on_ready = self._in_flight.popleft()
        finite, states = readback.result()
        if not finite and self.encoder.dtype != torch.float32:
            self.summary.recomputed_float32 += 1
            readback = Readback(self._float32().forward(*inputs, normalize=normalize))
            finite, states = readback.result()
        # Batched output equals one-at-a-time output: the other utterances' values are theirs.
        on_ready(states, readback.failures())

    def _finish_all(self):
        while self._in_flight:
            self._finish_oldest()

    def _float32(self):
        from .encoder import Encoder

        if self._float32_encoder is None:
            self._float32_encoder = Encoder(self.checkpoint, device=self.options.device, dtype="float32")
        return self._float32_encoder

    def _store(self, item: _Item, states: dict, background):
        from .resume import stored_path
        from .storage import StoredUtterance

        frames = len(next(iter(states.values())))
        utterance = StoredUtterance(
            utt_id=item.source.utt_id, source=stored_path(item.source.path),
            duration=item.original_samples / SAMPLE_RATE, frames=frames, flags=item.flags,
            states={str(layer): value for layer, value in states.items()}, **_fingerprint_fields(item),
        )
        flags = item.flags.split(",")
        self.summary.padded += int(SHORT_FLAG in flags)
        self.summary.truncated += int(TRUNCATED_FLAG in flags)
        background.put("add", utterance)
        self.summary.extracted += 1
        self.summary.audio_seconds += utterance.duration


def _fingerprint_fields(item: _Item) -> dict:
    """The source file's size, modification time and content hash, for resume to tell files
    apart and to find them again once copied or moved."""
    if item.fingerprint is None:
        return {}
    return {"source_size": item.fingerprint.size, "source_mtime_ns": item.fingerprint.mtime_ns,
            "source_xxh3": item.fingerprint.content_hash}


def run_extract(options: ExtractOptions, stdin=None, progress=None) -> ExtractSummary:
    return Extraction(options, stdin=stdin, progress=progress).run()
