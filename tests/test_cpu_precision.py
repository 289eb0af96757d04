"""Half precision on the CPU: a grouped convolution kernel that computes bfloat16 wrongly on
some CPUs (oneDNN with AMX: 2-12 channels per group, relative error ~1) is routed around."""

import pytest
import torch
import torch.nn.functional as F

from lebench_cli.model.cpu_precision import _computes_right, grouped_conv_context


@pytest.mark.parametrize("per_group", [1, 4, 8, 48])
def test_a_grouped_convolution_in_its_context_computes_bfloat16_right(per_group):
    conv = torch.nn.Conv1d(16 * per_group, 16 * per_group, 128, padding=64, groups=16)
    inputs = torch.randn(3, 16 * per_group, 60)
    with torch.inference_mode():
        reference = conv(inputs)
        with grouped_conv_context(conv, torch.device("cpu"), torch.bfloat16)():
            low = F.conv1d(inputs.bfloat16(), conv.weight.bfloat16(), conv.bias.bfloat16(), padding=64, groups=16)
    error = (low.float() - reference).abs().max() / reference.abs().max()
    assert error < 0.02, f"{per_group} channels per group: relative error {error:.3g}"


def test_the_native_kernel_is_the_fallback_and_computes_right():
    assert _computes_right(64, 64, 128, 16, torch.bfloat16, False)


def test_float32_and_ungrouped_convolutions_are_not_checked():
    grouped = torch.nn.Conv1d(64, 64, 128, groups=16)
    plain = torch.nn.Conv1d(64, 64, 3)
    cpu = torch.device("cpu")
    assert grouped_conv_context(grouped, cpu, torch.float32) is grouped_conv_context(plain, cpu, torch.bfloat16)


@pytest.mark.parametrize("family", ["base", "large"])
def test_the_bfloat16_front_end_computes_in_bfloat16_close_to_float32(checkpoints, family):
    """On the CPU in bfloat16 the conv front end runs time-major (model/feature_extractor.py):
    its features stay bfloat16 (no float32 fallback that eats the gain) and stay within
    bfloat16's rounding of the float32 reference."""
    from lebench_cli.model.encoder import Encoder
    from lebench_cli.model.formats import load_local

    checkpoint = load_local(checkpoints(family))
    encoder = Encoder(checkpoint, device="cpu", dtype="bfloat16")
    waveform = torch.randn(2, 9_000)
    batch = encoder.forward(waveform, torch.tensor([9_000, 6_000]), ["cnn", 1])
    assert batch.states["cnn"].dtype == torch.bfloat16 and batch.states[1].dtype == torch.bfloat16
    exact = Encoder(checkpoint).forward(waveform, torch.tensor([9_000, 6_000]), ["cnn"]).states["cnn"]
    for index, frames in enumerate(batch.frames.tolist()):
        ours, reference = batch.states["cnn"][index, :frames].float(), exact[index, :frames]
        assert (ours - reference).abs().max() / reference.abs().max() < 0.05
