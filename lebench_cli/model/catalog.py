"""The LeBenchmark models lebench knows by name, and the names users type for them."""

from __future__ import annotations

import re
from dataclasses import dataclass

HUB_ORGANISATION = "LeBenchmark"

FAIRSEQ = "fairseq"
TRANSFORMERS = "transformers"
SPEECHBRAIN = "speechbrain"

# Width and depth per architecture; None where no primary source confirms it: those are
# read from the checkpoint's own config (`lebench info MODEL`), never assumed.
ARCHITECTURES = {
    "light": (None, None),
    "base": (12, 768),
    "large": (24, 1024),
    "xlarge": (None, None),
}


@dataclass(frozen=True)
class KnownModel:
    hub_id: str
    arch: str
    hours: str
    formats: tuple[str, ...]
    normalize: bool | None
    aliases: tuple[str, ...] = ()
    normalize_note: str | None = None  # why this model's flag is not its architecture's

    @property
    def name(self) -> str:
        return self.hub_id.split("/", 1)[1]

    @property
    def layers(self) -> int | None:
        return ARCHITECTURES[self.arch][0]

    @property
    def width(self) -> int | None:
        return ARCHITECTURES[self.arch][1]


def _model(name, arch, hours, formats, normalize, aliases=(), normalize_note=None):
    return KnownModel(f"{HUB_ORGANISATION}/{name}", arch, hours, formats, normalize, aliases, normalize_note)


FEMALE_LARGE_NOTE = (
    "its published config says do_normalize: false where the other 1K-7K large models say true; "
    "lebench uses the flag of the checkpoint it loads (docs/models.md)"
)


_BOTH = (FAIRSEQ, TRANSFORMERS)
_SB = (SPEECHBRAIN,)

# Large models normalise waveforms, base models do not (fairseq task.normalize), with one
# documented anomaly: 1K-Female-large has do_normalize false. None: unconfirmed (14K); the
# flag used is always the one read from the checkpoint itself.
KNOWN_MODELS: tuple[KnownModel, ...] = (
    _model("wav2vec2-FR-1K-base", "base", "1K", _BOTH, False, ("wav2vec2-FR-S-base",)),
    _model("wav2vec2-FR-1K-large", "large", "1K", _BOTH, True, ("wav2vec2-FR-S-large",)),
    _model("wav2vec2-FR-2.6K-base", "base", "2.6K", _BOTH, False),
    _model("wav2vec2-FR-3K-base", "base", "2.9K", _BOTH, False, ("wav2vec2-FR-M-base",)),
    _model("wav2vec2-FR-3K-large", "large", "2.9K", _BOTH, True, ("wav2vec2-FR-M-large",)),
    _model("wav2vec2-FR-7K-base", "base", "7.6K", _BOTH, False),
    _model("wav2vec2-FR-7K-large", "large", "7.6K", _BOTH, True),
    _model("wav2vec2-FR-14K-light", "light", "14K", _SB, None),
    _model("wav2vec2-FR-14K-large", "large", "14K", _SB, None),
    _model("wav2vec2-FR-14K-xlarge", "xlarge", "14K", _SB, None),
    _model("wav2vec-FR-1K-Male-base", "base", "1K (male)", _BOTH, False),
    _model("wav2vec-FR-1K-Male-large", "large", "1K (male)", _BOTH, True),
    _model("wav2vec-FR-1K-Female-base", "base", "1K (female)", _BOTH, False),
    _model("wav2vec-FR-1K-Female-large", "large", "1K (female)", _BOTH, False, normalize_note=FEMALE_LARGE_NOTE),
)


def _key(name: str) -> str:
    return name.strip().lower()


def _spellings(model: KnownModel):
    names = (model.name, *model.aliases)
    for name in names:
        yield name
        yield f"{HUB_ORGANISATION}/{name}"
        # The gendered models are `wav2vec-`; users often type `wav2vec2-` out of habit.
        if name.startswith("wav2vec-"):
            yield "wav2vec2-" + name[len("wav2vec-"):]
            yield f"{HUB_ORGANISATION}/wav2vec2-" + name[len("wav2vec-"):]


_BY_NAME = {_key(s): m for m in KNOWN_MODELS for s in _spellings(m)}


def find_known_model(name: str) -> KnownModel | None:
    """The known model a hub id or alias names (case-insensitive), or None."""
    return _BY_NAME.get(_key(name))


_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def looks_like_hub_id(name: str) -> bool:
    return bool(_HUB_ID.match(name))
