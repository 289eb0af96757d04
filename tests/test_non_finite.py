"""No NaN or infinity is ever stored: every batch is checked on the device, per utterance
and layer, in every dtype; loud but finite audio is normalised without overflowing.
docs/extract.md#precision and docs/reliability.md."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from click.testing import CliRunner

from lebench_cli.audio.loading import load_audio
from lebench_cli.model.formats import load_local
from lebench_cli.cli import main
from lebench_cli.model.encoder import EncodedBatch, Encoder
from lebench_cli.reading.store import open_features
from lebench_cli.testing.audio import tone

RATE = 16_000
OVERFLOW = "non-finite features (NaN or inf) at layer {} in float32"


def write(path: Path, samples: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, samples.astype(np.float32), RATE, subtype="FLOAT")
    return path


def extract(*args):
    return CliRunner().invoke(main, ["extract", *map(str, args)], catch_exceptions=False)


def run_args(checkpoint, out, *extra):
    return ["-o", out, "--model", checkpoint, "--device", "cpu", "--workers", "0", "-q", *extra]


def failures_of(out: Path) -> dict:
    lines = (out / "failures-1of1.jsonl").read_text().splitlines()
    return {entry["id"]: entry["reason"] for entry in map(json.loads, lines)}


def assert_stored_as_alone(store, encoder, utt_id, path, layers):
    (expected,) = encoder.encode([load_audio(path)], layers)
    for layer, value in expected.items():
        stored = store.read(utt_id, layer).astype(np.float32)
        assert np.isfinite(stored).all()
        # float32: a half-precision batch is recomputed in float32 when one of its utterances overflows
        assert np.abs(stored - value).max() <= 1e-4 * np.abs(value).max(), (utt_id, layer)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("layers", ["3", "cnn,1"])
def test_a_3e38_sine_through_a_model_without_normalisation_fails_naming_the_layer(checkpoints, tmp_path, dtype,
                                                                                   layers):
    """LeBenchmark's base models do not normalise the waveform: a float WAV of amplitude 3e38
    overflows in the conv stack, in float32 too. It fails naming the conv features, stored or
    not; the files batched with it are stored."""
    corpus = tmp_path / "corpus"
    loud = write(corpus / "loud.wav", 3e38 * np.sin(2 * np.pi * 200 * np.arange(RATE) / RATE))
    for seed in (1, 2):  # as long as it: one batch (padding <= 10%)
        write(corpus / f"ok{seed}.wav", tone(1.0, seed=seed))
    out = tmp_path / "out"
    result = extract(corpus, *run_args(checkpoints("base"), out, "--dtype", dtype, "--save-dtype", "float32",
                                       "--layers", layers, "--batch-seconds", "20"))
    assert result.exit_code == 3
    assert result.output == f"Error: 1 files failed (see {out}/failures-1of1.jsonl)\n"
    assert failures_of(out) == {"loud": OVERFLOW.format("cnn")}
    assert load_audio(loud).max() == pytest.approx(3e38, rel=1e-6)  # finite input
    encoder = Encoder(load_local(checkpoints("base")))
    with open_features(out) as store:
        assert sorted(store.ids) == ["ok1", "ok2"]
        for utt_id in store.ids:
            assert_stored_as_alone(store, encoder, utt_id, corpus / f"{utt_id}.wav", store.layers)


def test_a_3e38_long_recording_fails_and_leaves_no_partial_utterance(checkpoints, tmp_path):
    corpus = tmp_path / "corpus"
    write(corpus / "long.wav", 3e38 * np.sin(2 * np.pi * 200 * np.arange(5 * RATE) / RATE))
    write(corpus / "ok.wav", tone(0.8, seed=1))
    out = tmp_path / "out"
    result = extract(corpus, *run_args(checkpoints("base"), out, "--layers", "2", "--chunk-seconds", "2",
                                       "--overlap-seconds", "0.5"))
    assert result.exit_code == 3
    assert failures_of(out) == {"long": OVERFLOW.format("cnn")}
    with open_features(out) as store:
        assert store.ids == ["ok"]


@pytest.mark.parametrize("chunked", [False, True])
def test_loud_finite_audio_through_a_normalising_model_equals_the_quiet_audio(checkpoints, tmp_path, chunked):
    """Large models normalise each utterance (fairseq: zero mean, unit variance): the same
    audio at 1e37 times the amplitude has the same features, short or in windows."""
    seconds, extra = (5.0, ["--chunk-seconds", "2", "--overlap-seconds", "0.5"]) if chunked else (1.2, [])
    quiet = tone(seconds, seed=3)
    write(tmp_path / "quiet" / "u.wav", quiet)
    write(tmp_path / "loud" / "u.wav", quiet * 1e37)
    for name in ("quiet", "loud"):
        result = extract(tmp_path / name, *run_args(checkpoints("large"), tmp_path / f"out-{name}", "--layers",
                                                    "cnn,1,3", "--save-dtype", "float32", *extra))
        assert result.exit_code == 0, result.output
    with open_features(tmp_path / "out-quiet") as expected, open_features(tmp_path / "out-loud") as actual:
        for layer in expected.layers:
            value, stored = expected.read("u", layer), actual.read("u", layer)
            assert np.isfinite(stored).all()
            # NORMALIZE_EPS (1e-5) weighs 1e-74 times less against the loud variance
            assert np.abs(stored - value).max() <= 2e-3 * np.abs(value).max(), layer
    encoder = Encoder(load_local(checkpoints("large")))
    (alone,) = encoder.encode([(quiet * 1e37).astype(np.float32)], [3])
    assert np.isfinite(alone[3]).all()


def poisoned(original, dtypes, utterance=1, layer=3):
    """Encoder.forward with one valid value of one utterance made NaN in `dtypes`."""

    def forward(self, waveforms, lengths, layers, normalize=None):
        batch = original(self, waveforms, lengths, layers, normalize)
        if self.dtype in dtypes and len(batch.frames) > utterance:
            states = {key: value.clone() for key, value in batch.states.items()}
            states[layer][utterance, int(batch.frames[utterance]) - 1, 0] = float("nan")
            batch = EncodedBatch(states, batch.frames, conv_features=batch.conv_features)
        return batch

    return forward


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_an_utterance_non_finite_in_float32_fails_and_its_batch_is_stored(checkpoints, tmp_path, monkeypatch, dtype):
    """Every dtype is checked, float32 too (it used to be trusted); a half-precision batch is
    recomputed in float32 first. The other utterances of the batch are stored."""
    from lebench_cli.pipeline import extract as extract_module

    corpus = tmp_path / "corpus"
    for seed, seconds in enumerate((1.0, 0.9, 0.8)):
        write(corpus / f"u{seed}.wav", tone(seconds, seed=seed))
    original = Encoder.forward
    monkeypatch.setattr(Encoder, "forward", poisoned(original, {torch.float32, torch.float16, torch.bfloat16}))
    options = extract_module.ExtractOptions(inputs=[str(corpus)], output=str(tmp_path / "out"),
                                            model=str(checkpoints("base")), device="cpu", dtype=dtype,
                                            save_dtype="float32", workers=0, layers="1,3", batch_seconds=20)
    summary = extract_module.run_extract(options)
    assert (summary.extracted, summary.failed) == (2, 1)
    assert summary.recomputed_float32 == (0 if dtype == "float32" else 1)
    # longest first: the second utterance of the batch is u1 (0.9 s)
    assert failures_of(tmp_path / "out") == {"u1": OVERFLOW.format(3)}
    monkeypatch.setattr(Encoder, "forward", original)
    encoder = Encoder(load_local(checkpoints("base")))
    with open_features(tmp_path / "out") as store:
        assert sorted(store.ids) == ["u0", "u2"]
        for utt_id in store.ids:
            assert_stored_as_alone(store, encoder, utt_id, corpus / f"{utt_id}.wav", [1, 3])


def test_a_half_precision_overflow_that_float32_fixes_is_stored(checkpoints, tmp_path, monkeypatch):
    from lebench_cli.pipeline import extract as extract_module

    corpus = tmp_path / "corpus"
    for seed, seconds in enumerate((1.0, 0.9)):
        write(corpus / f"u{seed}.wav", tone(seconds, seed=seed))
    original = Encoder.forward
    monkeypatch.setattr(Encoder, "forward", poisoned(original, {torch.bfloat16}))
    options = extract_module.ExtractOptions(inputs=[str(corpus)], output=str(tmp_path / "out"),
                                            model=str(checkpoints("base")), device="cpu", dtype="bfloat16",
                                            save_dtype="float32", workers=0, layers="3", batch_seconds=20)
    summary = extract_module.run_extract(options)
    assert (summary.extracted, summary.failed, summary.recomputed_float32) == (2, 0, 1)


def test_features_in_memory_never_hold_non_finite_values(checkpoints, tmp_path):
    from lebench_cli import features_of
    from lebench_cli.errors import AudioError

    loud = write(tmp_path / "loud.wav", 3e38 * np.sin(2 * np.pi * 200 * np.arange(RATE) / RATE))
    quiet = write(tmp_path / "quiet.wav", tone(1.0, seed=1))
    with pytest.raises(AudioError, match=f"^{loud}: " + OVERFLOW.format("cnn").replace("(", r"\(").replace(")", r"\)")):
        features_of([loud, quiet], checkpoints("base"), layers=3, device="cpu")
    with pytest.warns(UserWarning, match="non-finite features"):
        loud_features, quiet_features = features_of([loud, quiet], checkpoints("base"), layers=3, device="cpu",
                                                    skip_bad_files=True)
    assert loud_features is None and np.isfinite(quiet_features[3]).all()
