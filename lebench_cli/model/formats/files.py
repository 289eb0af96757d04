"""The files each checkpoint format is saved as, and finding them in a folder."""

from __future__ import annotations

from pathlib import Path

FAIRSEQ_CHECKPOINT_NAMES = ("checkpoint_best.pt", "checkpoint_last.pt")
TRANSFORMERS_WEIGHT_NAMES = ("model.safetensors", "pytorch_model.bin")
SPEECHBRAIN_WEIGHT_NAMES = ("wav2vec2.ckpt",)


def first_existing(folder: Path, names) -> Path | None:
    """The first of `names` that is a file in `folder`, or None."""
    return next((folder / n for n in names if (folder / n).is_file()), None)
