"""Features in memory: audio files -> {layer: [frames, width]} arrays, no output folder.

For training on the fly: all 25 layers of a large model take ~9 GB per hour of audio on
disk. The stages are `lebench extract`'s own (probing and length sorting, `decoding`,
`batching`, `chunking`, `encoder`, `readback`), wired the same way, so that each file's
features are the ones `extract` would store (tests/test_in_memory.py compares them)."""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from typing import Iterable, Iterator, Optional, Sequence, Union

import numpy as np

from .errors import AudioError, InputError

SAMPLE_RATE = 16000


def features_of(paths: Iterable, model, layers: Union[str, int, Sequence] = "last", **options) -> list:
    """The features of each audio file of `paths`, in memory: a list aligned with `paths`,
    one {layer: float32 numpy [frames, width]} per file (None for a skipped bad file).

    `model`: a hub id, alias, checkpoint file or model folder (as `lebench extract
    --model`), a `Checkpoint`, or an `Encoder` (load it once and pass it to every call when
    calling repeatedly). `layers`: as `--layers` ("last", "all", "0-12,cnn"), or a list of
    ints and "cnn"; the dict keys are ints and "cnn".

    Options (keywords, the `lebench extract` defaults):
    - device (None: cuda when available), dtype (None: float16 on CUDA, float32 on CPU;
      a half-precision batch whose output is not finite is recomputed in float32);
      both belong to the encoder when `model` is one;
    - batch_seconds (None: 120 on CUDA, 20 on CPU), chunk_seconds (30), overlap_seconds (5),
      channel (None: average the channels), workers (0: decode in this process; N: N
      decoding processes), trust_checkpoint (False);
    - skip_bad_files (False): a file that cannot be decoded raises AudioError naming it and
      the reason; with True its entry is None and a warning names it and the reason.

    Every file is held in memory at once: for long lists use `iter_features`."""
    paths = _path_list(paths)
    results: list = [None] * len(paths)
    for index, _, states in _computed(paths, model, layers, **options):
        results[index] = states
    return results


def iter_features(paths: Iterable, model, layers: Union[str, int, Sequence] = "last",
                  **options) -> Iterator[tuple]:
    """(path, {layer: float32 numpy [frames, width]}) for each file of `paths` as soon as it
    is computed: longest file first (as `lebench extract` runs them), so that memory holds
    one batch, not the whole list. A skipped bad file (skip_bad_files=True) comes as
    (path, None). Arguments and options: as `features_of`."""
    for _, path, states in _computed(_path_list(paths), model, layers, **options):
        yield path, states


def _path_list(paths) -> list:
    if isinstance(paths, (str, bytes, os.PathLike)):
        raise InputError(f"expected a list of audio file paths, got one path: pass [{os.fspath(paths)!r}]")
    return [os.fspath(path) for path in paths]


@dataclass
class _Settings:
    batch_seconds: float
    chunk_seconds: float
    overlap_seconds: float
    channel: Optional[int]
    workers: int
    skip_bad_files: bool


@dataclass
class _Pending:
    """One file on its way: the fields `decoding.decoded_stream` reads (source, seconds)."""

    index: int
    source: object
    seconds: float = 0.0
    samples: int = 0
    waveform: Optional[np.ndarray] = field(default=None, repr=False)
    statistics: object = None


def _computed(paths: list, model, layers, device=None, dtype=None, batch_seconds=None, chunk_seconds=30.0,
              overlap_seconds=5.0, channel=None, workers=0, skip_bad_files=False, trust_checkpoint=False):
    """(index, path, states or None) per file, in the order they are computed."""
    from .audio import probe
    from .batching import length_batches
    from .inputs import AudioSource

    if overlap_seconds * 2 >= chunk_seconds:
        raise InputError(f"overlap_seconds {overlap_seconds:g} must be under half of chunk_seconds {chunk_seconds:g}")
    encoder = _encoder(model, device, dtype, trust_checkpoint)
    layers = _layer_list(layers, encoder)
    settings = _Settings(_default_batch_seconds(encoder, batch_seconds), chunk_seconds, overlap_seconds,
                         channel, workers, skip_bad_files)
    runner = _Runner(encoder, layers)
    items = []
    for index, path in enumerate(paths):
        item = _Pending(index, AudioSource(path, path))
        try:
            item.seconds = probe(path).duration_seconds
        except AudioError as error:
            yield index, path, _failed(path, error.reason, settings)
            continue
        items.append(item)
    # Longest first, as extract runs them: the same batches, so the same features.
    items.sort(key=lambda item: (-item.seconds, item.index))
    chunk_samples = chunk_seconds * SAMPLE_RATE
    decoded = _decoded(items, settings, encoder.normalize)
    for group in length_batches(decoded, lambda item: item.samples, settings.batch_seconds):
        for item in group:
            if item.samples > chunk_samples:
                yield item.index, item.source.path, _windowed(item, runner, settings)
        short = [item for item in group if item.samples <= chunk_samples]
        if short:
            states, non_finite = runner.run([item.waveform for item in short])
            for position, item in enumerate(short):
                item.waveform = None
                if position in non_finite:
                    yield item.index, item.source.path, _failed(item.source.path, non_finite[position], settings)
                    continue
                yield item.index, item.source.path, {layer: np.array(states[layer][position], dtype=np.float32)
                                                     for layer in layers}


def _decoded(items: list, settings: _Settings, normalize: bool) -> Iterator[_Pending]:
    """Decoded items (a waveform, or a long recording's statistics), bad ones failed."""
    from .decoding import RecordingStatistics, decode, decoded_stream

    ahead = max(4, 4 * max(1, settings.workers))
    stream = decoded_stream(items, settings.workers, settings.channel, ahead,
                            streamed_over=settings.chunk_seconds, normalize=normalize)
    for item, (value, reason) in stream:
        if isinstance(value, RecordingStatistics) and value.samples <= settings.chunk_seconds * SAMPLE_RATE:
            value, reason = decode(item.source, settings.channel)  # shorter than its header said
        if reason is not None:
            _failed(item.source.path, reason, settings)
            continue
        if isinstance(value, RecordingStatistics):
            item.statistics, item.samples = value, value.samples
        else:
            item.waveform = value[0]
            item.samples = len(item.waveform)
        yield item


def _windowed(item: _Pending, runner: "_Runner", settings: _Settings) -> Optional[dict]:
    """A long recording, read a block at a time, in overlapping windows whose kept frames
    are joined (lebench_cli/chunking.py), normalised as a whole as extract does."""
    from .chunking import normalised_window_batches, plan_windows
    from .decoding import recording_statistics

    path = item.source.path
    statistics = item.statistics
    if statistics is None:  # decoded whole first: its header said it was short
        statistics, reason = recording_statistics(item.source, settings.channel, runner.encoder.normalize)
        if reason is not None:
            return _failed(path, reason, settings)
    windows = plan_windows(statistics.samples, settings.chunk_seconds, settings.overlap_seconds)
    kept: dict = {layer: [] for layer in runner.layers}
    batches = normalised_window_batches(path, settings.channel, windows, settings.batch_seconds,
                                        settings.chunk_seconds, statistics.mean, statistics.std)
    try:
        for group, waves in batches:
            states, non_finite = runner.run(waves, normalize=False)
            if non_finite:
                raise AudioError(path, next(iter(non_finite.values())))
            for position, window in enumerate(group):
                for layer in runner.layers:
                    kept[layer].append(states[layer][position][window.keep_from: window.keep_to])
    except AudioError as error:
        return _failed(path, error.reason, settings)
    return {layer: np.concatenate(parts).astype(np.float32, copy=False) for layer, parts in kept.items()}


class _Runner:
    """The encoder on padded batches, its states read back to the host and checked for NaN
    and inf; a half-precision batch that has one is recomputed in float32, as extract does."""

    def __init__(self, encoder, layers: list):
        self.encoder, self.layers = encoder, layers
        self._float32 = None

    def run(self, waveforms: list, normalize: Optional[bool] = None) -> tuple:
        """({layer: [one [frames, width] numpy array per waveform]}, {index: reason} of the
        waveforms whose states are not finite, in float32 too)."""
        import torch

        from .batching import pad_batch
        from .readback import Readback

        padded, lengths = pad_batch(waveforms)
        inputs = (torch.from_numpy(padded), torch.from_numpy(lengths), self.layers)
        readback = Readback(self.encoder.forward(*inputs, normalize=normalize))
        finite, states = readback.result()
        if not finite and self.encoder.dtype != torch.float32:
            readback = Readback(self._float32_encoder().forward(*inputs, normalize=normalize))
            finite, states = readback.result()
        return states, readback.failures()

    def _float32_encoder(self):
        from .encoder import Encoder

        if self._float32 is None:
            self._float32 = Encoder(self.encoder.checkpoint, device=self.encoder.device, dtype="float32")
        return self._float32


def _failed(path: str, reason: str, settings: _Settings) -> None:
    if not settings.skip_bad_files:
        raise AudioError(path, reason)
    warnings.warn(f"{path}: {reason} (skipped)", stacklevel=4)
    return None


def _encoder(model, device, dtype, trust_checkpoint: bool):
    from .checkpoints import Checkpoint
    from .encoder import Encoder
    from .options import ExtractOptions

    if isinstance(model, Encoder):
        if device is not None or dtype is not None:
            raise InputError("device and dtype belong to the Encoder given as model: leave them out")
        return model
    # extract's own defaults: cuda when available, float16 there, float32 on a CPU
    resolved = ExtractOptions(inputs=[], output="", model="", device=device, dtype=dtype).resolved()
    if not isinstance(model, Checkpoint):
        from .models import load_checkpoint

        model = load_checkpoint(os.fspath(model), trust=trust_checkpoint)
    return Encoder(model, device=resolved.device, dtype=resolved.dtype)


def _default_batch_seconds(encoder, batch_seconds: Optional[float]) -> float:
    from .options import ExtractOptions

    options = ExtractOptions(inputs=[], output="", model="", device=str(encoder.device), batch_seconds=batch_seconds)
    return options.resolved().batch_seconds


def _layer_list(layers, encoder) -> list:
    from .layers import parse_layers

    if isinstance(layers, str):
        return parse_layers(layers, encoder.num_layers)
    if isinstance(layers, int):
        layers = [layers]
    return list(dict.fromkeys(encoder.check_layers(list(layers))))
