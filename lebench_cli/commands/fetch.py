"""`lebench fetch`: models into the hub cache, for machines that extract without network."""

from __future__ import annotations

import sys

import click

from .common import EXIT_ERROR


@click.command()
@click.argument("models", nargs=-1, required=True)
def fetch(models):
    """Download each of MODELS (hub ids or aliases) into the hub cache: the very files
    `lebench extract` loads. Prints one line per model: hub id, state (downloaded, cached,
    local) and folder, tab-separated. A cached model is not looked up on the network.

    Then, on a machine that shares the cache (HF_HOME) but has no network:
    HF_HUB_OFFLINE=1 lebench extract ... --model MODEL"""
    from ..errors import LebenchError
    from ..model.models import fetch_model

    failed = False
    for model in models:
        try:
            fetched = fetch_model(model)
        except LebenchError as error:
            click.echo(f"Error: {error}", err=True)
            failed = True
            continue
        click.echo(f"{fetched.repo_id or fetched.model}\t{fetched.state}\t{fetched.path}")
    if failed:
        sys.exit(EXIT_ERROR)
