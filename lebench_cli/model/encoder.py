"""Running a wav2vec2 checkpoint: padded batches of waveforms in, per-layer hidden states out.

Layer numbering (the project's, as transformers 4.x `hidden_states`): 0 is the transformer
input, i the output of block i, L the encoder output (with the final LayerNorm for pre-LN
models), and "cnn" the convolutional features after their LayerNorm, before the projection.

Batched output equals one-at-a-time output for every model: padding never reaches a valid
frame's computation (see `_group_norm_per_utterance` for the one place where it would).
"""

from __future__ import annotations

from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Optional, Sequence, Union

import numpy as np
import torch

from ..audio.loading import NORMALIZE_EPS, SAMPLE_RATE, pad_to_one_frame, resample
from ..errors import CheckpointError, InputError
from ..frames import CNN
from .checkpoint import Checkpoint
from .conversion import import_fairseq_wav2vec2, parse_conv_layers
from .conversion import is_pretraining_only
from .cpu_precision import grouped_conv_context
from .feature_extractor import time_major_extractor

Layer = Union[int, str]
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass
class EncodedBatch:
    """Hidden states of a padded batch: states[layer] is [batch, frames_max, width]."""

    states: dict
    frames: torch.Tensor  # valid frames per utterance, on the CPU
    # [batch, frames_max, width] conv features, stored or not: where a non-finite value of
    # loud audio starts (readback.Readback checks them)
    conv_features: Optional[torch.Tensor] = field(default=None, repr=False)

    def utterance(self, index: int) -> dict:
        count = int(self.frames[index])
        return {layer: value[index, :count] for layer, value in self.states.items()}

    def unbatch(self) -> list[dict]:
        """One {layer: float32 numpy [frames, width]} per utterance."""
        return [
            {layer: value.float().cpu().numpy() for layer, value in self.utterance(i).items()}
            for i in range(len(self.frames))
        ]


def build_fairseq_model(checkpoint: Checkpoint):
    """fairseq's Wav2Vec2Model with the checkpoint's weights, pre-training heads removed."""
    import warnings

    wav2vec2 = import_fairseq_wav2vec2()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch's weight_norm deprecation, inside fairseq
            model = wav2vec2.Wav2Vec2Model(wav2vec2.Wav2Vec2Config(**checkpoint.model_config))
    except (TypeError, ValueError) as error:
        raise CheckpointError(f"{checkpoint.weights_path}: invalid model config: {error}") from None
    model.remove_pretraining_modules()
    model.mask_emb = None
    if getattr(model, "input_quantizer", None) is not None:
        raise CheckpointError(f"{checkpoint.weights_path}: quantize_input models are not supported")
    weights = {k: v for k, v in checkpoint.state_dict.items() if not is_pretraining_only(k)}
    expected = set(model.state_dict())
    missing = sorted(expected - set(weights))
    unexpected = sorted(set(weights) - expected)
    if missing or unexpected:
        problem = f"missing weight '{missing[0]}'" if missing else f"unexpected weight '{unexpected[0]}'"
        raise CheckpointError(
            f"{checkpoint.weights_path}: {problem} ({len(missing)} missing, {len(unexpected)} "
            "unexpected): the weights do not match the model config"
        )
    try:
        model.load_state_dict(weights, strict=True)
    except RuntimeError as error:
        raise CheckpointError(f"{checkpoint.weights_path}: {' '.join(str(error).split())[:300]}") from None
    return model.eval()


def frames_for_samples(samples, conv_layers) -> torch.Tensor | int:
    """Frames the conv stack makes from `samples` (int or tensor): floor((n - k) / s) + 1 per
    conv, 0 when shorter than the receptive field."""
    for _, kernel, stride in conv_layers:
        if isinstance(samples, torch.Tensor):
            samples = torch.clamp(torch.div(samples - kernel, stride, rounding_mode="floor") + 1, min=0)
        else:
            samples = max(0, (samples - kernel) // stride + 1)
    return samples


def receptive_field(conv_layers) -> int:
    field, jump = 1, 1
    for _, kernel, stride in conv_layers:
        field += (kernel - 1) * jump
        jump *= stride
    return field


class Encoder:
    """A checkpoint ready to run, in eval mode (no dropout, layerdrop or masking)."""

    def __init__(self, checkpoint: Checkpoint, device: str | torch.device = "cpu", dtype: str = "float32"):
        if dtype not in DTYPES:
            raise InputError(f"unknown dtype '{dtype}' (choose from {', '.join(DTYPES)})")
        self.checkpoint = checkpoint
        self.device = check_device(device)
        self.dtype = DTYPES[dtype]
        self.normalize = checkpoint.normalize
        self.conv_layers = parse_conv_layers(checkpoint.weights_path, checkpoint.model_config["conv_feature_layers"])
        self.min_samples = receptive_field(self.conv_layers)
        self.samples_per_frame = int(np.prod([s for _, _, s in self.conv_layers]))
        self.model = build_fairseq_model(checkpoint).to(device=self.device, dtype=self.dtype)
        self.num_layers = len(self.model.encoder.layers)
        self.width = checkpoint.width
        self.cnn_width = self.conv_layers[-1][0]
        self.layer_norm_first = bool(checkpoint.model_config.get("layer_norm_first", False))
        self.group_norm = checkpoint.model_config.get("extractor_mode", "default") == "default"
        positional = next(m for m in self.model.encoder.pos_conv.modules() if isinstance(m, torch.nn.Conv1d))
        self._positional_context = grouped_conv_context(positional, self.device, self.dtype)
        # bfloat16 on a CPU: the convolutions as matrix products, time-major (3-4x faster
        # than oneDNN's channel-major bfloat16 convolutions here; feature_extractor.py)
        self._time_major = None
        if self.device.type == "cpu" and self.dtype == torch.bfloat16:
            self._time_major = time_major_extractor(self.model.feature_extractor, self.group_norm)

    @property
    def layer_names(self) -> list:
        return [CNN, *range(self.num_layers + 1)]

    def frames_for(self, samples):
        return frames_for_samples(samples, self.conv_layers)

    def check_layers(self, layers: Sequence[Layer]) -> list:
        checked = []
        for layer in layers:
            if layer == CNN or (isinstance(layer, int) and 0 <= layer <= self.num_layers):
                checked.append(layer)
            else:
                raise InputError(f"layer {layer!r} does not exist: this model has layers 0-{self.num_layers} and 'cnn'")
        return checked

    @torch.inference_mode()
    def forward(self, waveforms: torch.Tensor, lengths: torch.Tensor, layers: Sequence[Layer],
                normalize: bool | None = None) -> EncodedBatch:
        """waveforms [batch, samples] padded (any values past each length), lengths [batch].

        `normalize=False` skips the checkpoint's waveform normalisation: for windows of a
        long recording, normalised as a whole beforehand (`decoding.recording_statistics`)."""
        with _ieee_float32() if self.dtype == torch.float32 else nullcontext():
            return self._forward(waveforms, lengths, layers, normalize)

    def _forward(self, waveforms, lengths, layers, normalize) -> EncodedBatch:
        layers = self.check_layers(layers)
        # Sizes are worked out on the host: reading one back from a GPU would stall the
        # host until the GPU caught up, and it could not queue the next kernels meanwhile.
        host_lengths = torch.as_tensor(lengths, dtype=torch.long).cpu()
        if int(host_lengths.min()) < self.min_samples:
            raise InputError(f"an utterance has {int(host_lengths.min())} samples; the model needs at least {self.min_samples}")
        if int(host_lengths.max()) > waveforms.shape[1]:
            raise InputError("a length exceeds the padded batch")
        host_frames = self.frames_for(host_lengths)
        waveforms = waveforms.to(self.device, dtype=torch.float32, non_blocking=True)
        lengths = host_lengths.to(self.device, non_blocking=True)
        sample_mask = torch.arange(waveforms.shape[1], device=self.device)[None, :] < lengths[:, None]
        waveforms = torch.where(sample_mask, waveforms, 0.0)
        if self.normalize if normalize is None else normalize:
            waveforms = _normalize_valid(waveforms, sample_mask, lengths)
        if self._time_major is not None:
            features = self._time_major(waveforms.to(self.dtype), host_lengths)[:, : int(host_frames.max())]
        else:
            features = self._conv_features(waveforms.to(self.dtype), host_lengths)
            features = features[:, :, : int(host_frames.max())].transpose(1, 2)
        features = self.model.layer_norm(features)
        states = {}
        if CNN in layers:
            states[CNN] = features
        numbered = [layer for layer in layers if layer != CNN]
        if numbered:
            states.update(self._transformer_states(features, host_frames, numbered))
        return EncodedBatch({layer: states[layer] for layer in layers}, host_frames, conv_features=features)

    def encode(self, waveforms: Sequence, layers: Sequence[Layer], sample_rate: float = SAMPLE_RATE) -> list[dict]:
        """Mono float waveforms (1-D arrays or tensors, samples in [-1, 1]) at `sample_rate`
        -> one {layer: float32 numpy [frames, width]} each.

        Other rates are resampled to 16 kHz as `lebench extract` resamples files; a waveform
        shorter than the receptive field (400 samples at 16 kHz) is zero-padded to one frame,
        as extract pads short files. Raises InputError on what the model cannot take:
        2-D (multichannel) arrays, integer samples, NaN or infinite samples, no samples."""
        if isinstance(waveforms, (np.ndarray, torch.Tensor)) and waveforms.ndim == 1:
            raise InputError("encode takes a list of waveforms: pass [x] for one waveform x")
        if not len(waveforms):
            return []
        if not sample_rate > 0:
            raise InputError(f"sample_rate must be a positive number of samples per second, not {sample_rate!r}")
        prepared = []
        for index, waveform in enumerate(waveforms):
            waveform = resample(_checked_waveform(index, waveform), sample_rate)
            prepared.append(pad_to_one_frame(waveform, self.min_samples)[0])
        tensors = [torch.from_numpy(np.ascontiguousarray(w, dtype=np.float32)) for w in prepared]
        lengths = torch.tensor([len(t) for t in tensors])
        batch = torch.nn.utils.rnn.pad_sequence(tensors, batch_first=True)
        return self.forward(batch, lengths, layers).unbatch()

    def normalize_waveform(self, waveform: np.ndarray) -> np.ndarray:
        """One whole utterance normalised as the checkpoint asks (unchanged if it does not)."""
        if not self.normalize:
            return waveform
        tensor = torch.as_tensor(waveform, dtype=torch.float32)[None]
        mask = torch.ones_like(tensor, dtype=torch.bool)
        return _normalize_valid(tensor, mask, torch.tensor([tensor.shape[1]]))[0].numpy()

    def _conv_features(self, x: torch.Tensor, host_lengths: torch.Tensor) -> torch.Tensor:
        x = x.unsqueeze(1)
        blocks = self.model.feature_extractor.conv_layers
        for index, block in enumerate(blocks):
            if index == 0 and self.group_norm:
                conv, _, group_norm, activation = block
                x = conv(x)
                valid = frames_for_samples(host_lengths, self.conv_layers[:1])
                x = activation(_group_norm_per_utterance(x, valid, group_norm))
            else:
                x = block(x)
        return x

    def _transformer_states(self, features, host_frames, layers) -> dict:
        encoder = self.model.encoder
        x = features
        if self.model.post_extract_proj is not None:
            x = self.model.post_extract_proj(x)
        frames = host_frames.to(x.device, non_blocking=True)
        padding_mask = torch.arange(x.shape[1], device=x.device)[None, :] >= frames[:, None]
        # One utterance alone is zero-padded by the positional conv itself: zeros here too.
        x = x.masked_fill(padding_mask[:, :, None], 0.0)
        with self._positional_context():
            x = x + encoder.pos_conv(x.transpose(1, 2)).transpose(1, 2)
        if not self.layer_norm_first:
            x = encoder.layer_norm(x)
        states = {0: x} if 0 in layers else {}
        attention_mask = padding_mask if bool((host_frames < x.shape[1]).any()) else None
        x = x.transpose(0, 1)
        for index in range(max(layers)):
            x, _ = encoder.layers[index](x, self_attn_padding_mask=attention_mask, need_weights=False)
            number = index + 1
            if number in layers:
                state = x.transpose(0, 1)
                if number == self.num_layers and self.layer_norm_first:
                    state = encoder.layer_norm(state)
                states[number] = state
        return states


def _checked_waveform(index: int, waveform) -> np.ndarray:
    """One waveform given to `encode` as a float32 numpy array, or an InputError that says
    how to make it one."""
    if isinstance(waveform, torch.Tensor):
        waveform = waveform.detach()
        kind, shape = waveform.dtype, tuple(waveform.shape)
        floating = waveform.is_floating_point()
    else:
        waveform = np.asarray(waveform)
        kind, shape = waveform.dtype, waveform.shape
        floating = np.issubdtype(kind, np.floating)
    dtype_name = str(kind).replace("torch.", "")
    if len(shape) == 2:
        # [channels, samples] (torchaudio.load) or [samples, channels] (soundfile.read)
        axis, layout = (0, "channels, samples") if shape[0] < shape[1] else (1, "samples, channels")
        raise InputError(f"waveform {index} has shape {shape}: encode takes 1-D mono waveforms; "
                         f"down-mix first, e.g. x.mean(axis={axis}) for [{layout}]")
    if len(shape) != 1:
        raise InputError(f"waveform {index} has shape {shape}: encode takes 1-D mono waveforms")
    if not floating:
        raise InputError(f"waveform {index} has dtype {dtype_name}: encode takes float samples in [-1, 1]; "
                         f"convert first{_integer_scaling(dtype_name)}")
    if isinstance(waveform, torch.Tensor):
        waveform = waveform.to("cpu", torch.float32).numpy()
    waveform = waveform.astype(np.float32, copy=False)
    if not len(waveform):
        raise InputError(f"waveform {index} has no samples")
    # NaN or inf would spread through every frame of the batch's attention.
    if not np.isfinite(waveform).all():
        raise InputError(f"waveform {index} contains NaN or infinite samples")
    return waveform


def _integer_scaling(dtype_name: str) -> str:
    """', e.g. x / 32768' for int16: the usual full-scale mapping of PCM integers."""
    for signed, prefix in ((True, "int"), (False, "uint")):
        bits = dtype_name[len(prefix):]
        if dtype_name.startswith(prefix) and bits.isdigit():
            half = 2 ** (int(bits) - 1)
            return f", e.g. x / {half}" if signed else f", e.g. (x - {half}) / {half}"
    return ""


def check_device(device) -> torch.device:
    """The torch device for a --device value; InputError when it does not exist here."""
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError):
        raise InputError(f"unknown device '{device}' (use cpu, cuda or cuda:N)") from None
    if device.type == "cuda":
        from .compute_device import cpu_fallback_reason

        reason = cpu_fallback_reason()
        if reason is not None:
            raise InputError(f"device '{device}' requested but CUDA is not available: {reason} (use --device cpu)")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise InputError(f"device '{device}' does not exist ({torch.cuda.device_count()} CUDA devices)")
    return device


@contextmanager
def _ieee_float32():
    """float32 arithmetic for a float32 model. On NVIDIA GPUs PyTorch runs float32
    convolutions in TensorFloat-32 by default (10 bits of mantissa, ~1e-3 relative error),
    and a user may have allowed it for matrix products too: either would break the float32
    exactness promise. The flags are process-wide, so they are restored afterwards."""
    cudnn = torch.backends.cudnn
    saved_convolutions, saved_products = cudnn.allow_tf32, torch.get_float32_matmul_precision()
    cudnn.allow_tf32 = False
    torch.set_float32_matmul_precision("highest")
    try:
        yield
    finally:
        cudnn.allow_tf32 = saved_convolutions
        torch.set_float32_matmul_precision(saved_products)


def _normalize_valid(waveforms, sample_mask, lengths):
    """Zero mean, unit variance over each utterance's own samples, as fairseq's loader does.

    In float64: the squares of float32 samples louder than ~1.8e19 overflow float32, which
    would make the variance infinite and a loud but finite utterance all zeros."""
    wide = waveforms.to(torch.float64)
    count = lengths[:, None].to(torch.float64)
    mean = wide.sum(dim=1, keepdim=True) / count
    centred = torch.where(sample_mask, wide - mean, 0.0)
    variance = (centred * centred).sum(dim=1, keepdim=True) / count
    return (centred / torch.sqrt(variance + NORMALIZE_EPS)).to(torch.float32)


def _group_norm_per_utterance(x, valid_frames, group_norm):
    """fairseq's first-conv GroupNorm, applied to each utterance's valid frames alone.

    A GroupNorm over the padded batch would take its statistics over the whole time axis:
    the padding would change every frame of a shorter utterance (the base models' batching
    pitfall). Running the fused kernel on each valid slice gives exactly the one-at-a-time
    values, without the batch-sized temporaries of a masked formula. No valid output frame
    of the next convolutions reaches the padding: it is zeroed only to keep it finite."""
    for index, count in enumerate(valid_frames.tolist()):
        x[index : index + 1, :, :count] = group_norm(x[index : index + 1, :, :count])
        x[index, :, count:] = 0
    return x
