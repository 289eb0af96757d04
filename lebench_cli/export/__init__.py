"""Exports of an output folder to the formats other tools read, one module per format:
kaldi ark/scp (`kaldi`), one .npy per utterance (`npy`), a lhotse CutSet (`lhotse_cuts`); and
for a store of utterance means only (`extract --pool mean`), a Kaldi vector ark
(`kaldi_means`) or one matrix .npy per layer (`npy_means`).

Every export reads one utterance at a time in storage order (memory holds one utterance's
layers), is atomic or resumable per output file, and records what it was made from
(`record`): a re-export adds, replaces and removes what the store did. See docs/cli.md,
`lebench export`.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from ..errors import InputError, OutputError, install_extra_hint
from ..frames import CNN
from .record import count_utterances

FORMATS = ("kaldi", "npy", "lhotse")
MEANS_FORMATS = ("kaldi", "npy")  # the formats that take a store of utterance means only
MEANS_VARIANT = "pool=mean"  # in a record entry's variant: the entry holds utterance means
STACK = "stack"  # the record entry of npy --stack, whose files lie in DEST itself
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
    kaldi_ids: str = "keep"  # kaldi: "keep" refuses ids Kaldi cannot hold, "sanitize" maps them (id_map)


@dataclass
class ExportSummary:
    new: int = 0  # not in DEST before (or its file was gone)
    replaced: int = 0  # in DEST from other features of the store (it changed since)
    removed: int = 0  # in DEST, gone from the store: removed from DEST
    unchanged: int = 0
    destination: str = ""
    without_audio: int = 0  # lhotse: features-only cuts (source audio missing or unreadable)
    note: str = ""  # kaldi: why wav.scp was left out

    @classmethod
    def of(cls, counts, destination: str) -> "ExportSummary":
        return cls(new=counts.new, replaced=counts.replaced, removed=counts.removed, unchanged=counts.unchanged,
                   destination=destination)

    def line(self) -> str:
        audio = f"; {self.without_audio} without a recording (source audio missing)" if self.without_audio else ""
        if self.destination == "-":
            return f"exported {self.new} utterance{'s' if self.new != 1 else ''}"
        kept = f"; {self.unchanged} unchanged" if self.unchanged else ""
        note = f"; {self.note}" if self.note else ""
        return (f"exported {self.new} new, replaced {self.replaced}, removed {self.removed} in "
                f"{self.destination}{kept}{audio}{note}")


class EntryFileMissing(Exception):
    """An exported entry's folder or index file (feats.scp, cuts.jsonl.gz) is not there."""


def require(module: str, extra: str):
    """Imports an optional dependency, or says in one line how to install it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise InputError(f"this export needs {module}: {install_extra_hint(extra)}") from None


def export_features(options: ExportOptions, progress: bool = False) -> ExportSummary:
    """Writes OPTIONS.store's features in OPTIONS.format under OPTIONS.destination."""
    from ..reading.store import open_features
    from ..storage.locks import ExportLock
    from .record import ExportRecord

    if options.format not in FORMATS:
        raise InputError(f"unknown export format {options.format!r}: use {', '.join(FORMATS)}")
    if options.dtype not in (None, *EXPORT_DTYPES):
        raise InputError(f"cannot export as {options.dtype!r}: use float16 or float32")
    writer = writer_module(options.format)  # a missing extra fails before anything is read
    with open_features(options.store) as store:
        layers = select_layers(store, options.layers)
        _check_destination(options, layers)
        if _means_only(store, layers):
            if options.format not in MEANS_FORMATS:
                raise InputError(f"{options.store} holds utterance means only (extract --pool mean), and "
                                 f"a {options.format} export needs frames: export it with --format "
                                 f"{' or '.join(MEANS_FORMATS)}")
            writer = writer_module(options.format, means=True)
        writer.check_ids(store, options, layers)  # every id, before anything is written
        bar = _progress_bar(len(store), progress)
        if options.destination == "-":
            return writer.export(store, layers, options, bar, None)
        with ExportLock(Path(options.destination)):
            record = ExportRecord(Path(options.destination), store, options.format)
            return writer.export(store, layers, options, bar, record)


def read_layer(store, utt_id: str, layer):
    """store.read, with a failed read named as one (not as a write under DEST)."""
    try:
        return store.read(utt_id, layer)
    except _READ_ERRORS as error:
        raise _read_error(store, utt_id, layer, error) from error


def read_mean(store, utt_id: str, layer):
    """store.read_mean of one layer ([width]), with a failed read named as one."""
    try:
        return store.read_mean(utt_id, layer)
    except _READ_ERRORS as error:
        raise _read_error(store, utt_id, layer, error) from error


# What a read of a damaged or vanished shard raises: the OS's and h5py's errors, and missing
# or malformed datasets.
_READ_ERRORS = (OSError, RuntimeError, KeyError, ValueError)


def _read_error(store, utt_id: str, layer, error: Exception) -> InputError:
    reason = getattr(error, "strerror", None) or (error.args[0] if error.args else type(error).__name__)
    return InputError(f"cannot read {utt_id} (layer {layer}) from {store.path}: {reason}")


def select_layers(store, spec: Optional[str]) -> list:
    """Stored layer keys (ints and "cnn") named by SPEC, as `extract --layers` and `read` name
    them: `all` is every stored layer 0..L (not cnn); None (the default) every stored layer."""
    from ..layers import check_layer_syntax, parse_layers

    if spec is None:
        return list(store.layers)
    check_layer_syntax(spec)
    numbered = [layer for layer in store.layers if layer != CNN]
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


def entry_folder(destination: Path, key: str) -> Path:
    """Where the files of a record entry lie: DEST/layer_L, or DEST itself for STACK."""
    return destination if key == STACK else destination / key


def export_per_layer(store, layers: list, record, marker: str, variant: str, write, bar,
                     keys: Optional[dict] = None) -> ExportSummary:
    """The formats with one folder per layer (kaldi, lhotse, npy means), written whole and
    atomically: a layer whose `marker` file exists and whose record matches the store is left
    as it is; the others are written again by write(store, todo, destination path, bar), which
    returns the count of features-only items (lhotse) or None, and which removes a layer's
    marker before it replaces the layer's other files. keys: {layer: record entry} where it is
    not the layer's folder (STACK)."""
    path = record.destination.resolve()
    keys = keys or {layer: layer_folder(layer) for layer in layers}
    plans = {layer: record.plan(keys[layer], variant,
                                lambda _, layer=layer: (entry_folder(path, keys[layer]) / marker).exists())
             for layer in layers}
    summary = ExportSummary.of(count_utterances(list(plans.values())), str(record.destination))
    todo = [layer for layer, plan in plans.items() if plan.changes]
    if not todo:
        bar.close()
        return summary
    record.save()  # the store it is made from is on disk before any of its files
    try:
        summary.without_audio = write(store, todo, path, bar) or 0
    except OSError as error:
        raise OutputError(f"cannot write under {path}: {error.strerror or error}") from error
    for layer in todo:
        record.set_entry(keys[layer], variant, record.fingerprints)
    record.save()
    return summary


def remove_partial(paths) -> None:
    """Removes what an export that stopped had written under temporary names."""
    for path in paths:
        try:
            Path(path).unlink(missing_ok=True)
        except OSError:
            pass  # the error that stopped the export is the one to report


def write_synced(path: Path, text: str) -> None:
    """PATH holds TEXT (UTF-8, "\\n" line ends) on disk before it is renamed into place."""
    with open(path, "w", encoding="utf-8", newline="\n") as file:
        file.write(text)
        file.flush()
        os.fsync(file.fileno())


def converted(array: np.ndarray, dtype: Optional[str]) -> np.ndarray:
    return array if dtype is None or array.dtype == np.dtype(dtype) else array.astype(dtype)


def utterance_path(folder: Path, utt_id: str, suffix: str) -> Path:
    """FOLDER/ID.SUFFIX; ids with `/` make subfolders, and none may leave FOLDER."""
    parts = utt_id.split("/")
    if any(part in ("", ".", "..") for part in parts) or "\\" in utt_id or "\0" in utt_id:
        raise InputError(f"utterance id {utt_id!r} cannot name a file under {folder}: "
                         "export to kaldi or lhotse instead")
    return folder.joinpath(*parts[:-1], parts[-1] + suffix)


def writer_module(name: str, means: bool = False):
    """The module that writes format NAME (of utterance means with MEANS), its extra checked."""
    import importlib

    module = f"{name}_means" if means else {"lhotse": "lhotse_cuts"}.get(name, name)
    module = importlib.import_module(f"{__name__}.{module}")
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


def _means_only(store, layers: list) -> bool:
    """Whether the store holds utterance means and no frames (extract --pool mean without
    --frames), from its first utterance; a store with both exports its frames."""
    if not store.ids or not layers:
        return False
    try:
        store.read(store.ids[0], layers[0])
    except KeyError:  # no frames: the means are read instead, or a read of them says why not
        read_mean(store, store.ids[0], layers[0])
        return True
    except _READ_ERRORS as error:
        raise _read_error(store, store.ids[0], layers[0], error) from error
    return False


def _progress_bar(total: int, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, unit="utt", file=sys.stderr, dynamic_ncols=True, disable=not enabled,
                leave=False)
