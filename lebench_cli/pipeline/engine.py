"""The extraction engine: probed sources -> per-utterance layer states, handed to a `Sink`.

What `lebench extract` (which stores them) and `features_of` / `iter_features` (which keep
them in memory) both run: longest first, decoding in worker processes ahead of the model,
batches by padded length, long recordings in normalised windows, the model on the main
thread (on a GPU, one batch launched ahead of the one being read back, padded straight into
page-locked memory), every batch checked for NaN and infinity."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Iterator, Optional

import numpy as np

from ..audio.decoding import TRUNCATED_FLAG
from ..errors import AudioError
from ..frames import SAMPLE_RATE


def batches_in_flight(device) -> int:
    """Batches launched before the oldest one's states are read back: on a GPU one, so that it
    computes the next batch while the host stores the last; on a CPU none (nothing to overlap)."""
    return 1 if device.type == "cuda" else 0


@dataclass
class Item:
    """One source on its way through the pipeline."""

    source: object
    seconds: float = 0.0
    waveform: Optional[np.ndarray] = field(default=None, repr=False)
    samples: int = 0  # as computed (short files padded)
    original_samples: int = 0  # as decoded
    flags: str = ""
    statistics: object = None  # a long recording's RecordingStatistics, measured ahead
    fingerprint: object = None  # its recording's size, mtime and content hash before it was decoded (resume.Fingerprint)
    index: int = 0  # its place in the caller's list


def probe_item(item: Item) -> Optional[str]:
    """Fill item.seconds; the failure reason when the file cannot be probed. A segment's
    length comes from its times, without reading its recording (unless it runs to its end)."""
    from ..audio.loading import probe
    from ..audio.segments import segment_seconds

    source = item.source
    if source.num_samples is not None:
        item.seconds = source.num_samples / SAMPLE_RATE
        return None
    seconds = segment_seconds(source)
    if seconds is not None:
        item.seconds = seconds
        return None
    try:
        item.seconds = probe(source).duration_seconds
    except AudioError as error:
        return error.reason
    if source.segment is not None:
        item.seconds = max(0.0, item.seconds - source.segment.start)
    return None


def probed(items: list) -> tuple:
    """(readable items, [(item, reason)] of those that cannot be probed)."""
    readable, unreadable = [], []
    for item in items:
        reason = probe_item(item)
        if reason is None:
            readable.append(item)
        else:
            unreadable.append((item, reason))
    return readable, unreadable


class Sink:
    """Where the engine hands each utterance. Every item given to `Engine.steps` ends with
    `done` (unless the run is interrupted), after `stored` or `failed` for a batched one, or
    `begin`, `append`... and `end` (or `abort`, then `failed` when it has a reason) for a
    long recording."""

    def stored(self, item: Item, states: dict) -> None:
        """A batched utterance's {layer: [frames, width]} states."""

    def failed(self, item: Item, reason: str) -> None:
        """An utterance that cannot be computed (decoding, non-finite states)."""

    def begin(self, item: Item, windows: list) -> None:
        """A long recording's windows start (item.statistics holds its length)."""

    def append(self, item: Item, windows: list, states: dict, non_finite: dict) -> None:
        """States of a group of its windows ({index: reason} of those not finite: one is
        enough to drop the recording, by raising AudioError)."""

    def end(self, item: Item, windows: list) -> None:
        """All its windows are in."""

    def abort(self, item: Item, reason: Optional[str]) -> None:
        """Its windows stop: `reason` when it fails, None when the run is interrupted."""

    def done(self, item: Item) -> None:
        """The item is finished, whatever its outcome."""

    def recomputed_float32(self) -> None:
        """A half-precision batch that was not finite was run again in float32."""


class Engine:
    """Runs `encoder` on items (`steps`), handing their `layers` states to `sink`.

    options: a resolved ExtractOptions (batch_seconds, chunk_seconds, overlap_seconds,
    channel, workers, keep_truncated); depth: `batches_in_flight(encoder.device)`."""

    def __init__(self, encoder, layers: list, options, sink: Sink, depth: int):
        self.encoder, self.layers, self.options, self.sink, self.depth = encoder, layers, options, sink, depth
        self._float32_encoder = None
        self._in_flight: deque = deque()  # (Readback, inputs, normalize, on_ready), oldest first

    def steps(self, items: list, tie=lambda item: item.source.utt_id) -> Iterator[None]:
        """Runs the items (longest first, `tie` between equal lengths); yields after each
        batch group, so that a caller can take what its sink received so far."""
        from .batching import length_batches

        # Longest first: a batch that does not fit in memory shows up at the start.
        items = sorted(items, key=lambda item: (-item.seconds, tie(item)))
        # One decoding stream: the workers measure the long recordings (their first
        # pass) ahead of the windows read here, and decode the others whole.
        decoded = self._decoded_items(items)
        window_samples = self.options.chunk_seconds * SAMPLE_RATE
        for group in length_batches(decoded, lambda item: item.samples, self.options.batch_seconds):
            for item in group:
                if item.samples > window_samples:  # measured, or longer than its header or manifest said
                    item.waveform = None
                    self._encode_windows(item)
                    self.sink.done(item)
            short = [item for item in group if item.samples <= window_samples]
            if short:
                self._encode_batch(short)
            yield
        self._finish_all()

    def run(self, items: list, **kwargs) -> None:
        for _ in self.steps(items, **kwargs):
            pass

    def _decoded_items(self, items: list):
        from ..audio.decoding import RecordingStatistics, decode, decoded_stream

        options = self.options
        ahead = max(4, 4 * max(1, options.workers))
        keep = options.keep_truncated
        stream = decoded_stream(items, options.workers, options.channel, ahead,
                                streamed_over=options.chunk_seconds, normalize=self.encoder.normalize,
                                keep_truncated=keep)
        for item, (value, reason) in stream:
            if isinstance(value, RecordingStatistics) and value.samples <= options.chunk_seconds * SAMPLE_RATE:
                value, reason = decode(item.source, options.channel, keep)  # shorter than its manifest said
            if reason is not None:
                self.sink.failed(item, reason)
                self.sink.done(item)
                continue
            if isinstance(value, RecordingStatistics):
                item.statistics, item.samples = value, value.samples
                item.flags = TRUNCATED_FLAG if value.truncated else ""
            else:
                item.waveform, item.flags, item.original_samples = value
                item.samples = len(item.waveform)
            yield item

    def _encode_batch(self, items: list):
        waveforms = [item.waveform for item in items]
        for item in items:
            item.waveform = None  # the padded batch holds the audio from here on

        def ready(states: dict, non_finite: dict):
            for index, item in enumerate(items):
                if index in non_finite:
                    self.sink.failed(item, non_finite[index])
                else:
                    self.sink.stored(item, {layer: value[index] for layer, value in states.items()})
                self.sink.done(item)

        self._launch(waveforms, ready)

    def _encode_windows(self, item: Item):
        """A long recording, read twice a block at a time (its statistics, usually measured
        ahead in a decoding worker, then its windows), its states handed on as they come:
        memory is bounded by the window, not the recording."""
        from .windows import normalised_window_batches, plan_windows
        from ..audio.decoding import recording_statistics

        options = self.options
        statistics, reason = item.statistics, None
        if statistics is None:  # decoded whole first: its header or manifest said it was short
            statistics, reason = recording_statistics(item.source, options.channel, self.encoder.normalize,
                                                      options.keep_truncated)
            item.flags = TRUNCATED_FLAG if reason is None and statistics.truncated else ""
        if reason is not None:
            self.sink.failed(item, reason)
            return
        item.statistics = statistics
        windows = plan_windows(statistics.samples, options.chunk_seconds, options.overlap_seconds)
        self._finish_all()  # the utterances before this one reach the sink first
        self.sink.begin(item, windows)
        batches = normalised_window_batches(item.source, options.channel, windows, options.batch_seconds,
                                            options.chunk_seconds, statistics.mean, statistics.std)
        try:
            for group, waves in batches:
                self._launch(waves, lambda states, non_finite, group=group: self.sink.append(
                    item, group, states, non_finite), normalize=False)
            self._finish_all()
        except AudioError as error:
            self._in_flight.clear()  # windows of this recording only: it is dropped
            self.sink.abort(item, error.reason)
            return
        except BaseException:
            self._in_flight.clear()
            self.sink.abort(item, None)
            raise
        self.sink.end(item, windows)

    def _launch(self, waveforms: list, on_ready, normalize: Optional[bool] = None):
        """Runs the model on `waveforms` and calls on_ready({layer: [one [frames, width] array
        per waveform]}, {index: reason}) once their states are on the host: on a GPU, after
        the next batch has been launched (`depth`). Every batch is checked for NaN and
        infinity (`readback.Readback`); a half-precision batch that has one is recomputed in
        float32, and the waveforms still not finite there are given with the reason that
        fails them (their values must not be stored)."""
        import torch

        from .batching import pad_batch, padded_shape
        from .stop_signals import stop_if_requested
        from ..model.readback import Readback

        stop_if_requested()  # a stop whose KeyboardInterrupt Python dropped (see there)

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
        while len(self._in_flight) > self.depth:
            self._finish_oldest()

    def _finish_oldest(self):
        import torch

        from ..model.readback import Readback

        readback, inputs, normalize, on_ready = self._in_flight.popleft()
        finite, states = readback.result()
        if not finite and self.encoder.dtype != torch.float32:
            self.sink.recomputed_float32()
            readback = Readback(self._float32().forward(*inputs, normalize=normalize))
            finite, states = readback.result()
        # Batched output equals one-at-a-time output: the other utterances' values are theirs.
        on_ready(states, readback.failures())

    def _finish_all(self):
        while self._in_flight:
            self._finish_oldest()

    def _float32(self):
        from ..model.encoder import Encoder

        if self._float32_encoder is None:
            self._float32_encoder = Encoder(self.encoder.checkpoint, device=self.encoder.device, dtype="float32")
        return self._float32_encoder
