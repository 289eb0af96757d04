"""Damaged and lying audio files, made in a test's folder from the real formats.

A shared helper, not a test module: `make_corpus(folder)` writes clean files of every format
libsndfile writes, then mutated copies of them (truncations, header and data byte flips,
zeroed and swapped headers, huge declared lengths, absurd rates, channel counts and sample
formats, extreme finite samples, empty files) and returns one Case per file. The lying
headers are patched byte by byte: an MP3's Xing frame count, an Ogg page's granule position
with its CRC recomputed, a WAV's data size or an RF64's ds64 sizes, FLAC's STREAMINFO.

`expect` of a Case says what a run must do with it: "stored" (a clean file), "failed" (with
`reason` when the exact words are fixed), or None (either, as long as it is accounted for:
a byte flip in the samples of a PCM file is a different recording, not a damaged one).
`CASE_MAKERS` is the list `make_corpus` calls: append a maker (folder, rng) -> [Case] to add
kinds of input; `name_cases` and `sidecar_cases` are such makers, left out by default."""

from __future__ import annotations

import random
import struct
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import soundfile as sf

from lebench_cli.testing.audio import tone

RATE = 16_000

# extension: (libsndfile format, subtype)
FORMATS = {
    "wav": ("WAV", "PCM_16"), "aiff": ("AIFF", "PCM_16"), "au": ("AU", "PCM_16"), "w64": ("W64", "PCM_16"),
    "rf64": ("RF64", "PCM_16"), "caf": ("CAF", "PCM_16"), "flac": ("FLAC", "PCM_16"), "ogg": ("OGG", "VORBIS"),
    "opus": ("OGG", "OPUS"), "mp3": ("MP3", "MPEG_LAYER_III"),
}
UNCOMPRESSED = ("wav", "aiff", "au", "w64", "rf64", "caf")


@dataclass
class Case:
    path: Path
    kind: str
    expect: Optional[str] = None  # "stored", "failed" or None (either)
    reason: Optional[str] = None  # the exact failure reason, where it is fixed

    @property
    def utt_id(self) -> str:
        return self.path.relative_to(self.path.parent).with_suffix("").as_posix()


def waveform(seconds: float, rate: int = RATE, channels: int = 1, seed: int = 0) -> np.ndarray:
    return tone(seconds, rate, channels, seed).astype(np.float32)


def clean_file(path: Path, extension: str, seconds: float = 0.5, seed: int = 0) -> Path:
    container, subtype = FORMATS[extension]
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, waveform(seconds, seed=seed), RATE, format=container, subtype=subtype)
    return path


# ---- byte patches ------------------------------------------------------------------------

def _put(data: bytes, offset: int, value: bytes) -> bytes:
    return data[:offset] + value + data[offset + len(value):]


def riff_chunk(data: bytes, chunk: bytes, start: int = 12) -> int:
    """Offset of `chunk`'s 8-byte header in a RIFF/RF64 file."""
    offset = start
    while offset + 8 <= len(data):
        size = struct.unpack("<I", data[offset + 4: offset + 8])[0]
        if data[offset: offset + 4] == chunk:
            return offset
        if data[offset: offset + 4] == b"ds64":
            size = struct.unpack("<I", data[offset + 4: offset + 8])[0]
        offset += 8 + size + (size & 1)
    raise ValueError(f"no {chunk!r} chunk")


def wav_field(data: bytes, name: str, value: int) -> bytes:
    """A WAV with one field of its fmt chunk set: channels, rate or bits."""
    fmt = riff_chunk(data, b"fmt ") + 8
    offset, width = {"format": (0, 2), "channels": (2, 2), "rate": (4, 4), "bits": (14, 2)}[name]
    return _put(data, fmt + offset, value.to_bytes(width, "little"))


def declare_huge_length(data: bytes, extension: str) -> bytes:
    """The file, its header declaring far more samples than it holds."""
    if extension == "wav":
        return _put(data, riff_chunk(data, b"data") + 4, struct.pack("<I", 0xFFFFFFF0))
    if extension == "rf64":  # ds64: riff size, data size, sample count
        return _put(data, 20, struct.pack("<QQQ", 2**42, 2**41, 2**40))
    if extension == "w64":
        offset = data.index(b"data\xf3\xac\xd3\x11") + 16
        return _put(data, offset, struct.pack("<Q", 2**41))
    if extension == "aiff":
        comm = data.index(b"COMM") + 8
        data = _put(data, comm + 2, struct.pack(">I", 0xFFFFFFF0))
        return _put(data, data.index(b"SSND") + 4, struct.pack(">I", 0xFFFFFFF0))
    if extension == "au":
        return _put(data, 8, struct.pack(">I", 0xFFFFFFF0))
    if extension == "caf":
        return _put(data, data.index(b"data\x00") + 4, struct.pack(">q", 2**40))
    if extension == "flac":
        return flac_total_samples(data, 2**36 - 1)
    if extension == "mp3":
        return xing_frames(data, 2**32 - 1)
    return ogg_last_granule(data, 2**40)  # ogg, opus


def flac_total_samples(data: bytes, total: int) -> bytes:
    field = int.from_bytes(data[18:26], "big")
    return _put(data, 18, ((field & ~(2**36 - 1)) | total).to_bytes(8, "big"))


def flac_rate(data: bytes, rate: int) -> bytes:
    field = int.from_bytes(data[18:26], "big")
    return _put(data, 18, ((field & (2**44 - 1)) | rate << 44).to_bytes(8, "big"))


def xing_frames(data: bytes, frames: int) -> bytes:
    """An MP3 whose Xing/Info tag says `frames` MPEG frames."""
    tag = max(data.find(b"Xing"), data.find(b"Info"))
    flags = struct.unpack(">I", data[tag + 4: tag + 8])[0]
    if not flags & 1:
        raise ValueError("this Xing tag has no frame count")
    return _put(data, tag + 8, struct.pack(">I", frames))


_OGG_CRC = []
for _index in range(256):
    _value = _index << 24
    for _ in range(8):
        _value = ((_value << 1) ^ 0x04C11DB7 if _value & 0x80000000 else _value << 1) & 0xFFFFFFFF
    _OGG_CRC.append(_value)


def ogg_crc(page: bytes) -> int:
    crc = 0
    for byte in page:
        crc = ((crc << 8) & 0xFFFFFFFF) ^ _OGG_CRC[(crc >> 24) ^ byte]
    return crc


def ogg_last_granule(data: bytes, granule: int) -> bytes:
    """An Ogg file whose last page says `granule`, with a valid checksum."""
    start = data.rindex(b"OggS")
    page = bytearray(data[start:])
    page[6:14] = struct.pack("<q", granule)
    page[22:26] = b"\0\0\0\0"
    page[22:26] = struct.pack("<I", ogg_crc(bytes(page)))
    return data[:start] + bytes(page)


def flipped(data: bytes, offset: int) -> bytes:
    return _put(data, offset, bytes([data[offset] ^ 0xFF]))


def header_length(extension: str) -> int:
    return {"wav": 44, "aiff": 54, "au": 24, "w64": 104, "rf64": 104, "caf": 96, "flac": 42, "ogg": 64,
            "opus": 64, "mp3": 64}[extension]


# ---- the corpus --------------------------------------------------------------------------

def format_cases(folder: Path, rng: random.Random) -> list:
    """For every format: a clean file, and its truncations, flips, zeroed and swapped
    headers, and a huge declared length."""
    cases = []
    for extension in FORMATS:
        clean = clean_file(folder / f"clean-{extension}.{extension}", extension, seed=len(cases) % 7)
        cases.append(Case(clean, "clean", "stored"))
        data = clean.read_bytes()
        head = header_length(extension)

        def add(name, content, kind, expect=None, reason=None):
            path = folder / f"{name}-{extension}.{extension}"
            path.write_bytes(content)
            cases.append(Case(path, kind, expect, reason))

        for index, fraction in enumerate((0.1, 0.35, 0.5, 0.8, 0.97)):
            add(f"cut{index}", data[: max(1, int(len(data) * fraction))], "truncated", "failed")
        add("cut-header", data[: head // 2], "truncated", "failed")
        for index in range(4):
            add(f"header-flip{index}", flipped(data, rng.randrange(min(head, len(data)))), "header flip")
            add(f"data-flip{index}", flipped(data, rng.randrange(head, len(data))), "data flip")
        add("zeroed-header", bytes(head) + data[head:], "zeroed header")
        add("swapped-header", data[head // 2: head] + data[: head // 2] + data[head:], "swapped header")
        # A Vorbis file of one audio page: libsndfile finds no length in a lying granule, and
        # decodes the page whole.
        add("huge-length", declare_huge_length(data, extension), "huge declared length",
            None if extension == "ogg" else "failed")
        add("empty", b"", "empty", "failed", "empty file (0 bytes)")
    return cases


def header_cases(folder: Path, rng: random.Random) -> list:
    """Absurd rates, channel counts and sample formats; the MP3 and Ogg liars of the issue."""
    wav = clean_file(folder / "base.wav.tmp", "wav").read_bytes()
    (folder / "base.wav.tmp").unlink()
    cases = []

    def add(name, content, kind, expect=None, reason=None):
        path = folder / name
        path.write_bytes(content)
        cases.append(Case(path, kind, expect, reason))

    for rate in (1, 999, 768_001, 2**31 - 1):
        reason = f"sample rate {rate} Hz is outside 1000-768000 Hz"
        add(f"rate-{rate}.wav", wav_field(wav, "rate", rate), "absurd rate", "failed", reason)
    add("rate-0.wav", wav_field(wav, "rate", 0), "absurd rate", "failed")
    add("rate-1000.wav", wav_field(wav, "rate", 1000), "lowest rate", "stored")
    for channels in (0, 300, 65535):
        add(f"channels-{channels}.wav", wav_field(wav, "channels", channels), "absurd channels", "failed")
    for bits in (0, 13, 64, 255):
        add(f"bits-{bits}.wav", wav_field(wav, "bits", bits), "absurd sample format")
    add("format-tag.wav", wav_field(wav, "format", 0x7777), "absurd sample format", "failed")
    flac = clean_file(folder / "base.flac.tmp", "flac").read_bytes()
    (folder / "base.flac.tmp").unlink()
    add("flac-rate-1.flac", flac_rate(flac, 1), "absurd rate", "failed", "sample rate 1 Hz is outside 1000-768000 Hz")
    # STREAMINFO's total 0: "unknown", as a FLAC written to a pipe says; libsndfile then fails
    # its reads past the end (docs/extract.md), a failure of this file alone.
    add("flac-unknown-length.flac", flac_total_samples(flac, 0), "unknown length")
    mp3 = clean_file(folder / "base.mp3.tmp", "mp3", seconds=1.0).read_bytes()
    (folder / "base.mp3.tmp").unlink()
    add("mp3-frames-2e7.mp3", xing_frames(mp3, 20_000_000), "huge declared length", "failed")
    for extension in ("ogg", "opus"):
        clean = clean_file(folder / f"base.{extension}.tmp", extension, seconds=1.0)
        content = clean.read_bytes()
        clean.unlink()
        add(f"granule-2e40-{extension}.{extension}", ogg_last_granule(content, 2**40), "huge declared length", "failed")
    return cases


def sample_cases(folder: Path, rng: random.Random) -> list:
    """Extreme finite samples: at float32's limit, mono and stereo, at 16 and 48 kHz."""
    cases = []
    top = np.finfo(np.float32).max
    for name, rate, channels in (("extreme-mono", RATE, 1), ("extreme-stereo", RATE, 2), ("extreme-48k", 48_000, 1)):
        samples = np.full((rate // 2, channels), top, np.float32)
        samples[::2] = -top
        path = folder / f"{name}.wav"
        sf.write(path, samples, rate, subtype="FLOAT")
        cases.append(Case(path, "extreme samples"))
    path = folder / "extreme-double.wav"
    sf.write(path, np.full(RATE // 2, 1e300), RATE, subtype="DOUBLE")
    cases.append(Case(path, "extreme samples", "failed", "contains NaN or infinite samples"))
    return cases


def name_cases(folder: Path, rng: random.Random) -> list:
    """Names that are not UTF-8, and names in NFD: a hook for the tests that own them."""
    clean = clean_file(folder / "name-base.wav", "wav").read_bytes()
    (folder / "name-base.wav").unlink()
    cases = []
    raw = bytes(folder) + b"/latin1-\xe9t\xe9.wav"
    with open(raw, "wb") as file:
        file.write(clean)
    cases.append(Case(Path(raw.decode("utf-8", "surrogateescape")), "non-UTF-8 name"))
    nfd = folder / unicodedata.normalize("NFD", "nfd-\u00e9t\u00e9.wav")
    nfd.write_bytes(clean)
    cases.append(Case(nfd, "NFD name"))
    return cases


def sidecar_cases(folder: Path, rng: random.Random) -> list:
    """`.mat` and `.htk` files beside the audio, in libsndfile's sense and not: a hook."""
    cases = []
    for extension, container in (("mat", "MAT5"), ("htk", "HTK")):
        path = folder / f"sidecar-{extension}.{extension}"
        try:
            sf.write(path, waveform(0.5), RATE, format=container, subtype="PCM_16")
        except (sf.LibsndfileError, ValueError, TypeError):
            path.write_bytes(bytes(rng.randrange(256) for _ in range(512)))
        cases.append(Case(path, f".{extension} beside audio"))
    return cases


CASE_MAKERS = [format_cases, header_cases, sample_cases]


def make_corpus(folder: Path, seed: int = 0, makers: Optional[list] = None) -> list:
    """Every case of `makers` (default CASE_MAKERS) written in `folder`; one Case each."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    cases = []
    for maker in CASE_MAKERS if makers is None else makers:
        cases.extend(maker(folder, rng))
    return cases
