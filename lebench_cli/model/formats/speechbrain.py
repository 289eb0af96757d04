"""SpeechBrain model folders: a transformers folder whose weights are `wav2vec2.ckpt`."""

from __future__ import annotations

from pathlib import Path

from ..catalog import SPEECHBRAIN
from ..checkpoint import Checkpoint
from .files import SPEECHBRAIN_WEIGHT_NAMES
from .transformers import load_transformers_folder


def load_speechbrain_folder(folder: Path, weights: Path | None = None) -> Checkpoint:
    checkpoint = load_transformers_folder(folder, weights or folder / SPEECHBRAIN_WEIGHT_NAMES[0])
    checkpoint.format = SPEECHBRAIN
    return checkpoint
