"""Kaldi ark/scp through kaldiio: DEST/layer_L/feats.ark and feats.scp, one float32 matrix
('BFM') per utterance, and beside them the data-directory files (utt2spk, spk2utt, text,
segments, wav.scp, id_map: kaldi_data.py), so that each layer folder is a Kaldi data directory; or,
with DEST "-" and one layer, a binary ark on standard output for pipes (`lebench export ...
-o - | copy-feats ark:- ark,scp:...`).

Kaldi has no float16 matrix type, so float16 features are written as float32 (exact). The ark
holds the utterances in storage order (one pass over the shards); feats.scp and the other
files are sorted in C-locale byte order, as Kaldi's tools want. Atomic per layer: every file
is written under NAME.tmp and renamed at the end, the old utt2spk removed first and the new
one renamed last (no scp ever indexes an ark it was not written with); the scp names the final
ark by its absolute path. A rerun leaves a layer whose utt2spk exists and whose record matches
the store as it is, and writes the others again whole."""

from __future__ import annotations

import io
import os
import sys
from pathlib import Path

import numpy as np

from ..errors import InputError
from . import (EntryFileMissing, ExportSummary, export_per_layer, layer_folder, read_layer, remove_partial, require,
               write_synced)
from .kaldi_data import ID_MAP, KEEP, DataFiles, c_sorted, check_names, read_id_map
from .kaldi_recordings import WAV_SCP, pipe_places

_MARKER = "utt2spk"  # renamed last: a layer folder that has it is whole


def check_dependencies() -> None:
    require("kaldiio", "kaldi")


class _NamedAs:
    """A file kaldiio writes into under a temporary name while the scp lines name the final one."""

    def __init__(self, file, name: str):
        self._file, self.name = file, name

    def write(self, data) -> int:
        return self._file.write(data)

    def tell(self) -> int:
        return self._file.tell()

    def flush(self) -> None:
        self._file.flush()


def check_ids(store, options, layers: list, table: str = "feats", other_formats: str = "npy or lhotse") -> None:
    kaldi_ids = getattr(options, "kaldi_ids", KEEP)
    if kaldi_ids != KEEP and options.destination == "-":
        raise InputError(f"--kaldi-ids {kaldi_ids} writes id_map beside {table}.scp: export to a folder, not -")
    check_names(store, kaldi_ids, other_formats)


def export(store, layers: list, options, bar, record) -> ExportSummary:
    if options.dtype == "float16":
        raise InputError("kaldi matrices are float32 or float64: drop --dtype float16")
    if options.destination == "-":
        return to_stdout(store, layers[0], bar)
    kaldi_ids = getattr(options, "kaldi_ids", KEEP)
    notes = []

    def write(store, todo: list, destination: Path, bar) -> None:
        notes.append(write_layers(store, todo, destination, bar, kaldi_ids))
    summary = export_per_layer(store, layers, record, _MARKER, f"float32;ids={kaldi_ids}", write, bar)
    summary.note = "".join(notes)
    return summary


def write_layers(store, layers: list, destination: Path, bar, kaldi_ids: str, table: str = "feats",
                 array=None) -> str:
    """Writes each layer's TABLE.ark and TABLE.scp, the ark holding array(store, id, layer)
    per utterance (default: its float32 frames), and the data files beside them; returns
    why wav.scp was left out ("" when written)."""
    import kaldiio

    array = array or _frames_of
    data = DataFiles(list(store.utterances()), kaldi_ids, lambda: pipe_places(store))
    extra = data.files()
    names = [f"{table}.ark", f"{table}.scp", *extra]
    files, done = {}, False
    try:
        for layer in layers:
            folder = destination / layer_folder(layer)
            folder.mkdir(parents=True, exist_ok=True)
            ark = open(folder / f"{table}.ark.tmp", "wb")
            files[layer] = (_NamedAs(ark, str(folder / f"{table}.ark")), ark, io.StringIO())
        with bar:
            for utt_id in store.ids:
                for layer, (named, _, scp) in files.items():
                    kaldiio.save_ark(named, {data.ids[utt_id]: array(store, utt_id, layer)}, scp=scp)
                bar.update()
        for layer, (_, ark, scp) in files.items():
            ark.flush()
            os.fsync(ark.fileno())
            ark.close()
            folder = destination / layer_folder(layer)
            lines = scp.getvalue().splitlines(keepends=True)
            texts = {f"{table}.scp": "".join(c_sorted(lines)), **extra}
            for name, text in texts.items():
                write_synced(folder / f"{name}.tmp", text)
        for layer in files:
            folder = destination / layer_folder(layer)
            (folder / _MARKER).unlink(missing_ok=True)  # first: the layer is not done
            for stale in ("text", "segments", WAV_SCP, ID_MAP):
                if stale not in extra:
                    (folder / stale).unlink(missing_ok=True)
            for name in names:
                if name != _MARKER:
                    os.replace(folder / f"{name}.tmp", folder / name)
            os.replace(folder / f"{_MARKER}.tmp", folder / _MARKER)  # last: the layer is done
        done = True
    finally:
        for _, ark, _ in files.values():
            ark.close()
        if not done:
            remove_partial(destination / layer_folder(layer) / f"{name}.tmp" for layer in files for name in names)
    return data.note


def exported_array(store, utt_id: str, layer, layers: list, dtype) -> np.ndarray:
    """What the export writes into feats.ark for ID (kaldi: always float32)."""
    return _frames_of(store, utt_id, layer)


def _frames_of(store, utt_id: str, layer) -> np.ndarray:
    return float32(read_layer(store, utt_id, layer))


def stored_arrays(destination: Path, key: str, other_keys, table: str = "feats"):
    """(id, load) of every line of KEY/TABLE.scp; load() reads its matrix (or vector) with kaldiio."""
    import kaldiio

    scp = destination / key / f"{table}.scp"
    try:
        file = open(scp, encoding="utf-8")
    except FileNotFoundError:
        raise EntryFileMissing(f"{key}/{scp.name} is missing") from None
    id_map = destination / key / ID_MAP
    original = read_id_map(id_map) if id_map.is_file() else {}
    with file:
        for number, line in enumerate(file, 1):
            fields = line.rstrip("\n").split(None, 1)
            utt_id = original.get(fields[0], fields[0]) if fields else None
            if len(fields) == 2:
                yield utt_id, lambda where=fields[1]: np.asarray(kaldiio.load_mat(where))
            elif fields:
                yield utt_id, lambda number=number: _no_location(scp, number)


def _no_location(scp: Path, number: int):
    raise ValueError(f"line {number} of {scp.name} names no ark location")


def to_stdout(store, layer, bar, array=None) -> ExportSummary:
    """A binary ark of array(store, id, layer) (default: the float32 frames) on standard output."""
    import kaldiio

    array = array or _frames_of
    stdout = sys.stdout.buffer
    summary = ExportSummary(destination="-")
    with bar:
        for utt_id in store.ids:
            kaldiio.save_ark(stdout, {utt_id: array(store, utt_id, layer)})
            summary.new += 1
            bar.update()
    stdout.flush()
    return summary


def float32(array: np.ndarray) -> np.ndarray:
    """What kaldi holds: float32 (float16 has no Kaldi type; the conversion is exact)."""
    return np.ascontiguousarray(array, dtype=np.float32)
