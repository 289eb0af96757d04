"""`lebench ray` on a real Ray cluster: one head node on 127.0.0.1 with 2 CPUs, started once
for this module (`ray start --head --block` in a session of its own, stopped by its process
group)."""

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from lebench_cli.cli import main
from support.scaleout import ROOT, assert_same_store, extract_args, make_corpus, part_shards, single_process_run


# Ray 2.60 turns token authentication on when ~/.ray/auth_token exists (a local `ray.init()`
# writes one): the test cluster and its drivers agree on no token, whatever that file says.
NO_TOKEN = {"RAY_AUTH_MODE": "disabled"}
# The hub as the cluster's workers see it unless lebench ray says otherwise: an empty cache and
# an endpoint where nothing listens (a part that went online would fail at once, offline).
HUB_UNREACHABLE = "http://127.0.0.1:9"


def _free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def ray_address():
    pytest.importorskip("ray", reason="ray is not installed (.venv/bin/pip install -e '.[ray]')")
    folder = Path(tempfile.mkdtemp(prefix="lebench-ray-"))  # short: Ray's socket paths have a length limit
    port = _free_port()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]),
           "RAY_USAGE_STATS_ENABLED": "0", **NO_TOKEN,
           "HF_HOME": str(folder / "no-hub"), "HF_HUB_OFFLINE": "0", "HF_ENDPOINT": HUB_UNREACHABLE}
    env.pop("HF_HUB_CACHE", None)
    ray_cli = Path(sys.executable).parent / "ray"
    log = open(folder / "ray-start.log", "w")
    head = subprocess.Popen(
        [str(ray_cli), "start", "--head", "--block", "--node-ip-address", "127.0.0.1", "--port", str(port),
         "--num-cpus", "2", "--num-gpus", "0", "--include-dashboard", "false", "--disable-usage-stats",
         "--temp-dir", str(folder / "ray")],
        stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 180
        while "Ray runtime started" not in (folder / "ray-start.log").read_text():
            assert head.poll() is None and time.monotonic() < deadline, \
                "ray start failed:\n" + (folder / "ray-start.log").read_text()[-3000:]
            time.sleep(0.5)
        yield f"127.0.0.1:{port}"
    finally:
        _stop_session(head)
        log.close()
        subprocess.run(["rm", "-rf", str(folder)])


def _stop_session(process):
    """Everything the head started is in its session (Ray's workers in process groups of their
    own): stopped by pid, SIGTERM first (`ray start --block` takes its time), a test cluster's
    state is not kept."""
    for signum, patience in ((signal.SIGTERM, 5), (signal.SIGKILL, 10)):
        members = _session_members(process.pid)
        for pid in members:
            try:
                os.kill(pid, signum)
            except ProcessLookupError:
                pass
        try:
            process.wait(timeout=patience)
        except subprocess.TimeoutExpired:
            pass


def _session_members(session: int) -> list:
    members = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            if int(fields[3]) == session:  # stat fields after the name: state ppid pgrp session
                members.append(int(entry.name))
    return members


def _lebench_ray(*args, env=None):
    env = {**os.environ, "PYTHONPATH": str(ROOT), **NO_TOKEN, **(env or {})}
    return subprocess.Popen([sys.executable, "-m", "lebench_cli", "ray", *map(str, args)], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _lock_holder(out: Path, part: int, parts: int):
    try:
        text = (out / f".lock-{part}of{parts}").read_text().strip()
    except OSError:
        return None
    return int(text) if text else None


def test_three_parts_with_a_killed_worker_and_broken_files_make_the_single_process_store(
        ray_address, checkpoints, tmp_path):
    """One test, not three (each lebench worker costs seconds of a 2-core machine): 3 parts on
    RAY_ADDRESS's cluster; the worker running part 1 is killed (kill -9) mid-part and Ray
    reruns it, which resumes; two unreadable files make exit code 3 with the records of
    every part counted in the summary."""
    corpus = make_corpus(tmp_path / "corpus", 60)
    for name in ("broken1.wav", "broken2.wav"):
        (corpus / name).write_text("not audio")
    reference = tmp_path / "reference"
    with pytest.raises(AssertionError):  # exit code 3: the broken files
        single_process_run(corpus, reference, checkpoints("base"))
    out = tmp_path / "out"
    run = _lebench_ray("--parts", "3", "--max-retries", "2", "--", *extract_args(corpus, out, checkpoints("base")),
                       env={"RAY_ADDRESS": ray_address})
    deadline = time.monotonic() + 240
    while not (part_shards(out, 1, 3) and _lock_holder(out, 1, 3)):
        assert run.poll() is None and time.monotonic() < deadline, run.communicate()
        time.sleep(0.1)
    worker = _lock_holder(out, 1, 3)
    assert worker != run.pid
    os.kill(worker, signal.SIGKILL)  # raises if part 1 had already ended
    stdout, stderr = run.communicate(timeout=300)
    assert run.returncode == 3, stderr
    lines = stderr.splitlines()
    part_lines = sorted(line for line in lines if line.startswith("part "))
    assert [line.split(" on ")[0] for line in part_lines] == ["part 1/3", "part 2/3", "part 3/3"], stderr
    assert "already stored" in part_lines[0]  # the rerun resumed
    assert lines[-1].startswith("extracted ")
    assert lines[-1].endswith(f"; 2 failed (see {out}/failures-*of3.jsonl)"), lines[-1]
    assert "lebench" not in stdout  # Ray prints its own notice of the dead worker there
    from lebench_cli.storage import read_failures

    assert sorted(f["id"] for f in read_failures(out)) == ["broken1", "broken2"]
    assert not list(out.glob(".lebench-ray-*"))  # the shared-folder marker is removed
    assert_same_store(out, reference)


def test_the_parts_read_the_hub_cache_the_driver_checked_offline(ray_address, checkpoints, tmp_path):
    """The parts run in Ray's workers, which have the environment of `ray start` (here an
    empty HF_HOME and an unreachable hub), not the driver's: lebench ray passes them the
    driver's HF_HOME and HF_HUB_OFFLINE=1 (Ray's runtime_env), as lebench slurm's script
    pins them, so they load the model that the driver found in its cache."""
    from support.fake_hub import fake_hub_cache

    home = tmp_path / "hf"
    fake_hub_cache(home / "hub", "lebench-test/tiny-base", {"checkpoint_best.pt": checkpoints("base").read_bytes()})
    corpus = make_corpus(tmp_path / "corpus", 4)
    reference, out = tmp_path / "reference", tmp_path / "out"
    single_process_run(corpus, reference, checkpoints("base"))
    hub_env = {"HF_HOME": str(home), "HF_HUB_CACHE": str(home / "hub"), "HF_HUB_OFFLINE": "0",
               "HF_ENDPOINT": HUB_UNREACHABLE, "RAY_ADDRESS": ray_address}
    run = _lebench_ray("--parts", "2", "--", *extract_args(corpus, out, "lebench-test/tiny-base"), env=hub_env)
    _, stderr = run.communicate(timeout=300)
    assert run.returncode == 0, stderr
    assert sorted(line.split(" on ")[0] for line in stderr.splitlines() if line.startswith("part ")) == [
        "part 1/2", "part 2/2"], stderr
    assert_same_store(out, reference)


def test_more_gpus_than_the_cluster_has_is_a_one_line_error(ray_address, tmp_path):
    run = _lebench_ray("--address", ray_address, "--gpus-per-part", "1", "--no-check", "--", "extract", tmp_path, "-o",
                       tmp_path / "out", "--model", "m")
    _, stderr = run.communicate(timeout=120)
    assert (run.returncode, stderr) == (1, "Error: --gpus-per-part 1: the Ray cluster has 0 GPUs\n")


def test_a_node_that_does_not_see_the_output_folder_fails_its_part(tmp_path):
    from lebench_cli.pipeline.options import ExtractOptions
    from lebench_cli.scaleout.ray_parts import run_part

    result = run_part(ExtractOptions(inputs=[], output=str(tmp_path), model="m", shard=(2, 3)),
                      ".lebench-ray-0123", "0123", str(tmp_path))
    assert (result.part, result.parts, result.exit_code) == (2, 3, 1)
    assert result.line().endswith(f"failed: {tmp_path} is not the driver's folder on this node (its marker "
                                  ".lebench-ray-0123 is missing): the output folder must be on a filesystem every "
                                  "node shares")


def test_without_ray_the_command_says_how_to_install_it(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray raises ImportError
    result = CliRunner().invoke(main, ["ray", "--no-check", "--", "extract", str(tmp_path), "-o",
                                       str(tmp_path / "out"), "--model", "m"])
    assert (result.exit_code, result.output) == (
        1, "Error: lebench ray needs Ray: .venv/bin/pip install -e '.[ray]' in the lebench checkout\n")


def test_the_model_and_its_layers_are_checked_before_any_cluster(monkeypatch, tmp_path, checkpoints):
    monkeypatch.setitem(sys.modules, "ray", None)  # nothing may get as far as Ray
    args = ["ray", "--", "extract", str(tmp_path), "-o", str(tmp_path / "out")]
    result = CliRunner().invoke(main, [*args, "--model", str(tmp_path / "missing.pt")])
    assert (result.exit_code, result.output) == (1, (
        f"Error: '{tmp_path / 'missing.pt'}' is neither a local checkpoint nor a hub id (see `lebench info` for "
        "known models)\n"))
    result = CliRunner().invoke(main, [*args, "--model", str(checkpoints("base")), "--layers", "7"])
    assert (result.exit_code, result.output) == (1, "Error: layer 7 does not exist: this model has layers 0-3 and 'cnn'\n")


@pytest.mark.parametrize("outcome, code, last_line", [
    ("done", 0, "extracted 1 file (1.0 s of audio)"),
    ("some failed", 3, "extracted 1 file (1.0 s of audio)"),
    ("part failed", 1, "Error: part 2/3 failed: boom"),
    ("interrupted", 130, "Error: interrupted: the parts were stopped; committed work stays: rerun the same command "
                         "to resume"),
])
@pytest.mark.parametrize("late_signal", [False, True])
def test_exit_codes_match_the_outcome_and_a_late_signal_changes_none(monkeypatch, tmp_path, outcome, code, last_line,
                                                                     late_signal):
    import lebench_cli.commands.ray as ray_command
    import lebench_cli.scaleout.ray_parts as ray_parts
    from lebench_cli.pipeline.summary import ExtractSummary

    def run_parts_on_ray(options, ray_options, on_part_done=None):
        if outcome == "part failed":
            raise ray_parts.PartFailedError("part 2/3 failed: boom")
        if outcome == "interrupted":
            raise KeyboardInterrupt
        return ExtractSummary(files=1, extracted=1, audio_seconds=1.0, failed=int(outcome == "some failed"),
                              failures_path=str(tmp_path / "out" / "failures-*of3.jsonl"))

    report = ray_command.report_summary

    def report_summary(summary, quiet):
        if late_signal:
            os.kill(os.getpid(), signal.SIGINT)  # as the summary line is printed
        report(summary, quiet)

    monkeypatch.setattr(ray_parts, "run_parts_on_ray", run_parts_on_ray)
    monkeypatch.setattr(ray_command, "report_summary", report_summary)
    names = ("SIGINT", "SIGTERM", "SIGUSR1")  # a decided run ignores them until its process ends
    previous = {name: signal.getsignal(getattr(signal, name)) for name in names}
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        result = CliRunner().invoke(main, ["ray", "--no-check", "--", "extract", str(tmp_path), "-o",
                                           str(tmp_path / "out"), "--model", "m"])
    finally:
        for name, handler in previous.items():
            signal.signal(getattr(signal, name), handler)
    assert result.exit_code == code, result.output
    assert result.output.splitlines()[-1].startswith(last_line), result.output


def test_extract_args_are_checked_before_connecting():
    result = CliRunner().invoke(main, ["ray", "--", "extract", "x", "-o", "out", "--model", "m", "--shard", "1/2"])
    assert result.exit_code == 2
    assert "Error: lebench ray cannot pass --shard: each part gets its own" in result.output


def test_lebench_ray_builds_the_options_lebench_extract_builds(checkpoints, tmp_path, monkeypatch):
    """The parts get what `lebench extract` with the same ARGS would run: an option added to
    extract and not passed on to the parts fails here."""
    import lebench_cli.pipeline.extract
    from lebench_cli.commands.extract import extract_options
    from lebench_cli.commands.extract_args import parse_extract_args

    (tmp_path / "corpus").mkdir()
    args = ["extract", str(tmp_path / "corpus"), "-o", str(tmp_path / "out"), "--model", "m", "--layers", "1,3",
            "--pool", "mean", "--frames", "--ext", "wav,.FLAC", "--channel", "1", "--batch-seconds", "7",
            "--chunk-seconds", "12", "--overlap-seconds", "2", "--device", "cpu", "--dtype", "float32",
            "--save-dtype", "float32", "--shard-size", "8KB", "--compression", "gzip", "--commit-seconds", "9",
            "--workers", "2", "--root", str(tmp_path), "--id-prefix", "train/", "--strict", "--trust-checkpoint"]
    seen = {}
    monkeypatch.setattr(lebench_cli.pipeline.extract, "plan_extract", lambda options, stdin=None: seen.setdefault("o", options))
    CliRunner().invoke(main, [*args, "--shard", "2/3", "--dry-run"])
    assert extract_options(parse_extract_args(tuple(args), "ray"), part=(2, 3)) == seen["o"]
