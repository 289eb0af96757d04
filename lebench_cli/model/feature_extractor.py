"""The convolutional feature extractor in bfloat16 on a CPU: fairseq's seven convolutions,
norms and GELUs with its weights, computed time-major ([batch, frames, channels]).

Why: fairseq's layout is channel-major, and there oneDNN ran the bfloat16 convolutions
little faster than float32 (the first, one channel in, several times slower), while
fairseq's Fp32LayerNorm / Fp32GroupNorm transpose and cast every block's output to float32
and back: the feature extractor took about half of a bfloat16 forward pass
(docs/performance.md). Time-major is NHWC with H = 1, the layout oneDNN's bfloat16
convolution computes without reordering; the first convolution (one input channel) is a
strided view of the waveform times a [kernel, channels] weight. Both accumulate in float32
and round once. The norms read bfloat16, take float32 statistics and float32 weights, as
fairseq's Fp32 norms do, and write bfloat16 (tests/test_feature_extractor.py).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def time_major_extractor(extractor: torch.nn.Module, group_norm_first: bool):
    """A TimeMajorFeatureExtractor of fairseq's `extractor`, or None for a shape it does not
    compute (a first GroupNorm with several channels per group: no LeBenchmark model)."""
    first_norm = extractor.conv_layers[0][2] if group_norm_first else None
    if first_norm is not None and first_norm.num_groups != first_norm.num_channels:
        return None
    return TimeMajorFeatureExtractor(extractor, group_norm_first)


class TimeMajorFeatureExtractor:
    """fairseq's ConvFeatureExtractionModel (its weights, read once) for [batch, samples]
    waveforms -> [batch, frames, channels] features, in the model's dtype."""

    def __init__(self, extractor: torch.nn.Module, group_norm_first: bool):
        self.blocks = []
        for index, block in enumerate(extractor.conv_layers):
            conv, activation = block[0], block[-1]
            kernel, stride = conv.kernel_size[0], conv.stride[0]
            weight = conv.weight.detach()
            if conv.in_channels == 1:
                weight = weight.reshape(conv.out_channels, kernel).t().contiguous()  # [k, out]
            else:
                weight = weight.unsqueeze(2).contiguous(memory_format=torch.channels_last)
            bias = None if conv.bias is None else conv.bias.detach()
            norm = None
            if group_norm_first and index == 0:
                norm = ("group", block[2])
            elif len(block) == 4:  # layer_norm mode: Sequential(TransposeLast, Fp32LayerNorm, TransposeLast)
                layer_norm = block[2][1]
                norm = ("layer", (layer_norm.normalized_shape, layer_norm.weight.float(), layer_norm.bias.float(),
                                  layer_norm.eps))
            self.blocks.append((weight, bias, kernel, stride, norm, activation))

    def __call__(self, waveforms: torch.Tensor, valid_samples: torch.Tensor) -> torch.Tensor:
        x = waveforms.unsqueeze(2)  # [batch, samples, 1]
        valid = valid_samples
        for weight, bias, kernel, stride, norm, activation in self.blocks:
            x = _convolve(x, weight, bias, kernel, stride)
            valid = torch.clamp(torch.div(valid - kernel, stride, rounding_mode="floor") + 1, min=0)
            if norm is not None and norm[0] == "group":
                _group_norm_per_utterance(x, valid, norm[1])
            elif norm is not None:
                x = F.layer_norm(x, *norm[1])
            x = activation(x)
        return x


def _convolve(x: torch.Tensor, weight: torch.Tensor, bias, kernel: int, stride: int) -> torch.Tensor:
    """A valid (unpadded) 1-D convolution of time-major x [batch, frames, channels]."""
    batch, frames, channels = x.shape
    if channels > 1:
        # Time-major is NHWC with H = 1: oneDNN's channels-last convolution reads and writes
        # it in place (no reorder), the weight packed once.
        out = F.conv2d(x.permute(0, 2, 1).unsqueeze(2), weight, bias, stride=(1, stride))
        return out.squeeze(2).permute(0, 2, 1)
    # One input channel (the waveform): output frame t is samples t*s .. t*s+k-1, a strided
    # view multiplied by the [k, out] weight.
    out_frames = max(0, (frames - kernel) // stride + 1)
    x = x.contiguous()
    windows = x.as_strided((batch, out_frames, kernel), (frames, stride, 1))
    out = torch.matmul(windows, weight)
    return out if bias is None else out.add_(bias)


def _group_norm_per_utterance(x: torch.Tensor, valid_frames: torch.Tensor, group_norm) -> None:
    """fairseq's first GroupNorm (one group per channel: each channel normalised over its
    utterance's valid frames), in place; the padding is zeroed (kept finite, never read by a
    valid frame). Time-major, one channel's frames are a batch norm's batch: torch's kernel
    takes float32 statistics of the bfloat16 values and applies float32 weights, as
    fairseq's Fp32GroupNorm does, and rounds once to bfloat16."""
    weight = group_norm.weight.float() if group_norm.affine else None
    bias = group_norm.bias.float() if group_norm.affine else None
    for index, count in enumerate(valid_frames.tolist()):
        frames = x[index, :count]
        frames.copy_(F.batch_norm(frames, None, None, weight, bias, True, 0.0, group_norm.eps))
        x[index, count:] = 0
