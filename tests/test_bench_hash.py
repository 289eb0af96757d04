"""benchmarks/bench_hash.py still runs (a tiny corpus) and reports every case, warm and cold."""

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_bench_hash_times_every_case_on_a_tiny_corpus(tmp_path):
    report = tmp_path / "report.json"
    run = subprocess.run([sys.executable, "-m", "benchmarks.bench_hash", "--files", "4", "--passes", "1",
                          "--threads", "2", "--work", tmp_path / "corpus", "--json-out", report],
                         capture_output=True, text=True, cwd=REPO, timeout=300)
    assert run.returncode == 0, run.stderr
    rows = json.loads(report.read_text())["rows"]
    assert [(row["case"], row["cache"]) for row in rows] == [
        (case, cache) for cache in ("warm", "cold") for case in ("stat", "probe", "xxh3", "sampled", "decode", "xxh3 x2")]
    assert all(row["seconds"] > 0 for row in rows)
    assert run.stdout.startswith("4 files, ")
