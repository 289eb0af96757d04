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
