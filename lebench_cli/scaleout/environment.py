"""`--shard auto`: which part K of N this process is, from the scheduler's environment.

Read in order: a SLURM job array task (SLURM_ARRAY_TASK_ID, ranked among the array's ids by
SLURM_ARRAY_TASK_MIN/MAX/COUNT), a task of an `srun` step (SLURM_PROCID of SLURM_NTASKS; both
in an array with several srun tasks per array task), a torchrun rank (RANK of WORLD_SIZE).
K is 1-based, like `--shard K/N`.

Measured with SLURM 22.05: a batch script (outside srun) has SLURM_PROCID=0 and
SLURM_NTASKS=<its --ntasks> but no SLURM_STEP_ID, so SLURM_PROCID counts only inside a step;
SLURM_ARRAY_TASK_STEP is 1 for a list such as `--array=1,3,5`, so the spacing of the ids is
derived from MIN, MAX and COUNT instead.
"""

from __future__ import annotations

from typing import Mapping

from ..errors import InputError

NOT_FOUND = ("--shard auto: no SLURM array task (SLURM_ARRAY_TASK_ID), srun task (SLURM_PROCID, "
             "SLURM_NTASKS) or torchrun rank (RANK, WORLD_SIZE) in the environment: pass --shard K/N")


def part_from_environment(env: Mapping[str, str]) -> tuple:
    """(k, n, description): part k of n (1-based) and the variables it was read from."""
    in_step = bool(env.get("SLURM_STEP_ID")) and bool(env.get("SLURM_PROCID")) and bool(env.get("SLURM_NTASKS"))
    if env.get("SLURM_ARRAY_TASK_ID"):
        rank, count, where = _array_rank(env)
        if in_step and _integer(env, "SLURM_NTASKS") > 1:  # several srun tasks in each array task
            task, tasks, task_where = _rank_of(env, "SLURM_PROCID", "SLURM_NTASKS")
            rank, count, where = rank * tasks + task, count * tasks, f"{where}, {task_where}"
        return rank + 1, count, where
    if in_step:
        rank, count, where = _rank_of(env, "SLURM_PROCID", "SLURM_NTASKS")
        return rank + 1, count, where
    if env.get("RANK") and env.get("WORLD_SIZE"):
        rank, count, where = _rank_of(env, "RANK", "WORLD_SIZE")
        return rank + 1, count, where
    raise InputError(NOT_FOUND)


def _array_rank(env: Mapping[str, str]) -> tuple:
    """The task's 0-based rank among the array's ids. SLURM gives the first and last id and
    the count, not the list: the rank is known when the ids are evenly spaced (`1-16`,
    `0-15:2`, `1,3,5`; a `%` throttle changes nothing). With uneven ids (`1,2,7`) at least
    one task is off the even grid and stops with this error: the run never looks complete."""
    task = _integer(env, "SLURM_ARRAY_TASK_ID")
    missing = [name for name in ("SLURM_ARRAY_TASK_MIN", "SLURM_ARRAY_TASK_MAX", "SLURM_ARRAY_TASK_COUNT")
               if not env.get(name)]
    if missing:
        raise InputError(f"--shard auto: SLURM_ARRAY_TASK_ID is set but not {', '.join(missing)}: "
                         "pass --shard K/N")
    first, last = _integer(env, "SLURM_ARRAY_TASK_MIN"), _integer(env, "SLURM_ARRAY_TASK_MAX")
    count = _integer(env, "SLURM_ARRAY_TASK_COUNT")
    step = _even_spacing(first, last, count)
    if step is None or not first <= task <= last or (task - first) % step:
        raise InputError(
            f"--shard auto: cannot rank array task {task} among {count} ids from {first} to {last}: "
            f"submit evenly spaced ids (--array=1-{count}, or A-B:S) or pass --shard K/N")
    return (task - first) // step, count, f"SLURM_ARRAY_TASK_ID={task}"


def _even_spacing(first: int, last: int, count: int):
    if count < 1 or last < first:
        return None
    if count == 1:
        return 1 if first == last else None
    if (last - first) % (count - 1):
        return None
    return (last - first) // (count - 1) or None


def _rank_of(env: Mapping[str, str], rank_name: str, count_name: str) -> tuple:
    rank, count = _integer(env, rank_name), _integer(env, count_name)
    if not 0 <= rank < count:
        raise InputError(f"--shard auto: {rank_name}={rank} is not a rank among {count_name}={count}")
    return rank, count, f"{rank_name}={rank} of {count_name}={count}"


def _integer(env: Mapping[str, str], name: str) -> int:
    try:
        return int(env[name])
    except ValueError:
        raise InputError(f"--shard auto: {name}={env[name]!r} is not a number") from None
