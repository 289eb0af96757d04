"""The benchmark scripts a GPU session depends on still run (tiny sizes, CPU): a broken
script found on a rented GPU costs its whole lease."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def test_bench_model_times_every_row_and_the_group_norm(checkpoints, tmp_path):
    results = tmp_path / "model.json"
    completed = subprocess.run(
        [sys.executable, "-m", "benchmarks.bench_model", "--model", checkpoints("base"), "--device", "cpu",
         "--layers", "last;1,cnn", "--batch-seconds", "2", "--clip-seconds", "0.5,1", "--batches", "1",
         "--warmup", "1", "--group-norm", "--work", tmp_path / "work", "--json-out", results],
        capture_output=True, text=True, cwd=REPO, timeout=300)
    assert completed.returncode == 0, completed.stderr[-2000:]
    report = json.loads(results.read_text())
    rows = report["rows"]
    assert [(r["variant"], r["layers"], r["clip_s"]) for r in rows] == [
        (variant, layers, clip) for clip in (0.5, 1.0) for layers in ("last", "1,cnn") for variant in ("compute", "readback")]
    assert all(r["x_rt"] > 0 and r["utterances"] == int(2 // r["clip_s"]) for r in rows)
    assert report["group_norm_0.5s"]["utterances"] == 4 and report["group_norm_2s"]["utterances"] == 1
    assert "variant" in completed.stdout and "group_norm_0.5s" in completed.stdout


def test_bench_model_against_float32_gives_the_ratio_and_every_layers_error(checkpoints, tmp_path):
    results = tmp_path / "model.json"
    completed = subprocess.run(
        [sys.executable, "-m", "benchmarks.bench_model", "--model", checkpoints("large"), "--device", "cpu",
         "--dtype", "bfloat16", "--against-float32", "--error-seconds", "1.5", "--layers", "last",
         "--batch-seconds", "1", "--clip-seconds", "1", "--batches", "1", "--warmup", "0",
         "--work", tmp_path / "work", "--json-out", results],
        capture_output=True, text=True, cwd=REPO, timeout=300)
    assert completed.returncode == 0, completed.stderr[-2000:]
    report = json.loads(results.read_text())
    assert [row["variant"] for row in report["rows"]] == ["compute", "readback", "compute float32"]
    assert all(row["vs_float32"] > 0 for row in report["rows"][:2])
    errors = report["errors_vs_float32"]
    assert list(errors) == ["cnn", "0", "1", "2", "3"]
    assert all(0 < rms <= top < 0.1 for top, rms in errors.values())  # bfloat16 rounding, not garbage
    assert "error against float32, 1.5 s of speech-like audio" in completed.stdout


def test_bench_pipeline_prints_the_write_ceiling_and_the_pipeline_ratio(tmp_path):
    results = tmp_path / "pipeline.json"
    completed = subprocess.run(
        [sys.executable, "-m", "benchmarks.bench_pipeline", "--minutes", "0.3", "--no-long-files", "--arch", "base",
         "--layers", "last;4,cnn", "--workers", "0", "--repeat", "2", "--work", tmp_path / "work",
         "--json-out", results],
        capture_output=True, text=True, cwd=REPO, timeout=300)
    assert completed.returncode == 0, completed.stderr[-2000:]
    rows = json.loads(results.read_text())["rows"]
    assert [(row["stage"], row.get("layers")) for row in rows] == [
        ("decode", None), ("write", "last"), ("write", "4,cnn"), ("pipeline", "last"), ("pipeline", "4,cnn")]
    for write in rows[1:3]:
        assert len(write["runs_wall_s"]) == len(write["numpy_runs_wall_s"]) == 2
        assert write["vs_numpy"] == min(write["numpy_runs_wall_s"]) / min(write["runs_wall_s"])
    for pipeline, write in zip(rows[3:], rows[1:3]):
        slower = min(rows[0]["audio_s"] / rows[0]["wall_s"], write["audio_s"] / write["wall_s"])
        assert pipeline["vs_slowest"] == pipeline["audio_s"] / pipeline["wall_s"] / slower
        assert pipeline["cpu_s"] >= pipeline["main_cpu_s"] > 0
    assert "vs numpy" in completed.stdout and "vs slowest" in completed.stdout
    assert "to feed 8,000x real time (4,cnn, 0 workers): " in completed.stdout


def test_bench_extract_runs_lebench_in_each_precision_beside_the_naive_loop(checkpoints, tmp_path):
    results = tmp_path / "extract.json"
    completed = subprocess.run(
        [sys.executable, "-m", "benchmarks.bench_extract", "--minutes", "0.1", "--no-long-files",
         "--model", checkpoints("base"), "--device", "cpu", "--dtype", "bfloat16,float32",
         "--methods", "lebench,fairseq", "--layers", "1,cnn", "--no-startup-probe", "--work", tmp_path / "work",
         "--json-out", results],
        capture_output=True, text=True, cwd=REPO, timeout=300)
    assert completed.returncode == 0, completed.stderr[-2000:]
    runs = json.loads(results.read_text())["runs"]
    assert [run["method"] for run in runs] == ["lebench:bfloat16", "lebench:float32", "fairseq"]
    assert all(run["exit_code"] == 0 and run["vs_fairseq"] > 0 for run in runs)
    assert runs[1]["vs_float32"] == 1.0 and runs[0]["vs_float32"] > 0 and runs[2]["vs_float32"] is None
    assert "vs float32" in completed.stdout


def test_gpu_session_script_parses_and_refuses_unknown_phases(tmp_path):
    script = REPO / "benchmarks" / "gpu_session.sh"
    for shell_script in (script, REPO / "scripts" / "download-wheels.sh"):
        assert subprocess.run(["bash", "-n", shell_script]).returncode == 0, shell_script
    usage = subprocess.run(["bash", script], capture_output=True, text=True)
    assert usage.returncode == 2 and "extract-all-layers" in usage.stdout
    unknown = subprocess.run(["bash", script, tmp_path / "out", "nonsense"], capture_output=True, text=True,
                             env={"PATH": "/usr/bin:/bin", "PYTHON": sys.executable, "SITE": str(tmp_path / "site")})
    assert unknown.returncode == 2 and "unknown phase 'nonsense'" in unknown.stderr


def test_bench_read_reads_every_format_back_on_a_tiny_corpus(tmp_path):
    results = tmp_path / "read.json"
    completed = subprocess.run(
        [sys.executable, "-m", "benchmarks.bench_read", "--quick", "--cold", "fadvise",
         "--work", tmp_path / "work", "--json-out", results],
        capture_output=True, text=True, cwd=REPO, timeout=600)
    assert completed.returncode == 0, completed.stderr[-2000:]
    report = json.loads(results.read_text())
    formats = ["lebench", "npy", "npy-stacked", "numpy_hdf5", "lilcom_chunky", "kaldi"]
    if "lilcom_chunky" not in report["disk_gb"]:  # lilcom is not a lebench dependency
        formats.remove("lilcom_chunky")
        assert "skipped (not installed): lilcom_chunky" in completed.stderr
    rows = report["rows"]
    assert [(r["cache"], r["layers"], r["format"]) for r in rows] == [
        (cache, layers, name) for cache in ("warm", "cold") for layers in (1, 25) for name in formats]
    assert all(r["utterances"] == report["utterances"] and r["utt_per_s"] > 0 and r["mb_per_s"] > 0 for r in rows)
    assert max(r["vs_best_peer"] for r in rows if r["format"] != "lebench") == 1.0
    assert report["cold_method"] == "fadvise" and "vs best peer" in completed.stdout
    checked = [r for r in rows if r["format"] == "lebench"]
    assert all(r["unchecked_utt_per_s"] > 0 and "check_cost" in r for r in checked) and "check cost" in completed.stdout


def test_bench_read_pads_batches_and_counts_the_same_frames(tmp_path):
    """--collate pad: lebench through FeatureDataset and dataset.collate, the others padded by
    collate_features; MB/s counts real frames, so a pass delivers what the list batches do."""
    delivered = {}
    for collate in ("list", "pad"):
        results = tmp_path / f"{collate}.json"
        completed = subprocess.run(
            [sys.executable, "-m", "benchmarks.bench_read", "--quick", "--cache", "warm", "--formats",
             "lebench,npy-stacked", "--collate", collate, "--touch", "--work", tmp_path / "work", "--json-out",
             results], capture_output=True, text=True, cwd=REPO, timeout=600)
        assert completed.returncode == 0, completed.stderr[-2000:]
        for row in json.loads(results.read_text())["rows"]:
            delivered[(collate, row["format"], row["layers"])] = row["mb_per_s"] * row["seconds"] / row["passes"]
    assert len(delivered) == 8
    for (collate, name, layers), megabytes in delivered.items():
        assert megabytes == pytest.approx(delivered[("list", "npy-stacked", layers)], rel=1e-9), (collate, name)


def test_bench_read_check_cost_reports_wall_and_cpu_seconds(tmp_path):
    completed = subprocess.run(
        [sys.executable, "-m", "benchmarks.bench_read", "--quick", "--formats", "lebench", "--check-cost",
         "--work", tmp_path / "work"], capture_output=True, text=True, cwd=REPO, timeout=600)
    assert completed.returncode == 0, completed.stderr[-2000:]
    header, *rows = completed.stdout.splitlines()
    assert header.split() == ["layers", "checked", "s", "unchecked", "s", "check", "cost", "checked", "cpu", "s",
                              "unchecked", "cpu", "s", "cpu", "cost"]
    assert [row.split()[0] for row in rows] == ["1", "25"]
    for row in rows:
        fields = row.split()
        assert all(float(value) >= 0 for value in fields[1:3] + fields[4:6]), row  # --quick: a few ms
        assert fields[3].endswith("%") and fields[6].endswith("%"), row


def test_bench_finite_check_times_the_check_against_the_model(checkpoints, tmp_path):
    results = tmp_path / "finite.json"
    completed = subprocess.run(
        [sys.executable, "-m", "benchmarks.bench_finite_check", "--model", checkpoints("base"), "--device",
         "cpu", "--layers", "last;all,cnn", "--batch-seconds", "2", "--clip-seconds", "1", "--repeats", "1",
         "--work", tmp_path / "work", "--json-out", results],
        capture_output=True, text=True, cwd=REPO, timeout=300)
    assert completed.returncode == 0, completed.stderr[-2000:]
    rows = json.loads(results.read_text())["rows"]
    assert [(r["layers"], r["checked_tensors"], r["utterances"]) for r in rows] == [("last", 2, 2), ("all,cnn", 5, 2)]
    assert all(r["forward_ms"] > 0 and r["check_ms"] > 0 and r["check_share"] > 0 for r in rows)
    assert "check / forward" in completed.stdout
