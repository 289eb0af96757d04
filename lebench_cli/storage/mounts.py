"""Which filesystem a folder is on, for messages about what it cannot do (locks)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional

MOUNTINFO = "/proc/self/mountinfo"


@dataclass(frozen=True)
class Mount:
    mount_point: str
    fs_type: str
    source: str
    options: str  # the filesystem's own (super block) options, e.g. Lustre's flock/localflock


def mount_of(path) -> Optional[Mount]:
    """The mount holding `path` (the longest mount point above it), or None where the system
    does not say (no /proc)."""
    target = os.path.realpath(path)
    best = None
    try:
        with open(MOUNTINFO, encoding="utf-8", errors="replace") as lines:
            for line in lines:
                mount = _parse(line)
                if mount is not None and _contains(mount.mount_point, target):
                    if best is None or len(mount.mount_point) >= len(best.mount_point):
                        best = mount  # later lines mount over earlier ones
    except OSError:
        return None
    return best


def _parse(line: str) -> Optional[Mount]:
    # id parent major:minor root MOUNT_POINT options [optional fields...] - TYPE SOURCE SUPER_OPTIONS
    fields = line.split()
    if "-" not in fields[6:]:
        return None
    dash = fields.index("-", 6)
    if len(fields) < dash + 3:
        return None
    options = fields[dash + 3] if len(fields) > dash + 3 else ""
    return Mount(_unescape(fields[4]), fields[dash + 1], _unescape(fields[dash + 2]), options)


def _unescape(text: str) -> str:
    # mountinfo writes space, tab, newline and backslash as octal escapes (\040...).
    for code in ("040", "011", "012", "134"):
        text = text.replace("\\" + code, chr(int(code, 8)))
    return text


def _contains(mount_point: str, path: str) -> bool:
    return mount_point == "/" or path == mount_point or path.startswith(mount_point.rstrip("/") + "/")
