"""Hub ids to local files, through huggingface_hub's cache (HF_HUB_OFFLINE is honoured)."""

from __future__ import annotations

from pathlib import Path

from .catalog import FAIRSEQ, SPEECHBRAIN, TRANSFORMERS, KnownModel, find_known_model
from .checkpoints import FAIRSEQ_CHECKPOINT_NAMES, SPEECHBRAIN_WEIGHT_NAMES, TRANSFORMERS_WEIGHT_NAMES
from .errors import ModelNotFoundError

_CONFIGS = ("config.json", "preprocessor_config.json")

# Alternatives per format, in order of preference; the first format a repo has wins.
_FILES_BY_FORMAT = {
    FAIRSEQ: [(name,) for name in FAIRSEQ_CHECKPOINT_NAMES[:1]],
    TRANSFORMERS: [(*_CONFIGS, name) for name in TRANSFORMERS_WEIGHT_NAMES],
    SPEECHBRAIN: [(*_CONFIGS, name) for name in SPEECHBRAIN_WEIGHT_NAMES],
}
_ALL_CANDIDATES = [files for format in (FAIRSEQ, TRANSFORMERS, SPEECHBRAIN) for files in _FILES_BY_FORMAT[format]]


def repo_id_for(name: str) -> str:
    known = find_known_model(name)
    return known.hub_id if known else name


def _candidates(known: KnownModel | None):
    if known is None:
        return _ALL_CANDIDATES
    return [files for format in known.formats for files in _FILES_BY_FORMAT[format]]


def is_offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def cached_files(repo_id: str, files) -> list[Path] | None:
    """Local paths of all `files` if every one is in the hub cache, else None."""
    from huggingface_hub import try_to_load_from_cache

    paths = []
    for name in files:
        found = try_to_load_from_cache(repo_id, name)
        if not isinstance(found, str):
            if name == "preprocessor_config.json":
                continue  # optional: the architecture decides normalisation without it
            return None
        paths.append(Path(found))
    return paths


def cached_model_path(name: str) -> Path | None:
    """The cached snapshot folder holding a usable checkpoint of `name`, if any."""
    known = find_known_model(name)
    repo_id = repo_id_for(name)
    for files in _candidates(known):
        paths = cached_files(repo_id, files)
        if paths:
            return paths[-1].parent
    return None


def resolve_hub_model(name: str) -> Path:
    """Download (or find in the cache) the files of hub model `name`; returns their folder."""
    cached = cached_model_path(name)
    if cached is not None:
        return cached
    repo_id = repo_id_for(name)
    if is_offline():
        raise ModelNotFoundError(_not_cached_message(repo_id, find_known_model(name)))
    return _download(repo_id, find_known_model(name))


def _download(repo_id: str, known: KnownModel | None) -> Path:
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError, RepositoryNotFoundError

    for files in _candidates(known):
        try:
            paths = [Path(hf_hub_download(repo_id, files[-1]))]
            for name in files[:-1]:
                try:
                    paths.append(Path(hf_hub_download(repo_id, name)))
                except EntryNotFoundError:
                    if name != "preprocessor_config.json":
                        raise
            return paths[0].parent
        except LocalEntryNotFoundError:  # a subclass of EntryNotFoundError: check it first
            raise ModelNotFoundError(
                f"cannot reach the hub to download {repo_id}; {_fetch_hint(repo_id, known)}"
            ) from None
        except EntryNotFoundError:
            continue
        except RepositoryNotFoundError:
            raise ModelNotFoundError(f"no hub repository '{repo_id}' (or it is private)") from None
        except Exception as error:  # network failures come in many types; all mean the same
            raise ModelNotFoundError(
                f"cannot download {repo_id} ({type(error).__name__}); "
                f"{_fetch_hint(repo_id, known)}"
            ) from None
    raise ModelNotFoundError(f"hub repository '{repo_id}' holds no wav2vec2 checkpoint lebench can read")


def _fetch_hint(repo_id: str, known: KnownModel | None) -> str:
    files = _candidates(known)[0]
    return (
        f"fetch it on a connected machine with `hf download {repo_id} {' '.join(files)}` "
        "(then copy the hub cache), or pass a local checkpoint path"
    )


def _not_cached_message(repo_id: str, known: KnownModel | None) -> str:
    return f"{repo_id} is not in the local hub cache and HF_HUB_OFFLINE is set: {_fetch_hint(repo_id, known)}"
