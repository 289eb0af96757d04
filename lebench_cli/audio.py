"""Decoding and resampling: one audio file -> a float32 16 kHz mono waveform."""

from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import soundfile
import soxr

from .errors import AudioError

SAMPLE_RATE = 16000
MIN_SAMPLES = 400  # wav2vec2's receptive field: fewer samples give no frame
NORMALIZE_EPS = 1e-5  # fairseq: F.layer_norm(wav, wav.shape) with its default eps

_OS_REASONS = {
    errno.ENOENT: "no such file",
    errno.EISDIR: "is a directory",
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
    errno.ELOOP: "symlink loop",
}


@dataclass(frozen=True)
class AudioInfo:
    """A file's header: its own rate and channels, and its length in frames at that rate."""

    sample_rate: int
    channels: int
    frames: int
    duration_seconds: float


def probe(path) -> AudioInfo:
    """Read the header of `path` without decoding it. Raises AudioError."""
    with _open(path) as file:
        return AudioInfo(file.samplerate, file.channels, file.frames, file.frames / file.samplerate)


def load_audio(path, channel: int | None = None) -> np.ndarray:
    """Decode `path` to a contiguous float32 1-D waveform at 16 kHz.

    Channels are averaged, or channel `channel` (0-based) is taken alone. Other rates
    are resampled with soxr (HQ). A file shorter than MIN_SAMPLES is returned as it is:
    the caller pads it to one frame and flags it. A truncated file gives what libsndfile
    decodes: the samples present for uncompressed formats (libsndfile trims the header's
    length to the data), an AudioError when the decoder stops on an error (FLAC).
    Raises AudioError with a one-line reason.
    """
    with _open(path) as file:
        _check_channel(path, file.channels, channel)
        try:
            samples = file.read(dtype="float32", always_2d=True)
        except RuntimeError as error:
            raise AudioError(path, f"decoding failed ({_libsndfile_message(error)})") from None
        rate = file.samplerate
    waveform = samples[:, channel] if channel is not None else _mono(samples)
    # NaN or inf would spread through resampling and every attention layer.
    if not np.isfinite(waveform).all():
        raise AudioError(path, "contains NaN or infinite samples")
    waveform = resample(waveform, rate)
    if not len(waveform):
        raise AudioError(path, "no samples")
    return np.ascontiguousarray(waveform, dtype=np.float32)


def resample(waveform: np.ndarray, rate: int) -> np.ndarray:
    """A 1-D waveform at `rate` Hz, at 16 kHz: soxr HQ, the one resampler of the whole
    pipeline (files and in-memory arrays alike). Unchanged at 16 kHz or when empty."""
    if rate == SAMPLE_RATE or not len(waveform):
        return waveform
    return soxr.resample(waveform, rate, SAMPLE_RATE, quality="HQ")


def stream_audio(path, channel: int | None = None, block_seconds: float = 20.0) -> Iterator[np.ndarray]:
    """The 16 kHz float32 mono waveform of `path` as consecutive blocks, decoded and
    resampled (soxr HQ, streaming) a block at a time: memory does not grow with the
    recording's length. Same checks and reasons as load_audio."""
    with _open(path) as file:
        _check_channel(path, file.channels, channel)
        rate = file.samplerate
        resampler = None
        if rate != SAMPLE_RATE:
            resampler = soxr.ResampleStream(rate, SAMPLE_RATE, 1, dtype="float32", quality="HQ")
        block_frames = max(1, int(block_seconds * rate))
        produced = 0
        while True:
            try:
                samples = file.read(block_frames, dtype="float32", always_2d=True)
            except RuntimeError as error:
                raise AudioError(path, f"decoding failed ({_libsndfile_message(error)})") from None
            last = len(samples) < block_frames
            waveform = samples[:, channel] if channel is not None else _mono(samples)
            if not np.isfinite(waveform).all():
                raise AudioError(path, "contains NaN or infinite samples")
            if resampler is not None:
                waveform = resampler.resample_chunk(waveform, last=last)
            if len(waveform):
                produced += len(waveform)
                yield np.ascontiguousarray(waveform, dtype=np.float32)
            if last:
                break
    if not produced:
        raise AudioError(path, "no samples")


def _open(path) -> soundfile.SoundFile:
    _check_file(path)
    try:
        return soundfile.SoundFile(os.fsencode(path))  # as bytes: a name that is not UTF-8 opens too
    except RuntimeError as error:
        message = _libsndfile_message(error)
        if message.startswith("file does not exist or is not a regular file"):
            # _check_file has just opened it as a regular file: this is what libsndfile's
            # MPEG decoder says of data it cannot parse.
            message = "corrupt or unsupported data"
        raise AudioError(path, f"not a readable audio file ({message})") from None


_NOT_REGULAR = {stat.S_IFIFO: "a FIFO", stat.S_IFSOCK: "a socket", stat.S_IFCHR: "a character device",
                stat.S_IFBLK: "a block device"}


def _check_file(path):
    # libsndfile reports every OS failure as "System error."; ask the OS for the reason.
    # O_NONBLOCK: opening a FIFO without a writer would otherwise wait forever.
    try:
        with open(path, "rb", opener=_open_nonblocking) as file:
            status = os.fstat(file.fileno())
    except OSError as error:
        raise AudioError(path, _OS_REASONS.get(error.errno) or _lower(error.strerror or str(error))) from None
    if stat.S_ISDIR(status.st_mode):
        raise AudioError(path, "is a directory")
    if not stat.S_ISREG(status.st_mode):
        kind = _NOT_REGULAR.get(stat.S_IFMT(status.st_mode), "not a regular file")
        raise AudioError(path, f"not a regular file ({kind})")
    if status.st_size == 0:
        raise AudioError(path, "empty file (0 bytes)")


def _open_nonblocking(path, flags: int) -> int:
    return os.open(path, flags | os.O_NONBLOCK)


def _check_channel(path, channels: int, channel: int | None):
    if channel is not None and not 0 <= channel < channels:
        plural = "channel" if channels == 1 else "channels"
        raise AudioError(path, f"has {channels} {plural}, --channel {channel} does not exist")


def _mono(samples: np.ndarray) -> np.ndarray:
    return samples[:, 0] if samples.shape[1] == 1 else samples.mean(axis=1, dtype=np.float32)


def _libsndfile_message(error: RuntimeError) -> str:
    """libsndfile's own words on one line: 'Error : flac decoder lost sync.' -> 'flac decoder lost sync'."""
    message = " ".join(str(getattr(error, "error_string", error)).split())
    if message.lower().startswith("error :"):
        message = message[len("error :"):].strip()
    return _lower(message.rstrip(".")) or "unknown libsndfile error"


def _lower(message: str) -> str:
    # Lowercase the first word only when it is not an acronym ("MPEG", "FLAC").
    return message[:1].lower() + message[1:] if message[1:2].islower() else message
