"""`lebench slurm`: the sbatch script, and a real one-node SLURM running it (scripts/start-slurm.sh
starts munged, slurmctld and slurmd on 127.0.0.1; skipped, with the reason, where they cannot)."""

import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from lebench_cli.cli import main
from lebench_cli.reading.store import open_features
from support.fake_hub import fake_hub_cache
from lebench_cli.testing.audio import write_audio
from support.scaleout import ROOT, assert_same_store, extract_args, make_corpus, part_shards, single_process_run
from support.slow_runs import slow_windows


def slurm(*args):
    return CliRunner().invoke(main, ["slurm", *map(str, args)])


# ---- the script ------------------------------------------------------------------------------

def test_script_runs_each_part_requeues_at_the_time_limit_and_quotes_arguments(tmp_path, monkeypatch, checkpoints,
                                                                              offline_cache):
    from huggingface_hub import constants

    fake_hub_cache(offline_cache, "LeBenchmark/wav2vec2-FR-7K-large",
                   {"checkpoint_best.pt": checkpoints("large").read_bytes()})
    (tmp_path / "my corpus").mkdir()
    monkeypatch.chdir(tmp_path)
    result = slurm("--array", "16%4", "--time", "20:00:00", "--partition", "gpu_p2", "--account", "abc@v100",
                   "--cpus-per-task", "10", "--mem", "40G", "--sbatch", "--qos=qos_gpu-t4", "--sbatch",
                   "#SBATCH -C v100-32g", "--", "extract", "my corpus", "-o", "feats $HOME",
                   "--model", "LeBenchmark/wav2vec2-FR-7K-large", "--layers", "all")
    assert result.exit_code == 0, result.output
    script = result.stdout
    directives = [line for line in script.splitlines() if line.startswith("#SBATCH")]
    assert directives == [
        "#SBATCH --job-name=lebench", "#SBATCH --array=1-16%4", "#SBATCH --output=lebench-%A_%a.log",
        "#SBATCH --open-mode=append", "#SBATCH --requeue", "#SBATCH --signal=B:USR1@300", "#SBATCH --ntasks=1",
        "#SBATCH --cpus-per-task=10", "#SBATCH --mem=40G", "#SBATCH --gres=gpu:1", "#SBATCH --time=20:00:00",
        "#SBATCH --partition=gpu_p2", "#SBATCH --account=abc@v100", "#SBATCH --qos=qos_gpu-t4",
        "#SBATCH -C v100-32g",
    ]
    lebench = Path(sys.executable).parent / "lebench"
    program = [str(lebench)] if lebench.is_file() else [sys.executable, "-m", "lebench_cli"]
    command = shlex.join([*program, "extract", "my corpus", "-o", "feats $HOME", "--model",
                          "LeBenchmark/wav2vec2-FR-7K-large", "--layers", "all", "--shard", "auto"])
    assert Path(program[0]).is_absolute()
    assert f"\n{command} &\n" in script
    # The model came from the hub cache: the tasks read that cache, offline, whatever their shell says.
    home = shlex.quote(str(Path(constants.HF_HOME).resolve()))
    assert (f"\nexport HF_HOME={home}\nexport HF_HUB_CACHE={shlex.quote(str(offline_cache.resolve()))}\n"
            f"export HF_HUB_OFFLINE=1\nexport LEBENCH_STOP_SECONDS=300\n"
            f"cd -- {shlex.quote(str(tmp_path))} || exit 1\n") in script
    assert "\ntrap 'time_limit=1; kill -USR1 \"$lebench_pid\" 2>/dev/null' USR1\n" in script
    assert ('\n  requeued=$(scontrol requeue "$SLURM_JOB_ID" 2>&1) || echo "lebench: scontrol requeue failed: '
            '$requeued" >&2\n') in script
    assert script.rstrip().splitlines()[-4:] == [
        "#   lebench ls 'feats $HOME' | wc -l     (one line per stored utterance)",
        "#   lebench show 'feats $HOME'           (metadata and utterance count)",
        "#   cat 'feats $HOME'/failures-*.jsonl   (files that could not be used, and why)",
        "# Submitting this script again finishes any part cut short; finished parts exit at once.",
    ]
    assert result.stderr == ""
    assert subprocess.run(["bash", "-n"], input=script, text=True).returncode == 0


def test_a_local_model_pins_no_hub_variables(tmp_path, monkeypatch, checkpoints):
    (tmp_path / "x").mkdir()
    monkeypatch.chdir(tmp_path)
    result = slurm("--", "extract", "x", "-o", "out", "--model", checkpoints("base"), "--layers", "1,3")
    assert result.exit_code == 0, result.output
    assert "HF_" not in result.stdout and "\nexport LEBENCH_STOP_SECONDS=300\n" in result.stdout


def test_no_gpu_line_for_cpu_runs_and_every_gpu_of_a_task_used(tmp_path, monkeypatch):
    (tmp_path / "x").mkdir()
    monkeypatch.chdir(tmp_path)
    result = slurm("--array", "3", "--no-check", "--", "extract", "x", "-o", "out", "--model", "m", "--device", "cpu")
    assert result.exit_code == 0
    assert "--gres" not in result.output and "#SBATCH --array=1-3\n" in result.output
    result = slurm("--gpus-per-task", "2", "--no-check", "--", "extract", "x", "-o", "out", "--model", "m")
    assert "#SBATCH --gres=gpu:2\n" in result.output and "#SBATCH --array=1-1\n" in result.output
    assert " extract x -o out --model m --devices all --shard auto &\n" in result.output
    result = slurm("--gpus-per-task", "2", "--no-check", "--", "extract", "x", "-o", "out", "--model", "m",
                   "--devices", "cuda:0,cuda:1")
    assert " --devices cuda:0,cuda:1 --shard auto &\n" in result.output and "--devices all" not in result.output


@pytest.mark.parametrize("limit, lead, note", [
    ("3", 90, "lebench: --time 3 is 180 s: the task is told to stop 90 s before it, not 300 s\n"),
    ("1", 30, "lebench: --time 1 is 60 s: the task is told to stop 30 s before it, not 300 s\n"),
    ("10", 300, ""), ("1-00", 300, ""),
])
def test_a_lead_over_half_the_time_limit_is_halved(limit, lead, note, tmp_path, monkeypatch):
    (tmp_path / "x").mkdir()
    monkeypatch.chdir(tmp_path)
    result = slurm("--time", limit, "--no-check", "--", "extract", "x", "-o", "out", "--model", "m")
    assert result.exit_code == 0
    assert f"#SBATCH --signal=B:USR1@{lead}\n" in result.stdout and f"#SBATCH --time={limit}\n" in result.stdout
    assert f"\nexport LEBENCH_STOP_SECONDS={lead}\n" in result.stdout
    assert result.stderr == note


@pytest.mark.parametrize("args, code, message", [
    (["--", "extract", "nowhere", "-o", "out", "--model", "m"], 1, "Error: no such file or folder: nowhere"),
    (["--", "extract", "x", "-o", "out", "--modle", "m"], 2, "Error: No such option '--modle'"),
    (["--", "extract", "x", "-o", "out"], 2, "Error: Missing option '-m' / '--model'."),
    (["--", "extract", "x", "-o", "out", "--model", "m", "--shard", "2/3"], 2,
     "Error: lebench slurm cannot pass --shard: each part gets its own"),
    (["--", "extract", "x", "-o", "out", "--model", "m", "--overwrite"], 2,
     "Error: lebench slurm cannot pass --overwrite: each part would delete the others' features (empty OUTPUT first)"),
    (["--", "extract", "-", "-o", "out", "--model", "m"], 2,
     "Error: lebench slurm cannot read paths from stdin (-): list them in a file and pass the file"),
    (["--", "info"], 2, "Error: expected `lebench slurm [OPTIONS] -- extract INPUTS... -o OUTPUT --model MODEL ...`"),
    (["--array", "0", "--", "extract", "x", "-o", "out", "--model", "m"], 1,
     "Error: invalid --array '0': expected a task count N, or N%M to run at most M at once"),
    (["--partition", "a b", "--no-check", "--", "extract", "x", "-o", "out", "--model", "m"], 1,
     "Error: invalid --partition 'a b': #SBATCH values cannot contain spaces"),
    (["--time", "3min", "--", "extract", "x", "-o", "out", "--model", "m"], 1,
     "Error: invalid --time '3min': expected minutes, MM:SS, HH:MM:SS, D-HH, D-HH:MM or D-HH:MM:SS"),
    (["--sbatch", "qos=x", "--", "extract", "x", "-o", "out", "--model", "m"], 1,
     "Error: invalid --sbatch 'qos=x': expected one sbatch option, e.g. --qos=qos_gpu-t4 or -C v100-32g"),
    (["--sbatch", "--array=1-4", "--", "extract", "x", "-o", "out", "--model", "m"], 1,
     "Error: invalid --sbatch '--array=1-4': lebench slurm sets --array itself"),
    (["--sbatch", "--signal=B:TERM@60", "--", "extract", "x", "-o", "out", "--model", "m"], 1,
     "Error: invalid --sbatch '--signal=B:TERM@60': lebench slurm sets --signal itself"),
    (["--gpus-per-task", "2", "--", "extract", "x", "-o", "out", "--model", "m", "--device", "cuda:0"], 2,
     "Error: --gpus-per-task 2 with --device cuda:0: each task would use one of its 2 GPUs; drop --device (each "
     "task then runs --devices all)"),
    (["--", "extract", "x", "-o", "out", "--model", "/nonexistent/model.pt"], 1,
     "Error: '/nonexistent/model.pt' is neither a local checkpoint nor a hub id (see `lebench info` for known models)"),
    (["--", "extract", "x", "-o", "out", "--model", "m", "--layers", "0-"], 2,
     "Error: Invalid value for '--layers': invalid layer selection '0-': '0-' is not a layer, range, all, last or cnn"),
])
def test_argument_errors_fail_before_any_script(args, code, message, tmp_path, monkeypatch):
    (tmp_path / "x").mkdir()
    monkeypatch.chdir(tmp_path)
    result = slurm(*args)
    assert result.exit_code == code
    assert message in result.output and "#!/bin/bash" not in result.output


def test_the_model_and_its_layers_are_checked_before_any_script(tmp_path, monkeypatch, checkpoints, offline_cache):
    from huggingface_hub import constants

    (tmp_path / "x").mkdir()
    monkeypatch.chdir(tmp_path)
    result = slurm("--", "extract", "x", "-o", "out", "--model", checkpoints("base"), "--layers", "99")
    assert (result.exit_code, result.output) == (
        1, "Error: layer 99 does not exist: this model has layers 0-3 and 'cnn'\n")
    result = slurm("--", "extract", "x", "-o", "out", "--model", "LeBenchmark/wav2vec2-FR-7K-large")
    assert (result.exit_code, result.output) == (1, (
        f"Error: LeBenchmark/wav2vec2-FR-7K-large is not in the hub cache {constants.HF_HUB_CACHE}, so the tasks "
        "could not load it: run `lebench fetch LeBenchmark/wav2vec2-FR-7K-large` here first (into a cache the "
        "compute nodes share), or pass --no-check\n"))
    result = slurm("--no-check", "--", "extract", "x", "-o", "out", "--model", "LeBenchmark/wav2vec2-FR-7K-large")
    assert result.exit_code == 0 and "HF_" not in result.stdout


def test_submit_without_sbatch_is_a_one_line_error(monkeypatch, tmp_path):
    (tmp_path / "x").mkdir()
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PATH", str(tmp_path))
    result = slurm("--submit", "--no-check", "--", "extract", "x", "-o", "out", "--model", "m")
    assert (result.exit_code, result.output) == (1, "Error: sbatch not found: run lebench slurm --submit on a SLURM "
                                                    "login node, or pipe the script to sbatch there\n")


# ---- a real SLURM ------------------------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def slurm_env():
    """SLURM_CONF of a one-node SLURM started for these tests, stopped after them by pid.
    LEBENCH_TEST_INSTALL_SLURM=1 (set by scripts/run-tests.sh) lets it apt-get the packages."""
    if os.geteuid() != 0:
        pytest.skip("a real SLURM needs root (slurmd runs jobs as their user)")
    # Not under pytest's tmp folder: SLURM's and munge's paths stay short and every daemon can reach them.
    folder = Path(tempfile.mkdtemp(prefix="lebench-slurm-"))
    env = {**os.environ, "SLURMCTLD_PORT": str(_free_port()), "SLURMD_PORT": str(_free_port())}
    install = ["--install"] if os.environ.get("LEBENCH_TEST_INSTALL_SLURM") == "1" else []
    started = subprocess.run(["bash", str(ROOT / "scripts" / "start-slurm.sh"), str(folder), *install],
                             env=env, capture_output=True, text=True)
    try:
        if started.returncode == 2:
            pytest.skip(started.stderr.strip().splitlines()[-1] + " (scripts/run-tests.sh sets LEBENCH_TEST_INSTALL_SLURM=1)")
        assert started.returncode == 0, started.stderr + "".join(
            f"\n--- {log.name}\n" + log.read_text()[-2000:] for log in folder.glob("*.log"))
        yield {**os.environ, "SLURM_CONF": str(folder / "slurm.conf"), "PYTHONPATH": _pythonpath()}
    finally:
        subprocess.run(["bash", str(ROOT / "scripts" / "stop-slurm.sh"), str(folder)])
        shutil.rmtree(folder, ignore_errors=True)


def _pythonpath() -> str:
    # The jobs run this checkout's lebench, whether or not it is the installed one.
    return os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])


def _submit(env, workdir: Path, corpus: Path, out: Path, checkpoint: Path, tasks: int, slurm_args=(),
            more_extract_args=()) -> str:
    lebench = shlex.join([sys.executable, "-m", "lebench_cli"])
    command = (f"{lebench} slurm --array {tasks} {shlex.join(slurm_args)} -- "
               f"{shlex.join([*extract_args(corpus, out, checkpoint), *more_extract_args])} | sbatch --parsable")
    submitted = subprocess.run(command, shell=True, cwd=workdir, env=env, capture_output=True, text=True)
    assert submitted.returncode == 0, submitted.stderr
    return submitted.stdout.strip()


REQUEUE_NOISE = ("pending execution", "No error")  # what `scontrol requeue` of a running task prints


def _in_queue(env, job: str) -> list:
    listed = subprocess.run(["squeue", "-h", "-j", job, "-o", "%i %T"], env=env, capture_output=True, text=True)
    return listed.stdout.split("\n")[:-1]


def _wait(condition, seconds: float, what: str):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.3)
    pytest.fail(f"timed out waiting for {what}")


def _task_record(env, task: str) -> str:
    return subprocess.run(["scontrol", "show", "job", task], env=env, capture_output=True, text=True).stdout


def _check_tasks_completed(env, job: str, tasks: int, workdir: Path) -> None:
    for index in range(1, tasks + 1):
        record = _task_record(env, f"{job}_{index}")
        log = (workdir / f"lebench-{job}_{index}.log").read_text()
        assert "JobState=COMPLETED" in record and "ExitCode=0:0" in record, record + log
        assert f"lebench: part {index}/{tasks} from SLURM_ARRAY_TASK_ID={index}\n" in log


def test_a_three_task_array_with_a_cancelled_and_a_time_limited_task_makes_the_single_process_store(
        slurm_env, checkpoints, tmp_path):
    """An array of 3 parts on CPU. Task 1 is cancelled mid-run (scancel: it commits and does not
    requeue), then requeued by hand; task 2 gets the time-limit warning (USR1 to its batch
    shell, as --signal=B:USR1@300 sends it) and requeues itself; task 3 runs undisturbed.
    One test, not three: each lebench process costs seconds of a 2-core machine."""
    corpus = make_corpus(tmp_path / "corpus", 60)
    reference = tmp_path / "reference"
    single_process_run(corpus, reference, checkpoints("base"))
    out = tmp_path / "out"
    job = _submit(slurm_env, tmp_path, corpus, out, checkpoints("base"), tasks=3)
    _wait(lambda: part_shards(out, 1, 3) and part_shards(out, 2, 3), 180, "parts 1 and 2 to commit a shard")
    subprocess.run(["scancel", f"{job}_1"], env=slurm_env, check=True)
    subprocess.run(["scancel", "--batch", "--signal=USR1", f"{job}_2"], env=slurm_env, check=True)
    _wait(lambda: "JobState=CANCELLED" in _task_record(slurm_env, f"{job}_1"), 60, "task 1 to be cancelled")
    log = (tmp_path / f"lebench-{job}_1.log").read_text()
    assert "Error: interrupted after " in log and "rerun the same command to resume" in log, log
    subprocess.run(["scontrol", "requeue", f"{job}_1"], env=slurm_env, check=True)
    _wait(lambda: not _in_queue(slurm_env, job), 300, f"array job {job} to finish")
    _check_tasks_completed(slurm_env, job, 3, tmp_path)
    assert sorted(p.name for p in out.glob("index-*.tsv")) == ["index-1of3.tsv", "index-2of3.tsv", "index-3of3.tsv"]
    for index in (1, 2):
        assert "Restarts=1" in _task_record(slurm_env, f"{job}_{index}")
        log = (tmp_path / f"lebench-{job}_{index}.log").read_text()
        assert log.count(f"lebench: part {index}/3 from SLURM_ARRAY_TASK_ID={index}\n") == 2, log  # appended
        assert "already stored" in log.splitlines()[-1], log  # the rerun resumed
    assert f"lebench: time limit near: requeueing task {job}_2\n" in (tmp_path / f"lebench-{job}_2.log").read_text()
    for index in (1, 2, 3):
        log = (tmp_path / f"lebench-{job}_{index}.log").read_text()
        assert not any(noise in log for noise in REQUEUE_NOISE), log
    assert "Restarts=0" in _task_record(slurm_env, f"{job}_3")
    assert_same_store(out, reference)


def test_a_two_minute_time_limit_requeues_a_recording_that_cannot_finish_twice_then_fails_it(
        slurm_env, checkpoints, tmp_path):
    """`--time 2`: SLURM warns each task 60 s before its limit (the lead halved), and as it
    checks every 30 s, 60 to 90 s before it: after the model has loaded. Part 1 is one
    recording that needs minutes: stopped twice mid-way (each time recorded and requeued),
    its third run fails it at once with the time it needs; the task ends FAILED (exit 3)
    instead of requeueing forever. Part 2 (short files) completes undisturbed. Submitted
    again, both tasks end at once without a requeue: part 2 has nothing left, part 1's
    recording still does not fit."""
    corpus = tmp_path / "corpus"
    write_audio(corpus / "long.wav", 1800, seed=1, subtype="PCM_16")
    for index in range(4):
        write_audio(corpus / f"short{index}.wav", 1.0 + index * 0.2, seed=index + 2)
    out = tmp_path / "out"
    chunking = ["--chunk-seconds", "4", "--overlap-seconds", "1", "--batch-seconds", "4"]
    slurm_env = slow_windows(slurm_env, tmp_path)
    job = _submit(slurm_env, tmp_path, corpus, out, checkpoints("base"), tasks=2, slurm_args=["--time", "2"],
                  more_extract_args=chunking)
    _wait(lambda: not _in_queue(slurm_env, job), 900, f"array job {job} to finish")
    first, second = _task_record(slurm_env, f"{job}_1"), _task_record(slurm_env, f"{job}_2")
    log = (tmp_path / f"lebench-{job}_1.log").read_text()
    assert "JobState=FAILED" in first and "ExitCode=3:0" in first and "Restarts=2" in first, first + log
    assert log.count(f"lebench: time limit near: requeueing task {job}_1\n") == 2, log
    assert log.count("Error: interrupted after 0 files; finished work is committed") == 2, log
    assert not any(noise in log for noise in REQUEUE_NOISE), log
    stops = json.loads((out / "interrupted-1of2.json").read_text())["files"]["long"]
    assert stops["stops"] == 2 and stops["needs_seconds"] > stops["had_seconds"], stops
    failures = [json.loads(line) for line in (out / "failures-1of2.jsonl").read_text().splitlines()]
    assert [failure["id"] for failure in failures] == ["long"], failures
    assert re.fullmatch(r"interrupted twice by the time limit: needs about \d+ s, the task has \d+ s; give lebench "
                        r"slurm --time more, or split the recording", failures[0]["reason"]), failures
    assert "JobState=COMPLETED" in second and "ExitCode=0:0" in second and "Restarts=0" in second, second
    with open_features(out) as store:
        assert sorted(store.ids) == [f"short{index}" for index in range(4)]

    again = _submit(slurm_env, tmp_path, corpus, out, checkpoints("base"), tasks=2, slurm_args=["--time", "2"],
                    more_extract_args=chunking)
    _wait(lambda: not _in_queue(slurm_env, again), 300, f"array job {again} to finish")
    first, second = _task_record(slurm_env, f"{again}_1"), _task_record(slurm_env, f"{again}_2")
    assert "ExitCode=3:0" in first and "Restarts=0" in first, first
    assert "JobState=COMPLETED" in second and "ExitCode=0:0" in second and "Restarts=0" in second, second
    log = (tmp_path / f"lebench-{again}_2.log").read_text()
    assert log.splitlines()[-1].startswith("nothing to extract: all 4 files already stored"), log


def test_submit_prints_the_job_id_of_an_array_that_runs(slurm_env, tmp_path):
    lebench = [sys.executable, "-m", "lebench_cli"]
    (tmp_path / "corpus").mkdir()  # no audio in it: each task stops before loading a model
    submitted = subprocess.run([*lebench, "slurm", "--submit", "--array", "2", "--no-check", "--", "extract", "corpus", "-o",
                                "out", "--model", "m", "--device", "cpu"],
                               cwd=tmp_path, env=slurm_env, capture_output=True, text=True)
    assert submitted.returncode == 0, submitted.stderr
    job = submitted.stdout.strip()
    assert job.isdigit()
    assert submitted.stderr == (f"lebench: submitted array job {job} (2 tasks, logs lebench-{job}_*.log); "
                                f"follow it with: squeue -j {job}\n")
    _wait(lambda: not _in_queue(slurm_env, job), 120, f"array job {job} to finish")
    for index in (1, 2):
        assert "ExitCode=1:0" in _task_record(slurm_env, f"{job}_{index}")
        log = (tmp_path / f"lebench-{job}_{index}.log").read_text()
        assert log == (f"lebench: part {index}/2 from SLURM_ARRAY_TASK_ID={index}\n"
                       "Error: no audio files found in corpus\n")
