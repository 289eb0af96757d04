"""One input read as a named corpus form (inputs.py detects the form, and reads folders,
files and fairseq manifests itself)."""

from __future__ import annotations

import os

from ...errors import InputError
from ...names import printable
from .common import CorpusOptions


def read_form(item: str, form: str, extensions: tuple, corpus: CorpusOptions) -> list:
    """The sources of `item` (an existing file or folder) read as `form`; lhotse manifests
    are read together, by `lhotse_manifests.read_lhotse`."""
    if form == "kaldi":
        from .kaldi import WAV_SCP, is_kaldi_dir, read_kaldi_dir

        folder = item if os.path.isdir(item) else os.path.dirname(item) or "."
        if os.path.isdir(item) and not is_kaldi_dir(item) or not os.path.isdir(item) and os.path.basename(item) != WAV_SCP:
            raise InputError(f"{printable(item)}: not a Kaldi data folder (no {WAV_SCP})")
        return read_kaldi_dir(folder, corpus)
    if form == "speechbrain":
        from .speechbrain import read_csv, read_json

        reader = read_json if item.lower().endswith(".json") else read_csv
        return reader(_file(item, form), corpus)
    if form == "hf":
        return _read_hf(item, corpus)
    if form == "tar":
        from .tar_shards import read_tar

        return read_tar(_file(item, form), extensions)
    if form == "list":
        from .id_lists import read_id_list_file

        return read_id_list_file(_file(item, form))
    if form == "commonvoice":
        from .id_lists import read_common_voice

        return read_common_voice(_file(item, form), corpus)
    raise InputError(f"unknown input format '{form}'")


def _read_hf(item: str, corpus: CorpusOptions) -> list:
    from . import hf_tables

    if os.path.isdir(item):
        if hf_tables.is_dataset_dict(item):
            splits = sorted(name for name in os.listdir(item) if hf_tables.is_saved_dataset(os.path.join(item, name)))
            raise InputError(f"{printable(item)}: a DatasetDict of splits ({', '.join(splits)}): give one split's "
                             f"folder, e.g. {printable(os.path.join(item, splits[0] if splits else 'train'))}")
        if not hf_tables.is_saved_dataset(item):
            raise InputError(f"{printable(item)}: not a dataset saved with save_to_disk (no state.json and "
                             "dataset_info.json)")
        return hf_tables.read_tables(hf_tables.saved_dataset_files(item), "arrow", corpus)
    kind = "parquet" if item.lower().endswith(".parquet") else "arrow"
    return hf_tables.read_tables([item], kind, corpus)


def _file(item: str, form: str) -> str:
    if os.path.isdir(item):
        raise InputError(f"{printable(item)}: a folder, not a {form} manifest file")
    return item
