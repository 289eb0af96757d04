"""Names as text: file names are bytes, ids and stored paths are UTF-8 strings.

On POSIX a file name is any bytes. Python gives a name that is not UTF-8 as a string whose
undecodable bytes are lone surrogates ('caf\\udce9.wav' for the Latin-1 b'caf\\xe9.wav'): it
opens the file again (os.fsencode), but it cannot be written as UTF-8 (HDF5, JSON, a
terminal). `printable` is such a string as text anyone can write: each undecodable byte as
the four characters \\xNN ('caf\\\\xe9.wav'), everything else as it is. Ids are printable and
in Unicode normal form C, so that the NFD spelling macOS writes and the NFC spelling
typed on a keyboard name one utterance.
"""

from __future__ import annotations

import os
import unicodedata


def with_slashes(path: str) -> str:
    """A relative path with `/` between its parts on every system: ids and listings are portable."""
    return path.replace(os.sep, "/") if os.sep != "/" else path


def printable(path) -> str:
    """`path` (str, bytes or path-like) as a UTF-8-safe string: bytes that are not UTF-8 as \\xNN."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def is_printable(path) -> bool:
    """Whether `path` is valid UTF-8 as it is (printable(path) == path for a str)."""
    try:
        os.fsencode(path).decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def canonical_id(name: str) -> str:
    """The id a name is stored and looked up under: printable, then NFC."""
    return unicodedata.normalize("NFC", printable(name))
