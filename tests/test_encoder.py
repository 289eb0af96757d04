"""The encoder against fairseq's one-at-a-time forward, transformers as an independent
oracle, and itself batched vs unbatched, for both model families."""

import numpy as np
import pytest
import torch

from lebench_cli.model.formats import load_local
from lebench_cli.model.conversion import export_speechbrain, export_transformers
from lebench_cli.model.encoder import Encoder, frames_for_samples
from lebench_cli.errors import InputError
from lebench_cli.testing.checkpoints import FAMILIES, build_fairseq_model, fairseq_reference

LENGTHS = [400, 401, 719, 720, 1_000, 3_333, 8_000, 16_000, 23_457]
LAYERS = ["cnn", 0, 1, 2, 3]


def waveforms(lengths, seed=0):
    generator = torch.Generator().manual_seed(seed)
    # Non-zero mean and non-unit scale, so that waveform normalisation matters.
    return [torch.randn(n, generator=generator) * 0.3 + 0.05 for n in lengths]


def assert_close(actual, expected, what):
    actual = torch.as_tensor(actual, dtype=torch.float32)
    expected = torch.as_tensor(expected, dtype=torch.float32)
    assert actual.shape == expected.shape, what
    scale = float(expected.abs().max())
    error = float((actual - expected).abs().max())
    assert error <= 1e-4 * scale, f"{what}: max abs diff {error:.3g} vs scale {scale:.3g}"


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_batched_output_equals_fairseq_one_at_a_time(checkpoints, family, device):
    encoder = Encoder(load_local(checkpoints(family)), device=device)
    reference_model, _ = build_fairseq_model(family)
    inputs = waveforms(LENGTHS)
    outputs = encoder.encode(inputs, LAYERS)
    for waveform, output in zip(inputs, outputs):
        expected = fairseq_reference(reference_model, waveform, FAMILIES[family]["normalize"])
        assert set(expected) == {"cnn", 1, 2, 3}
        for layer, state in expected.items():
            assert_close(output[layer], state, f"{family} n={len(waveform)} layer {layer}")


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_batched_equals_unbatched(checkpoints, family, device):
    encoder = Encoder(load_local(checkpoints(family)), device=device)
    inputs = waveforms(LENGTHS, seed=1)
    batched = encoder.encode(inputs, LAYERS)
    for waveform, together in zip(inputs, batched):
        (alone,) = encoder.encode([waveform], LAYERS)
        for layer in LAYERS:
            assert_close(together[layer], alone[layer], f"{family} n={len(waveform)} layer {layer}")


def test_padding_content_does_not_matter(checkpoints, device):
    encoder = Encoder(load_local(checkpoints("base")), device=device)
    inputs = waveforms([1_000, 5_000])
    lengths = torch.tensor([1_000, 5_000])
    padded = torch.zeros(2, 5_000)
    padded[0, :1_000], padded[1] = inputs[0], inputs[1]
    noisy = padded.clone()
    noisy[0, 1_000:] = 100.0
    clean = encoder.forward(padded, lengths, LAYERS).unbatch()
    dirty = encoder.forward(noisy, lengths, LAYERS).unbatch()
    for layer in LAYERS:
        np.testing.assert_array_equal(clean[0][layer], dirty[0][layer])


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_transformers_oracle(checkpoints, family, tmp_path):
    """transformers' own Wav2Vec2Model on our export equals our encoder on the fairseq file."""
    transformers = pytest.importorskip("transformers")
    checkpoint = load_local(checkpoints(family))
    export_transformers(checkpoint, tmp_path / "hf")
    oracle, loading = transformers.Wav2Vec2Model.from_pretrained(tmp_path / "hf", output_loading_info=True)
    assert not loading["missing_keys"] and not loading["unexpected_keys"]
    oracle.eval()
    encoder = Encoder(checkpoint)
    for waveform in waveforms([400, 2_345, 16_000], seed=2):
        (ours,) = encoder.encode([waveform], LAYERS)
        model_input = waveform
        if FAMILIES[family]["normalize"]:
            model_input = torch.nn.functional.layer_norm(waveform, waveform.shape)
        with torch.no_grad():
            result = oracle(model_input[None], output_hidden_states=True)
        expected = {"cnn": result.extract_features[0], 3: result.last_hidden_state[0]}
        # transformers 5.x: hidden_states[L] of a pre-LN model lacks the final LayerNorm,
        # so only 0..L-1 are taken from hidden_states.
        for layer in (0, 1, 2):
            expected[layer] = result.hidden_states[layer][0]
        for layer, state in expected.items():
            assert_close(ours[layer], state, f"{family} transformers layer {layer}")


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_all_formats_give_the_same_features(checkpoints, family, tmp_path):
    fairseq_form = load_local(checkpoints(family))
    export_transformers(fairseq_form, tmp_path / "transformers")
    export_speechbrain(fairseq_form, tmp_path / "speechbrain")
    inputs = waveforms([400, 4_321, 12_000], seed=3)
    expected = Encoder(fairseq_form).encode(inputs, LAYERS)
    for folder, format in (("transformers", "transformers"), ("speechbrain", "speechbrain")):
        checkpoint = load_local(tmp_path / folder)
        assert checkpoint.format == format
        assert checkpoint.normalize == FAMILIES[family]["normalize"]
        for ours, theirs in zip(Encoder(checkpoint).encode(inputs, LAYERS), expected):
            for layer in LAYERS:
                np.testing.assert_array_equal(ours[layer], theirs[layer])


@pytest.mark.parametrize("style", ["cfg", "container", "args"])
def test_fairseq_checkpoint_styles_load_alike(checkpoints, style):
    reference = load_local(checkpoints("large", "cfg"))
    checkpoint = load_local(checkpoints("large", style))
    assert checkpoint.format == "fairseq"
    assert checkpoint.normalize is True
    assert checkpoint.layers == 3 and checkpoint.width == 32
    inputs = waveforms([2_000])
    np.testing.assert_array_equal(
        Encoder(checkpoint).encode(inputs, [3])[0][3], Encoder(reference).encode(inputs, [3])[0][3]
    )


def test_frame_counts_follow_the_formula(checkpoints):
    encoder = Encoder(load_local(checkpoints("base")))
    for samples in [400, 719, 720, 1_039, 1_040, 16_000, 160_000]:
        assert encoder.frames_for(samples) == (samples - 400) // 320 + 1
    assert frames_for_samples(399, encoder.conv_layers) == 0
    outputs = encoder.encode(waveforms(LENGTHS), [1])
    assert [len(o[1]) for o in outputs] == [(n - 400) // 320 + 1 for n in LENGTHS]


def test_only_requested_layers_are_returned(checkpoints):
    encoder = Encoder(load_local(checkpoints("base")))
    (output,) = encoder.encode(waveforms([1_000]), [2, "cnn"])
    assert list(output) == [2, "cnn"]
    assert output["cnn"].shape == (2, 16) and output[2].shape == (2, 32)


def test_too_short_and_unknown_layers_are_input_errors(checkpoints):
    encoder = Encoder(load_local(checkpoints("base")))
    with pytest.raises(InputError, match="399 samples; the model needs at least 400"):
        encoder.forward(torch.zeros(1, 399), torch.tensor([399]), [1])
    with pytest.raises(InputError, match="layer 4 does not exist: this model has layers 0-3 and 'cnn'"):
        encoder.encode([torch.zeros(400)], [4])


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_encode_pads_a_short_waveform_to_one_frame_as_extract_does(checkpoints, family):
    """Zero-padded at the end to 400 samples before normalisation, as decoding.decode pads
    a short file: one frame instead of none."""
    encoder = Encoder(load_local(checkpoints(family)))
    (short,) = waveforms([250])
    padded = torch.cat([short, torch.zeros(150)])
    (encoded,) = encoder.encode([short], LAYERS)
    (expected,) = encoder.forward(padded[None], torch.tensor([400]), LAYERS).unbatch()
    together = encoder.encode([short, waveforms([3_000])[0]], LAYERS)
    for layer in LAYERS:
        assert encoded[layer].shape[0] == 1
        np.testing.assert_array_equal(encoded[layer], expected[layer])
        assert_close(together[0][layer], expected[layer], f"{family} batched short layer {layer}")


BAD_WAVEFORMS = [
    (np.zeros((16_000, 2), np.float32), "waveform 1 has shape (16000, 2): encode takes 1-D mono waveforms; "
                                        "down-mix first, e.g. x.mean(axis=1) for [samples, channels]"),
    (torch.zeros(2, 16_000), "waveform 1 has shape (2, 16000): encode takes 1-D mono waveforms; "
                             "down-mix first, e.g. x.mean(axis=0) for [channels, samples]"),
    (np.zeros((1, 2, 800)), "waveform 1 has shape (1, 2, 800): encode takes 1-D mono waveforms"),
    (np.zeros(800, np.int16), "waveform 1 has dtype int16: encode takes float samples in [-1, 1]; "
                              "convert first, e.g. x / 32768"),
    (torch.zeros(800, dtype=torch.int32), "waveform 1 has dtype int32: encode takes float samples in [-1, 1]; "
                                          "convert first, e.g. x / 2147483648"),
    (np.full(800, 128, np.uint8), "waveform 1 has dtype uint8: encode takes float samples in [-1, 1]; "
                                  "convert first, e.g. (x - 128) / 128"),
    ([0.1, float("nan")] * 400, "waveform 1 contains NaN or infinite samples"),
    (torch.full((800,), float("inf")), "waveform 1 contains NaN or infinite samples"),
    (np.zeros(0, np.float32), "waveform 1 has no samples"),
]


@pytest.mark.parametrize("bad, message", BAD_WAVEFORMS)
def test_encode_refuses_what_the_model_cannot_take_in_one_line(checkpoints, bad, message):
    encoder = Encoder(load_local(checkpoints("base")))
    with pytest.raises(InputError) as raised:
        encoder.encode([np.zeros(800, np.float32), bad], [1])
    assert str(raised.value) == message


def test_encode_refuses_a_bare_waveform_and_a_bad_rate(checkpoints):
    encoder = Encoder(load_local(checkpoints("base")))
    with pytest.raises(InputError) as raised:
        encoder.encode(np.zeros(800, np.float32), [1])
    assert str(raised.value) == "encode takes a list of waveforms: pass [x] for one waveform x"
    with pytest.raises(InputError) as raised:
        encoder.encode([np.zeros(800, np.float32)], [1], sample_rate=0)
    assert str(raised.value) == "sample_rate must be a positive number of samples per second, not 0"


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_encode_resamples_other_rates_as_extract_does(checkpoints, family):
    """sample_rate= resamples with the pipeline's own resampler (soxr HQ, audio.resample):
    equal to encoding the 16 kHz waveform that extract would have decoded."""
    from lebench_cli.audio.loading import resample

    encoder = Encoder(load_local(checkpoints(family)))
    eight, fortyfour = (w.numpy() for w in waveforms([8_000, 44_100], seed=4))
    outputs = encoder.encode([eight, fortyfour.astype(np.float64)], LAYERS, sample_rate=8_000)
    assert len(outputs[0][1]) == (16_000 - 400) // 320 + 1
    expected = encoder.encode([resample(eight, 8_000), resample(fortyfour.astype(np.float32), 8_000)], LAYERS)
    for ours, theirs in zip(outputs, expected):
        for layer in LAYERS:
            np.testing.assert_array_equal(ours[layer], theirs[layer])
    (at_44k,) = encoder.encode([fortyfour], [1], sample_rate=44_100)
    assert len(at_44k[1]) == (16_000 - 400) // 320 + 1


@pytest.mark.parametrize("family", sorted(FAMILIES))
@pytest.mark.parametrize("dtype, tolerance", [("float16", 1e-2), ("bfloat16", 5e-2)])
def test_half_precision_stays_close_to_float32(checkpoints, family, dtype, tolerance, device):
    """Half precision (CUDA's default; the CPU runs it too) within `tolerance` of float32 on
    the CPU, relative to each layer's scale, on every layer."""
    checkpoint = load_local(checkpoints(family))
    inputs = waveforms([3_000, 6_000, 11_000])
    exact = Encoder(checkpoint).encode(inputs, LAYERS)
    approximate = Encoder(checkpoint, device=device, dtype=dtype).encode(inputs, LAYERS)
    for ours, reference in zip(approximate, exact):
        for layer in LAYERS:
            error = np.abs(ours[layer] - reference[layer]).max() / np.abs(reference[layer]).max()
            assert error < tolerance, f"{family} {dtype} layer {layer}: relative error {error:.3g}"


def test_float32_runs_in_float32_arithmetic(checkpoints, monkeypatch):
    """No TensorFloat-32 inside a float32 forward pass (PyTorch's default for convolutions on
    NVIDIA GPUs, ~1e-3 relative error), whatever the caller allowed; their settings come back
    afterwards. Half precision leaves them alone."""
    seen = []
    convolution = torch.nn.Conv1d.forward

    def spy(self, x):
        seen.append((torch.backends.cudnn.allow_tf32, torch.get_float32_matmul_precision()))
        return convolution(self, x)

    monkeypatch.setattr(torch.nn.Conv1d, "forward", spy)
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", True)
    saved = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("medium")
    try:
        checkpoint = load_local(checkpoints("base"))
        Encoder(checkpoint).encode(waveforms([2_000]), [1])
        assert seen and set(seen) == {(False, "highest")}
        assert torch.backends.cudnn.allow_tf32 is True and torch.get_float32_matmul_precision() == "medium"
        seen.clear()
        Encoder(checkpoint, dtype="bfloat16").encode(waveforms([2_000]), [1])
        assert seen and set(seen) == {(True, "medium")}
    finally:
        torch.set_float32_matmul_precision(saved)
