"""Real extractions of a six-utterance noise corpus into small shards (30 KB: three shards), for
the integrity tests, which damage and rebuild such stores."""

from pathlib import Path

import numpy as np
import soundfile as sf
from click.testing import CliRunner

from lebench_cli.cli import main

IDS = [f"u{i}" for i in range(6)]


def write_noise_corpus(root: Path, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    for number, utt_id in enumerate(IDS):
        samples = int(16000 * (0.5 + 0.2 * number))
        sf.write(root / f"{utt_id}.wav", (0.1 * rng.standard_normal(samples)).astype(np.float32), 16000)
    return root


def extract(corpus, out, model, *extra):
    return CliRunner().invoke(main, ["extract", str(corpus), "-o", str(out), "--model", str(model), "--device",
                                     "cpu", "--workers", "0", "-q", "--layers", "all", "--shard-size", "30KB",
                                     *map(str, extra)])
