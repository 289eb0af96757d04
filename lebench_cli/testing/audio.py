"""Speech-like audio for tests and benchmarks: a seeded tone plus noise (small files), or
harmonics of a wandering f0 in syllable bursts (long benchmark corpora)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

RATE = 16_000


def tone(seconds: float, rate: int = RATE, channels: int = 1, seed: int = 0) -> np.ndarray:
    """float64 samples, (samples,) for mono or (samples, channels): a 150 + 40 * seed Hz
    sine (each seed its own pitch) under seeded noise."""
    generator = np.random.default_rng(seed)
    t = np.arange(int(round(seconds * rate))) / rate
    data = 0.3 * np.sin(2 * np.pi * (150 + 40 * seed) * t)[:, None] + 0.05 * generator.standard_normal((len(t), channels))
    return data[:, 0] if channels == 1 else data


def write_audio(path: Path, seconds: float, rate: int = RATE, channels: int = 1, seed: int = 0, subtype=None,
                offset: float = 0.0) -> Path:
    """`tone` (plus a DC `offset`) written to `path` in the format its extension names."""
    import soundfile

    path.parent.mkdir(parents=True, exist_ok=True)
    soundfile.write(path, (tone(seconds, rate, channels, seed) + offset).astype(np.float32), rate, subtype=subtype)
    return path


def write_speechlike(path: Path, seconds: float, rng, block_seconds: float = 10.0) -> Path:
    """Seeded speech-like audio: harmonics of a wandering f0 (90-250 Hz), syllable-rate
    amplitude bursts with pauses, formant-ish spectral tilt, background noise; 16 kHz PCM16
    WAV, written a block at a time (an hour-long file never sits in memory)."""
    import soundfile

    total = int(round(seconds * RATE))
    path.parent.mkdir(parents=True, exist_ok=True)
    harmonics = np.arange(1, 16)
    gains = 1.0 / harmonics * (1 + 0.8 * np.exp(-((harmonics * 150 - 700) / 300.0) ** 2))
    phase = np.zeros(len(harmonics))
    f0 = rng.uniform(100, 200)
    with soundfile.SoundFile(path, "w", RATE, 1, "PCM_16") as out:
        done = 0
        while done < total:
            n = min(int(block_seconds * RATE), total - done)
            # f0 track: a random walk every 10 ms, interpolated to samples.
            steps = n // 160 + 2
            track = np.clip(f0 + np.cumsum(rng.normal(0, 2.0, steps)), 90, 250)
            f0 = float(track[-1])
            f0_samples = np.interp(np.arange(n), np.arange(steps) * 160, track)
            increments = 2 * np.pi * f0_samples / RATE
            base_phase = np.cumsum(increments)
            wave = np.zeros(n)
            for index, k in enumerate(harmonics):
                wave += gains[index] * np.sin(phase[index] + k * base_phase)
            phase = (phase + harmonics * base_phase[-1]) % (2 * np.pi)
            # Syllables of 80-300 ms, ~25% of them silent.
            envelope = np.zeros(n)
            position = 0
            while position < n:
                length = int(rng.uniform(0.08, 0.3) * RATE)
                if rng.random() > 0.25:
                    envelope[position: position + length] = np.hanning(length)[: n - position] * rng.uniform(0.3, 1.0)
                position += length
            signal = 0.1 * wave * envelope + rng.normal(0, 0.003, n)
            out.write(signal.astype(np.float32))
            done += n
    return path
