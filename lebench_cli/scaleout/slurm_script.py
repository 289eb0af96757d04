"""An sbatch script that runs one extraction as a SLURM job array: task i runs
`lebench extract ARGS --shard auto` (part i of N), stops cleanly before the time limit and
requeues itself; a rerun of a part resumes it.

Why USR1 and not TERM before the time limit: `scancel` sends TERM too, and a task must not
requeue itself when a person cancels it. The batch shell gets the signal (`B:`) and passes it
on to lebench, which commits, records the stop (scaleout.time_limit) and exits 130 when a
rerun can get further, 1 when it cannot; the shell requeues the task only on 130.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from typing import Optional, Sequence

from ..errors import InputError
from ..pipeline.time_limit import STOP_ENV, parse_slurm_time

STOP_SECONDS = 300  # SLURM may send the signal up to a minute early; committing takes seconds

_ARRAY = re.compile(r"^(\d+)(?:%(\d+))?$")
# What the script's own lines set: another value would break the requeue or the logs.
_OWN_DIRECTIVES = {"--array": "--array", "-a": "--array", "--signal": "--signal", "--requeue": "--requeue",
                   "--no-requeue": "--requeue", "--output": "--output", "-o": "--output",
                   "--open-mode": "--open-mode", "--ntasks": "--ntasks", "-n": "--ntasks"}


@dataclass
class SlurmOptions:
    """What `lebench slurm` puts in the #SBATCH lines; None leaves the cluster's default."""

    tasks: int = 1
    throttle: Optional[int] = None  # at most this many tasks at once (`%` in --array)
    gpus_per_task: int = 1
    cpus_per_task: Optional[int] = None
    mem: Optional[str] = None
    time: Optional[str] = None
    partition: Optional[str] = None
    account: Optional[str] = None
    job_name: str = "lebench"
    stop_seconds: int = STOP_SECONDS  # how long before the time limit SLURM warns the task
    extra_directives: tuple = ()  # checked `--sbatch` lines, without "#SBATCH "
    environment: dict = field(default_factory=dict)  # exported before lebench runs


def stop_lead(time_limit: Optional[str]) -> tuple:
    """(seconds before the limit that the task is warned, a note when that is shorter than
    STOP_SECONDS): a lead over half the limit would leave a task less time for work than for
    stopping, so it is halved."""
    seconds = parse_slurm_time(time_limit) if time_limit is not None else None
    if seconds is None or seconds >= 2 * STOP_SECONDS:
        return STOP_SECONDS, None
    lead = seconds // 2
    return lead, (f"lebench: --time {time_limit} is {seconds} s: the task is told to stop {lead} s before it, "
                  f"not {STOP_SECONDS} s")


def parse_sbatch_line(text: str) -> str:
    """One `--sbatch` value (`--qos=qos_gpu-t4`, `-C v100-32g`, with or without `#SBATCH`)."""
    line = str(text).strip()
    if line.startswith("#SBATCH"):
        line = line[len("#SBATCH"):].strip()
    if not line.startswith("-") or "\n" in line or "\r" in line:
        raise InputError(f"invalid --sbatch '{text}': expected one sbatch option, e.g. --qos=qos_gpu-t4 or -C v100-32g")
    name = re.split(r"[=\s]", line, maxsplit=1)[0]
    if name in _OWN_DIRECTIVES:
        raise InputError(f"invalid --sbatch '{text}': lebench slurm sets {_OWN_DIRECTIVES[name]} itself")
    return line


def parse_array(text: str) -> tuple:
    """`N` or `N%M` (at most M tasks at once) -> (N, M or None)."""
    match = _ARRAY.match(str(text).strip())
    if not match or int(match[1]) < 1 or (match[2] is not None and int(match[2]) < 1):
        raise InputError(f"invalid --array '{text}': expected a task count N, or N%M to run at most M at once")
    return int(match[1]), int(match[2]) if match[2] else None


def render_script(options: SlurmOptions, command: Sequence[str], workdir: str, output: str) -> str:
    """The sbatch script; `command` is the full `lebench extract ... --shard auto` argv,
    run from `workdir` (where its relative paths were checked); `output` names the store in
    the closing comment."""
    array = f"1-{options.tasks}" + (f"%{options.throttle}" if options.throttle else "")
    directives = [
        ("job-name", options.job_name),
        ("array", array),
        ("output", f"{options.job_name}-%A_%a.log"),
        ("open-mode", "append"),  # a requeued task adds to its log instead of replacing it
        ("requeue", None),
        ("signal", f"B:USR1@{options.stop_seconds}"),
        ("ntasks", "1"),
        ("cpus-per-task", options.cpus_per_task),
        ("mem", options.mem),
        ("gres", f"gpu:{options.gpus_per_task}" if options.gpus_per_task else None),
        ("time", options.time),
        ("partition", options.partition),
        ("account", options.account),
    ]
    lines = ["#!/bin/bash"]
    for name, value in directives:
        if value is None and name != "requeue":
            continue
        _check_directive(name, value)
        lines.append(f"#SBATCH --{name}" + ("" if value is None else f"={value}"))
    lines += [f"#SBATCH {line}" for line in options.extra_directives]
    out = shlex.quote(output)
    environment = {**options.environment, STOP_ENV: str(options.stop_seconds)}
    lines += [
        f"# Written by `lebench slurm`: task i of the array extracts part i of {options.tasks} into {output}.",
        f"# {options.stop_seconds} s before the time limit SLURM sends USR1: lebench commits, records the stop",
        "# and exits; the task requeues itself when its rerun can get further (a recording stopped",
        "# twice fails instead). `scancel` stops a task without requeueing it.",
        "",
        *(f"export {name}={shlex.quote(value)}" for name, value in environment.items()),
        f"cd -- {shlex.quote(workdir)} || exit 1",
        " ".join(shlex.quote(word) for word in command) + " &",
        "lebench_pid=$!",
        "time_limit=",
        "trap 'time_limit=1; kill -USR1 \"$lebench_pid\" 2>/dev/null' USR1",
        "trap 'kill -TERM \"$lebench_pid\" 2>/dev/null' TERM",
        "# A trapped signal interrupts `wait`: wait again until lebench has committed and exited;",
        "# bash keeps its exit status for the last `wait`.",
        "while kill -0 \"$lebench_pid\" 2>/dev/null; do wait \"$lebench_pid\"; done",
        "wait \"$lebench_pid\"",
        "status=$?",
        "if [ -n \"$time_limit\" ] && [ \"$status\" -eq 130 ]; then",
        "  echo \"lebench: time limit near: requeueing task ${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID}\" >&2",
        "  # scontrol's own words (\"Job is pending execution\") only when the requeue failed",
        "  requeued=$(scontrol requeue \"$SLURM_JOB_ID\" 2>&1) || echo \"lebench: scontrol requeue failed: $requeued\" >&2",
        "fi",
        "exit \"$status\"",
        "",
        "# Check completion once no task is left in `squeue --me`:",
        f"#   lebench ls {out} | wc -l     (one line per stored utterance)",
        f"#   lebench show {out}           (metadata and utterance count)",
        f"#   cat {out}/failures-*.jsonl   (files that could not be used, and why)",
        "# Submitting this script again finishes any part cut short; finished parts exit at once.",
    ]
    return "\n".join(lines) + "\n"


def _check_directive(name: str, value) -> None:
    # An #SBATCH line is not parsed by a shell: no quoting can protect a space in it.
    if value is not None and (not str(value) or any(c.isspace() for c in str(value))):
        raise InputError(f"invalid --{name} '{value}': #SBATCH values cannot contain spaces")


def submit_script(script: str) -> str:
    """Submits the script with `sbatch --parsable`; the job id."""
    import shutil
    import subprocess

    if shutil.which("sbatch") is None:
        raise InputError("sbatch not found: run lebench slurm --submit on a SLURM login node, or pipe the "
                         "script to sbatch there")
    result = subprocess.run(["sbatch", "--parsable"], input=script, capture_output=True, text=True)
    if result.returncode != 0:
        reason = (result.stderr.strip().splitlines() or [f"exit status {result.returncode}"])[-1]
        raise InputError(f"sbatch refused the script: {reason}")
    return result.stdout.strip().split(";")[0]
