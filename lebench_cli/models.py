"""One entry point from whatever the user typed (path, hub id, alias) to a Checkpoint."""

from __future__ import annotations

from pathlib import Path

from .catalog import find_known_model, looks_like_hub_id
from .checkpoints import Checkpoint, load_local
from .errors import ModelNotFoundError


def locate_model(name: str) -> tuple[Path, str | None]:
    """(local path, hub id or None) for a model name."""
    path = Path(name).expanduser()
    if path.exists():
        return path, None
    known = find_known_model(name)
    if known is None and not looks_like_hub_id(name):
        raise ModelNotFoundError(
            f"'{name}' is neither a local checkpoint nor a hub id (see `lebench info` for known models)"
        )
    from .hub import repo_id_for, resolve_hub_model

    return resolve_hub_model(name), repo_id_for(name)


def load_checkpoint(name: str, trust: bool = False) -> Checkpoint:
    path, hub_id = locate_model(name)
    checkpoint = load_local(path, trust=trust)
    checkpoint.source = name
    checkpoint.hub_id = hub_id
    return checkpoint
