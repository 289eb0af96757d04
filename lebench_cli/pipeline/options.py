"""What `lebench extract` was asked (ExtractOptions, written into the output's metadata),
with the defaults that depend on the device."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Optional

from ..errors import InputError


@dataclass
class ExtractOptions:
    """Everything `lebench extract` was asked; written into the output's metadata."""

    inputs: list
    output: str
    model: str
    layers: str = "last"
    pool: str = "none"  # "none" or "mean"
    store_frames: Optional[bool] = None  # default: frames unless pooling
    extensions: tuple = ()
    channel: Optional[int] = None
    batch_seconds: Optional[float] = None  # default: 120 on CUDA, 20 on CPU
    chunk_seconds: float = 30.0  # the longest window of a long recording; named as the CLI's --chunk-seconds
    overlap_seconds: float = 5.0
    device: Optional[str] = None
    dtype: Optional[str] = None
    save_dtype: str = "float16"
    shard_size: int = 2 * 1024**3
    compression: Optional[str] = None
    commit_seconds: float = 300.0
    workers: Optional[int] = None  # default: see default_workers
    shard: tuple = (1, 1)  # this run's part (k, n) of the job; named as the CLI's --shard K/N
    overwrite: bool = False
    update: bool = False  # extract again the stored ids whose source changed, replacing their features
    strict: bool = False
    keep_truncated: bool = False  # store what a file that ends before its header's length holds, flagged
    trust_checkpoint: bool = False
    root: Optional[str] = None  # ids of every file relative to this folder
    id_prefix: str = ""  # pasted before every id
    input_format: str = "auto"  # how inputs are read (audio/inputs.py INPUT_FORMATS); auto: each by its form
    allow_pipes: bool = False  # run the shell commands of Kaldi wav.scp lines and lhotse command sources
    id_column: Optional[str] = None  # the id column of tables (SpeechBrain, Common Voice, HuggingFace)
    path_column: Optional[str] = None  # their audio column
    time_unit: Optional[str] = None  # "seconds" or "samples": SpeechBrain start/stop columns

    def validate(self, flag=lambda name: "--" + name.replace("_", "-")) -> "ExtractOptions":
        """Raises InputError for options that cannot run together; returns self. `flag` names
        an option in the message (by default as the CLI spells it: --overlap-seconds)."""
        if self.overlap_seconds * 2 >= self.chunk_seconds:
            raise InputError(f"{flag('overlap_seconds')} {self.overlap_seconds:g} must be under half of "
                             f"{flag('chunk_seconds')} {self.chunk_seconds:g}")
        if self.time_unit not in (None, "seconds", "samples"):
            raise InputError(f"{flag('time_unit')} {self.time_unit}: seconds or samples")
        from ..audio.inputs import INPUT_FORMATS

        if self.input_format not in INPUT_FORMATS:
            raise InputError(f"{flag('input_format')} {self.input_format}: one of {', '.join(INPUT_FORMATS)}")
        if self.overwrite and self.part != (1, 1):
            raise InputError(f"{flag('overwrite')} cannot be combined with {flag('shard')}: each part would delete "
                             "the others' features; empty OUTPUT before launching the job array")
        return self

    def discovery(self) -> dict:
        """The keyword arguments of `audio.inputs.discover` that say how to read the inputs."""
        from ..audio.corpora.common import CorpusOptions

        return {"input_format": self.input_format,
                "corpus": CorpusOptions(allow_pipes=self.allow_pipes, id_column=self.id_column,
                                        path_column=self.path_column, time_unit=self.time_unit)}

    @property
    def part(self) -> tuple:
        """(k, n): the part of the job this run does (the `shard` field)."""
        return tuple(self.shard)

    def resolved(self) -> "ExtractOptions":
        import torch

        device = self.device or ("cuda" if torch.cuda.is_available() else "cpu")
        on_gpu = device.startswith("cuda")
        dtype = self.dtype or ("float16" if on_gpu else "float32")
        frames = (self.pool == "none") if self.store_frames is None else self.store_frames
        # On a CPU, big batches buy nothing (one utterance already keeps every core busy)
        # and cost memory bandwidth: on 2 cores, 60 s batches ran 18% slower than 10-30 s
        # ones (docs/performance.md).
        batch_seconds = self.batch_seconds or (120.0 if on_gpu else 20.0)
        workers = default_workers(on_gpu) if self.workers is None else self.workers
        return ExtractOptions(**{**asdict(self), "device": device, "dtype": dtype, "store_frames": frames,
                                 "batch_seconds": batch_seconds, "workers": workers})


def default_workers(on_gpu: bool, gpus_sharing_the_cores: int = 1) -> int:
    """Decoding processes: on a GPU, enough to keep it fed (the node's cores shared by the
    GPUs of a `--devices` run); on a CPU none, because the model's threads already use every
    core and workers would only take turns with them."""
    import os

    return max(1, min(4, (os.cpu_count() or 2) // gpus_sharing_the_cores - 1)) if on_gpu else 0
