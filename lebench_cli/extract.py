"""`lebench extract`: paths -> waveforms -> batches -> hidden states -> shards.

The stages live in their own modules (inputs, decoding, batching, chunking, encoder,
readback, storage); this one wires them: decoding in worker processes ahead of the model, the
model on the main thread (on a GPU, one batch launched ahead of the one being read back),
writing on a background thread, and bookkeeping (resume, failures, progress)."""

from __future__ import annotations

import queue
import sys
import threading
import time
import zlib
from collections import deque
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

from . import __version__
from .decoding import SHORT_FLAG
from .errors import AudioError, InputError

SAMPLE_RATE = 16000
FRAME_SECONDS = 0.02
CHUNKED_FLAG = "chunked"


@dataclass
class ExtractOptions:
    """Everything `lebench extract` was asked; written into the output's metadata."""

    inputs: list
    output: str
    model: str
    layers: str = "last"
    pool: str = "none"  # "none" or "mean"
    store_frames: Optional[bool] = None  # default: frames unless pooling
    extensions: tuple = ()
    channel: Optional[int] = None
    batch_seconds: Optional[float] = None  # default: 120 on CUDA, 20 on CPU
    chunk_seconds: float = 30.0
    overlap_seconds: float = 5.0
    device: Optional[str] = None
    dtype: Optional[str] = None
    save_dtype: str = "float16"
    shard_size: int = 2 * 1024**3
    compression: Optional[str] = None
    commit_seconds: float = 300.0
    workers: Optional[int] = None  # default: see default_workers
    shard: tuple = (1, 1)
    overwrite: bool = False
    strict: bool = False
    trust_checkpoint: bool = False

    def resolved(self) -> "ExtractOptions":
        import torch

        device = self.device or ("cuda" if torch.cuda.is_available() else "cpu")
        on_gpu = device.startswith("cuda")
        dtype = self.dtype or ("float16" if on_gpu else "float32")
        frames = (self.pool == "none") if self.store_frames is None else self.store_frames
        # On a CPU, big batches buy nothing (one utterance already keeps every core busy)
        # and cost memory bandwidth: on 2 cores, 60 s batches ran 18% slower than 10-30 s
        # ones (docs/performance.md).
        batch_seconds = self.batch_seconds or (120.0 if on_gpu else 20.0)
        workers = default_workers(on_gpu) if self.workers is None else self.workers
        return ExtractOptions(**{**asdict(self), "device": device, "dtype": dtype, "store_frames": frames,
                                 "batch_seconds": batch_seconds, "workers": workers})


def default_workers(on_gpu: bool) -> int:
    """Decoding processes: on a GPU, enough to keep it fed; on a CPU none, because the
    model's threads already use every core and workers would only take turns with them."""
    import os

    return max(1, min(4, (os.cpu_count() or 2) - 1)) if on_gpu else 0


def return_large_blocks_to_the_os(threshold: int = 8 * 1024**2) -> bool:
    """Have glibc serve every allocation of `threshold` bytes or more with a mapping of its
    own, unmapped when freed. By default glibc raises that threshold (up to 32 MB) each time
    such a block is freed and then serves blocks that size from its heap, which fragments as
    batch shapes vary: a CPU run's peak RSS grew with the corpus (1.8 GB for 5 minutes of
    audio, 2.4 GB for 60; docs/performance.md). A process-wide setting, so the command sets
    it, not the library; MALLOC_MMAP_THRESHOLD_, when set, is left alone. True when set."""
    import ctypes
    import os
    import platform

    if "MALLOC_MMAP_THRESHOLD_" in os.environ or platform.libc_ver()[0] != "glibc":
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    return mallopt(-3, threshold) == 1  # -3: M_MMAP_THRESHOLD in malloc.h


def batches_in_flight(device) -> int:
    """Batches launched before the oldest one's states are read back: on a GPU one, so that it
    computes the next batch while the host stores the last; on a CPU none (nothing to overlap)."""
    return 1 if device.type == "cuda" else 0


@dataclass
class ExtractSummary:
    files: int = 0
    already_stored: int = 0
    extracted: int = 0
    failed: int = 0
    padded: int = 0
    chunked: int = 0
    recomputed_float32: int = 0
    audio_seconds: float = 0.0
    elapsed_seconds: float = 0.0
    failures_path: Optional[str] = None
    first_failure: Optional[str] = None

    @property
    def real_time_factor(self) -> float:
        return self.audio_seconds / self.elapsed_seconds if self.elapsed_seconds > 0 else 0.0

    def line(self) -> str:
        text = (
            f"extracted {_count(self.extracted, 'file')} ({_human_duration(self.audio_seconds)} of audio) in "
            f"{self.elapsed_seconds:.1f} s ({self.real_time_factor:.0f}x real time)"
        )
        extras = [
            f"{self.already_stored} already stored" if self.already_stored else "",
            f"{self.padded} padded to one frame" if self.padded else "",
            f"{self.chunked} chunked" if self.chunked else "",
            f"{_count(self.recomputed_float32, 'batch', 'batches')} recomputed in float32" if self.recomputed_float32 else "",
            f"{self.failed} failed (see {self.failures_path})" if self.failed else "",
        ]
        return "; ".join([text] + [e for e in extras if e])


@dataclass
class DryRunReport:
    files: int
    already_stored: int
    unreadable: int
    audio_seconds: float
    estimated_bytes: int

    def line(self) -> str:
        return (
            f"{_count(self.files, 'file')} to extract ({_human_duration(self.audio_seconds)} of audio), "
            f"{self.already_stored} already stored, {self.unreadable} unreadable; "
            f"estimated output {_human_bytes(self.estimated_bytes)}"
        )


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


def select_part(sources: list, part: tuple) -> list:
    """The K-th of N parts, stable across runs and machines (hash of the utterance id)."""
    k, n = part
    if n == 1:
        return sources
    return [s for s in sources if zlib.crc32(s.utt_id.encode("utf-8")) % n == k - 1]


def parse_part(text: str) -> tuple:
    try:
        k, n = (int(v) for v in str(text).split("/"))
    except ValueError:
        raise InputError(f"invalid --shard '{text}': expected K/N, e.g. 3/8") from None
    if not 1 <= k <= n:
        raise InputError(f"invalid --shard '{text}': K must be between 1 and N")
    return k, n


def parse_size(text: str) -> int:
    units = {"": 1, "B": 1, "K": 1024, "KB": 1024, "M": 1024**2, "MB": 1024**2, "G": 1024**3, "GB": 1024**3,
             "T": 1024**4, "TB": 1024**4}
    value = str(text).strip().upper()
    number = value.rstrip("KMGTB")
    try:
        size = int(float(number) * units[value[len(number):]])
    except (ValueError, KeyError):
        raise InputError(f"invalid size '{text}': expected e.g. 500MB or 2GB") from None
    if size <= 0:
        raise InputError(f"invalid size '{text}': must be positive")
    return size


def _count(number: int, singular: str, plural: str = "") -> str:
    return f"{number} {singular if number == 1 else (plural or singular + 's')}"


def _human_duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f} s"
    if seconds < 3600:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.2f} h"


def _human_bytes(count: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if count < 1024 or unit == "TB":
            return f"{count:.1f} {unit}" if unit != "B" else f"{int(count)} B"
        count /= 1024
    return f"{count:.1f} TB"


# ---- planning ---------------------------------------------------------------------------

def discover_sources(options: ExtractOptions, stdin=None) -> list:
    from .inputs import AUDIO_EXTENSIONS, discover

    sources = discover(options.inputs, options.extensions or AUDIO_EXTENSIONS, stdin=stdin)
    if not sources:
        raise InputError("no audio files found in " + ", ".join(map(str, options.inputs)))
    return select_part(sources, options.shard)


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
    from .layers import parse_layers
    from .models import load_checkpoint
    from .storage import stored_ids

    options = options.resolved()
    sources = discover_sources(options, stdin)
    done = stored_ids(Path(options.output)) if Path(options.output, "lebench.json").exists() else set()
    todo = [_Item(s) for s in sources if s.utt_id not in done]
    unreadable = sum(1 for item in todo if _probe(item) is not None)
    seconds = sum(item.seconds for item in todo)
    checkpoint = load_checkpoint(options.model, trust=options.trust_checkpoint)
    layers = parse_layers(options.layers, checkpoint.layers)
    widths = [_cnn_width(checkpoint) if layer == "cnn" else checkpoint.width for layer in layers]
    itemsize = np.dtype(options.save_dtype).itemsize
    frames = sum(max(1, int((item.seconds * SAMPLE_RATE - 400) // 320 + 1)) for item in todo)
    size = 0
    if options.store_frames:
        size += frames * sum(widths) * itemsize
    if options.pool == "mean":
        size += len(todo) * sum(widths) * itemsize
    return DryRunReport(len(todo) - unreadable, len(sources) - len(todo), unreadable, seconds, size)


def _cnn_width(checkpoint) -> int:
    from .checkpoints import parse_conv_layers

    return parse_conv_layers(checkpoint.weights_path, checkpoint.model_config["conv_feature_layers"])[-1][0]


# ---- the run --------------------------------------------------------------------------------

def build_metadata(options: ExtractOptions, checkpoint, sha256: str, layers: list, encoder) -> dict:
    layer_names = [str(layer) for layer in layers]
    identity = {
        "model_sha256": sha256,
        "layers": layer_names,
        "store_frames": options.store_frames,
        "pool": options.pool,
        "save_dtype": options.save_dtype,
        "chunk_seconds": options.chunk_seconds,
        "overlap_seconds": options.overlap_seconds,
        "channel": options.channel,
    }
    return {
        "format": "lebench-features",
        "format_version": 1,
        "identity": identity,
        "tool": "lebench",
        "tool_version": __version__,
        "model": {
            "name": options.model,
            "hub_id": checkpoint.hub_id,
            "format": checkpoint.format,
            "sha256": sha256,
            "num_layers": encoder.num_layers,
            "width": encoder.width,
            "cnn_width": encoder.cnn_width,
            "extractor_mode": checkpoint.model_config.get("extractor_mode", "default"),
            "layer_norm_first": encoder.layer_norm_first,
        },
        "layers": layer_names,
        "layer_numbering": (
            "0 = transformer input (after the positional conv; post-LN models: after the encoder "
            "LayerNorm); i = output of block i; L = encoder output (pre-LN models: with the final "
            "LayerNorm); cnn = conv features after their LayerNorm, before the projection"
        ),
        "normalize": checkpoint.normalize,
        "sample_rate": SAMPLE_RATE,
        "frame_shift_seconds": FRAME_SECONDS,
        "receptive_field_samples": encoder.min_samples,
        "short_files": f"fewer than {encoder.min_samples} samples: zero-padded to one frame, flag '{SHORT_FLAG}'",
        "compute_dtype": options.dtype,
        "save_dtype": options.save_dtype,
        "options": _jsonable(asdict(options)),
    }


def _jsonable(value):
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


class _BackgroundWriter:
    """Calls the shard writer on a thread of its own, in order, so that the model never
    waits for the disk: put("add", utterance), put("append_frames", states), ..."""

    def __init__(self, writer, depth: int = 8):
        self.writer = writer
        self.queue: queue.Queue = queue.Queue(maxsize=depth)
        self.error: Optional[BaseException] = None
        self.thread = threading.Thread(target=self._run, name="lebench-writer", daemon=True)
        self.thread.start()

    def _run(self):
        while True:
            call = self.queue.get()
            if call is None:
                return
            if self.error is None:
                method, args, kwargs = call
                try:
                    getattr(self.writer, method)(*args, **kwargs)
                except BaseException as error:  # re-raised on the main thread
                    self.error = error

    def put(self, method: str, *args, **kwargs):
        self._raise_if_failed()
        self.queue.put((method, args, kwargs))

    def finish(self):
        self.queue.put(None)
        self.thread.join()
        self._raise_if_failed()

    def _raise_if_failed(self):
        if self.error is not None:
            raise self.error


class Extraction:
    """One run of `lebench extract`; `run()` returns an ExtractSummary."""

    def __init__(self, options: ExtractOptions, stdin=None, progress: bool = False):
        self.options = options.resolved()
        self.stdin = stdin
        self.show_progress = progress
        self.summary = ExtractSummary()
        self._float32_encoder = None
        self._in_flight: deque = deque()  # (Readback, inputs, normalize, on_ready), oldest first
        self._progress_bar = None

    def run(self) -> ExtractSummary:
        from .checkpoints import sha256_file
        from .encoder import Encoder
        from .layers import parse_layers
        from .models import load_checkpoint
        from .storage import (FailureLog, PartLock, ShardWriter, WriterOptions, prepare_output,
                              require_writable_folder, stored_ids)

        options = self.options
        started = time.monotonic()
        sources = discover_sources(options, self.stdin)
        output = Path(options.output)
        require_writable_folder(output)  # before the model loads: fail in a second, not a minute
        checkpoint = load_checkpoint(options.model, trust=options.trust_checkpoint)
        layers = parse_layers(options.layers, checkpoint.layers)
        encoder = Encoder(checkpoint, device=options.device, dtype=options.dtype)
        self.encoder, self.checkpoint, self.layers = encoder, checkpoint, layers
        self._depth = batches_in_flight(encoder.device)
        metadata = build_metadata(options, checkpoint, sha256_file(checkpoint.weights_path), layers, encoder)
        prepare_output(output, metadata, overwrite=options.overwrite)
        part, parts = options.shard
        with PartLock(output, part, parts):
            done = stored_ids(output)
            todo = [_Item(s) for s in sources if s.utt_id not in done]
            self.summary.files = len(sources)
            self.summary.already_stored = len(sources) - len(todo)
            failures = FailureLog(output, part, parts)
            self.summary.failures_path = str(failures.path)
            writer_options = WriterOptions(
                layers=[str(layer) for layer in layers], store_frames=options.store_frames,
                store_mean=options.pool == "mean", save_dtype=options.save_dtype,
                shard_size_bytes=options.shard_size, compression=options.compression,
                commit_seconds=options.commit_seconds, part=part, num_parts=parts,
            )
            with ShardWriter(output, writer_options) as writer:
                background = _BackgroundWriter(writer)
                try:
                    self._process(todo, failures, background)
                finally:
                    background.finish()
        self.summary.elapsed_seconds = time.monotonic() - started
        return self.summary

    # -- stages

    def _process(self, todo: list, failures, background):
        from .batching import length_batches

        readable = []
        for item in todo:
            reason = _probe(item)
            if reason is None:
                readable.append(item)
            else:
                self._fail(failures, item, reason)
        # Longest first: a batch that does not fit in memory shows up at the start.
        readable.sort(key=lambda item: (-item.seconds, item.source.utt_id))
        self._progress_bar = self._progress(len(todo), len(todo) - len(readable))
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
                        self._done(item)
                short = [item for item in group if item.samples <= chunk_samples]
                if short:
                    self._encode_batch(short, background)
            self._finish_all()
        finally:
            if self._progress_bar is not None:
                self._progress_bar.close()

    def _decoded_items(self, items: list, failures):
        from .decoding import RecordingStatistics, decode, decoded_stream

        ahead = max(4, 4 * max(1, self.options.workers))
        stream = decoded_stream(items, self.options.workers, self.options.channel, ahead,
                                streamed_over=self.options.chunk_seconds, normalize=self.encoder.normalize)
        for item, (value, reason) in stream:
            if isinstance(value, RecordingStatistics) and value.samples <= self.options.chunk_seconds * SAMPLE_RATE:
                value, reason = decode(item.source, self.options.channel)  # shorter than its manifest said
            if reason is not None:
                self._fail(failures, item, reason)
                if self._progress_bar is not None:
                    self._progress_bar.update(1)
                continue
            if isinstance(value, RecordingStatistics):
                item.statistics, item.samples = value, value.samples
            else:
                item.waveform, item.flags, item.original_samples = value
                item.samples = len(item.waveform)
            yield item

    def _fail(self, failures, item: _Item, reason: str):
        failures.record(item.source.utt_id, item.source.path, reason)
        self.summary.failed += 1
        if self.summary.first_failure is None:
            self.summary.first_failure = f"{item.source.path}: {reason}"
        if self.options.strict:
            raise AudioError(item.source.path, reason)

    def _encode_batch(self, items: list, background):
        waveforms = [item.waveform for item in items]
        for item in items:
            item.waveform = None  # the padded batch holds the audio from here on

        def store(states: dict):
            for index, item in enumerate(items):
                self._store(item, {layer: value[index] for layer, value in states.items()}, background)
                self._done(item)

        self._launch(waveforms, store)

    def _encode_streamed(self, item: _Item, failures, background):
        """A long recording, read twice a block at a time (its statistics, usually measured
        ahead in a decoding worker, then its windows), its frames written as they come:
        memory is bounded by the window, not the recording."""
        from .audio import stream_audio
        from .chunking import frame_count, plan_windows
        from .decoding import recording_statistics

        statistics, reason = item.statistics, None
        if statistics is None:  # decoded whole first: its header or manifest said it was short
            statistics, reason = recording_statistics(item.source, self.options.channel, self.encoder.normalize)
        if reason is not None:
            self._fail(failures, item, reason)
            return
        samples, mean, std = statistics.samples, statistics.mean, statistics.std
        windows = plan_windows(samples, self.options.chunk_seconds, self.options.overlap_seconds)
        per_batch = max(1, int(self.options.batch_seconds // self.options.chunk_seconds))
        source = item.source
        self._finish_all()  # the utterances before this one reach the writer first
        background.put("begin_utterance", source.utt_id, str(source.path), samples / SAMPLE_RATE,
                       frame_count(samples), flags=CHUNKED_FLAG if len(windows) > 1 else "")
        blocks = stream_audio(source.path, channel=self.options.channel)
        buffer, buffer_start = np.zeros(0, dtype=np.float32), 0
        try:
            for first in range(0, len(windows), per_batch):
                group = windows[first: first + per_batch]
                while buffer_start + len(buffer) < group[-1].end_sample:
                    buffer = np.concatenate([buffer, next(blocks)])
                waves = [(buffer[w.start_sample - buffer_start: w.end_sample - buffer_start] - mean) / std for w in group]
                self._launch(waves, lambda states, group=group: self._append_windows(group, states, background),
                             normalize=False)
                following = windows[first + per_batch].start_sample if first + per_batch < len(windows) else buffer_start
                buffer, buffer_start = buffer[following - buffer_start:], following
            self._finish_all()
        except (AudioError, StopIteration) as error:
            self._in_flight.clear()  # windows of this recording only: it is dropped
            background.put("abort_utterance")
            reason = error.reason if isinstance(error, AudioError) else "changed while being read"
            self._fail(failures, item, reason)
            return
        except BaseException:
            self._in_flight.clear()
            background.put("abort_utterance")
            raise
        background.put("end_utterance")
        self.summary.chunked += int(len(windows) > 1)
        self.summary.extracted += 1
        self.summary.audio_seconds += samples / SAMPLE_RATE

    @staticmethod
    def _append_windows(windows: list, states: dict, background):
        for index, window in enumerate(windows):
            background.put("append_frames", {
                str(layer): value[index][window.keep_from: window.keep_to] for layer, value in states.items()
            })

    def _launch(self, waveforms: list, on_ready, normalize: Optional[bool] = None):
        """Runs the model on `waveforms` and calls on_ready({layer: [one [frames, width] array
        per waveform]}) once their states are on the host: on a GPU, after the next batch has
        been launched (`batches_in_flight`). Half-precision batches whose output is not finite
        are recomputed in float32."""
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
        readback = Readback(batch, check_finite=self.encoder.dtype != torch.float32)
        del batch  # the device memory of its states is reused once their copies have run
        self._in_flight.append((readback, inputs, normalize, on_ready))
        while len(self._in_flight) > self._depth:
            self._finish_oldest()

    def _finish_oldest(self):
        from .readback import Readback

        readback, inputs, normalize, on_ready = self._in_flight.popleft()
        finite, states = readback.result()
        if not finite:
            self.summary.recomputed_float32 += 1
            _, states = Readback(self._float32().forward(*inputs, normalize=normalize), check_finite=False).result()
        on_ready(states)

    def _finish_all(self):
        while self._in_flight:
            self._finish_oldest()

    def _float32(self):
        from .encoder import Encoder

        if self._float32_encoder is None:
            self._float32_encoder = Encoder(self.checkpoint, device=self.options.device, dtype="float32")
        return self._float32_encoder

    def _store(self, item: _Item, states: dict, background):
        from .storage import StoredUtterance

        frames = len(next(iter(states.values())))
        utterance = StoredUtterance(
            utt_id=item.source.utt_id, source=str(item.source.path), duration=item.original_samples / SAMPLE_RATE,
            frames=frames, flags=item.flags,
            states={str(layer): value for layer, value in states.items()},
        )
        if item.flags == SHORT_FLAG:
            self.summary.padded += 1
        background.put("add", utterance)
        self.summary.extracted += 1
        self.summary.audio_seconds += utterance.duration

    # -- progress

    def _progress(self, total: int, already: int):
        if not self.show_progress:
            return None
        from tqdm import tqdm

        bar = tqdm(total=total, unit="file", file=sys.stderr, dynamic_ncols=True, smoothing=0.1)
        bar.update(already)
        self._started = time.monotonic()
        return bar

    def _done(self, item: _Item):
        progress = self._progress_bar
        if progress is None:
            return
        elapsed = max(1e-9, time.monotonic() - self._started)
        progress.set_postfix_str(
            f"{_human_duration(self.summary.audio_seconds)} audio, {self.summary.audio_seconds / elapsed:.0f}x real time",
            refresh=False,
        )
        progress.update(1)


def run_extract(options: ExtractOptions, stdin=None, progress: bool = False) -> ExtractSummary:
    return Extraction(options, stdin=stdin, progress=progress).run()
