"""Chunks sized to the data, and `extract --dry-run`'s size estimate against real runs."""

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from click.testing import CliRunner

from lebench_cli.cli import main
from lebench_cli.pipeline.options import ExtractOptions
from lebench_cli.pipeline.extract import plan_extract
from lebench_cli.storage import PartLock, ShardWriter, StoredUtterance, WriterOptions, open_h5, prepare_output
from lebench_cli.storage.sizing import CHUNK_BYTES, chunk_rows


def folder_bytes(folder: Path) -> int:
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())


@pytest.fixture
def small_corpus(tmp_path):
    root = tmp_path / "corpus"
    generator = np.random.default_rng(0)
    for name, seconds in [("spk1/a", 1.3), ("spk1/b", 0.7), ("spk2/c", 2.1), ("spk2/d", 0.45)]:
        path = root / f"{name}.wav"
        path.parent.mkdir(parents=True, exist_ok=True)
        sf.write(path, 0.1 * generator.standard_normal(int(seconds * 16000)).astype(np.float32), 16000)
    return root


def test_chunk_rows_fit_the_data_when_it_is_known():
    assert chunk_rows(1024, 2) == CHUNK_BYTES // 2048 == 128
    assert chunk_rows(1024, 2, total_rows=3) == 3
    assert chunk_rows(1024, 2, total_rows=297) == 99  # three equal chunks, none part-empty
    assert chunk_rows(1024, 2, total_rows=128) == 128
    assert chunk_rows(32, 4, total_rows=1) == 1


def test_a_few_utterance_means_make_a_small_shard(tmp_path):
    layers = [str(layer) for layer in range(25)]
    options = WriterOptions(layers=layers, store_frames=False, store_mean=True)
    prepare_output(tmp_path, {"identity": {"layers": layers}}, overwrite=False)
    generator = np.random.default_rng(0)
    with PartLock(tmp_path, 1, 1), ShardWriter(tmp_path, options) as writer:
        for index in range(3):
            states = {layer: generator.normal(size=(99, 1024)).astype(np.float32) for layer in layers}
            writer.add(StoredUtterance(f"u{index}", f"/audio/u{index}.wav", 2.0, 99, states))
    shard = next((tmp_path / "shards").glob("*.h5"))
    # 3 x 25 x 1024 float16 means are 150 KiB; one 256 KiB chunk per layer made 6.4 MB
    assert shard.stat().st_size < 300_000
    with open_h5(shard) as opened:
        assert opened["layers/12/mean"].chunks == (3, 1024)


@pytest.mark.parametrize("extra", [
    ["--pool", "mean", "--layers", "all,cnn"],
    ["--pool", "mean", "--layers", "last"],
    ["--layers", "1,3"],
    ["--layers", "all", "--save-dtype", "float32", "--pool", "mean", "--frames"],
])
def test_dry_run_estimate_holds_within_20_percent_for_tiny_runs(checkpoints, small_corpus, tmp_path, extra):
    out = tmp_path / "out"
    args = [str(small_corpus), "-o", str(out), "--model", str(checkpoints("base")), "--device", "cpu", *extra]
    dry = CliRunner().invoke(main, ["extract", *args, "--dry-run"])
    assert dry.exit_code == 0 and "estimated output" in dry.output and not out.exists()
    options = ExtractOptions(inputs=[str(small_corpus)], output=str(out), model=str(checkpoints("base")),
                             layers=extra[extra.index("--layers") + 1], device="cpu",
                             pool="mean" if "mean" in extra else "none",
                             store_frames=True if "--frames" in extra else None,
                             save_dtype="float32" if "float32" in extra else "float16")
    estimate = plan_extract(options).estimated_bytes
    result = CliRunner().invoke(main, ["extract", *args, "--workers", "0", "-q"])
    assert result.exit_code == 0, result.output
    real = folder_bytes(out)
    assert abs(estimate - real) <= 0.2 * real, (estimate, real)
