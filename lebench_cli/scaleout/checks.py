"""What `lebench slurm` and `lebench ray` check before anything runs on the cluster: that the
model loads and has the layers asked for, as `lebench extract`'s early errors say it, and
where its files are, so that offline compute nodes read the same hub cache."""

from __future__ import annotations

from pathlib import Path

from ..errors import ModelNotFoundError


def check_model_and_layers(model: str, layers: str, trust: bool = False) -> dict:
    """Loads `model` from a path or the hub cache (never the network: the tasks may have
    none) and resolves `layers` against it; the environment the tasks need to find it
    ({} for a local path; HF_HOME and HF_HUB_OFFLINE=1 for a cached hub model)."""
    from ..model.catalog import find_known_model, looks_like_hub_id
    from ..model.formats import load_local
    from ..layers import parse_layers

    path = Path(model).expanduser()
    environment = {}
    if not path.exists():
        if find_known_model(model) is None and not looks_like_hub_id(model):
            raise ModelNotFoundError(
                f"'{model}' is neither a local checkpoint nor a hub id (see `lebench info` for known models)")
        path, environment = _cached(model)
    checkpoint = load_local(path, trust=trust)
    parse_layers(layers, checkpoint.layers)
    return environment


def _cached(model: str) -> tuple:
    from huggingface_hub import constants

    from ..model.hub import cached_model_path, repo_id_for

    folder = cached_model_path(model)
    if folder is None:
        repo_id = repo_id_for(model)
        raise ModelNotFoundError(
            f"{repo_id} is not in the hub cache {constants.HF_HUB_CACHE}, so the tasks could not load it: "
            f"run `lebench fetch {repo_id}` here first (into a cache the compute nodes share), or pass --no-check")
    home, cache = Path(constants.HF_HOME).resolve(), Path(constants.HF_HUB_CACHE).resolve()
    environment = {"HF_HOME": str(home)}
    if cache != home / "hub":  # a cache of its own (HF_HUB_CACHE)
        environment["HF_HUB_CACHE"] = str(cache)
    environment["HF_HUB_OFFLINE"] = "1"
    return folder, environment
