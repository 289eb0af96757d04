"""`features_of` / `iter_features`: features in memory, equal to what `lebench extract` stores."""

import warnings

import numpy as np
import pytest
import soundfile as sf

from lebench_cli import features_of, iter_features
from lebench_cli.model.formats import load_local
from lebench_cli.model.encoder import Encoder
from lebench_cli.errors import AudioError, InputError
from lebench_cli.pipeline.options import ExtractOptions
from lebench_cli.pipeline.extract import run_extract
from lebench_cli.reading.store import open_features
from lebench_cli.testing.audio import write_audio

RATE = 16_000
LAYERS = ["cnn", 0, 1, 2, 3]
# Small enough that the 5 s recording runs in windows (3 of them) and files share batches.
SETTINGS = dict(batch_seconds=4.0, chunk_seconds=2.0, overlap_seconds=0.5)


@pytest.fixture
def corpus(tmp_path):
    root = tmp_path / "corpus"
    return {
        "short": write_audio(root / "short.wav", 0.015, seed=1, offset=0.02),  # 240 samples: padded to one frame
        "normal": write_audio(root / "normal.wav", 1.3, seed=2, offset=0.02),
        "stereo": write_audio(root / "stereo.wav", 0.9, rate=22_050, channels=2, seed=3, offset=0.02),
        "long": write_audio(root / "long.wav", 5.0, seed=4, offset=0.02),  # windowed
    }


@pytest.mark.parametrize("family", ["base", "large"])
def test_equal_to_what_extract_stores(checkpoints, corpus, tmp_path, family, device):
    checkpoint = str(checkpoints(family))
    out = tmp_path / "out"
    summary = run_extract(ExtractOptions(inputs=[str(corpus["normal"].parent)], output=str(out), model=checkpoint,
                                         layers="all,cnn", device=device, dtype="float32", save_dtype="float32",
                                         workers=0, **SETTINGS))
    assert (summary.extracted, summary.failed, summary.padded, summary.chunked) == (4, 0, 1, 1)
    paths = [corpus[name] for name in ("short", "normal", "stereo", "long")]
    computed = features_of(paths, checkpoint, layers="all,cnn", device=device, dtype="float32", **SETTINGS)
    assert len(computed) == 4
    with open_features(out) as store:
        for path, states in zip(paths, computed):
            assert set(states) == set(LAYERS)
            for layer in LAYERS:
                stored = store.read(path.stem, layer)
                assert stored.dtype == np.float32 and states[layer].dtype == np.float32
                assert states[layer].shape == stored.shape, (path.stem, layer)
                np.testing.assert_array_equal(states[layer], stored, err_msg=f"{path.stem} {layer}")
    frames = {name: len(states[3]) for name, states in zip(("short", "normal", "stereo", "long"), computed)}
    assert frames == {"short": 1, "normal": 64, "stereo": 44, "long": 249}


def test_iter_features_runs_longest_first_with_the_same_values(checkpoints, corpus):
    encoder = Encoder(load_local(checkpoints("large")))
    paths = [str(corpus[name]) for name in ("short", "normal", "stereo", "long")]
    listed = features_of(paths, encoder, layers=[3, "cnn"], **SETTINGS)
    iterated = list(iter_features(paths, encoder, layers=[3, "cnn"], **SETTINGS))
    assert [path for path, _ in iterated] == [paths[3], paths[1], paths[2], paths[0]]
    for path, states in iterated:
        assert list(states) == [3, "cnn"]
        for layer in (3, "cnn"):
            np.testing.assert_array_equal(states[layer], listed[paths.index(path)][layer])


def test_layer_selections(checkpoints, corpus):
    encoder = Encoder(load_local(checkpoints("base")))
    path = corpus["normal"]
    assert list(features_of([path], encoder)[0]) == [3]  # "last"
    assert set(features_of([path], encoder, layers="all")[0]) == {0, 1, 2, 3}
    assert list(features_of([path], encoder, layers=1)[0]) == [1]
    assert features_of([], encoder) == []
    with pytest.raises(InputError, match="^layer 4 does not exist: this model has layers 0-3 and 'cnn'$"):
        features_of([path], encoder, layers=[4])


def test_a_wav_at_another_rate_equals_encode_with_its_sample_rate(checkpoints, tmp_path):
    """features_of decodes and resamples as Encoder.encode(sample_rate=) does."""
    encoder = Encoder(load_local(checkpoints("large")))
    samples = (0.2 * np.random.default_rng(7).standard_normal(12_000)).astype(np.float32)
    path = tmp_path / "eight.wav"
    sf.write(path, samples, 8_000, subtype="FLOAT")
    (from_file,) = features_of([path], encoder, layers="all,cnn")
    (from_array,) = encoder.encode([samples], LAYERS, sample_rate=8_000)
    for layer in LAYERS:
        np.testing.assert_array_equal(from_file[layer], from_array[layer])


def test_a_bad_file_raises_naming_it_before_any_work(checkpoints, corpus, tmp_path):
    encoder = Encoder(load_local(checkpoints("base")))
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    with pytest.raises(AudioError) as raised:
        features_of([corpus["normal"], empty], encoder)
    assert str(raised.value) == f"{empty}: empty file (0 bytes)"
    missing = tmp_path / "missing.wav"
    with pytest.raises(AudioError, match=f"^{missing}: no such file$"):
        next(iter_features([corpus["long"], missing], encoder, **SETTINGS))


def test_a_file_that_fails_to_decode_raises_naming_it(checkpoints, corpus, tmp_path):
    encoder = Encoder(load_local(checkpoints("base")))
    broken = tmp_path / "nan.wav"
    sf.write(broken, np.array([0.1, np.nan] * 400, dtype=np.float32), RATE, subtype="FLOAT")
    with pytest.raises(AudioError) as raised:
        features_of([corpus["normal"], broken], encoder)
    assert str(raised.value) == f"{broken}: contains NaN or infinite samples"


def test_skip_bad_files_gives_none_and_a_warning_naming_each(checkpoints, corpus, tmp_path):
    encoder = Encoder(load_local(checkpoints("base")))
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    broken = tmp_path / "nan.wav"
    sf.write(broken, np.array([np.inf] * 800, dtype=np.float32), RATE, subtype="FLOAT")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        results = features_of([empty, corpus["normal"], broken], encoder, skip_bad_files=True)
    assert results[0] is None and results[2] is None
    assert results[1][3].shape == (64, 32)
    assert sorted(str(w.message) for w in caught) == sorted([
        f"{empty}: empty file (0 bytes) (skipped)",
        f"{broken}: contains NaN or infinite samples (skipped)",
    ])


def test_option_errors(checkpoints, corpus):
    encoder = Encoder(load_local(checkpoints("base")))
    with pytest.raises(InputError, match="^device and dtype belong to the Encoder given as model: leave them out$"):
        features_of([corpus["normal"]], encoder, device="cpu")
    with pytest.raises(InputError, match="^overlap_seconds 1 must be under half of chunk_seconds 2$"):
        features_of([corpus["normal"]], encoder, chunk_seconds=2, overlap_seconds=1)
    with pytest.raises(TypeError):
        features_of([corpus["normal"]], encoder, batch_size=3)
    with pytest.raises(InputError) as raised:
        features_of("corpus/a.wav", encoder)
    assert str(raised.value) == "expected a list of audio file paths, got one path: pass ['corpus/a.wav']"


def test_decoding_workers_change_nothing(checkpoints, corpus):
    encoder = Encoder(load_local(checkpoints("large")))
    paths = [corpus[name] for name in ("short", "normal", "stereo", "long")]
    here = features_of(paths, encoder, layers=[3], **SETTINGS)
    in_workers = features_of(paths, encoder, layers=[3], workers=2, **SETTINGS)
    for ours, theirs in zip(in_workers, here):
        np.testing.assert_array_equal(ours[3], theirs[3])
