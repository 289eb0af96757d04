"""One entry point from whatever the user typed (path, hub id, alias) to a Checkpoint."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import ModelNotFoundError
from .catalog import find_known_model, looks_like_hub_id
from .checkpoint import Checkpoint
from .formats import load_local

if TYPE_CHECKING:
    from .hub import FetchedModel


def locate_model(name: str) -> tuple[Path, str | None]:
    """(local path, hub id or None) for a model name."""
    fetched = fetch_model(name)
    return fetched.path, fetched.repo_id


def fetch_model(name: str) -> FetchedModel:
    """Where the files of model `name` are, as `extract` would load them: a local path as
    is; a hub id or alias in the hub cache, downloaded into it first if needed."""
    path = Path(name).expanduser()
    if path.exists():
        from .hub import FetchedModel

        return FetchedModel(name, None, path, "local")
    known = find_known_model(name)
    if known is None and not looks_like_hub_id(name):
        raise ModelNotFoundError(
            f"'{name}' is neither a local checkpoint nor a hub id (see `lebench info` for known models)"
        )
    from .hub import fetch_hub_model

    return fetch_hub_model(name)


def load_checkpoint(name: str, trust: bool = False) -> Checkpoint:
    path, hub_id = locate_model(name)
    checkpoint = load_local(path, trust=trust)
    checkpoint.source = name
    checkpoint.hub_id = hub_id
    return checkpoint
