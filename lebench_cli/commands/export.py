"""`lebench export`: a store's features as kaldi ark/scp, .npy files or a lhotse CutSet."""

from __future__ import annotations

import sys

import click

from .common import reports_errors


@click.command()
@click.argument("store")  # checked by open_features: a missing one is an error (exit 1), not a usage error
@click.option("--format", "export_format", type=click.Choice(["kaldi", "npy", "lhotse"]), required=True,
              help="kaldi (ark/scp), npy (one file per utterance; a store of means: one matrix per layer) "
                   "or lhotse (a CutSet).")
@click.option("-o", "--output", required=True, help="Destination folder; - streams a kaldi ark to stdout (one layer).")
@click.option("--layers", default=None,
              help="Stored layers to export: all (0..L), last, cnn, 6,12, 0-24 (default: every stored layer, cnn included).")
@click.option("--stack", is_flag=True,
              help="npy: one [layers, frames, width] array per utterance (means: one [utterances, layers, width]).")
@click.option("--dtype", type=click.Choice(["float16", "float32"]), default=None,
              help="Convert to this dtype (default: as stored; kaldi: always float32).")
@click.option("--kaldi-ids", type=click.Choice(["keep", "sanitize"]), default="keep",
              help="kaldi: keep ids as they are (refusing those with whitespace), or sanitize them "
                   "(whitespace -> _, the map in id_map beside feats.scp).")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar and no summary.")
@reports_errors
def export(store, export_format, output, layers, stack, dtype, kaldi_ids, quiet):
    """Export the features of STORE (an output folder of `lebench extract`) for other tools."""
    from ..errors import InputError
    from ..export import ExportOptions, export_features

    if stack and export_format != "npy":
        raise InputError("--stack applies to --format npy only")
    if kaldi_ids != "keep" and export_format != "kaldi":
        raise InputError("--kaldi-ids applies to --format kaldi only")
    options = ExportOptions(store=store, format=export_format, destination=output, layers=layers, stack=stack,
                            dtype=dtype, kaldi_ids=kaldi_ids)
    try:
        summary = export_features(options, progress=not quiet and sys.stderr.isatty())
    except BrokenPipeError:  # the reading end of `-o - | ...` stopped early: its choice
        sys.stderr.close()
        sys.exit(1)
    if not quiet:
        click.echo(summary.line(), err=True)
