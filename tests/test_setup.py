"""A calm first run: the set-up's stamp (a rerun with nothing to do skips pip), no fairseq
log lines on lebench commands, and the random checkpoint of `make demo-offline`."""

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from lebench_cli.model.formats import load_local

ROOT = Path(__file__).resolve().parents[1]

FAKE_PYTHON = """#!/usr/bin/env bash
# Stands for the venv's python: records each call; every import "works".
printf '%s\\n' "$*" >> "$(dirname "$0")/../calls.log"
case "$*" in *print*) echo "torch 0, fairseq 0, lebench 0" ;; esac
"""


def project_copy(tmp_path: Path) -> Path:
    """The packaging files and the set-up script in a folder of their own (the test edits them)."""
    root = tmp_path / "project"
    (root / "scripts").mkdir(parents=True)
    for name in ("setup.cfg", "setup.py", "scripts/install-env.sh"):
        shutil.copy(ROOT / name, root / name)
    return root


def fake_venv(tmp_path: Path) -> Path:
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    python = venv / "bin" / "python"
    python.write_text(FAKE_PYTHON)
    python.chmod(0o755)
    return venv


def install(root: Path, venv: Path):
    calls = venv / "calls.log"
    calls.unlink(missing_ok=True)
    started = time.monotonic()
    result = subprocess.run(["bash", str(root / "scripts" / "install-env.sh")], env={**os.environ, "VENV": str(venv)},
                            capture_output=True, text=True, timeout=60)
    elapsed = time.monotonic() - started
    assert result.returncode == 0, result.stderr
    return result, (calls.read_text().splitlines() if calls.exists() else []), elapsed


def test_a_rerun_with_nothing_to_do_skips_pip_and_a_changed_setup_cfg_reinstalls(tmp_path):
    root, venv = project_copy(tmp_path), fake_venv(tmp_path)

    first, calls, _ = install(root, venv)
    assert any(call.startswith("-m pip install") and call.endswith("-e .[test]") for call in calls)
    assert any(call.startswith("-m pip check") for call in calls)
    assert first.stderr.endswith("install-env: ready: torch 0, fairseq 0, lebench 0\n")
    assert (venv / ".lebench-install-stamp").is_file()

    second, calls, elapsed = install(root, venv)
    assert calls == []
    assert second.stderr == f"install-env: up to date ({venv}; delete {venv}/.lebench-install-stamp to reinstall)\n"
    assert elapsed < 3

    with open(root / "setup.cfg", "a") as setup_cfg:
        setup_cfg.write("# a change\n")
    third, calls, _ = install(root, venv)
    assert any(call.endswith("-e .[test]") for call in calls)
    assert third.stderr.endswith("install-env: ready: torch 0, fairseq 0, lebench 0\n")

    fourth, calls, _ = install(root, venv)
    assert calls == []


def test_a_failed_install_leaves_no_stamp(tmp_path):
    root, venv = project_copy(tmp_path), fake_venv(tmp_path)
    python = venv / "bin" / "python"
    python.write_text(FAKE_PYTHON + 'case "$*" in *"-e .[test]"*) exit 1 ;; esac\n')
    result = subprocess.run(["bash", str(root / "scripts" / "install-env.sh")], env={**os.environ, "VENV": str(venv)},
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert not (venv / ".lebench-install-stamp").exists()


def test_no_fairseq_log_lines_on_lebench_commands(checkpoints):
    """fairseq logs `INFO:fairseq.tasks.text_to_speech:Please install tensorboardX` when a
    bare `import fairseq` runs; lebench (and the set-up's last check) import it quietly."""
    result = subprocess.run([sys.executable, "-m", "lebench_cli", "info", str(checkpoints("base"))],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0
    assert result.stderr == ""
    quiet_import = ("from lebench_cli.model.conversion import import_fairseq_wav2vec2\n"
                    "import_fairseq_wav2vec2()\nimport fairseq\n")
    result = subprocess.run([sys.executable, "-c", quiet_import], capture_output=True, text=True, timeout=300)
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")


def test_random_checkpoint_for_the_offline_demo(tmp_path):
    path = tmp_path / "random-model" / "checkpoint_best.pt"
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "make-random-checkpoint.py"), str(path),
                             "--layers", "1", "--width", "64"], capture_output=True, text=True, timeout=300)
    assert (result.returncode, result.stderr) == (0, "")
    assert result.stdout.endswith("its features mean nothing (a dry run only)\n")
    checkpoint = load_local(path)  # the real format, through the safe loader
    assert (checkpoint.format, checkpoint.layers, checkpoint.width, checkpoint.normalize) == ("fairseq", 1, 64, False)
    assert checkpoint.model_config["conv_feature_layers"] == str([(512, 10, 5)] + [(512, 3, 2)] * 4 + [(512, 2, 2)] * 2)
