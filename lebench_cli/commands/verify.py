"""`lebench verify`: check every shard, table and checksum of an output folder."""

from __future__ import annotations

import sys

import click

from .common import EXIT_ERROR, reports_errors


@click.command()
@click.argument("output", type=click.Path(exists=True, file_okay=False))
@click.option("--workers", type=click.IntRange(min=1), default=1, show_default=True,
              help="Check this many shards at once, each in its own process.")
@click.option("--repair", is_flag=True,
              help="Move damaged and foreign shards and stray .tmp files into OUTPUT/damaged/ (never deletes).")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar and no summary: only the problems.")
@reports_errors
def verify(output, workers, repair, quiet):
    """Read and check every shard of OUTPUT: one line per problem, a summary; exit 1 when
    anything is damaged. Rerun the extraction after --repair to extract the moved shards'
    utterances again."""
    from ..storage.verify import repair as move_aside
    from ..storage.verify import verify_store

    bar = None
    if not quiet and sys.stderr.isatty():
        from tqdm import tqdm

        bar = tqdm(desc="verify", unit="shard", file=sys.stderr, mininterval=0.5)
    try:
        report = verify_store(output, workers=workers, on_shard=bar.update if bar else None)
    finally:
        if bar is not None:
            bar.close()
    for problem in report.problems:
        click.echo(problem.line())
    for line in report.unchecked:
        click.echo(f"not checked: {line}")
    if repair and report.to_move:
        move_aside(report)
    if not quiet:
        click.echo(report.line(), err=True)
    if not report.clean:
        sys.exit(EXIT_ERROR)
