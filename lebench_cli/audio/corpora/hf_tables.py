"""HuggingFace datasets: a folder written by `save_to_disk` (arrow IPC streams listed in its
`state.json`), or `.arrow` / `.parquet` files, read with pyarrow (`lebench[hf]`), batch by
batch: an arrow file is memory-mapped and its audio bytes never read here; a parquet file's
batches pass through memory one at a time.

The audio column (`--path-column`, else `audio`, else the first `{bytes, path}` struct, as
datasets' `Audio` feature stores it): a row with bytes is a TableRow source; one with only a
path is that file. The id column: `--id-column`, else `id`, else the audio's path without
extension. Other scalar columns (text, numbers) are carried."""

from __future__ import annotations

import json
import os

from ...errors import InputError
from ...names import printable
from ..sources import AudioSource, TableRow
from .common import CorpusOptions, UniqueIds, existing_file, metadata_of, require

_BATCH_ROWS = 256


def is_saved_dataset(folder: str) -> bool:
    return os.path.isfile(os.path.join(folder, "state.json")) and os.path.isfile(
        os.path.join(folder, "dataset_info.json"))


def is_dataset_dict(folder: str) -> bool:
    return os.path.isfile(os.path.join(folder, "dataset_dict.json"))


def saved_dataset_files(folder: str) -> list:
    state = os.path.join(folder, "state.json")
    try:
        with open(state, encoding="utf-8") as file:
            files = [entry["filename"] for entry in json.load(file)["_data_files"]]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise InputError(f"{printable(state)}: not a datasets state.json ({type(error).__name__}: {error})") from None
    return [os.path.join(folder, name) for name in files]


def read_tables(files: list, kind: str, options: CorpusOptions) -> list:
    """`kind`: "arrow" or "parquet"; `files`: the dataset's files in order."""
    pa = require("pyarrow", "hf", "reading HuggingFace datasets")
    sources, seen = [], UniqueIds()
    for file in files:
        schema, batches = _open(pa, file, kind)
        audio = _audio_column(pa, file, schema, options.path_column)
        id_column = _id_column(file, schema, options.id_column)
        carried = [field.name for field in schema if field.name not in (audio, id_column) and _is_scalar(pa, field.type)]
        row = 0
        for batch in batches([name for name in (id_column, audio, *carried) if name]):
            columns = {name: batch.column(name) for name in batch.schema.names}
            audio_values = columns[audio]
            for index in range(batch.num_rows):
                sources.append(_row_source(file, kind, row, audio, audio_values, index, columns, id_column,
                                           carried, seen))
                row += 1
    return sources


def _row_source(file, kind, row, audio, audio_values, index, columns, id_column, carried, seen) -> AudioSource:
    at = f"{printable(file)}: row {row}"
    if audio_values.type.num_fields and hasattr(audio_values, "field"):  # struct {bytes, path}
        has_bytes = audio_values.field("bytes").is_valid()[index].as_py() if _has_field(audio_values, "bytes") else False
        path = audio_values.field("path")[index].as_py() if _has_field(audio_values, "path") else None
    else:
        has_bytes, path = False, audio_values[index].as_py()
    if id_column is not None:
        utt_id = columns[id_column][index].as_py()
    elif path:
        utt_id = os.path.splitext(path)[0]
    else:
        raise InputError(f"{at}: no id: the audio has no path; name the id column with --id-column")
    utt_id = str(utt_id) if utt_id is not None else ""
    if not utt_id:
        raise InputError(f"{at}: empty id in column '{id_column}'")
    seen.add(utt_id, at)
    metadata = metadata_of((name, columns[name][index].as_py()) for name in carried)
    if has_bytes:
        return AudioSource(utt_id, f"{file}[{row}]", origin=TableRow(file, row, audio, kind), metadata=metadata)
    if not path:
        raise InputError(f"{at}: no audio in column '{audio}' (neither bytes nor a path)")
    return AudioSource(utt_id, existing_file(path, at), metadata=metadata)


def _has_field(array, name: str) -> bool:
    return array.type.get_field_index(name) >= 0


def _open(pa, file: str, kind: str):
    try:
        if kind == "parquet":
            import pyarrow.parquet as pq

            parquet = pq.ParquetFile(file)
            return parquet.schema_arrow, lambda columns: parquet.iter_batches(batch_size=_BATCH_ROWS, columns=columns)
        reader = pa.ipc.open_stream(pa.memory_map(file))
        return reader.schema, lambda columns: (batch.select(columns) for batch in reader)
    except (OSError, pa.ArrowException) as error:
        raise InputError(f"{printable(file)}: not a readable {kind} file ({' '.join(str(error).split())})") from None


def _audio_column(pa, file: str, schema, asked) -> str:
    names = schema.names
    if asked is not None:
        if asked not in names:
            raise InputError(f"{printable(file)}: no column '{asked}' ({', '.join(names)}): name the audio column "
                             "with --path-column")
        return asked
    structs = [f.name for f in schema if pa.types.is_struct(f.type) and f.type.get_field_index("bytes") >= 0]
    if "audio" in names:
        return "audio"
    if structs:
        return structs[0]
    raise InputError(f"{printable(file)}: no audio column (a {{bytes, path}} struct) among {', '.join(names)}: "
                     "name it with --path-column")


def _id_column(file: str, schema, asked):
    if asked is not None:
        if asked not in schema.names:
            raise InputError(f"{printable(file)}: no column '{asked}' ({', '.join(schema.names)}): name the id "
                             "column with --id-column")
        return asked
    return "id" if "id" in schema.names else None


def _is_scalar(pa, data_type) -> bool:
    types = pa.types
    return (types.is_string(data_type) or types.is_large_string(data_type) or types.is_integer(data_type)
            or types.is_floating(data_type))
