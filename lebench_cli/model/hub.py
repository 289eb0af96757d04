"""Hub ids to local files, through huggingface_hub's cache (HF_HUB_OFFLINE is honoured)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..errors import ModelNotFoundError
from .catalog import FAIRSEQ, KnownModel, SPEECHBRAIN, TRANSFORMERS, find_known_model
from .formats.files import FAIRSEQ_CHECKPOINT_NAMES, SPEECHBRAIN_WEIGHT_NAMES, TRANSFORMERS_WEIGHT_NAMES

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


@dataclass(frozen=True)
class FetchedModel:
    """Where a model's files are: `state` is "local" (a path, nothing to fetch), "cached"
    (found in the hub cache, no network used) or "downloaded"."""

    model: str
    repo_id: str | None
    path: Path
    state: str


def fetch_hub_model(name: str) -> FetchedModel:
    """The snapshot folder of hub model `name` in the hub cache, downloading the files
    `extract` loads first when they are not there."""
    known = find_known_model(name)
    repo_id = repo_id_for(name)
    cached = cached_model_path(name)
    if cached is not None:
        return FetchedModel(name, repo_id, cached, "cached")
    if is_offline():
        raise ModelNotFoundError(_not_cached_message(repo_id))
    return FetchedModel(name, repo_id, _download(repo_id, known), "downloaded")


def resolve_hub_model(name: str) -> Path:
    """Download (or find in the cache) the files of hub model `name`; returns their folder."""
    return fetch_hub_model(name).path


def _download(repo_id: str, known: KnownModel | None) -> Path:
    for files in _candidates(known):
        if _on_hub(repo_id, files[-1]):
            folder = _download_files(repo_id, files)
            if folder is not None:
                return folder
    raise ModelNotFoundError(f"hub repository '{repo_id}' holds no wav2vec2 checkpoint lebench can read")


def _on_hub(repo_id: str, filename: str) -> bool:
    """Whether the hub holds `filename`, asked with one request and no retries:
    hf_hub_download retries network errors for ~20 s, which only delays the error when
    there is no network at all."""
    from huggingface_hub import constants, get_hf_file_metadata, hf_hub_url
    from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError, RepositoryNotFoundError

    try:
        get_hf_file_metadata(hf_hub_url(repo_id, filename), timeout=constants.HF_HUB_ETAG_TIMEOUT)
        return True
    except EntryNotFoundError:
        return False
    except RepositoryNotFoundError:
        raise ModelNotFoundError(f"no hub repository '{repo_id}' (or it is private)") from None
    except HfHubHTTPError:
        return True  # the hub answered (busy, rate limit...): hf_hub_download retries those
    except ValueError as error:
        raise ModelNotFoundError(f"'{repo_id}' is not a valid hub id ({_one_line(error)})") from None
    except Exception as error:  # no answer: connection, name resolution, proxy, TLS, timeout
        raise ModelNotFoundError(_unreachable_message(repo_id, error)) from None


def _download_files(repo_id: str, files) -> Path | None:
    """The folder of `files` once downloaded; None if the hub lacks a required one."""
    from huggingface_hub import constants, hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError, RepositoryNotFoundError

    try:
        folder = Path(hf_hub_download(repo_id, files[-1])).parent
        for name in files[:-1]:
            try:
                hf_hub_download(repo_id, name)
            except LocalEntryNotFoundError:  # a subclass of EntryNotFoundError: check it first
                raise
            except EntryNotFoundError:
                if name != "preprocessor_config.json":  # optional: the architecture decides without it
                    return None
        return folder
    except LocalEntryNotFoundError as error:  # the network went away after the first request
        raise ModelNotFoundError(_unreachable_message(repo_id, error)) from None
    except RepositoryNotFoundError:
        raise ModelNotFoundError(f"no hub repository '{repo_id}' (or it is private)") from None
    except Exception as error:
        raise ModelNotFoundError(
            f"cannot download {repo_id} from {constants.ENDPOINT} ({type(error).__name__}: {_one_line(error)[:200]})"
        ) from None


def _unreachable_message(repo_id: str, error: Exception) -> str:
    from huggingface_hub import constants

    return (
        f"cannot download {repo_id} from {constants.ENDPOINT} ({type(error).__name__}): "
        f"{_offline_hint(repo_id)}; HF_HUB_OFFLINE=1 skips the network"
    )


def _not_cached_message(repo_id: str) -> str:
    return f"{repo_id} is not in the local hub cache and HF_HUB_OFFLINE is set: {_offline_hint(repo_id)}"


def _offline_hint(repo_id: str) -> str:
    return (
        f"run `lebench fetch {repo_id}` on a machine with network, into a hub cache this one reads "
        "(HF_HOME), or pass a local checkpoint path"
    )


def _one_line(error: Exception) -> str:
    return " ".join(str(error).split())
