"""What one utterance to extract is: its id, where its audio comes from, which part of it,
and the fields a corpus gives with it (speaker, text, ...).

Every input form (audio/inputs.py and the corpus readers) produces `AudioSource`s; the rest
of the pipeline only ever sees these."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional


@dataclass(frozen=True)
class Segment:
    """A slice of a recording, in seconds from its start; `end` None: to the recording's end."""

    start: float
    end: Optional[float] = None


@dataclass(frozen=True)
class PipeCommand:
    """Audio that a shell command writes on its standard output (a Kaldi wav.scp line ending
    in '|'); `where` names the line it came from ("data/train/wav.scp:12")."""

    command: str
    where: str


@dataclass(frozen=True)
class TarMember:
    """One member of an uncompressed tar file: `size` bytes at byte `offset` of `tar`."""

    tar: str
    member: str
    offset: int
    size: int


@dataclass(frozen=True)
class TableRow:
    """The audio bytes in row `row` of column `column` of an arrow or parquet file (a
    HuggingFace dataset); `kind` is "arrow" (IPC stream, as save_to_disk writes) or "parquet"."""

    file: str
    row: int
    column: str
    kind: str


@dataclass(frozen=True)
class AudioSource:
    """One utterance to extract: the id its features are stored under, and the audio to decode.

    `path` is the file to decode when `origin` is None; otherwise a printable name of the
    audio for messages and the index (the pipe's line, "shard.tar/spk1/u1.flac", ...), and
    `origin` (PipeCommand, TarMember or TableRow) says how to read its bytes.
    `num_samples` is the count a .tsv manifest gives (fairseq writes frames at the file's
    own rate), else None. `segment`: only that slice of the recording is the utterance.
    `channel`: the channel this source names (Kaldi reco2file_and_channel, lhotse), which
    wins over --channel. `metadata`: (name, value) pairs carried into the store with its
    features, values str, int or float; the names "speaker", "text", "language" and
    "recording" have those meanings in every input form.
    """

    utt_id: str
    path: str
    num_samples: Optional[int] = None
    segment: Optional[Segment] = None
    channel: Optional[int] = None
    origin: Optional[object] = None
    metadata: tuple = ()
