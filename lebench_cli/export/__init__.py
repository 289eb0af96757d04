"""Exports of an output folder to the formats other tools read, one module per format:
kaldi ark/scp (`kaldi`), one .npy per utterance (`npy`), a lhotse CutSet (`lhotse_cuts`).

Every export reads one utterance at a time in storage order (memory holds one utterance's
layers) and is atomic or resumable per output file: see docs/cli.md, `lebench export`.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from ..errors import InputError, OutputError, install_extra_hint

FORMATS = ("kaldi", "npy", "lhotse")
EXPORT_DTYPES = ("float16", "float32")


@dataclass
class ExportOptions:
    """What `lebench export` does; layers as in `extract --layers` (`all`: the stored 0..L)."""

    store: str  # the output folder of `lebench extract`
    format: str  # kaldi, npy or lhotse
    destination: str  # a folder; "-" (kaldi, one layer) streams a binary ark to stdout
    layers: Optional[str] = None  # None: every stored layer, cnn included
    stack: bool = False  # npy: one [layers, frames, width] array per utterance
    dtype: Optional[str] = None  # None: the stored dtype (kaldi: always float32)


@dataclass
class ExportSummary:
    utterances: int = 0  # written by this run
    skipped: int = 0  # already exported by an earlier run (npy) or whole layers already done
    destination: str = ""
    without_audio: int = 0  # lhotse: features-only cuts (source audio missing or unreadable)

    def line(self) -> str:
        done = f"exported {self.utterances} utterance{'s' if self.utterances != 1 else ''}"
        kept = f"; {self.skipped} already there" if self.skipped else ""
        where = "" if self.destination == "-" else f" to {self.destination}"
        audio = f"; {self.without_audio} without a recording (source audio missing)" if self.without_audio else ""
        return f"{done}{where}{kept}{audio}"


def require(module: str, extra: str):
    """Imports an optional dependency, or says in one line how to install it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise InputError(f"this export needs {module}: {install_extra_hint(extra)}") from None


def export_features(options: ExportOptions, progress: bool = False) -> ExportSummary:
    """Writes OPTIONS.store's features in OPTIONS.format under OPTIONS.destination."""
    from ..reader import open_features

    if options.format not in FORMATS:
        raise InputError(f"unknown export format {options.format!r}: use {', '.join(FORMATS)}")
    if options.dtype not in (None, *EXPORT_DTYPES):
        raise InputError(f"cannot export as {options.dtype!r}: use float16 or float32")
    writer = _writer_module(options.format)  # a missing extra fails before anything is read
    with open_features(options.store) as store:
        layers = select_layers(store, options.layers)
        _check_destination(options, layers)
        _check_frames_stored(store, layers)
        return writer.export(store, layers, options, _progress_bar(len(store), progress))


def select_layers(store, spec: Optional[str]) -> list:
    """Stored layer keys (ints and "cnn") named by SPEC, as `extract --layers` and `read` name
    them: `all` is every stored layer 0..L (not cnn); None (the default) every stored layer."""
    from ..layers import check_layer_syntax, parse_layers

    if spec is None:
        return list(store.layers)
    check_layer_syntax(spec)
    numbered = [layer for layer in store.layers if layer != "cnn"]
    num_layers = int(store.metadata.get("model", {}).get("num_layers", max(numbered, default=0)))
    layers: list = []
    for part in str(spec).split(","):
        if part.strip().lower() == "all" and not numbered:
            raise InputError(f"'all' means the stored layers 0..L, and none is stored in {store.path} "
                             f"(stored: {', '.join(map(str, store.layers))}): export cnn by its name")
        asked = numbered if part.strip().lower() == "all" else parse_layers(part, num_layers)
        layers += [layer for layer in asked if layer not in layers]
    missing = [str(layer) for layer in layers if layer not in store.layers]
    if missing:
        named = f"layer {missing[0]} is" if len(missing) == 1 else f"layers {', '.join(missing)} are"
        raise InputError(f"{named} not stored in {store.path} "
                         f"(stored: {', '.join(map(str, store.layers))})")
    return layers


def layer_folder(layer) -> str:
    return f"layer_{layer}"


def export_per_layer(store, layers: list, destination: str, marker: str, write, bar) -> ExportSummary:
    """The formats with one folder per layer (kaldi, lhotse): a layer whose `marker` file
    exists under DEST/layer_L is done (each is written atomically), the others are written by
    write(store, todo, destination path, bar), which returns the count of features-only items
    (lhotse) or None."""
    path = Path(destination).resolve()
    summary = ExportSummary(destination=destination)
    todo = [layer for layer in layers if not (path / layer_folder(layer) / marker).exists()]
    if not todo:
        summary.skipped = len(store)
        bar.close()
        return summary
    try:
        summary.without_audio = write(store, todo, path, bar) or 0
    except OSError as error:
        raise OutputError(f"cannot write under {path}: {error.strerror or error}") from error
    summary.utterances = len(store)
    return summary


def converted(array: np.ndarray, dtype: Optional[str]) -> np.ndarray:
    return array if dtype is None or array.dtype == np.dtype(dtype) else array.astype(dtype)


def utterance_path(folder: Path, utt_id: str, suffix: str) -> Path:
    """FOLDER/ID.SUFFIX; ids with `/` make subfolders, and none may leave FOLDER."""
    parts = utt_id.split("/")
    if any(part in ("", ".", "..") for part in parts) or "\\" in utt_id or "\0" in utt_id:
        raise InputError(f"utterance id {utt_id!r} cannot name a file under {folder}: "
                         "export to kaldi or lhotse instead")
    return folder.joinpath(*parts[:-1], parts[-1] + suffix)


def _writer_module(name: str):
    import importlib

    module = importlib.import_module(f"{__name__}.{'lhotse_cuts' if name == 'lhotse' else name}")
    module.check_dependencies()
    return module


def _check_destination(options: ExportOptions, layers: list) -> None:
    if options.destination == "-":
        if options.format != "kaldi" or len(layers) != 1:
            raise InputError("-o - (standard output) takes the kaldi format and one layer")
        return
    destination = Path(options.destination)
    if destination.exists() and not destination.is_dir():
        raise InputError(f"{destination} is not a folder")
    if destination.resolve() == Path(options.store).resolve():
        raise InputError(f"{destination} is the store itself: export to another folder")


def _check_frames_stored(store, layers: list) -> None:
    for layer in layers:
        try:
            if store.ids:
                store.read(store.ids[0], layer)
        except KeyError as error:  # a store of utterance means only (--pool mean)
            raise InputError(f"{error.args[0]}; export needs frames") from None


def _progress_bar(total: int, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, unit="utt", file=sys.stderr, dynamic_ncols=True, disable=not enabled,
                leave=False)
