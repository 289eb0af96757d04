"""`lebench info`: the known models, or one model described."""

from __future__ import annotations

import json

import click

from .common import reports_errors, trust_checkpoint_option


@click.command()
@click.argument("model", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@trust_checkpoint_option
@reports_errors
def info(model, as_json, trust_checkpoint):
    """List the known LeBenchmark models, or inspect MODEL.

    MODEL is a hub id (LeBenchmark/wav2vec2-FR-7K-large), an alias (wav2vec2-FR-M-base),
    a local checkpoint file or a model folder."""
    from ..model.describe import catalog_rows, describe_checkpoint, format_catalog, format_description

    if model is None:
        rows = catalog_rows()
        if as_json:
            click.echo(json.dumps(rows, indent=2))
            return
        from ..model.cpu_precision import cpu_half_precision_lines

        click.echo("\n".join([format_catalog(rows), *cpu_half_precision_lines()]))
        return
    described = describe_checkpoint(model, trust=trust_checkpoint)
    click.echo(json.dumps(described, indent=2) if as_json else format_description(described))
