"""`--shard auto`: part K/N from SLURM's or torchrun's variables (values as SLURM 22.05 sets them)."""

import pytest
from click.testing import CliRunner

from lebench_cli.cli import main
from lebench_cli.errors import InputError
from lebench_cli.scaleout.environment import part_from_environment


def array(task, first, last, count, step=1, **extra):
    env = {"SLURM_ARRAY_TASK_ID": str(task), "SLURM_ARRAY_TASK_MIN": str(first), "SLURM_ARRAY_TASK_MAX": str(last),
           "SLURM_ARRAY_TASK_COUNT": str(count), "SLURM_ARRAY_TASK_STEP": str(step),
           # a batch script outside srun: SLURM_PROCID and SLURM_NTASKS, no SLURM_STEP_ID
           "SLURM_PROCID": "0", "SLURM_NTASKS": "2"}
    return {**env, **extra}


@pytest.mark.parametrize("spec, env, expected", [
    ("--array=0-7", array(2, 0, 7, 8), (3, 8)),
    ("--array=1-16", array(16, 1, 16, 16), (16, 16)),
    ("--array=5-7", array(5, 5, 7, 3), (1, 3)),
    ("--array=0-15:2 (MAX is 14)", array(10, 0, 14, 8, step=2), (6, 8)),
    ("--array=1,3,5 (SLURM sets STEP=1)", array(3, 1, 5, 3, step=1), (2, 3)),
    ("--array=0-15%4", array(15, 0, 15, 16), (16, 16)),
    ("--array=7 (one task)", array(7, 7, 7, 1), (1, 1)),
])
def test_array_task_rank_among_the_array_ids(spec, env, expected):
    k, n, where = part_from_environment(env)
    assert (k, n) == expected, spec
    assert where == f"SLURM_ARRAY_TASK_ID={env['SLURM_ARRAY_TASK_ID']}"


def test_uneven_array_ids_stop_the_task_off_the_even_grid():
    # --array=1,2,7: SLURM gives MIN=1 MAX=7 COUNT=3; task 2 cannot be ranked
    with pytest.raises(InputError) as raised:
        part_from_environment(array(2, 1, 7, 3))
    assert str(raised.value) == ("--shard auto: cannot rank array task 2 among 3 ids from 1 to 7: submit evenly "
                                 "spaced ids (--array=1-3, or A-B:S) or pass --shard K/N")
    with pytest.raises(InputError):
        part_from_environment(array(2, 0, 3, 3))  # --array=0,1,3: no even spacing at all


def test_srun_tasks_and_srun_tasks_inside_array_tasks():
    step = {"SLURM_STEP_ID": "0", "SLURM_PROCID": "3", "SLURM_NTASKS": "4"}
    assert part_from_environment(step) == (4, 4, "SLURM_PROCID=3 of SLURM_NTASKS=4")
    both = {**array(1, 0, 2, 3), **step}  # 3 array tasks x 4 srun tasks = 12 parts
    assert part_from_environment(both) == (8, 12, "SLURM_ARRAY_TASK_ID=1, SLURM_PROCID=3 of SLURM_NTASKS=4")


def test_torchrun_rank_and_a_batch_script_outside_srun():
    batch = {"SLURM_PROCID": "0", "SLURM_NTASKS": "4", "SLURM_JOB_ID": "12"}  # not part 1/4: no step
    assert part_from_environment({**batch, "RANK": "1", "WORLD_SIZE": "2"}) == (2, 2, "RANK=1 of WORLD_SIZE=2")
    with pytest.raises(InputError) as raised:
        part_from_environment(batch)
    assert str(raised.value).startswith("--shard auto: no SLURM array task (SLURM_ARRAY_TASK_ID)")


@pytest.mark.parametrize("env, message", [
    ({"RANK": "2", "WORLD_SIZE": "2"}, "--shard auto: RANK=2 is not a rank among WORLD_SIZE=2"),
    ({"RANK": "x", "WORLD_SIZE": "2"}, "--shard auto: RANK='x' is not a number"),
    ({"SLURM_ARRAY_TASK_ID": "3"}, "--shard auto: SLURM_ARRAY_TASK_ID is set but not SLURM_ARRAY_TASK_MIN, "
                                   "SLURM_ARRAY_TASK_MAX, SLURM_ARRAY_TASK_COUNT: pass --shard K/N"),
])
def test_bad_values_are_one_line_errors(env, message):
    with pytest.raises(InputError) as raised:
        part_from_environment(env)
    assert str(raised.value) == message


def test_extract_shard_auto_says_where_its_part_came_from(checkpoints, tmp_path, monkeypatch):
    import numpy as np
    import soundfile as sf

    (tmp_path / "corpus").mkdir()
    for index in range(4):
        noise = np.random.default_rng(index).standard_normal(8000).astype(np.float32) * 0.1
        sf.write(tmp_path / "corpus" / f"u{index}.wav", noise, 16000)
    for name in ("SLURM_ARRAY_TASK_ID", "SLURM_STEP_ID", "SLURM_PROCID", "SLURM_NTASKS", "RANK", "WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    args = ["extract", str(tmp_path / "corpus"), "-o", str(tmp_path / "out"), "--model", str(checkpoints("base")),
            "--device", "cpu", "--workers", "0", "-q", "--shard", "auto"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 1
    assert result.output.startswith("Error: --shard auto: no SLURM array task")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0
    assert result.output == "lebench: part 2/2 from RANK=1 of WORLD_SIZE=2\n"
    assert sorted(p.name for p in (tmp_path / "out").glob("index-*.tsv")) == ["index-2of2.tsv"]


def test_shard_zero_points_to_shard_auto(checkpoints, tmp_path):
    result = CliRunner().invoke(main, ["extract", str(tmp_path), "-o", str(tmp_path / "out"), "--model",
                                       str(checkpoints("base")), "--shard", "0/8"])
    assert (result.exit_code, result.output) == (1, "Error: invalid --shard '0/8': K must be between 1 and N "
                                                    "(parts count from 1; --shard auto reads SLURM array ids)\n")
