"""`lebench slurm`: an sbatch script running `lebench extract ... --shard auto` as a job array."""

from __future__ import annotations

import click

from .common import reports_errors


@click.command(context_settings={"ignore_unknown_options": True})
@click.option("--array", "array", default="1", show_default=True,
              help="Number of tasks (parts), or N%M to run at most M at once.")
@click.option("--gpus-per-task", type=click.IntRange(min=0), default=None,
              help="GPUs per task (default: 1, or 0 when the extract ARGS say --device cpu).")
@click.option("--cpus-per-task", type=click.IntRange(min=1), default=None, help="CPUs per task (default: the cluster's).")
@click.option("--mem", default=None, help="Memory per task, e.g. 32G (default: the cluster's).")
@click.option("--time", "time_limit", default=None,
              help="Time limit per task in SLURM's formats, e.g. 20:00:00, 90 (minutes), 1-12 (default: the partition's).")
@click.option("--partition", default=None, help="SLURM partition.")
@click.option("--account", default=None, help="SLURM account to charge.")
@click.option("--sbatch", "sbatch_lines", multiple=True, metavar="LINE",
              help="One more #SBATCH directive, e.g. --qos=qos_gpu-t4 or '-C v100-32g' (repeatable).")
@click.option("--no-check", is_flag=True,
              help="Do not load the model here to check it and the layers (a login node without the model).")
@click.option("--submit", is_flag=True, help="Submit the script with sbatch and print the job id instead of the script.")
@click.argument("extract_args", nargs=-1, type=click.UNPROCESSED, required=True)
@reports_errors
def slurm(array, gpus_per_task, cpus_per_task, mem, time_limit, partition, account, sbatch_lines, no_check, submit,
          extract_args):
    """Print an sbatch script that runs `lebench extract ARGS --shard auto` as a job array:
    task i extracts part i of N, stops cleanly before its time limit and requeues itself.

    Usage: lebench slurm [OPTIONS] -- extract INPUTS... -o OUTPUT --model MODEL ...
    Pipe it: `lebench slurm --array 8 -- extract ... | sbatch`."""
    import os

    from ..scaleout.checks import check_model_and_layers
    from ..scaleout.slurm_script import SlurmOptions, parse_array, parse_sbatch_line, render_script, stop_lead
    from ..scaleout.slurm_script import submit_script
    from .extract_args import default_gpus, device_args, parse_extract_args

    params = parse_extract_args(extract_args, "slurm")
    tasks, throttle = parse_array(array)
    stop_seconds, note = stop_lead(time_limit)
    directives = tuple(parse_sbatch_line(line) for line in sbatch_lines)
    gpus = default_gpus(params) if gpus_per_task is None else gpus_per_task
    devices = device_args(params, gpus)
    environment = {} if no_check else check_model_and_layers(params["model"], params["layers"],
                                                             params["trust_checkpoint"])
    options = SlurmOptions(
        tasks=tasks, throttle=throttle, gpus_per_task=gpus, cpus_per_task=cpus_per_task, mem=mem, time=time_limit,
        partition=partition, account=account, stop_seconds=stop_seconds, extra_directives=directives,
        environment=environment,
    )
    command = [*lebench_command(), *extract_args, *devices, "--shard", "auto"]
    script = render_script(options, command, workdir=os.getcwd(), output=params["output"])
    if note is not None:
        click.echo(note, err=True)
    if not submit:
        click.echo(script, nl=False)
        return
    job_id = submit_script(script)
    click.echo(job_id)
    click.echo(f"lebench: submitted array job {job_id} ({tasks} tasks, logs lebench-{job_id}_*.log); "
               f"follow it with: squeue -j {job_id}", err=True)


def lebench_command() -> list:
    """This lebench, by absolute path: the console script next to this Python, or this
    Python running the module."""
    import sys
    from pathlib import Path

    script = Path(sys.executable).parent / "lebench"
    return [str(script)] if script.is_file() else [sys.executable, "-m", "lebench_cli"]
