"""The one engine under `lebench extract` and `features_of`: what `features_of` gets from it
on the GPU path (a batch launched ahead of the one read back), and what it says of bad files."""

import warnings

import numpy as np
import pytest
import soundfile as sf

from lebench_cli.pipeline import engine as engine_module
from lebench_cli import features_of, iter_features
from lebench_cli.model.formats import load_local
from lebench_cli.model.encoder import Encoder

RATE = 16_000
SETTINGS = dict(batch_seconds=4.0, chunk_seconds=2.0, overlap_seconds=0.5)


def write_audio(path, seconds: float, seed: int):
    generator = np.random.default_rng(seed)
    t = np.arange(int(round(seconds * RATE))) / RATE
    data = 0.3 * np.sin(2 * np.pi * (150 + 40 * seed) * t) + 0.05 * generator.standard_normal(len(t))
    sf.write(path, data.astype(np.float32), RATE)
    return str(path)


@pytest.fixture
def paths(tmp_path):
    return [write_audio(tmp_path / f"{index}.wav", seconds, seed=index)
            for index, seconds in enumerate([0.015, 1.3, 5.0, 0.9, 3.1])]


def test_a_batch_launched_ahead_gives_the_same_features(checkpoints, paths, monkeypatch):
    """The GPU setting on the CPU: each batch's states are read back after the next batch
    (or a long recording's next windows) has been launched; the values and the order of
    `iter_features` do not change."""
    encoder = Encoder(load_local(checkpoints("base")))
    monkeypatch.setattr(engine_module, "batches_in_flight", lambda device: 0)
    one_at_a_time = list(iter_features(paths, encoder, layers=[2, "cnn"], **SETTINGS))
    events = []
    forward = Encoder.forward
    monkeypatch.setattr(engine_module, "batches_in_flight", lambda device: 1)
    monkeypatch.setattr(Encoder, "forward", lambda self, *a, **k: events.append("launch") or forward(self, *a, **k))
    ahead = list(iter_features(paths, encoder, layers=[2, "cnn"], **SETTINGS))
    assert [path for path, _ in ahead] == [path for path, _ in one_at_a_time] == [paths[i] for i in (2, 4, 1, 3, 0)]
    for (_, ours), (_, theirs) in zip(ahead, one_at_a_time):
        for layer in (2, "cnn"):
            np.testing.assert_array_equal(ours[layer], theirs[layer])
    assert events.count("launch") >= 3


def test_iter_features_gives_a_file_that_fails_to_decode_as_none(checkpoints, paths, tmp_path):
    encoder = Encoder(load_local(checkpoints("base")))
    broken = tmp_path / "inf.wav"
    sf.write(broken, np.array([np.inf] * 800, dtype=np.float32), RATE, subtype="FLOAT")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        results = dict(iter_features([paths[1], str(broken)], encoder, skip_bad_files=True))
    assert results[str(broken)] is None and results[paths[1]][encoder.num_layers].shape == (64, 32)
    assert [str(w.message) for w in caught] == [f"{broken}: contains NaN or infinite samples (skipped)"]
    assert features_of([str(broken)], encoder, skip_bad_files=True) == [None]
