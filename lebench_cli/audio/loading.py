"""Decoding and resampling: one audio file -> a float32 16 kHz mono waveform; one shorter than
the receptive field is padded to one frame by the caller (`pad_to_one_frame`).

Every function here takes a path or an AudioSource: a source's bytes come from its origin
(audio/origins.py: tar member, table cell, pipe), only its `segment` is decoded (at the
recording's own rate, then resampled alone, as if it were a file of its own), and its
`channel`, when it names one, wins over the `channel` argument (--channel)."""

from __future__ import annotations

import math
import os
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import soundfile
import soxr

from ..errors import AudioError, one_line
from ..frames import RECEPTIVE_FIELD, SAMPLE_RATE
from .headers import declared_data_bytes, mp3_declares_its_length, ogg_stream_ends
from .origins import byte_size, check_regular_file, lower_first, name_of, open_bytes, origin_of
from .segments import segment_frames

MIN_SAMPLES = RECEPTIVE_FIELD  # fewer samples give no frame
PADDED_FLAG = "padded"
NORMALIZE_EPS = 1e-5  # fairseq: F.layer_norm(wav, wav.shape) with its default eps
RATE_RANGE = (1_000, 768_000)  # Hz: what a header outside says is damage, not a recording
MAX_CHANNELS = 256

_BLOCK_VALUES = 1 << 22  # samples of all channels read at a time (16 MB), whatever the header says
_SALVAGE_FRAMES = 1024  # read steps up to a decoder error, when what precedes it is kept
# Bytes per sample of the uncompressed encodings: such a file holds at most size / (this x channels) frames.
_PCM_BYTES = {"PCM_S8": 1, "PCM_U8": 1, "PCM_16": 2, "PCM_24": 3, "PCM_32": 4, "FLOAT": 4, "DOUBLE": 8,
              "ULAW": 1, "ALAW": 1}
# The most frames a byte of each codec can hold (docs/extract.md): MPEG, >= 8 kbit/s at <= 48 kHz;
# Vorbis and Opus, one packet of >= 1 byte (and its lacing byte) per 4096 or 5760 frames.
_FRAMES_PER_BYTE = {"MPEG_LAYER_I": 64, "MPEG_LAYER_II": 64, "MPEG_LAYER_III": 64, "VORBIS": 4096, "OPUS": 4096}
_MOST_FRAMES_PER_BYTE = 8192  # any other codec: FLAC's densest frame, 65535 constant samples in 8 bytes
_COMPRESSED_CONTAINERS = ("FLAC", "OGG", "MP3")


@dataclass(frozen=True)
class AudioInfo:
    """A file's header: its own rate and channels, and its length in frames at that rate:
    the header's, or what the file's size could hold when the header claims more."""

    sample_rate: int
    channels: int
    frames: int
    duration_seconds: float


def probe(path) -> AudioInfo:
    """Read the header of `path` (the whole recording of a source) without decoding it.
    Raises AudioError, whatever goes wrong."""
    with _open(path) as (file, header):
        frames = _recording_frames(path, file, header)
        return AudioInfo(file.samplerate, file.channels, frames, frames / file.samplerate)


def declared_seconds(path) -> float | None:
    """The length the header of a plain recording file declares, in seconds, nothing decoded:
    the longer of libsndfile's and the data chunk's (libsndfile trims a truncated WAV to its
    bytes; its header still says how long it was). None when the header cannot be read."""
    try:
        with _open(path) as (file, header):
            return max(file.frames, _declared_frames(header, file) or 0) / file.samplerate
    except Exception:  # noqa: BLE001 - a header that surprises us is for the decoder to name
        return None


def _recording_frames(path, file, header) -> int:
    """The header's length, or what the bytes could hold when it claims more."""
    try:
        return min(file.frames, backed_frames(_size(header), file.format, file.subtype, file.channels))
    except Exception as error:  # noqa: BLE001 - a header that surprises us fails its file only
        raise AudioError(name_of(path), f"not a readable audio file ({one_line(error)})") from None


def _size(header) -> int:
    return byte_size(header) if hasattr(header, "read") else os.path.getsize(header)


def backed_frames(size: int, container: str, subtype: str, channels: int) -> int:
    """The most frames `size` bytes of `subtype` in `container` (libsndfile's names) can
    hold: a header that declares more lies."""
    if _uncompressed(container, subtype):
        return size // (_PCM_BYTES[subtype] * channels)
    return size * _FRAMES_PER_BYTE.get(subtype, _MOST_FRAMES_PER_BYTE)


def load_audio(path, channel: int | None = None) -> np.ndarray:
    """Decode `path` to a contiguous float32 1-D waveform at 16 kHz (read_audio); a
    truncated file is an AudioError."""
    return read_audio(path, channel)[0]


def read_audio(path, channel: int | None = None, keep_truncated: bool = False) -> tuple[np.ndarray, bool]:
    """(the contiguous float32 1-D waveform of `path` at 16 kHz, whether it is truncated).

    Channels are averaged, or channel `channel` (0-based) is taken alone. Other rates
    are resampled with soxr (HQ). A file shorter than MIN_SAMPLES is returned as it is:
    the caller pads it to one frame and flags it. The file is read a block at a time, so
    memory follows its content, never its header's length. A file that ends before its
    header's length is an AudioError naming both, or with `keep_truncated` what is present.
    Raises AudioError with a one-line reason.
    """
    report = DecodeReport()
    return _finished(path, list(_decoded_blocks(path, channel, math.inf, keep_truncated, report)), report)


def read_segments(sources: list, channel: int | None = None, keep_truncated: bool = False) -> list:
    """read_audio of each source, all segments of one recording (the first source's: same
    origin), which is opened once: [(waveform, truncated) or an AudioError] in the order of
    `sources`. Each segment is read alone, by a seek where libsndfile seeks exactly (PCM,
    FLAC), else by decoding forward from the previous one (sources sorted by start first)."""
    results: list = [None] * len(sources)
    order = sorted(range(len(sources)), key=lambda index: _start_of(sources[index]))
    try:
        with _open(sources[0]) as opened:
            for index in order:
                report = DecodeReport()
                try:
                    blocks = list(_span_blocks(opened, sources[index], channel, math.inf, keep_truncated, report))
                    results[index] = _finished(sources[index], blocks, report)
                except AudioError as error:
                    results[index] = error
    except AudioError as error:  # the recording itself cannot be opened: every segment fails with it
        return [result if result is not None else error for result in results]
    return results


def _start_of(source) -> float:
    segment = getattr(source, "segment", None)
    return segment.start if segment is not None else 0.0


def _finished(path, blocks: list, report: "DecodeReport") -> tuple[np.ndarray, bool]:
    waveform = blocks[0] if len(blocks) == 1 else np.concatenate(blocks) if blocks else np.zeros(0, np.float32)
    del blocks
    waveform = resample(waveform, report.sample_rate)
    if not len(waveform):
        raise AudioError(name_of(path), "no samples")
    if not np.isfinite(waveform).all():
        raise AudioError(name_of(path), _OVERFLOW)
    return np.ascontiguousarray(waveform, dtype=np.float32), report.truncated


def resample(waveform: np.ndarray, rate: int) -> np.ndarray:
    """A 1-D waveform at `rate` Hz, at 16 kHz: soxr HQ, the one resampler of the whole
    pipeline (files and in-memory arrays alike). Unchanged at 16 kHz or when empty."""
    if rate == SAMPLE_RATE or not len(waveform):
        return waveform
    return soxr.resample(waveform, rate, SAMPLE_RATE, quality="HQ")


def pad_to_one_frame(waveform: np.ndarray, min_samples: int = MIN_SAMPLES) -> tuple[np.ndarray, str]:
    """(waveform, "") or, shorter than the receptive field, (zero-padded at the end to
    exactly `min_samples`, PADDED_FLAG): such a waveform gives one frame instead of none."""
    if len(waveform) >= min_samples:
        return waveform, ""
    return np.pad(waveform, (0, min_samples - len(waveform))), PADDED_FLAG


@dataclass
class DecodeReport:
    """What a pass over a file found besides its samples: its rate, and whether it ended
    before its header's length (and was kept)."""

    sample_rate: int = 0
    truncated: bool = False


def stream_audio(path, channel: int | None = None, block_seconds: float = 20.0, keep_truncated: bool = False,
                 report: DecodeReport | None = None) -> Iterator[np.ndarray]:
    """The 16 kHz float32 mono waveform of `path` as consecutive blocks, decoded and
    resampled (soxr HQ, streaming) a block at a time: memory does not grow with the
    recording's length. Same checks and reasons as read_audio; `report`, when given, says
    at the end whether the file was truncated (and kept)."""
    report = report if report is not None else DecodeReport()
    resampler = None
    produced = 0
    blocks = _decoded_blocks(path, channel, block_seconds, keep_truncated, report)
    for waveform, last in _last_marked(blocks):
        if resampler is None and report.sample_rate != SAMPLE_RATE:
            resampler = soxr.ResampleStream(report.sample_rate, SAMPLE_RATE, 1, dtype="float32", quality="HQ")
        if resampler is not None:
            waveform = resampler.resample_chunk(waveform, last=last)
        if not np.isfinite(waveform).all():
            raise AudioError(name_of(path), _OVERFLOW)
        if len(waveform):
            produced += len(waveform)
            yield np.ascontiguousarray(waveform, dtype=np.float32)
    if not produced:
        raise AudioError(name_of(path), "no samples")


_OVERFLOW = "samples too large to resample (beyond float32's range)"


def _last_marked(blocks: Iterator[np.ndarray]) -> Iterator[tuple]:
    """(block, whether it is the last one); an empty last block when there are none."""
    previous = None
    for block in blocks:
        if previous is not None:
            yield previous, False
        previous = block
    yield (previous if previous is not None else np.zeros(0, np.float32)), True


def _decoded_blocks(path, channel, block_seconds: float, keep_truncated: bool,
                    report: DecodeReport) -> Iterator[np.ndarray]:
    """The mono float32 waveform of `path` (its segment) at its own rate, a block of at most
    `block_seconds` at a time, then the truncation check."""
    with _open(path) as opened:
        yield from _span_blocks(opened, path, channel, block_seconds, keep_truncated, report)


def _span_blocks(opened, source, channel, block_seconds: float, keep_truncated: bool,
                 report: DecodeReport) -> Iterator[np.ndarray]:
    """_decoded_blocks of `source` in the recording already open (`opened`, from _open)."""
    file, header = opened
    name = name_of(source)
    channel = _channel_of(source, channel)
    _check_channel(source, file.channels, channel)
    rate, channels = file.samplerate, file.channels
    report.sample_rate = rate
    block_frames = max(1, int(min(block_seconds * rate * channels, _BLOCK_VALUES)) // channels)
    declared = _declared_frames(header, file)
    cut_ogg = file.format == "OGG" and not ogg_stream_ends(header)
    segment = getattr(source, "segment", None)
    first, last = 0, math.inf
    if segment is not None:
        first, last = segment_frames(name, segment, rate, _recording_frames(source, file, header))
        _seek(file, first, header)
    decoded = 0
    while True:
        wanted = int(min(block_frames, last - first - decoded))
        if wanted <= 0:
            break
        try:
            samples = file.read(wanted, dtype="float32", always_2d=True)
        except RuntimeError as error:
            reason = f"decoding failed ({_libsndfile_message(error)})"
            if not keep_truncated:
                raise AudioError(name, reason) from None
            salvaged = list(_frames_before_the_error(source, channel, first + decoded, last))
            if not decoded and not sum(map(len, salvaged)):
                raise AudioError(name, reason) from None
            report.truncated = True
            yield from salvaged
            return
        except MemoryError:
            raise AudioError(name, "decoding failed (out of memory)") from None
        waveform = _mono(samples) if channel is None else np.ascontiguousarray(samples[:, channel])
        del samples
        if not np.isfinite(waveform).all():
            raise AudioError(name, "contains NaN or infinite samples")
        decoded += len(waveform)
        if len(waveform):
            yield waveform
        if len(waveform) < wanted:
            break
    reason = None
    end = first + decoded
    if last != math.inf and end < last:
        reason = f"truncated: ends at {end / rate:.3f} s, before the segment's end at {last / rate:.3f} s"
    elif last != math.inf:
        pass  # the whole segment is there: what lies after it does not matter
    elif declared is not None and end < declared:
        reason = f"truncated: ends at {end / rate:.3f} s of the {declared / rate:.3f} s its header declares"
    elif cut_ogg:
        reason = f"truncated: ends at {end / rate:.3f} s, without the last page of its Ogg stream"
    if reason is not None and not keep_truncated:
        raise AudioError(name, reason)
    report.truncated = reason is not None


def _seek(file: soundfile.SoundFile, frame: int, header) -> None:
    """Puts the decoder at `frame`: a seek where libsndfile's is exact (uncompressed PCM,
    FLAC), else decoding forward (from the start when `frame` lies behind), so that a
    segment's samples are those a decode of the whole recording gives there."""
    if _uncompressed(file.format, file.subtype) or file.format == "FLAC":
        file.seek(frame)
        return
    if file.tell() > frame:
        file.seek(0)
    while file.tell() < frame:
        skipped = file.read(min(_SALVAGE_FRAMES * 64, frame - file.tell()), dtype="float32", always_2d=True)
        if not len(skipped):
            return  # ends before it: the segment then reads as truncated


def _channel_of(source, channel):
    own = getattr(source, "channel", None)
    return own if own is not None else channel


def _declared_frames(path, file) -> int | None:
    """The length in frames the header declares, or None when it declares none we can
    check. Compressed lengths come from a header too (FLAC's STREAMINFO, an MP3's Xing
    tag, Ogg's last granule position), and a whole file decodes to exactly that."""
    if _uncompressed(file.format, file.subtype):
        data_bytes = declared_data_bytes(path, file.format)
        return None if data_bytes is None else data_bytes // (_PCM_BYTES[file.subtype] * file.channels)
    if file.format in ("FLAC", "OGG") or (file.format == "MP3" and mp3_declares_its_length(path)):
        return file.frames
    return None


def _uncompressed(container: str, subtype: str) -> bool:
    # FLAC names its sample width as a PCM subtype too.
    return subtype in _PCM_BYTES and container not in _COMPRESSED_CONTAINERS


def _frames_before_the_error(path, channel, skip: int, stop: float = math.inf) -> Iterator[np.ndarray]:
    """What a second pass decodes after frame `skip` (and before `stop`) and before the
    decoder error, in small steps."""
    position = 0
    with _open(path) as (file, _):
        while position < stop:
            try:
                samples = file.read(_SALVAGE_FRAMES, dtype="float32", always_2d=True)
            except (RuntimeError, MemoryError):
                return
            waveform = samples[:, channel] if channel is not None else _mono(samples)
            if not np.isfinite(waveform).all():
                return
            if position + len(waveform) > skip:
                yield waveform[max(0, skip - position): max(0, int(min(len(waveform), stop - position)))]
            position += len(waveform)
            if len(waveform) < _SALVAGE_FRAMES:
                return


@contextmanager
def _open(audio) -> Iterator[tuple]:
    """(the SoundFile, what headers.py reads: the path, or the origin's file object)."""
    if origin_of(audio) is None:
        path = name_of(audio)
        with _sound_file(path, os.fsencode(path)) as file:  # as bytes: a name that is not UTF-8 opens too
            yield file, path
        return
    with open_bytes(audio) as raw:
        if not byte_size(raw):
            raise AudioError(name_of(audio), "empty file (0 bytes)")
        with _sound_file(name_of(audio), raw) as file:
            yield file, raw


@contextmanager
def _sound_file(path, what) -> Iterator[soundfile.SoundFile]:
    if not hasattr(what, "read"):
        check_regular_file(path)
    try:
        file = soundfile.SoundFile(what)
    except RuntimeError as error:
        message = _libsndfile_message(error)
        if message.startswith("file does not exist or is not a regular file"):
            # check_regular_file has just opened it as a regular file: this is what libsndfile's
            # MPEG decoder says of data it cannot parse.
            message = "corrupt or unsupported data"
        raise AudioError(path, f"not a readable audio file ({message})") from None
    except Exception as error:  # libsndfile's wrapper on a header it did not expect
        raise AudioError(path, f"not a readable audio file ({one_line(error)})") from None
    low, high = RATE_RANGE
    if not low <= file.samplerate <= high:
        file.close()
        raise AudioError(path, f"sample rate {file.samplerate} Hz is outside {low}-{high} Hz")
    if not 1 <= file.channels <= MAX_CHANNELS:
        file.close()
        raise AudioError(path, f"{file.channels} channels: more than {MAX_CHANNELS}")
    with file:
        yield file


def _check_channel(source, channels: int, channel: int | None):
    if channel is not None and not 0 <= channel < channels:
        plural = "channel" if channels == 1 else "channels"
        named = "--channel" if getattr(source, "channel", None) is None else "its channel"
        raise AudioError(name_of(source), f"has {channels} {plural}, {named} {channel} does not exist")


def _mono(samples: np.ndarray) -> np.ndarray:
    if samples.shape[1] == 1:
        return samples[:, 0]
    mono = samples.mean(axis=1, dtype=np.float32)
    if not np.isfinite(mono).all() and np.isfinite(samples).all():
        # The float32 sum of samples near float32's limit overflows; their mean does not.
        mono = samples.mean(axis=1, dtype=np.float64).astype(np.float32)
    return mono


def _libsndfile_message(error: RuntimeError) -> str:
    """libsndfile's own words on one line: 'Error : flac decoder lost sync.' -> 'flac decoder lost sync'."""
    message = " ".join(str(getattr(error, "error_string", error)).split())
    if message.lower().startswith("error :"):
        message = message[len("error :"):].strip()
    return lower_first(message.rstrip(".")) or "unknown libsndfile error"
