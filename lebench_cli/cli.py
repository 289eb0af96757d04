"""The `lebench` command line: a thin layer over the library (heavy imports stay inside
commands so that `--help` is instant)."""

from __future__ import annotations

import click

from . import __version__
from .commands.common import EXIT_ERROR, EXIT_OK, EXIT_SOME_FAILED, EXIT_USAGE  # noqa: F401


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="lebench")
def main():
    """Per-layer wav2vec2 features from LeBenchmark's French speech models."""


# Commands in modules of their own (lebench_cli/commands/), registered here.
from .commands.export import export  # noqa: E402
from .commands.extract import extract  # noqa: E402
from .commands.fetch import fetch  # noqa: E402
from .commands.info import info  # noqa: E402
from .commands.ls import list_utterances  # noqa: E402
from .commands.ray import ray  # noqa: E402
from .commands.show import show  # noqa: E402
from .commands.slurm import slurm  # noqa: E402
from .commands.verify import verify  # noqa: E402

main.add_command(info)
main.add_command(extract)
main.add_command(list_utterances)
main.add_command(show)
main.add_command(fetch)
main.add_command(slurm)
main.add_command(ray)
main.add_command(export)
main.add_command(verify)
