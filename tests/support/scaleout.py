"""What the SLURM and Ray tests share: a corpus slow enough to be caught mid-run, a
single-process reference, and the comparison of two stores."""

from pathlib import Path

import numpy as np
from click.testing import CliRunner

from lebench_cli.cli import main
from lebench_cli.reading.store import open_features
from lebench_cli.testing.corpora import tone_corpus

ROOT = Path(__file__).resolve().parents[2]


def make_corpus(root: Path, files: int) -> Path:
    return tone_corpus(root, files, first=0.5, step=0.3)


def extract_args(corpus: Path, out: Path, checkpoint: Path) -> list:
    """Small shards and batches: many commits, so that a part stopped mid-run has some."""
    return ["extract", str(corpus), "-o", str(out), "--model", str(checkpoint), "--device", "cpu",
            "--workers", "0", "--layers", "1,3", "--save-dtype", "float32", "--shard-size", "8KB",
            "--batch-seconds", "2"]


def single_process_run(corpus: Path, out: Path, checkpoint: Path) -> None:
    result = CliRunner().invoke(main, [*extract_args(corpus, out, checkpoint), "-q"], catch_exceptions=False)
    assert result.exit_code == 0, result.output


def assert_same_store(out: Path, reference: Path) -> None:
    """Same ids, each once; arrays equal up to float32 rounding (parts batch differently)."""
    with open_features(out) as store, open_features(reference) as expected:
        assert sorted(store.ids) == sorted(expected.ids)
        assert len(store.ids) == len(set(store.ids))
        for utt_id in expected.ids:
            for layer in (1, 3):
                np.testing.assert_allclose(store.read(utt_id, layer), expected.read(utt_id, layer),
                                           rtol=1e-5, atol=1e-5)


def part_shards(out: Path, part: int, parts: int) -> list:
    return list((out / "shards").glob(f"part-{part}of{parts}-*.h5"))
