"""`lebench verify`: check every shard, table and checksum of an output folder, or every
array of an export destination against its store."""

from __future__ import annotations

import sys

import click

from .common import EXIT_ERROR, reports_errors


@click.command()
@click.argument("output", type=click.Path(exists=True, file_okay=False))
@click.option("--workers", type=click.IntRange(min=1), default=1, show_default=True,
              help="Check this many shards at once, each in its own process (stores only).")
@click.option("--repair", is_flag=True,
              help="Move damaged and foreign shards and stray .tmp files into OUTPUT/damaged/ (never deletes; "
                   "stores only).")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar and no summary: only the problems.")
@reports_errors
def verify(output, workers, repair, quiet):
    """Read and check every shard of OUTPUT, or every array of an export destination (a folder
    holding lebench-export.json) against the store it was exported from: one line per problem,
    a summary; exit 1 when anything is wrong. Rerun the extraction after --repair to extract the
    moved shards' utterances again."""
    from ..export.verify import is_export

    if is_export(output):
        _verify_export(output, workers, repair, quiet)
        return
    from ..storage.verify import repair as move_aside
    from ..storage.verify import verify_store

    bar = _progress_bar("shard", quiet)
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
    _finish(report, quiet)


def _verify_export(destination, workers: int, repair: bool, quiet: bool) -> None:
    from ..errors import InputError
    from ..export.verify import repair_refusal, verify_export

    if repair:
        raise repair_refusal(destination)
    if workers > 1:
        raise InputError(f"--workers applies to a store; {destination} is an export, checked in one process: "
                         "drop --workers")
    bar = _progress_bar("utt", quiet)
    try:
        report = verify_export(destination, on_utterance=bar.update if bar else None)
    finally:
        if bar is not None:
            bar.close()
    for problem in report.problems:
        click.echo(problem.line())
    _finish(report, quiet)


def _progress_bar(unit: str, quiet: bool):
    if quiet or not sys.stderr.isatty():
        return None
    from tqdm import tqdm

    return tqdm(desc="verify", unit=unit, file=sys.stderr, mininterval=0.5)


def _finish(report, quiet: bool) -> None:
    if not quiet:
        click.echo(report.line(), err=True)
    if not report.clean:
        sys.exit(EXIT_ERROR)
