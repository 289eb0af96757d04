"""What a file's header declares, read from its bytes: the length of an uncompressed file's
data chunk, and whether an MP3 names its length at all.

libsndfile trims an uncompressed file's length to the data present and says so only in its
log, so a truncated WAV decodes to what is left with no error: these few fields tell it
apart from a whole one (docs/extract.md, "Damaged and lying files")."""

from __future__ import annotations

import struct
from contextlib import contextmanager
from typing import Optional

_CHUNK_WALK_LIMIT = 4096  # chunks before the data chunk: more is not a header, it is damage
_RIFF_UNKNOWN = (0, 0xFFFFFFFF)  # what streaming writers put in a length they cannot know
_W64_DATA = b"data\xf3\xac\xd3\x11\x8c\xd1\x00\xc0O\x8e\xdb\x8a"
_MP3_LENGTH_TAGS = (b"Xing", b"Info", b"VBRI")
_OGG_TAIL_BYTES = 27 + 255 + 255 * 255  # the largest Ogg page


@contextmanager
def _reading(audio):
    """A path is opened and closed; an open file object (an origin's bytes: audio/origins.py)
    is read and left open where it was: libsndfile reads it too, from its own position."""
    if hasattr(audio, "read"):
        position = audio.tell()
        audio.seek(0)
        try:
            yield audio
        finally:
            audio.seek(position)
    else:
        with open(audio, "rb") as file:
            yield file


def declared_data_bytes(path, container: str) -> Optional[int]:
    """The data chunk's length in bytes as the header of an uncompressed `container`
    (libsndfile's major format name) declares it; None when the container is not one of
    these, or its header says the length is unknown (a stream written without seeking back).
    `path` (here and below): a path, or a seekable binary file object."""
    reader = _READERS.get(container)
    if reader is None:
        return None
    try:
        with _reading(path) as file:
            return reader(file)
    except (OSError, struct.error, ValueError):
        return None


def mp3_declares_its_length(path) -> bool:
    """Whether the first MPEG frame carries a Xing, Info or VBRI tag: without one, the
    length libsndfile reports is an estimate from the size and the first frame's bitrate."""
    try:
        with _reading(path) as file:
            head = file.read(10)
            start = 0
            if head[:3] == b"ID3" and len(head) == 10:  # an ID3v2 tag first: its size is syncsafe
                start = 10 + ((head[6] & 0x7F) << 21 | (head[7] & 0x7F) << 14 | (head[8] & 0x7F) << 7 | head[9] & 0x7F)
            file.seek(start)
            first_frame = file.read(4096)
    except OSError:
        return False
    return any(tag in first_frame for tag in _MP3_LENGTH_TAGS)


def ogg_stream_ends(path) -> bool:
    """Whether an Ogg file's last page is whole and marks the end of its stream: a file
    cut anywhere after its headers fails one or the other."""
    try:
        with _reading(path) as file:
            size = file.seek(0, 2)
            file.seek(max(0, size - _OGG_TAIL_BYTES))
            tail = file.read()
    except OSError:
        return False
    start = tail.rfind(b"OggS")
    if start < 0 or len(tail) - start < 27:
        return False
    segments = tail[start + 26]
    lacing = tail[start + 27: start + 27 + segments]
    whole = len(lacing) == segments and start + 27 + segments + sum(lacing) <= len(tail)
    return whole and bool(tail[start + 5] & 0x04)  # header type: end of stream


def _riff(file) -> Optional[int]:
    kind = file.read(12)
    order = ">" if kind[:4] == b"RIFX" else "<"  # RIFX: a big-endian WAV
    ds64_data = None
    for _ in range(_CHUNK_WALK_LIMIT):
        header = file.read(8)
        if len(header) < 8:
            return None
        chunk, size = header[:4], struct.unpack(order + "I", header[4:])[0]
        if chunk == b"ds64":  # RF64 and BW64: the 64-bit sizes of what says 0xFFFFFFFF
            ds64_data = struct.unpack("<Q", file.read(16)[8:16])[0]
            file.seek(size - 16, 1)
        elif chunk == b"data":
            if kind[:4] in (b"RF64", b"BW64") and size == 0xFFFFFFFF:
                return ds64_data if ds64_data not in (None, 0, 0xFFFFFFFFFFFFFFFF) else None
            return None if size in _RIFF_UNKNOWN else size
        else:
            file.seek(size + (size & 1), 1)
    return None


def _w64(file) -> Optional[int]:
    file.seek(40)  # riff GUID and size, wave GUID
    for _ in range(_CHUNK_WALK_LIMIT):
        header = file.read(24)
        if len(header) < 24:
            return None
        size = struct.unpack("<Q", header[16:])[0]  # counts its own 24-byte header
        if header[:16] == _W64_DATA:
            return size - 24 if size > 24 else None
        if size < 24:
            return None
        file.seek((size + 7) // 8 * 8 - 24, 1)
    return None


def _aiff(file) -> Optional[int]:
    file.seek(12)
    described = None  # the bytes COMM's frame count, channels and sample size make
    for _ in range(_CHUNK_WALK_LIMIT):
        header = file.read(8)
        if len(header) < 8:
            return None
        chunk, size = header[:4], struct.unpack(">I", header[4:])[0]
        if chunk == b"COMM":
            channels, frames, bits = struct.unpack(">hIh", file.read(8))
            described = frames * channels * ((bits + 7) // 8)
            file.seek(size + (size & 1) - 8, 1)
        elif chunk == b"SSND":
            offset = struct.unpack(">I", file.read(4))[0]
            if size < 8 + offset:
                return None
            # Writers may pad the sound data past COMM's frame count: only those frames are declared.
            return size - 8 - offset if described is None else min(size - 8 - offset, described)
        else:
            file.seek(size + (size & 1), 1)
    return None


def _au(file) -> Optional[int]:
    header = file.read(12)
    size = struct.unpack(">I", header[8:12])[0]
    return None if size == 0xFFFFFFFF else size


def _caf(file) -> Optional[int]:
    file.seek(8)
    for _ in range(_CHUNK_WALK_LIMIT):
        header = file.read(12)
        if len(header) < 12:
            return None
        chunk, size = header[:4], struct.unpack(">q", header[4:])[0]
        if chunk == b"data":
            return None if size < 4 else size - 4  # -1: until the end of the file; 4: the edit count
        if size < 0:
            return None
        file.seek(size, 1)
    return None


_READERS = {"WAV": _riff, "WAVEX": _riff, "RF64": _riff, "W64": _w64, "AIFF": _aiff, "AU": _au, "CAF": _caf}
