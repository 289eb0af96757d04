"""The `lebench` command line: a thin layer over the library (heavy imports stay inside
commands so that `--help` is instant)."""

from __future__ import annotations

import json
import sys

import click

from . import __version__
from .commands.common import (EXIT_ERROR, EXIT_INTERRUPTED, EXIT_OK, EXIT_SOME_FAILED, EXIT_USAGE,  # noqa: F401
                              report_summary, reports_errors, trust_checkpoint_option, warn_cpu_fallback)


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


def _layer_syntax(context, parameter, value):
    """Layer selections no model could satisfy fail here, before fairseq is imported."""
    from .errors import InputError
    from .layers import check_layer_syntax

    try:
        check_layer_syntax(value)
    except InputError as error:
        raise click.BadParameter(str(error)) from None
    return value


@main.command()
@click.argument("inputs", nargs=-1, required=True)
@click.option("-o", "--output", required=True, help="Output folder.")
@click.option("-m", "--model", required=True, help="Hub id, alias, checkpoint file or model folder.")
@click.option("--layers", default="last", show_default=True, callback=_layer_syntax,
              help="all (0..L), last (L), cnn, lists and ranges: 6,12 or 0-24,cnn (a set: order and repeats do not matter).")
@click.option("--pool", type=click.Choice(["none", "mean"]), default="none", show_default=True,
              help="mean: store one mean vector per utterance and layer (instead of frames unless --frames).")
@click.option("--frames/--no-frames", "store_frames", default=None, help="Store frame-level states (default: unless --pool mean).")
@click.option("--ext", "extensions", default=None,
              help="Comma-separated extensions to walk (default: speech formats, wav, flac, ogg, mp3, ...; not .mat, .htk).")
@click.option("--channel", type=click.IntRange(min=0), default=None, help="Use this channel (0-based) instead of averaging to mono.")
@click.option("--batch-seconds", type=click.FloatRange(min=1), default=None,
              help="Padded audio seconds per batch (default: 120 on CUDA, 20 on CPU).")
@click.option("--chunk-seconds", type=click.FloatRange(min=2), default=30.0, show_default=True, help="Longer recordings run in windows of at most this length.")
@click.option("--overlap-seconds", type=click.FloatRange(min=0), default=5.0, show_default=True, help="Least overlap between windows.")
@click.option("--device", default=None, help="cuda, cuda:N or cpu (default: cuda when available).")
@click.option("--devices", default=None,
              help="One worker process per device, one part each: cuda:0,cuda:1, all (every GPU) or cpu,cpu.")
@click.option("--dtype", type=click.Choice(["float32", "float16", "bfloat16"]), default=None,
              help="Compute precision (default: float16 on CUDA, float32 on CPU).")
@click.option("--save-dtype", type=click.Choice(["float16", "float32"]), default="float16", show_default=True, help="Storage precision.")
@click.option("--shard-size", default="2GB", show_default=True, help="Largest HDF5 shard, e.g. 500MB.")
@click.option("--compression", type=click.Choice(["none", "gzip", "lzf"]), default="none", show_default=True, help="HDF5 compression.")
@click.option("--commit-seconds", type=click.FloatRange(min=1), default=300.0, show_default=True,
              help="Commit the open shard at least this often: the most work a crash can lose.")
@click.option("--workers", type=click.IntRange(min=0), default=None, help="Decoding processes (0: decode in the main process; default: cores - 1, at most 4, on CUDA; 0 on CPU).")
@click.option("--root", type=click.Path(exists=True, file_okay=False), default=None,
              help="Make every id the file's path relative to this folder (for files given one by one, on stdin or in lists).")
@click.option("--id-prefix", default="", help="Paste this before every id, e.g. train/ (several corpora in one OUTPUT).")
@click.option("--shard", "part", default="1/1", show_default=True,
              help="Process part K of N (job arrays), e.g. 3/8; auto: from SLURM's or torchrun's variables.")
@click.option("--overwrite", is_flag=True, help="Replace features of a different model or layer set in OUTPUT.")
@click.option("--update", is_flag=True,
              help="Extract again the stored ids whose source file changed, replacing their features.")
@click.option("--strict", is_flag=True, help="Stop at the first file that fails.")
@click.option("--keep-truncated", is_flag=True,
              help="Store what a file that ends before its header's length holds, flagged truncated (default: it fails).")
@click.option("--dry-run", is_flag=True, help="Print file count, duration and estimated output size; write nothing.")
@click.option("--manifest", default=None, metavar="FILE.tsv",
              help="With --dry-run: write the input listing with lengths to FILE.tsv, for job arrays to read.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar and no summary.")
@trust_checkpoint_option
@reports_errors
def extract(inputs, output, model, layers, pool, store_frames, extensions, channel, batch_seconds, chunk_seconds,
            overlap_seconds, device, devices, dtype, save_dtype, shard_size, compression, commit_seconds, workers, root,
            id_prefix, part, overwrite, update, strict, keep_truncated, dry_run, manifest, quiet, trust_checkpoint):
    """Extract per-layer features of INPUTS (folders, files, .tsv manifests, or - for paths
    on stdin) into HDF5 shards in OUTPUT."""
    from .commands.extract_args import extract_options
    from .errors import InputError
    from .extract import Extraction, plan_extract
    from .options import return_large_blocks_to_the_os
    from .parts import parse_part

    shard = _part_from_environment() if part == "auto" else parse_part(part)
    options = extract_options(click.get_current_context().params, shard, overwrite=overwrite).validate()
    stdin = sys.stdin if "-" in inputs else None
    if manifest is not None:
        if not dry_run:
            raise InputError("--manifest writes the listing of a dry run: add --dry-run")
        from dataclasses import replace

        from .manifest import write_listing

        click.echo(write_listing(options, manifest, stdin=stdin).line())
        options, stdin = replace(options, inputs=[manifest]), None  # the plan reads the lengths just written
    if dry_run:
        click.echo(plan_extract(options, stdin=stdin).line())
        return
    from .stop_signals import StopSignals

    return_large_blocks_to_the_os()
    if devices is None:
        warn_cpu_fallback(device)
    extraction = None
    try:
        with StopSignals() as stop_signals:
            show_progress = not quiet and sys.stderr.isatty()
            if devices is not None:
                extraction = _device_run(options, devices, device, stdin, show_progress)
            else:
                extraction = Extraction(options, stdin=stdin, progress=show_progress)
            summary = extraction.run()
            stop_signals.decide()  # a signal from here on cannot make a finished run exit 130
    except KeyboardInterrupt:
        done = extraction.summary.extracted if extraction is not None else 0
        click.echo(
            f"Error: interrupted after {done} files; finished work is committed: "
            "rerun the same command to resume", err=True,
        )
        sys.exit(EXIT_INTERRUPTED)
    report_summary(summary, quiet)


def _device_run(options, devices: str, device, stdin, show_progress: bool):
    from .devices import DeviceRun, parse_devices
    from .errors import InputError

    if device is not None:
        raise InputError("--device and --devices cannot be combined: --devices names every device")
    return DeviceRun(options, parse_devices(devices), stdin=stdin, progress=show_progress)


def _part_from_environment() -> tuple:
    import os

    from .scaleout.environment import part_from_environment

    k, n, where = part_from_environment(os.environ)
    click.echo(f"lebench: part {k}/{n} from {where}", err=True)
    return k, n


# OUTPUT is checked by open_features, not by Click: a missing folder is then an error (exit 1)
# like a folder that holds no features, not a usage error (exit 2).
@main.command(name="ls")
@click.argument("output")
@click.option("--header", is_flag=True, help="Print a header line first.")
@reports_errors
def list_utterances(output, header):
    """One line per stored utterance of OUTPUT: id, frames, duration, flags (tab-separated)."""
    from .reader import open_features

    with open_features(output) as features:
        if header:
            click.echo("id\tframes\tduration\tflags")
        for row in features.utterances():
            click.echo(f"{row['id']}\t{row['frames']}\t{row['duration']:.3f}\t{row['flags']}")


@main.command()
@click.argument("output")
@reports_errors
def show(output):
    """Print the metadata of OUTPUT (JSON), with its utterance count."""
    from .reader import open_features

    with open_features(output) as features:
        described = dict(features.metadata)
        described["utterances"] = len(features)
        described["shard_compute"] = features.compute  # a store resumed with another --dtype/device: several
        described["mixed_compute"] = len(features.compute) > 1
        click.echo(json.dumps(described, indent=2))


# Commands in modules of their own (lebench_cli/commands/), registered here.
from .commands.export import export  # noqa: E402
from .commands.fetch import fetch  # noqa: E402
from .commands.ray import ray  # noqa: E402
from .commands.slurm import slurm  # noqa: E402
from .commands.verify import verify  # noqa: E402

main.add_command(fetch)
main.add_command(slurm)
main.add_command(ray)
main.add_command(export)
main.add_command(verify)
