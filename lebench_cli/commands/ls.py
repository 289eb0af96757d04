"""`lebench ls`: one line per stored utterance."""

from __future__ import annotations

import click

from .common import reports_errors


# OUTPUT is checked by open_features, not by Click: a missing folder is then an error (exit 1)
# like a folder that holds no features, not a usage error (exit 2).
@click.command(name="ls")
@click.argument("output")
@click.option("--header", is_flag=True, help="Print a header line first.")
@reports_errors
def list_utterances(output, header):
    """One line per stored utterance of OUTPUT: id, frames, duration, flags (tab-separated)."""
    from ..reading.store import open_features

    with open_features(output) as features:
        if header:
            click.echo("id\tframes\tduration\tflags")
        for row in features.utterances():
            click.echo(f"{row['id']}\t{row['frames']}\t{row['duration']:.3f}\t{row['flags']}")
