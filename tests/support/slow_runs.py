"""Extraction made slow on purpose, for tests that stop it mid-way."""

import os
from pathlib import Path


def slow_windows(env: dict, tmp_path: Path) -> dict:
    """The environment with a sitecustomize that makes each window group of a long recording
    take 0.5 s, as a real model on a CPU does: the tiny test model on a quiet machine runs a
    30-minute recording in seconds, and the test needs one that cannot finish in two minutes."""
    folder = tmp_path / "slow-windows"
    folder.mkdir()
    (folder / "sitecustomize.py").write_text(
        "import time\n"
        "from lebench_cli.pipeline import extract\n"
        "_original = extract.Extraction._append_windows\n"
        "def _slowly(*args):\n"
        "    time.sleep(0.5)\n"
        "    _original(*args)\n"
        "extract.Extraction._append_windows = staticmethod(_slowly)\n")
    paths = [str(folder), *filter(None, [env.get("PYTHONPATH", "")])]
    return {**env, "PYTHONPATH": os.pathsep.join(paths)}
