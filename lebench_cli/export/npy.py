"""One .npy file per utterance: DEST/layer_L/ID.npy [frames, width] per layer, or with
--stack DEST/ID.npy [layers, frames, width] (and DEST/layers.txt, their order); DEST/metadata.jsonl holds each utterance's id, frames, duration
and the fields its input carried.

Resumable: each file is written as ID.npy.tmp and renamed, so an ID.npy is always whole. The
record (DEST/lebench-export.json, saved every few seconds and at the end) says which features
each file holds: a rerun writes what is new or changed, deletes the files of utterances gone
from the store, and leaves the others."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np

from ..errors import InputError, OutputError
from . import EntryFileMissing, ExportSummary, converted, layer_folder, read_layer, utterance_path
from .record import count_utterances

METADATA_LINES = "metadata.jsonl"
_SAVE_SECONDS = 5.0  # a kill -9 loses the record of at most this much work (written again)


def check_dependencies() -> None:
    """numpy is all it needs."""


def check_ids(store, options, layers: list) -> None:
    folders = _folders(Path(options.destination), options, layers).values()
    for utt_id in store.ids:
        for folder in folders:
            utterance_path(folder, utt_id, ".npy")


def export(store, layers: list, options, bar, record) -> ExportSummary:
    destination = Path(options.destination)
    if options.stack:
        _check_stackable(store, layers)
    folders = _folders(destination, options, layers)
    variant = f"dtype={options.dtype or 'stored'}" + (f";stack={','.join(map(str, layers))}" if options.stack else "")
    keys = {layer: "stack" if options.stack else layer_folder(layer) for layer in folders}
    plans = {layer: record.plan(keys[layer], variant,
                                lambda utt_id, folder=folder: utterance_path(folder, utt_id, ".npy").exists())
             for layer, folder in folders.items()}
    summary = ExportSummary.of(count_utterances(list(plans.values())), str(destination))
    write_metadata(store, destination)
    if not any(plan.changes for plan in plans.values()):
        bar.close()
        return summary
    entries = {layer: record.entry(keys[layer], variant) for layer in folders}
    saved, interval, done = time.monotonic(), _SAVE_SECONDS, False
    try:
        record.save()  # the store it is made from is on disk before any of its files
        if options.stack:
            (destination / "layers.txt").write_text("".join(f"{layer}\n" for layer in layers))
        for layer, plan in plans.items():
            for utt_id in plan.removed:
                utterance_path(folders[layer], utt_id, ".npy").unlink(missing_ok=True)
                entries[layer].pop(utt_id, None)
        todo = {layer: set(plan.new) | set(plan.replaced) for layer, plan in plans.items()}
        with bar:
            for utt_id in store.ids:
                for layer, folder in folders.items():
                    if utt_id in todo[layer]:
                        entries[layer].pop(utt_id, None)  # not current until its file is
                        _save(utterance_path(folder, utt_id, ".npy"),
                              exported_array(store, utt_id, layer, layers, options.dtype))
                        entries[layer][utt_id] = record.fingerprints[utt_id]
                bar.update()
                if time.monotonic() - saved > interval:
                    interval = _save_interval(record)
                    saved = time.monotonic()
        done = True
    except OSError as error:
        raise OutputError(f"cannot write under {destination}: {error.strerror or error}") from error
    finally:
        _save_record(record, quietly=not done)
    return summary


def write_metadata(store, destination: Path) -> None:
    """DEST/metadata.jsonl: one JSON object per utterance in storage order (id, frames,
    duration, and the fields its input carried), written whole and renamed into place."""
    import json

    path = destination / METADATA_LINES
    partial = path.with_name(path.name + ".tmp")
    try:
        destination.mkdir(parents=True, exist_ok=True)
        with open(partial, "w", encoding="utf-8") as file:
            for row in store.utterances():
                line = {"id": row["id"], "frames": row["frames"], "duration": row["duration"],
                        "metadata": row.get("metadata", {})}
                file.write(json.dumps(line, ensure_ascii=False, sort_keys=True) + "\n")
        os.replace(partial, path)
    except OSError as error:
        raise OutputError(f"cannot write {path}: {error.strerror or error}") from error


def _save_interval(record) -> float:
    """Saves the record; the next save comes after _SAVE_SECONDS, or 20 times this save's
    time where the record of a large store takes long to write."""
    started = time.monotonic()
    record.save()
    return max(_SAVE_SECONDS, 20 * (time.monotonic() - started))


def _save_record(record, quietly: bool) -> None:
    """At the end, or (quietly: the error that stopped the export is the one to report) when
    it stops: what was written stays known, and a rerun does not write it again."""
    try:
        record.save()
    except OutputError:
        if not quietly:
            raise


def _folders(destination: Path, options, layers: list) -> dict:
    if options.stack:
        return {None: destination}
    return {layer: destination / layer_folder(layer) for layer in layers}


def exported_array(store, utt_id: str, layer, layers: list, dtype) -> np.ndarray:
    """What the export writes into ID.npy (layer None: --stack of LAYERS)."""
    if layer is None:  # --stack
        return np.stack([converted(read_layer(store, utt_id, one), dtype) for one in layers])
    return converted(read_layer(store, utt_id, layer), dtype)


def stored_arrays(destination: Path, key: str, other_keys):
    """(id, load) of every ID.npy the entry KEY holds (a layer folder, or "stack": DEST itself
    but for the folders of OTHER_KEYS); load() reads it with numpy."""
    folder = destination if key == "stack" else destination / key
    if not folder.is_dir():
        raise EntryFileMissing(f"{folder.name}/ is missing")
    skipped = {destination / other for other in other_keys} if key == "stack" else set()
    for path in sorted(_npy_files(folder, skipped)):
        relative = path.relative_to(folder).as_posix()
        yield relative[:-len(".npy")], lambda path=path: np.load(path, allow_pickle=False)


def _npy_files(folder: Path, skipped: set):
    for entry in os.scandir(folder):
        path = Path(entry.path)
        if entry.is_dir(follow_symlinks=False):
            if path not in skipped:
                yield from _npy_files(path, skipped)
        elif entry.name.endswith(".npy"):
            yield path


def _save(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".tmp")
    try:
        with open(partial, "wb") as file:
            np.save(file, array)
        os.replace(partial, path)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise


def _check_stackable(store, layers: list) -> None:
    if not store.ids:
        return
    widths = {layer: read_layer(store, store.ids[0], layer).shape[1] for layer in layers}
    if len(set(widths.values())) > 1:
        described = ", ".join(f"{layer}: {width}" for layer, width in widths.items())
        raise InputError(f"--stack needs layers of one width ({described}): export cnn separately")
