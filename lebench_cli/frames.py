"""The grid every LeBenchmark wav2vec2 model computes on, imported by every stage: 16 kHz
audio, one frame every 320 samples (20 ms), each seeing 400 samples (25 ms), and "cnn", the
name of the feature encoder's output (before layer 0)."""

from __future__ import annotations

SAMPLE_RATE = 16000
SAMPLES_PER_FRAME = 320
FRAME_SECONDS = SAMPLES_PER_FRAME / SAMPLE_RATE  # 0.02
RECEPTIVE_FIELD = 400  # fewer samples give no frame
CNN = "cnn"


def frame_count(samples: int) -> int:
    """Frames of `samples` 16 kHz samples (0 when shorter than the receptive field)."""
    return 0 if samples < RECEPTIVE_FIELD else (samples - RECEPTIVE_FIELD) // SAMPLES_PER_FRAME + 1
