"""A newcomer's first hour: what the README says to type works on a fresh clone, the set-up
says what it installs, and the first mistakes get one-line errors with the documented codes."""

import io
import os
import re
import shutil
import subprocess
import sys
import warnings
from configparser import ConfigParser
from importlib.metadata import version
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from click.testing import CliRunner
from packaging.requirements import Requirement

from lebench_cli.cli import main
from lebench_cli.pipeline.progress import ProgressBar
from lebench_cli.reading.store import open_features

ROOT = Path(__file__).resolve().parents[1]
VENV = Path(sys.prefix)  # the environment running the tests: the one `make install` made


def readme_code_lines(readme: Path) -> list:
    """The lines of the README's shell blocks (``` without a language), comments removed."""
    lines, in_shell = [], False
    for line in readme.read_text().splitlines():
        if line.startswith("```"):
            in_shell = line == "```" and not in_shell
            continue
        if in_shell:
            command = line.split("#", 1)[0].strip()
            if command:
                lines.append(command)
    return lines


@pytest.fixture(scope="module")
def clone(tmp_path_factory):
    """A `git clone` of this checkout whose `.venv` is the test environment (set up once:
    a test installs nothing)."""
    if not (ROOT / ".git").exists():
        pytest.skip("not a git checkout: nothing to clone")
    assert (VENV / "bin" / "lebench").is_file(), f"{VENV} has no bin/lebench: run the tests with the venv's python"
    target = tmp_path_factory.mktemp("fresh") / "lebench"
    subprocess.run(["git", "clone", "--quiet", str(ROOT), str(target)], check=True, timeout=120)
    (target / ".venv").symlink_to(VENV, target_is_directory=True)
    return target


def run_in(clone: Path, command: str, **env):
    """bash -c COMMAND in the clone, with the clone's lebench_cli imported (not the checkout's).
    The tests take the set-up as done (`make -o install`, `make -n`); should one run it all the
    same, VENV and PYTHON make it stop at once instead of installing into the shared venv."""
    environment = {**os.environ, "PYTHONPATH": str(clone), "HF_HUB_OFFLINE": "1",
                   "VENV": str(clone / "no-venv"), "PYTHON": "false", **env}
    environment.pop("VIRTUAL_ENV", None)
    for inherited in ("MAKELEVEL", "MAKEFLAGS", "MFLAGS"):  # set when the suite itself runs under `make test`
        environment.pop(inherited, None)
    environment["PATH"] = "/usr/bin:/bin"  # a newcomer's shell: no lebench on it
    return subprocess.run(["bash", "-c", command], cwd=clone, env=environment, capture_output=True, text=True,
                          timeout=300)


def test_the_readme_commands_run_on_a_fresh_clone(clone):
    lines = readme_code_lines(clone / "README.md")
    assert "make demo" in lines and "make test" in lines
    bare = run_in(clone, "lebench --help")
    assert bare.returncode == 127, "a bare `lebench` resolves without the venv: this test would prove nothing"

    direct = [line for line in lines if line.startswith(".venv/bin/lebench")]
    assert direct == [".venv/bin/lebench --help"]
    result = run_in(clone, direct[0])
    assert (result.returncode, result.stderr) == (0, "")
    assert result.stdout.startswith("Usage: lebench [OPTIONS] COMMAND [ARGS]...")

    activation = [line for line in lines if line.startswith("source ")]
    assert activation == ["source .venv/bin/activate"]
    commands = sorted({name for line in lines for name in re.findall(r"(?:^|\| *)lebench (\w+)", line)})
    assert commands == ["extract", "info", "ls", "show"]
    for command in commands:
        result = run_in(clone, f"{activation[0]} && lebench {command} --help")
        assert (result.returncode, result.stderr) == (0, ""), command
        assert result.stdout.startswith(f"Usage: lebench {command} "), command
    result = run_in(clone, f"{activation[0]} && lebench info")
    assert result.returncode == 0 and "LeBenchmark/wav2vec2-FR-7K-base" in result.stdout


def test_every_make_target_the_readme_names_exists(clone):
    text = (clone / "README.md").read_text()
    targets = sorted(set(re.findall(r"`?make ([a-z][a-z-]*)", text)))
    assert targets == ["demo", "demo-offline", "test"]
    for target in targets:
        # -n: print the recipe without running it; -o install: take the set-up as done.
        result = run_in(clone, f"make -n -o install {target}")
        assert (result.returncode, result.stderr) == (0, ""), target
    result = run_in(clone, "make -n -o install demo TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu")
    assert result.returncode == 0
    # The guard of run_in: a set-up that runs after all stops before pip.
    result = run_in(clone, "make --no-print-directory install")
    assert result.returncode == 2
    assert result.stderr.startswith("install-env: cannot run false: lebench needs Python >= 3.10; "
                                    "pick one with PYTHON=python3.11\n")
    assert not (clone / "no-venv").exists()


def test_a_failed_make_demo_points_to_demo_offline(clone, tmp_path):
    missing = tmp_path / "missing" / "checkpoint_best.pt"
    result = run_in(clone, f"make --no-print-directory -o install demo MODEL={missing} OUT={tmp_path / 'out'}")
    assert result.returncode == 2  # make's code for a failed recipe
    *_, failure, hint, make_line = result.stderr.splitlines()
    assert make_line.startswith("make: *** [Makefile") and make_line.endswith("demo] Error 1")
    assert [failure, hint] == [
        f"Error: '{missing}' is neither a local checkpoint nor a hub id (see `lebench info` for known models)",
        "make demo: no model at hand or no network? make demo-offline runs the demo with random weights, "
        "or pass MODEL=/path/to/checkpoint_best.pt",
    ]
    assert not (tmp_path / "out").exists()


# ---- the set-up --------------------------------------------------------------------------

FAKE_PYTHON = """#!/usr/bin/env bash
# Stands for a python: records each call; `import torch` fails (torch is not installed yet).
printf '%s\\n' "$*" >> "$(dirname "$0")/../calls.log"
case "$*" in
  *"sys.version_info < (3, 10)"*) exit {too_old} ;;
  *python_version*) echo 3.9.18 ;;
  "-c import torch") exit 1 ;;
  *print*) echo "torch 0, fairseq 0, lebench 0" ;;
esac
"""


def set_up(tmp_path: Path, too_old=False, **env):
    """install-env.sh of a copy of the project, with a fake python for the venv."""
    root = tmp_path / "project"
    (root / "scripts").mkdir(parents=True)
    for name in ("setup.cfg", "setup.py", "scripts/install-env.sh"):
        shutil.copy(ROOT / name, root / name)
    fake = tmp_path / "fake-python"
    fake.write_text(FAKE_PYTHON.replace("{too_old}", "1" if too_old else "0"))
    fake.chmod(0o755)
    venv = tmp_path / "venv"
    if not too_old:
        (venv / "bin").mkdir(parents=True)
        shutil.copy(fake, venv / "bin" / "python")
    result = subprocess.run(["bash", str(root / "scripts" / "install-env.sh")], capture_output=True, text=True,
                            env={**os.environ, "VENV": str(venv), "PYTHON": str(fake), **env}, timeout=60)
    calls = venv / "calls.log"
    return result, calls.read_text().splitlines() if calls.exists() else []


def test_the_set_up_refuses_a_python_older_than_3_10(tmp_path):
    result, _ = set_up(tmp_path, too_old=True)
    fake = tmp_path / "fake-python"
    assert (result.returncode, result.stderr) == (1, f"install-env: {fake} is Python 3.9.18: lebench needs Python "
                                                     ">= 3.10 (torch 2.13); pick one with PYTHON=python3.11\n")
    assert not (tmp_path / "venv").exists()


def test_torch_comes_from_pypi_unless_an_index_is_given(tmp_path):
    result, calls = set_up(tmp_path / "pypi")
    assert result.returncode == 0, result.stderr
    assert [call for call in calls if "torch==" in call] == [
        "-m pip install --disable-pip-version-check --no-warn-conflicts -q torch==2.13.0"]
    assert ("install-env: installing torch==2.13.0 from PyPI (on Linux x86-64: the CUDA build, several GB; "
            "TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu for the CPU build)\n") in result.stderr

    cpu = "https://download.pytorch.org/whl/cpu"
    result, calls = set_up(tmp_path / "cpu", TORCH_INDEX_URL=cpu)
    assert result.returncode == 0, result.stderr
    assert [call for call in calls if "torch==" in call] == [
        f"-m pip install --disable-pip-version-check --no-warn-conflicts -q --index-url {cpu} torch==2.13.0"]
    # Everything else still comes from PyPI (the test install needs nothing but PyPI).
    assert all("--index-url" not in call for call in calls if "torch==" not in call)


def test_setup_cfg_states_what_the_readme_and_the_code_need():
    config = ConfigParser()
    config.read(ROOT / "setup.cfg")
    assert config["options"]["python_requires"] == ">=3.10"
    assert "Python >= 3.10" in (ROOT / "README.md").read_text()
    click_pin = next(Requirement(line) for line in config["options"]["install_requires"].splitlines()
                     if line.startswith("click"))
    assert str(click_pin.specifier) == "<9,>=8.2"
    assert version("click") in click_pin.specifier  # the click these tests ran with


# ---- first mistakes: one line, the documented code -------------------------------------------

@pytest.mark.parametrize("command", ["ls", "show", "export"])
def test_reading_a_folder_that_is_not_a_store_is_an_error_not_a_usage_error(tmp_path, command):
    (tmp_path / "corpus").mkdir()
    (tmp_path / "a-file").write_text("")
    expected = {tmp_path / "missing": f"Error: {tmp_path / 'missing'} does not exist\n",
                tmp_path / "a-file": f"Error: {tmp_path / 'a-file'} is not a folder\n",
                tmp_path / "corpus": f"Error: {tmp_path / 'corpus'} is not a lebench output folder (no lebench.json)\n"}
    for path, message in expected.items():
        destination = ["--format", "npy", "-o", str(tmp_path / "dest")] if command == "export" else []
        result = CliRunner().invoke(main, [command, str(path), *destination])
        assert (result.exit_code, result.output) == (1, message)
    assert not (tmp_path / "dest").exists()


def test_an_output_that_is_a_file_is_refused_with_exit_1_before_the_model(tmp_path):
    write_wav(tmp_path / "corpus" / "a.wav", 0.5)
    (tmp_path / "feats").write_text("")
    result = CliRunner().invoke(main, ["extract", str(tmp_path / "corpus"), "-o", str(tmp_path / "feats"),
                                       "--model", str(tmp_path / "no-such-model.pt"), "--device", "cpu"])
    assert (result.exit_code, result.output) == (
        1, f"Error: cannot write to {tmp_path / 'feats'}: it exists and is not a folder\n")


def test_stdin_paths_are_read_without_click_get_text_stream(checkpoints, tmp_path, monkeypatch):
    """click.get_text_stream is gone in Click 9: `-` must not need it."""
    import click

    def removed(*args, **kwargs):
        raise AttributeError("module 'click' has no attribute 'get_text_stream'")

    monkeypatch.setitem(vars(click), "get_text_stream", removed)  # shadows Click 8's deprecated alias
    for index in range(2):
        write_wav(tmp_path / f"u{index}.wav", 1.0)
    listing = "".join(f"{tmp_path / f'u{index}.wav'}\n" for index in range(2))
    result = CliRunner().invoke(main, ["extract", "-", "-o", str(tmp_path / "feats"), "--model",
                                       str(checkpoints("base")), "--dry-run"], input=listing)
    assert result.exit_code == 0, result.output
    assert result.output.startswith("2 files to extract (2.0 s of audio), 0 already stored, 0 unreadable;")


def test_missing_omegaconf_is_named_not_blamed_on_the_checkpoint(checkpoints, monkeypatch):
    path = checkpoints("base")
    for name in ("omegaconf", "omegaconf.base", "omegaconf.dictconfig", "omegaconf.listconfig", "omegaconf.nodes"):
        monkeypatch.setitem(sys.modules, name, None)  # importing it raises ImportError
    result = CliRunner().invoke(main, ["info", str(path)])
    assert (result.exit_code, result.output) == (
        1, f"Error: {path}: reading it needs the omegaconf package, which does not import (import of "
           "omegaconf.base halted; None in sys.modules): see docs/install.md\n")


# ---- progress ------------------------------------------------------------------------------

def test_the_bar_grows_its_total_when_files_are_longer_than_announced():
    """The total comes from headers and manifests; past it, tqdm warned `clamping frac to
    range [0, 1]` and showed an ETA of `<-00:00`."""
    stream = io.StringIO()
    bar = ProgressBar(stream)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        bar.start(2, 10.0)
        bar.advance(1, 8.0)
        bar.advance(1, 7.0)
        bar.close()
    last = stream.getvalue().rstrip("\n").split("\r")[-1]
    assert last.startswith("100%|") and "2/2 files, 15.0 s of 15.0 s audio" in last
    assert "<-" not in stream.getvalue()


# ---- `all`: one meaning in extract, read and export ------------------------------------------

def write_wav(path: Path, seconds: float, seed: int = 0):
    path.parent.mkdir(parents=True, exist_ok=True)
    samples = 0.1 * np.random.default_rng(seed).standard_normal(int(seconds * 16_000))
    sf.write(path, samples.astype(np.float32), 16_000)
    return path


def export(*args):
    return CliRunner().invoke(main, ["export", *map(str, args)], catch_exceptions=False)


def test_all_means_layers_0_to_l_in_extract_read_and_export(checkpoints, tmp_path):
    for index, seconds in enumerate((0.6, 0.9)):
        write_wav(tmp_path / "corpus" / f"u{index}.wav", seconds, seed=index)
    out = tmp_path / "feats"
    result = CliRunner().invoke(main, ["extract", str(tmp_path / "corpus"), "-o", str(out), "--model",
                                       str(checkpoints("base")), "--layers", "all,cnn", "--device", "cpu", "-q"])
    assert (result.exit_code, result.output) == (0, "")
    with open_features(out) as store:
        assert store.layers == ["cnn", 0, 1, 2, 3]  # the tiny model has 3 blocks: all is 0-3
        read_all = store.read("u0", "all")

    result = export(out, "--format", "npy", "--stack", "--layers", "all", "-o", tmp_path / "stacked")
    assert (result.exit_code, result.output) == (0, f"exported 2 new, replaced 0, removed 0 in {tmp_path / 'stacked'}\n")
    assert (tmp_path / "stacked" / "layers.txt").read_text() == "0\n1\n2\n3\n"
    assert np.array_equal(np.load(tmp_path / "stacked" / "u0.npy"), read_all)

    result = export(out, "--format", "npy", "--layers", "all,cnn", "-o", tmp_path / "every")
    assert result.exit_code == 0
    assert sorted(p.name for p in (tmp_path / "every").iterdir()) == [".lock-export"] + [f"layer_{n}" for n in (0, 1, 2, 3, "cnn")] + ["lebench-export.json", "metadata.jsonl"]
    result = export(out, "--format", "npy", "-o", tmp_path / "default")  # no --layers: every stored layer
    assert sorted(p.name for p in (tmp_path / "default").iterdir()) == [".lock-export"] + [f"layer_{n}" for n in (0, 1, 2, 3, "cnn")] + ["lebench-export.json", "metadata.jsonl"]


def test_export_all_of_a_store_without_numbered_layers_says_so(checkpoints, tmp_path):
    write_wav(tmp_path / "corpus" / "u0.wav", 0.6)
    out = tmp_path / "feats"
    result = CliRunner().invoke(main, ["extract", str(tmp_path / "corpus"), "-o", str(out), "--model",
                                       str(checkpoints("base")), "--layers", "cnn", "--device", "cpu", "-q"])
    assert result.exit_code == 0, result.output
    result = export(out, "--format", "npy", "--layers", "all", "-o", tmp_path / "x")
    assert (result.exit_code, result.output) == (
        1, f"Error: 'all' means the stored layers 0..L, and none is stored in {out} (stored: cnn): "
           "export cnn by its name\n")
    assert not (tmp_path / "x").exists()
