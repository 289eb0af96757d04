"""What every `lebench` command shares: exit codes, error reporting, common options."""

from __future__ import annotations

import functools
import sys

import click

from ..errors import LebenchError

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_SOME_FAILED = 3
EXIT_INTERRUPTED = 130


def reports_errors(command):
    """Turn library errors into one `Error: ...` line and the error's exit code."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except LebenchError as error:
            click.echo(f"Error: {error}", err=True)
            sys.exit(error.exit_code)

    return wrapper


trust_checkpoint_option = click.option(
    "--trust-checkpoint",
    is_flag=True,
    help="Load pickled checkpoint content outside the allowlist (can run code: only for files you trust).",
)


def warn_cpu_fallback(device) -> None:
    """One line on stderr when the default device falls back to the CPU, saying why."""
    if device is not None:
        return
    from ..model.compute_device import cpu_fallback_reason

    reason = cpu_fallback_reason()
    if reason is not None:
        click.echo(f"lebench: running on cpu: {reason}; --device cpu chooses it and silences this", err=True)


def report_summary(summary, quiet: bool) -> None:
    """An extraction's summary line on stderr (one Error line under --quiet when files
    failed), and exit code 3 when any did."""
    if not quiet:
        click.echo(summary.line(), err=True)
    if summary.failed:
        if quiet:
            click.echo(f"Error: {summary.failed} files failed (see {summary.failures_path})", err=True)
        sys.exit(EXIT_SOME_FAILED)
