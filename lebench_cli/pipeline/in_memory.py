"""Features in memory: audio files -> {layer: [frames, width]} arrays, no output folder.

For training on the fly: all 25 layers of a large model take ~9 GB per hour of audio on
disk. `lebench extract`'s own engine (lebench_cli/pipeline/engine.py) runs them, its states kept here
instead of stored, so that each file's features are the ones `extract` would store
(tests/test_in_memory.py compares them)."""

from __future__ import annotations

import os
import warnings
from collections import deque
from dataclasses import replace
from typing import Iterable, Iterator, Sequence, Union

import numpy as np

from ..errors import AudioError, InputError
from .engine import Sink


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


def _computed(paths: list, model, layers, device=None, dtype=None, batch_seconds=None, chunk_seconds=30.0,
              overlap_seconds=5.0, channel=None, workers=0, skip_bad_files=False, trust_checkpoint=False):
    """(index, path, states or None) per file, in the order they are computed."""
    from .engine import Engine, Item, batches_in_flight, probed
    from ..audio.inputs import AudioSource
    from .options import ExtractOptions

    # extract's own rules and defaults, the options named as these keywords
    requested = ExtractOptions(inputs=[], output="", model="", batch_seconds=batch_seconds,
                               chunk_seconds=chunk_seconds, overlap_seconds=overlap_seconds, channel=channel,
                               workers=workers)
    requested.validate(flag=str)
    encoder = _encoder(model, device, dtype, trust_checkpoint)
    layers = _layer_list(layers, encoder)
    options = replace(requested, device=str(encoder.device)).resolved()
    sink = _Kept(layers, skip_bad_files)
    items = [Item(AudioSource(path, path), index=index) for index, path in enumerate(paths)]
    readable, unreadable = probed(items)
    for item, reason in unreadable:
        yield item.index, item.source.path, _failed(item.source.path, reason, skip_bad_files)
    # Longest first, as extract runs them: the same batches, so the same features.
    engine = Engine(encoder, layers, options, sink, batches_in_flight(encoder.device))
    for _ in engine.steps(readable, tie=lambda item: item.index):
        while sink.ready:
            yield sink.ready.popleft()
    while sink.ready:
        yield sink.ready.popleft()


class _Kept(Sink):
    """The engine's states kept in memory: (index, path, states or None) in `ready`, in the
    order they are computed; a long recording's windows joined by their kept frames."""

    def __init__(self, layers: list, skip_bad_files: bool):
        self.layers, self.skip_bad_files = layers, skip_bad_files
        self.ready: deque = deque()
        self._windows: dict = {}

    def stored(self, item, states: dict):
        self.ready.append((item.index, item.source.path,
                           {layer: np.array(states[layer], dtype=np.float32) for layer in self.layers}))

    def failed(self, item, reason: str):
        self.ready.append((item.index, item.source.path, _failed(item.source.path, reason, self.skip_bad_files)))

    def begin(self, item, windows: list):
        self._windows = {layer: [] for layer in self.layers}

    def append(self, item, windows: list, states: dict, non_finite: dict):
        if non_finite:  # one window is enough to drop the recording
            raise AudioError(item.source.path, next(iter(non_finite.values())))
        for position, window in enumerate(windows):
            for layer in self.layers:
                self._windows[layer].append(states[layer][position][window.keep_from: window.keep_to])

    def end(self, item, windows: list):
        kept, self._windows = self._windows, {}
        self.ready.append((item.index, item.source.path, {
            layer: np.concatenate(parts).astype(np.float32, copy=False) for layer, parts in kept.items()}))

    def abort(self, item, reason):
        self._windows = {}
        if reason is not None:
            self.failed(item, reason)


def _failed(path: str, reason: str, skip_bad_files: bool) -> None:
    if not skip_bad_files:
        raise AudioError(path, reason)
    warnings.warn(f"{path}: {reason} (skipped)", stacklevel=4)
    return None


def _encoder(model, device, dtype, trust_checkpoint: bool):
    from ..model.checkpoint import Checkpoint
    from ..model.encoder import Encoder
    from .options import ExtractOptions

    if isinstance(model, Encoder):
        if device is not None or dtype is not None:
            raise InputError("device and dtype belong to the Encoder given as model: leave them out")
        return model
    # extract's own defaults: cuda when available, float16 there, float32 on a CPU
    resolved = ExtractOptions(inputs=[], output="", model="", device=device, dtype=dtype).resolved()
    if not isinstance(model, Checkpoint):
        from ..model.models import load_checkpoint

        model = load_checkpoint(os.fspath(model), trust=trust_checkpoint)
    return Encoder(model, device=resolved.device, dtype=resolved.dtype)


def _layer_list(layers, encoder) -> list:
    from ..layers import parse_layers

    if isinstance(layers, str):
        return parse_layers(layers, encoder.num_layers)
    if isinstance(layers, int):
        layers = [layers]
    return list(dict.fromkeys(encoder.check_layers(list(layers))))
