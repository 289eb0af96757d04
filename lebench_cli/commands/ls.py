"""`lebench ls`: one line per stored utterance."""

from __future__ import annotations

import click

from .common import reports_errors


# OUTPUT is checked by open_features, not by Click: a missing folder is then an error (exit 1)
# like a folder that holds no features, not a usage error (exit 2).
@click.command(name="ls")
@click.argument("output")
@click.option("--header", is_flag=True, help="Print a header line first.")
@click.option("--columns", default="",
              help="Metadata fields to add after flags, comma-separated (e.g. speaker,text,start,end); "
                   "empty where an utterance has none.")
@reports_errors
def list_utterances(output, header, columns):
    """One line per stored utterance of OUTPUT: id, frames, duration, flags (tab-separated),
    then the metadata fields of --columns."""
    from ..errors import InputError
    from ..reading.store import open_features
    from ..storage.layout import tsv_field

    names = [name.strip() for name in columns.split(",") if name.strip()] if columns else []
    if columns and not names:
        raise InputError(f"--columns {columns!r} names no field: give e.g. speaker,text")
    with open_features(output) as features:
        if header:
            click.echo("\t".join(["id", "frames", "duration", "flags", *map(tsv_field, names)]))
        for row in features.utterances():
            extra = "".join("\t" + _field(row["metadata"].get(name)) for name in names)
            click.echo(f"{row['id']}\t{row['frames']}\t{row['duration']:.3f}\t{row['flags']}{extra}")


def _field(value) -> str:
    from ..storage.layout import tsv_field

    return "" if value is None else tsv_field(value)
