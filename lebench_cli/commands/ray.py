"""`lebench ray`: the parts of `lebench extract` as tasks on a Ray cluster."""

from __future__ import annotations

import sys

import click

from .common import EXIT_INTERRUPTED, report_summary, reports_errors


@click.command(context_settings={"ignore_unknown_options": True})
@click.option("--parts", type=click.IntRange(min=1), default=None,
              help="Number of parts (default: one per GPU of the cluster, or per --cpus-per-part CPUs).")
@click.option("--address", default=None, help="Ray cluster address (default: RAY_ADDRESS, else a new local cluster).")
@click.option("--gpus-per-part", type=click.FloatRange(min=0), default=None,
              help="GPUs per part (default: 1 when the cluster has GPUs and ARGS do not say --device cpu).")
@click.option("--cpus-per-part", type=click.FloatRange(min=0, min_open=True), default=1.0, show_default=True,
              help="CPUs per part (also its torch threads).")
@click.option("--max-retries", type=click.IntRange(min=0), default=3, show_default=True,
              help="Reruns of a part whose worker dies; a rerun resumes.")
@click.option("--no-check", is_flag=True, help="Do not load the model here to check it and the layers first.")
@click.argument("extract_args", nargs=-1, type=click.UNPROCESSED, required=True)
@reports_errors
def ray(parts, address, gpus_per_part, cpus_per_part, max_retries, no_check, extract_args):
    """Run `lebench extract ARGS` as Ray tasks, one per part, into one OUTPUT that every node
    of the cluster must see (a shared filesystem).

    Usage: lebench ray [OPTIONS] -- extract INPUTS... -o OUTPUT --model MODEL ..."""
    from ..scaleout.checks import check_model_and_layers
    from ..scaleout.ray_parts import RayOptions, run_parts_on_ray
    from ..pipeline.stop_signals import ignore_stop_signals
    from .extract import extract_options
    from .extract_args import parse_extract_args

    params = parse_extract_args(extract_args, "ray", refused={
        "devices": "--devices: each part is one Ray task; use --gpus-per-part and more --parts"})
    # Before a cluster starts: what every part would otherwise fail with; and where the
    # parts find a model from the hub cache.
    environment = {} if no_check else check_model_and_layers(params["model"], params["layers"],
                                                             params["trust_checkpoint"])
    quiet = params["quiet"]
    options = extract_options(params, part=(1, 1))
    ray_options = RayOptions(parts=parts, address=address, gpus_per_part=gpus_per_part,
                             cpus_per_part=cpus_per_part, max_retries=max_retries, environment=environment)
    report = None if quiet else (lambda result: click.echo(result.line(), err=True))
    try:
        summary = run_parts_on_ray(options, ray_options, on_part_done=report)
        ignore_stop_signals()  # the parts have ended: a late Ctrl-C cannot make the outcome 130
    except KeyboardInterrupt:
        click.echo("Error: interrupted: the parts were stopped; committed work stays: rerun the same command "
                   "to resume", err=True)
        sys.exit(EXIT_INTERRUPTED)
    report_summary(summary, quiet)
