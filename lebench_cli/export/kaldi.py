"""Kaldi ark/scp through kaldiio: DEST/layer_L/feats.ark and feats.scp, one float32 matrix
('BFM') per utterance; or, with DEST "-" and one layer, a binary ark on standard output for
pipes (`lebench export ... -o - | copy-feats ark:- ark,scp:...`).

Kaldi has no float16 matrix type, so float16 features are written as float32 (exact). Atomic
per layer: feats.ark.tmp and feats.scp.tmp are renamed at the end, the old feats.scp removed
first (no scp ever indexes an ark it was not written with); the scp names the final ark by its
absolute path. A rerun leaves a layer whose feats.scp exists and whose record matches the
store as it is, and writes the others again whole."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np

from ..errors import InputError
from . import EntryFileMissing, ExportSummary, export_per_layer, layer_folder, read_layer, remove_partial, require


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


def check_ids(store, options, layers: list) -> None:
    for utt_id in store.ids:
        _check_key(utt_id)


def export(store, layers: list, options, bar, record) -> ExportSummary:
    if options.dtype == "float16":
        raise InputError("kaldi matrices are float32 or float64: drop --dtype float16")
    if options.destination == "-":
        return _to_stdout(store, layers[0], bar)
    return export_per_layer(store, layers, record, "feats.scp", "float32", _write_layers, bar)


def _write_layers(store, layers: list, destination: Path, bar) -> None:
    import kaldiio

    files, done = {}, False
    try:
        for layer in layers:
            folder = destination / layer_folder(layer)
            folder.mkdir(parents=True, exist_ok=True)
            ark = open(folder / "feats.ark.tmp", "wb")
            scp = open(folder / "feats.scp.tmp", "w", encoding="utf-8")
            files[layer] = (_NamedAs(ark, str(folder / "feats.ark")), ark, scp)
        with bar:
            for utt_id in store.ids:
                for layer, (named, _, scp) in files.items():
                    kaldiio.save_ark(named, {utt_id: exported_array(store, utt_id, layer, layers, None)}, scp=scp)
                bar.update()
        for layer, (_, ark, scp) in files.items():
            for file in (ark, scp):
                file.flush()
                os.fsync(file.fileno())
                file.close()
        for layer in files:
            folder = destination / layer_folder(layer)
            (folder / "feats.scp").unlink(missing_ok=True)  # first: the layer is not done
            os.replace(folder / "feats.ark.tmp", folder / "feats.ark")
            os.replace(folder / "feats.scp.tmp", folder / "feats.scp")  # last: the layer is done
        done = True
    finally:
        for _, ark, scp in files.values():
            ark.close()
            scp.close()
        if not done:
            remove_partial(destination / layer_folder(layer) / name for layer in files
                           for name in ("feats.ark.tmp", "feats.scp.tmp"))


def exported_array(store, utt_id: str, layer, layers: list, dtype) -> np.ndarray:
    """What the export writes into feats.ark for ID (kaldi: always float32)."""
    return _matrix(read_layer(store, utt_id, layer))


def stored_arrays(destination: Path, key: str, other_keys):
    """(id, load) of every line of KEY/feats.scp; load() reads its matrix with kaldiio."""
    import kaldiio

    scp = destination / key / "feats.scp"
    try:
        file = open(scp, encoding="utf-8")
    except FileNotFoundError:
        raise EntryFileMissing(f"{key}/feats.scp is missing") from None
    with file:
        for number, line in enumerate(file, 1):
            fields = line.rstrip("\n").split(None, 1)
            if len(fields) == 2:
                yield fields[0], lambda where=fields[1]: np.asarray(kaldiio.load_mat(where))
            elif fields:
                yield fields[0], lambda number=number: _no_location(scp, number)


def _no_location(scp: Path, number: int):
    raise ValueError(f"line {number} of {scp.name} names no ark location")


def _to_stdout(store, layer, bar) -> ExportSummary:
    import kaldiio

    stdout = sys.stdout.buffer
    summary = ExportSummary(destination="-")
    with bar:
        for utt_id in store.ids:
            kaldiio.save_ark(stdout, {utt_id: _matrix(read_layer(store, utt_id, layer))})
            summary.new += 1
            bar.update()
    stdout.flush()
    return summary


def _matrix(array: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(array, dtype=np.float32)


def _check_key(utt_id: str) -> None:
    # Kaldi tables split a line at the first whitespace: such an id would be read back cut.
    if not utt_id or any(character.isspace() for character in utt_id):
        raise InputError(f"utterance id {utt_id!r} holds whitespace, which Kaldi tables cannot: "
                         "export to npy or lhotse instead")
