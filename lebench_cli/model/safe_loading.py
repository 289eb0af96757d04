"""torch.load without letting a checkpoint run code: fairseq checkpoints are unpickled
weights-only, with an explicit allowlist of the config classes released checkpoints contain:
a checkpoint is data, and must not be able to run code.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

from ..errors import CheckpointError, UnsafeCheckpointError
from .conversion import _one_line

# Globals that released fairseq checkpoints need besides tensors: omegaconf containers and
# their metadata (cfg-style checkpoints), argparse.Namespace (args-style, fairseq < 0.10),
# and plain builtin containers. Nothing here can run code when unpickled.
ALLOWED_GLOBALS = {
    "argparse.Namespace",
    "builtins.bool",
    "builtins.dict",
    "builtins.float",
    "builtins.int",
    "builtins.list",
    "builtins.set",
    "builtins.str",
    "builtins.tuple",
    "collections.OrderedDict",
    "collections.defaultdict",
    "omegaconf.base.ContainerMetadata",
    "omegaconf.base.Metadata",
    "omegaconf.dictconfig.DictConfig",
    "omegaconf.listconfig.ListConfig",
    "omegaconf.nodes.AnyNode",
    "omegaconf.nodes.BooleanNode",
    "omegaconf.nodes.FloatNode",
    "omegaconf.nodes.IntegerNode",
    "omegaconf.nodes.StringNode",
    "typing.Any",
}


def _resolve_global(name: str):
    module_name, _, attr = name.rpartition(".")
    module = __import__(module_name, fromlist=[attr])
    return getattr(module, attr)


def _allowed_global_objects(path, names=ALLOWED_GLOBALS) -> list:
    """The allowlisted classes NAMES, imported; a missing package (omegaconf, which fairseq
    checkpoints' configs are made of) is named, not blamed on the file."""
    objects = []
    for name in sorted(names):
        try:
            objects.append(_resolve_global(name))
        except ImportError as error:
            package = (error.name or name).split(".")[0]
            raise CheckpointError(f"{path}: reading it needs the {package} package, which does not import "
                                  f"({_one_line(error)}): see docs/install.md") from None
    return objects


def load_torch_file(path: Path, trust: bool = False) -> dict:
    """torch.load a checkpoint without letting it run code (unless `trust`)."""
    import pickle

    import torch

    if trust:
        try:
            return torch.load(path, map_location="cpu", weights_only=False)
        except Exception as error:  # any failure of an opaque pickle is the file's fault
            raise CheckpointError(f"{path}: cannot be loaded: {_one_line(error)}") from None
    if zipfile.is_zipfile(path):
        try:
            needed = torch.serialization.get_unsafe_globals_in_checkpoint(path)
        except Exception as error:
            raise CheckpointError(f"{path}: not a readable PyTorch checkpoint: {_one_line(error)}") from None
        refused = sorted(set(needed) - ALLOWED_GLOBALS)
        if refused:
            raise UnsafeCheckpointError(_unsafe_message(path, refused[0]))
        allowed = _allowed_global_objects(path, set(needed))
    else:
        allowed = _allowed_global_objects(path)
    try:
        with torch.serialization.safe_globals(allowed):
            return torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    except pickle.UnpicklingError as error:
        raise UnsafeCheckpointError(_unsafe_message(path, _offending_global(error))) from None
    except Exception as error:
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint: {_one_line(error)}") from None


def _offending_global(error: Exception) -> str:
    text = str(error)
    marker = "GLOBAL "
    if marker in text:
        return text.split(marker, 1)[1].split()[0]
    return _one_line(error)


def _unsafe_message(path, name: str) -> str:
    return (
        f"{path}: refused to load: it needs '{name}', which is not in the allowlist of "
        "checkpoint config classes (loading it could run code); pass --trust-checkpoint "
        "only if you trust this file"
    )
