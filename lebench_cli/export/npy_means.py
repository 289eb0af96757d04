"""One matrix .npy per layer of a store of utterance means (`extract --pool mean`):
DEST/layer_L/means.npy [utterances, width] and DEST/layer_L/ids.txt, its rows' ids; with
--stack DEST/means.npy [utterances, layers, width], DEST/ids.txt and DEST/layers.txt (the layers
in order); DEST/metadata.jsonl as the frames export writes it (npy.py).

Rows are in storage order: the store's `ids`, the order of metadata.jsonl, so that row i of
means.npy is line i of ids.txt and of metadata.jsonl. ids.txt is UTF-8, one id per line, each
ending in "\\n"; an id holding a line break is refused. Each layer folder holds its own ids.txt,
so that a layer exported by an earlier run stays whole when the store changed since.

Atomic per layer: means.npy is filled row by row through a memory map of means.npy.tmp (memory
holds one utterance whatever the store's size), the old ids.txt removed, means.npy renamed into
place, and the new ids.txt renamed last: a means.npy beside an ids.txt holds the rows it names.
A rerun leaves a layer whose ids.txt exists and whose record matches the store as it is, and
writes any other again whole."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..errors import InputError
from . import (MEANS_VARIANT, STACK, EntryFileMissing, ExportSummary, converted, entry_folder, export_per_layer,
               layer_folder, read_mean, remove_partial, write_synced)
from .npy import write_metadata

MATRIX, IDS, LAYERS = "means.npy", "ids.txt", "layers.txt"


def check_dependencies() -> None:
    """numpy is all it needs."""


def check_ids(store, options, layers: list) -> None:
    for utt_id in store.ids:
        if utt_id.splitlines() != [utt_id]:
            raise InputError(f"utterance id {utt_id!r} holds a line break, which {IDS} (one id per line) cannot: "
                             "export to kaldi with --kaldi-ids sanitize instead")


def export(store, layers: list, options, bar, record) -> ExportSummary:
    if options.stack:
        _check_stackable(store, layers)
        keys = {None: STACK}  # layer None: the stacked LAYERS, as in npy.py
    else:
        keys = {layer: layer_folder(layer) for layer in layers}
    variant = f"dtype={options.dtype or 'stored'};{MEANS_VARIANT}"
    if options.stack:
        variant += f";stack={','.join(map(str, layers))}"
    write_metadata(store, Path(options.destination))

    def write(store, todo: list, destination: Path, bar) -> None:
        _write_matrices(store, {entry: keys[entry] for entry in todo}, layers, destination, options.dtype, bar)
    return export_per_layer(store, list(keys), record, IDS, variant, write, bar, keys=keys)


def exported_array(store, utt_id: str, layer, layers: list, dtype) -> np.ndarray:
    """What the export writes into the row of ID: its mean of LAYER [width], or (layer None,
    --stack) of LAYERS [layers, width]."""
    if layer is None:
        return np.stack([converted(read_mean(store, utt_id, one), dtype) for one in layers])
    return converted(read_mean(store, utt_id, layer), dtype)


def stored_arrays(destination: Path, key: str, other_keys):
    """(id, load) of every line of the entry's ids.txt; load() reads its row of means.npy
    with numpy."""
    folder = entry_folder(destination, key)
    named = "" if key == STACK else f"{key}/"
    try:
        text = (folder / IDS).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise EntryFileMissing(f"{named}{IDS} is missing") from None
    try:
        matrix = np.load(folder / MATRIX, mmap_mode="r", allow_pickle=False)
    except FileNotFoundError:
        raise EntryFileMissing(f"{named}{MATRIX} is missing") from None
    ids = text.split("\n")
    if ids[-1] == "":
        ids.pop()
    if matrix.ndim < 1 or matrix.shape[0] != len(ids):
        raise ValueError(f"{named}{MATRIX} holds {matrix.shape[0] if matrix.ndim else 0} rows and "
                         f"{named}{IDS} {len(ids)} ids")
    for row, utt_id in enumerate(ids):
        yield utt_id, lambda row=row: np.array(matrix[row])


def _write_matrices(store, todo: dict, layers: list, destination: Path, dtype, bar) -> None:
    """Writes the files of each entry of TODO ({layer or None: record key}) whole, renamed
    into place at the end."""
    first = {entry: exported_array(store, store.ids[0], entry, layers, dtype) for entry in todo}
    folders = {entry: entry_folder(destination, key) for entry, key in todo.items()}
    names = [MATRIX, IDS, *([LAYERS] if STACK in todo.values() else [])]
    matrices, done = {}, False
    try:
        for entry, folder in folders.items():
            folder.mkdir(parents=True, exist_ok=True)
            matrices[entry] = np.lib.format.open_memmap(folder / f"{MATRIX}.tmp", mode="w+", dtype=first[entry].dtype,
                                                        shape=(len(store.ids), *first[entry].shape))
        with bar:
            for row, utt_id in enumerate(store.ids):
                for entry, matrix in matrices.items():
                    matrix[row] = exported_array(store, utt_id, entry, layers, dtype)
                bar.update()
        ids = "".join(f"{utt_id}\n" for utt_id in store.ids)
        for entry, folder in folders.items():
            matrices[entry].flush()
            write_synced(folder / f"{IDS}.tmp", ids)
            if entry is None:
                write_synced(folder / f"{LAYERS}.tmp", "".join(f"{layer}\n" for layer in layers))
        matrices.clear()  # the maps are closed before their files are renamed
        for entry, folder in folders.items():
            (folder / IDS).unlink(missing_ok=True)  # first: the entry is not whole
            os.replace(folder / f"{MATRIX}.tmp", folder / MATRIX)
            if entry is None:
                os.replace(folder / f"{LAYERS}.tmp", folder / LAYERS)
            os.replace(folder / f"{IDS}.tmp", folder / IDS)  # last: it is
        done = True
    finally:
        matrices.clear()
        if not done:
            remove_partial(folder / f"{name}.tmp" for folder in folders.values() for name in names)


def _check_stackable(store, layers: list) -> None:
    widths = {layer: read_mean(store, store.ids[0], layer).shape[0] for layer in layers}
    if len(set(widths.values())) > 1:
        described = ", ".join(f"{layer}: {width}" for layer, width in widths.items())
        raise InputError(f"--stack needs layers of one width ({described}): export cnn separately")
