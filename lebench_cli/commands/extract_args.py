"""The `-- extract ARGS...` tail of `lebench slurm` and `lebench ray`: parsed by the extract
command's own parser, so that a typo fails on the login node, not in every task."""

from __future__ import annotations

from pathlib import Path

import click
from click.core import ParameterSource

from ..errors import InputError

# Options each part sets for itself, or that would make parts undo each other.
_REFUSED = {
    "part": "--shard: each part gets its own",
    "overwrite": "--overwrite: each part would delete the others' features (empty OUTPUT first)",
    "dry_run": "--dry-run: run `lebench extract --dry-run` directly",
    "manifest": "--manifest: write it first with `lebench extract --dry-run --manifest FILE.tsv`, then pass FILE.tsv",
}


def parse_extract_args(args: tuple, command_name: str, refused: dict = None) -> dict:
    """The extract command's parameters for ARGS (`extract INPUTS... -o OUT --model M ...`);
    `refused`: more options this command cannot pass on ({parameter name: why})."""
    from .extract import extract

    args = list(args)
    if not args or args[0] != "extract":
        raise click.UsageError(f"expected `lebench {command_name} [OPTIONS] -- extract INPUTS... -o OUTPUT "
                               "--model MODEL ...`")
    context = extract.make_context("lebench extract", args[1:])
    for name, reason in {**_REFUSED, **(refused or {})}.items():
        if context.get_parameter_source(name) == ParameterSource.COMMANDLINE:
            raise click.UsageError(f"lebench {command_name} cannot pass {reason}")
    if "-" in context.params["inputs"]:
        raise click.UsageError(f"lebench {command_name} cannot read paths from stdin (-): list them in a file "
                               "and pass the file")
    for path in context.params["inputs"]:
        if not Path(path).exists():  # what extract would say, but in every task
            raise InputError(f"no such file or folder: {path}")
    return context.params


def default_gpus(params: dict) -> int:
    """One GPU per part unless the extract ARGS ask for the CPU."""
    device = params.get("device") or ""
    return 0 if device.startswith("cpu") else 1


def device_args(params: dict, gpus: int) -> list:
    """The extract flags a task with `gpus` GPUs needs: `--devices all` for several, so that
    none of them sits idle (unless ARGS already say --devices)."""
    if gpus <= 1 or params.get("devices"):
        return []
    device = params.get("device")
    if device:
        raise click.UsageError(f"--gpus-per-task {gpus} with --device {device}: each task would use one of its "
                               f"{gpus} GPUs; drop --device (each task then runs --devices all)")
    return ["--devices", "all"]
