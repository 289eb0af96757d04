"""`lebench extract`: the command and the ExtractOptions its parameters make."""

from __future__ import annotations

import sys

import click

from ..audio.inputs import INPUT_FORMATS  # plain modules: `lebench --help` stays instant
from .common import EXIT_INTERRUPTED, report_summary, reports_errors, trust_checkpoint_option, warn_cpu_fallback


def _layer_syntax(context, parameter, value):
    """Layer selections no model could satisfy fail here, before fairseq is imported."""
    from ..errors import InputError
    from ..layers import check_layer_syntax

    try:
        check_layer_syntax(value)
    except InputError as error:
        raise click.BadParameter(str(error)) from None
    return value


@click.command()
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
@click.option("--input-format", type=click.Choice(INPUT_FORMATS), default="auto", show_default=True,
              help="How to read INPUTS (auto: each by its form; docs/extract.md has the table).")
@click.option("--allow-pipes", is_flag=True,
              help="Run the shell commands of Kaldi wav.scp lines ending in '|' and lhotse command sources.")
@click.option("--id-column", default=None, help="The id column of a SpeechBrain, Common Voice or HuggingFace table.")
@click.option("--path-column", default=None, help="The audio column of such a table.")
@click.option("--time-unit", type=click.Choice(["seconds", "samples"]), default=None,
              help="What SpeechBrain start/stop columns count (default: decimals are seconds, whole numbers refused).")
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
            id_prefix, input_format, allow_pipes, id_column, path_column, time_unit, part, overwrite, update, strict, keep_truncated, dry_run, manifest, quiet, trust_checkpoint):
    """Extract per-layer features of INPUTS (folders, files, .tsv manifests, or - for paths
    on stdin) into HDF5 shards in OUTPUT."""
    from ..errors import InputError
    from ..pipeline.extract import Extraction, plan_extract
    from ..pipeline.memory import return_large_blocks_to_the_os
    from ..pipeline.parts import parse_part

    this_part = _part_from_environment() if part == "auto" else parse_part(part)
    options = extract_options(click.get_current_context().params, this_part, overwrite=overwrite).validate()
    stdin = sys.stdin if "-" in inputs else None
    if manifest is not None:
        if not dry_run:
            raise InputError("--manifest writes the listing of a dry run: add --dry-run")
        from dataclasses import replace

        from ..pipeline.manifest import write_listing

        click.echo(write_listing(options, manifest, stdin=stdin).line())
        options, stdin = replace(options, inputs=[manifest]), None  # the plan reads the lengths just written
    if dry_run:
        click.echo(plan_extract(options, stdin=stdin).line())
        return
    from ..pipeline.stop_signals import StopSignals

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
    from ..scaleout.devices import DeviceRun, parse_devices
    from ..errors import InputError

    if device is not None:
        raise InputError("--device and --devices cannot be combined: --devices names every device")
    return DeviceRun(options, parse_devices(devices), stdin=stdin, progress=show_progress)


def _part_from_environment() -> tuple:
    import os

    from ..scaleout.environment import part_from_environment

    k, n, where = part_from_environment(os.environ)
    click.echo(f"lebench: part {k}/{n} from {where}", err=True)
    return k, n


def extract_options(params: dict, part: tuple, overwrite: bool = False):
    """ExtractOptions for the parsed extract parameters, as part `part` (k, n): what the
    extract command itself runs, and what `lebench ray` hands each part."""
    from ..pipeline.options import ExtractOptions
    from ..pipeline.sizes import parse_size

    extensions = params["extensions"]
    return ExtractOptions(
        inputs=list(params["inputs"]), output=params["output"], model=params["model"], layers=params["layers"],
        pool=params["pool"], store_frames=params["store_frames"],
        extensions=tuple(e.strip().lstrip(".").lower() for e in extensions.split(",") if e.strip()) if extensions else (),
        channel=params["channel"], batch_seconds=params["batch_seconds"], chunk_seconds=params["chunk_seconds"],
        overlap_seconds=params["overlap_seconds"], device=params["device"], dtype=params["dtype"],
        save_dtype=params["save_dtype"], shard_size=parse_size(params["shard_size"]),
        compression=None if params["compression"] == "none" else params["compression"],
        commit_seconds=params["commit_seconds"], workers=params["workers"], shard=part,
        overwrite=overwrite, update=params["update"], strict=params["strict"],
        keep_truncated=params["keep_truncated"], trust_checkpoint=params["trust_checkpoint"],
        root=params["root"], id_prefix=params["id_prefix"], input_format=params["input_format"],
        allow_pipes=params["allow_pipes"], id_column=params["id_column"], path_column=params["path_column"],
        time_unit=params["time_unit"],
    )
