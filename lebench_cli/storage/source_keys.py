"""The shard's `sources` entries (docs/format.md, "Source keys"): where an utterance's bytes
are, then `#START,END` for a segment of a recording. Written by pipeline/resume.py
(`source_key`); read back here by resume and by the exports that name recordings."""

from __future__ import annotations

import re

_STORED_SEGMENT = re.compile(r"#([^#,/]+),([^#,/]*)$")


def split_source_key(key: str) -> tuple:
    """(place, segment suffix or "") of a stored key: the suffix only when both its times
    read as numbers (a file may be named "a#b,c")."""
    match = _STORED_SEGMENT.search(key)
    if match is None:
        return key, ""
    try:
        float(match.group(1))
        if match.group(2):
            float(match.group(2))
    except ValueError:
        return key, ""
    return key[: match.start()], match.group(0)
