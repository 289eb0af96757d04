"""Kaldi ark/scp of a store of utterance means (`extract --pool mean`): DEST/layer_L/xvector.ark
and xvector.scp, one float32 vector ('BFV') per utterance, with the data-directory files of the
frames export beside them (utt2spk, spk2utt, text, segments, id_map: kaldi_data.py); or, with
DEST "-" and one layer, a binary vector ark on standard output.

The names are those of Kaldi's and ESPnet's utterance-level vectors (`extract_xvectors.sh`
writes xvector.scp), so that their vector tools and recipes read the folder as it is
(`copy-vector`, `ivector-mean`, `ivector-compute-lda`, ESPnet's xvector inputs);
feats.scp is for matrices, and `validate_data_dir.sh` would take the vectors for broken
features. The vectors are wav2vec2 states averaged over the utterance, not an x-vector
network's output. Written, sorted and made atomic per layer as the frames export (kaldi.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import InputError
from . import MEANS_VARIANT, ExportSummary, export_per_layer, read_mean
from . import kaldi
from .kaldi_data import KEEP

TABLE = "xvector"


def check_dependencies() -> None:
    kaldi.check_dependencies()


def check_ids(store, options, layers: list) -> None:
    kaldi.check_ids(store, options, layers, table=TABLE, other_formats="npy")


def export(store, layers: list, options, bar, record) -> ExportSummary:
    if options.dtype == "float16":
        raise InputError("kaldi vectors are float32 or float64: drop --dtype float16")
    if options.destination == "-":
        return kaldi.to_stdout(store, layers[0], bar, array=_vector_of)
    kaldi_ids = getattr(options, "kaldi_ids", KEEP)

    notes = []

    def write(store, todo: list, destination: Path, bar) -> None:
        notes.append(kaldi.write_layers(store, todo, destination, bar, kaldi_ids, table=TABLE, array=_vector_of))
    summary = export_per_layer(store, layers, record, "utt2spk", f"float32;ids={kaldi_ids};{MEANS_VARIANT}",
                               write, bar)
    summary.note = "".join(notes)
    return summary


def exported_array(store, utt_id: str, layer, layers: list, dtype) -> np.ndarray:
    """What the export writes into xvector.ark for ID: its float32 mean of LAYER."""
    return _vector_of(store, utt_id, layer)


def stored_arrays(destination: Path, key: str, other_keys):
    """(id, load) of every line of KEY/xvector.scp; load() reads its vector with kaldiio."""
    return kaldi.stored_arrays(destination, key, other_keys, table=TABLE)


def _vector_of(store, utt_id: str, layer) -> np.ndarray:
    return kaldi.float32(read_mean(store, utt_id, layer))
