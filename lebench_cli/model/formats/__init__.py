"""Which format a local checkpoint file or model folder is in (`detect_format`), and reading
it into a Checkpoint (`load_local`), with one module per format: `fairseq`, `transformers`,
`speechbrain`; `files` names the files each format is saved as."""

from __future__ import annotations

from pathlib import Path

from ...errors import CheckpointError
from ..catalog import FAIRSEQ, SPEECHBRAIN, TRANSFORMERS
from ..checkpoint import Checkpoint
from .fairseq import load_fairseq
from .files import FAIRSEQ_CHECKPOINT_NAMES, SPEECHBRAIN_WEIGHT_NAMES, TRANSFORMERS_WEIGHT_NAMES, first_existing
from .speechbrain import load_speechbrain_folder
from .transformers import load_transformers_folder


def detect_format(path: Path) -> tuple[str, Path, Path]:
    """(format, weights file, folder) for a local checkpoint file or model folder."""
    if path.is_dir():
        fairseq = first_existing(path, FAIRSEQ_CHECKPOINT_NAMES)
        if fairseq is not None:  # the reference: conversions have been wrong before
            return FAIRSEQ, fairseq, path
        weights = first_existing(path, TRANSFORMERS_WEIGHT_NAMES)
        if weights is not None:
            return TRANSFORMERS, weights, path
        weights = first_existing(path, SPEECHBRAIN_WEIGHT_NAMES)
        if weights is not None:
            return SPEECHBRAIN, weights, path
        raise CheckpointError(
            f"{path}: no checkpoint found (looked for {', '.join(FAIRSEQ_CHECKPOINT_NAMES + TRANSFORMERS_WEIGHT_NAMES + SPEECHBRAIN_WEIGHT_NAMES)})"
        )
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file or folder")
    if path.suffix in (".safetensors", ".bin"):
        return TRANSFORMERS, path, path.parent
    if path.suffix == ".ckpt":
        return SPEECHBRAIN, path, path.parent
    return FAIRSEQ, path, path.parent


def load_local(path: Path, trust: bool = False) -> Checkpoint:
    format, weights, folder = detect_format(path)
    if format == FAIRSEQ:
        checkpoint = load_fairseq(weights, trust=trust)
    elif format == TRANSFORMERS:
        checkpoint = load_transformers_folder(folder, weights)
    else:
        checkpoint = load_speechbrain_folder(folder, weights)
    checkpoint.source = str(path)
    return checkpoint
