"""What a run reports: the summary line of `lebench extract` and the `--dry-run` report."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, fields
from typing import Optional


@dataclass
class ExtractSummary:
    files: int = 0
    already_stored: int = 0
    extracted: int = 0
    failed: int = 0
    updated: int = 0  # stored ids extracted again (--update), their old features removed
    padded: int = 0
    chunked: int = 0  # long recordings run in windows (flagged "chunked", the stored and printed word)
    truncated: int = 0  # stored as far as they go, with --keep-truncated
    recomputed_float32: int = 0
    audio_seconds: float = 0.0
    processing_seconds: float = 0.0  # from the first file read to the last one stored, as the bar
    elapsed_seconds: float = 0.0  # the whole run, model loading included
    failures_path: Optional[str] = None
    first_failure: Optional[str] = None
    device: str = ""  # what computed: "cpu", "cuda:0 (NVIDIA H100)", several joined by ", "
    dtype: str = ""  # the compute precision: "float32", "float16"

    @property
    def real_time_factor(self) -> float:
        """Audio seconds per second of processing: the rate the progress bar shows."""
        return self.audio_seconds / self.processing_seconds if self.processing_seconds > 0 else 0.0

    def line(self) -> str:
        if not (self.extracted or self.failed or self.already_stored):
            return "nothing to extract: no file falls in this part"
        if not (self.extracted or self.failed):
            return f"nothing to extract: all {count(self.already_stored, 'file')} already stored"
        if not self.extracted:
            text = "extracted 0 files"
        else:
            text = (
                f"extracted {count(self.extracted, 'file')} ({human_duration(self.audio_seconds)} of audio) in "
                f"{self.processing_seconds:.1f} s ({self.real_time_factor:.0f}x real time; "
                f"{self.elapsed_seconds:.1f} s in all, with model loading)"
            )
        if self.device:
            text += f" on {self.device}, {self.dtype}"
        extras = [
            f"{self.already_stored} already stored, skipped" if self.already_stored else "",
            f"{self.updated} updated (old features replaced)" if self.updated else "",
            f"{self.padded} padded to one frame" if self.padded else "",
            f"{self.chunked} chunked" if self.chunked else "",
            f"{self.truncated} truncated, stored as far as they go" if self.truncated else "",
            f"{count(self.recomputed_float32, 'batch', 'batches')} recomputed in float32" if self.recomputed_float32 else "",
            f"{self.failed} failed (see {self.failures_path})" if self.failed else "",
        ]
        return "; ".join([text] + [e for e in extras if e])


def merged_summaries(summaries: list, output, num_parts: int) -> ExtractSummary:
    """One summary for parts that ran side by side (ExtractSummary or its asdict): counts add
    up; the processing span is the longest part's, so the rate is the whole run's."""
    merged = ExtractSummary()
    summaries = [summary if isinstance(summary, dict) else asdict(summary) for summary in summaries]
    for summary in summaries:
        for field in fields(ExtractSummary):
            value = summary[field.name]
            if field.name == "processing_seconds":
                merged.processing_seconds = max(merged.processing_seconds, value)
            elif field.name in ("device", "dtype"):  # each named once, in the parts' order
                named = [part for part in getattr(merged, field.name).split(", ") if part]
                setattr(merged, field.name, ", ".join(dict.fromkeys(named + ([value] if value else []))))
            elif isinstance(value, (int, float)) and not isinstance(value, bool):
                setattr(merged, field.name, getattr(merged, field.name) + value)
    failed = [s for s in summaries if s["failed"]]
    merged.failures_path = failed[0]["failures_path"] if len(failed) == 1 else os.path.join(
        output, f"failures-*of{num_parts}.jsonl")
    merged.first_failure = next((s["first_failure"] for s in failed if s["first_failure"]), None)
    return merged


@dataclass
class DryRunReport:
    files: int
    already_stored: int
    unreadable: int
    audio_seconds: float
    estimated_bytes: int
    conflicts: int = 0  # stored ids whose features came from another file, or a changed one

    def line(self) -> str:
        conflicts = f", {count(self.conflicts, 'id conflict')} (would fail)" if self.conflicts else ""
        return (
            f"{count(self.files, 'file')} to extract ({human_duration(self.audio_seconds)} of audio), "
            f"{self.already_stored} already stored{conflicts}, {self.unreadable} unreadable; "
            f"estimated output {human_bytes(self.estimated_bytes)}"
        )


def count(number: int, singular: str, plural: str = "") -> str:
    return f"{number} {singular if number == 1 else (plural or singular + 's')}"


def human_duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f} s"
    if seconds < 3600:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.2f} h"


def human_bytes(count: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if count < 1024 or unit == "TB":
            return f"{count:.1f} {unit}" if unit != "B" else f"{int(count)} B"
        count /= 1024
    return f"{count:.1f} TB"
