"""`lebench show`: the metadata of an output folder."""

from __future__ import annotations

import json

import click

from .common import reports_errors


@click.command()
@click.argument("output")
@reports_errors
def show(output):
    """Print the metadata of OUTPUT (JSON), with its utterance count."""
    from ..reading.store import open_features

    with open_features(output) as features:
        described = dict(features.metadata)
        described["utterances"] = len(features)
        described["shard_compute"] = features.compute  # a store resumed with another --dtype/device: several
        described["mixed_compute"] = len(features.compute) > 1
        click.echo(json.dumps(described, indent=2))
