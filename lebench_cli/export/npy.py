"""One .npy file per utterance: DEST/layer_L/ID.npy [frames, width] per layer, or with
--stack DEST/ID.npy [layers, frames, width] (and DEST/layers.txt, their order).

Resumable: each file is written as ID.npy.tmp and renamed, so an ID.npy is always whole and
a rerun skips it."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..errors import InputError, OutputError
from . import ExportSummary, converted, layer_folder, utterance_path


def check_dependencies() -> None:
    """numpy is all it needs."""


def export(store, layers: list, options, bar) -> ExportSummary:
    destination = Path(options.destination)
    summary = ExportSummary(destination=str(destination))
    if options.stack:
        _check_stackable(store, layers)
        folders = {None: destination}
    else:
        folders = {layer: destination / layer_folder(layer) for layer in layers}
    try:
        destination.mkdir(parents=True, exist_ok=True)
        if options.stack:
            (destination / "layers.txt").write_text("".join(f"{layer}\n" for layer in layers))
        with bar:
            for utt_id in store.ids:
                targets = {layer: utterance_path(folder, utt_id, ".npy") for layer, folder in folders.items()}
                todo = {layer: path for layer, path in targets.items() if not path.exists()}
                if not todo:
                    summary.skipped += 1
                elif options.stack:
                    stacked = np.stack([converted(store.read(utt_id, layer), options.dtype) for layer in layers])
                    _save(todo[None], stacked)
                    summary.utterances += 1
                else:
                    for layer, path in todo.items():
                        _save(path, converted(store.read(utt_id, layer), options.dtype))
                    summary.utterances += 1
                bar.update()
    except OSError as error:
        raise OutputError(f"cannot write under {destination}: {error.strerror or error}") from error
    return summary


def _save(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".tmp")
    with open(partial, "wb") as file:
        np.save(file, array)
    os.replace(partial, path)


def _check_stackable(store, layers: list) -> None:
    if not store.ids:
        return
    widths = {layer: store.read(store.ids[0], layer).shape[1] for layer in layers}
    if len(set(widths.values())) > 1:
        described = ", ".join(f"{layer}: {width}" for layer, width in widths.items())
        raise InputError(f"--stack needs layers of one width ({described}): export cnn separately")
