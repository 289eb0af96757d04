"""The `lebench` command line: a thin layer over the library (heavy imports stay inside
commands so that `--help` is instant)."""

from __future__ import annotations

import functools
import json
import sys

import click

from . import __version__
from .errors import LebenchError

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2


def reports_errors(command):
    """Turn library errors into one `Error: ...` line and the error's exit code."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except LebenchError as error:
            click.echo(f"Error: {error}", err=True)
            sys.exit(error.exit_code)

    return wrapper


trust_checkpoint_option = click.option(
    "--trust-checkpoint",
    is_flag=True,
    help="Load pickled checkpoint content outside the allowlist (can run code: only for files you trust).",
)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="lebench")
def main():
    """Per-layer wav2vec2 features from LeBenchmark's French speech models."""


@main.command()
@click.argument("model", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@trust_checkpoint_option
@reports_errors
def info(model, as_json, trust_checkpoint):
    """List the known LeBenchmark models, or inspect MODEL.

    MODEL is a hub id (LeBenchmark/wav2vec2-FR-7K-large), an alias (wav2vec2-FR-M-base),
    a local checkpoint file or a model folder."""
    from .describe import catalog_rows, describe_checkpoint, format_catalog, format_description

    if model is None:
        rows = catalog_rows()
        click.echo(json.dumps(rows, indent=2) if as_json else format_catalog(rows))
        return
    described = describe_checkpoint(model, trust=trust_checkpoint)
    click.echo(json.dumps(described, indent=2) if as_json else format_description(described))
