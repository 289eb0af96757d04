"""failures-KofN.jsonl: the files a run could not use, and why."""

from __future__ import annotations

import json
import re
from pathlib import Path

from ..errors import OutputError
from .files import os_reason
from .layout import part_tag

_PART_FILE = re.compile(r"^(?:index|failures)-(\d+)of(\d+)\.")


class FailureLog:
    """failures-KofN.jsonl: one {"id", "path", "reason"} per file this run could not use."""

    def __init__(self, out: Path, part: int = 1, num_parts: int = 1):
        self.path = Path(out) / f"failures-{part_tag(part, num_parts)}.jsonl"
        self.count = 0
        try:
            self._file = open(self.path, "w", encoding="utf-8")  # a new run starts it afresh
        except OSError as error:
            raise OutputError(f"cannot write {self.path}: {os_reason(error)}") from error

    def record(self, utt_id: str, path, reason: str) -> None:
        entry = {"id": utt_id, "path": str(path), "reason": reason}
        try:
            self._file.write(json.dumps(entry, ensure_ascii=False) + "\n")
            self._file.flush()
        except OSError as error:
            raise OutputError(f"cannot write {self.path}: {os_reason(error)}") from error
        self.count += 1

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> "FailureLog":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def read_failures(out: Path) -> list:
    """The failures of the last run of every part, in part order."""
    files = []
    for path in Path(out).glob("failures-*of*.jsonl"):
        match = _PART_FILE.match(path.name)
        if match:
            files.append(((int(match[1]), int(match[2])), path))
    failures = []
    for _, path in sorted(files):
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                failures.append(json.loads(line))
            except ValueError:
                continue  # a line torn by a crash
    return failures
