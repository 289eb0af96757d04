"""The one description every checkpoint format is read into (`formats/`): fairseq-named weights
plus a fairseq `Wav2Vec2Config` dict and the waveform normalisation flag."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Checkpoint:
    """A wav2vec2 checkpoint in fairseq terms, whatever format it came in."""

    format: str
    weights_path: Path
    model_config: dict  # fairseq Wav2Vec2Config fields
    normalize: bool
    state_dict: dict = field(repr=False)
    source: str = ""  # what the user named: hub id or path
    hub_id: str | None = None
    ignored_keys: tuple[str, ...] = ()  # pre-training-only weights not needed for features

    @property
    def layers(self) -> int:
        return int(self.model_config["encoder_layers"])

    @property
    def width(self) -> int:
        return int(self.model_config["encoder_embed_dim"])
