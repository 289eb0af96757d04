"""Stores written straight through ShardWriter, without a model: random utterances of a few
layers."""

import numpy as np

from lebench_cli.storage import PartLock, ShardWriter, StoredUtterance, WriterOptions, prepare_output

LAYERS = ["0", "12", "cnn"]
WIDTHS = {"0": 8, "12": 8, "cnn": 4}


def random_utterances(count, seed=0, prefix="u", layers=LAYERS):
    rng = np.random.default_rng(seed)
    utts = []
    for i in range(count):
        frames = int(rng.integers(1, 30))
        states = {name: rng.normal(size=(frames, WIDTHS.get(name, 8))).astype(np.float32)
                  for name in layers}
        utts.append(StoredUtterance(f"{prefix}{i}", f"/audio/{prefix}{i}.wav",
                                    frames * 0.02 + 0.005, frames, states))
    return utts


def write(out, utts, **options):
    options = WriterOptions(**{"layers": LAYERS, **options})
    prepare_output(out, {"identity": {"layers": LAYERS}, "model": "tiny"}, overwrite=False)
    with PartLock(out, options.part, options.num_parts), ShardWriter(out, options) as writer:
        for utt in utts:
            writer.add(utt)
