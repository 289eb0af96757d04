"""Typed exceptions of the library. The CLI turns each into a one-line `Error: ...`."""


class LebenchError(Exception):
    """Base class: every error the library raises on purpose."""

    exit_code = 1


class InputError(LebenchError):
    """An input path, manifest or option value that cannot be used."""


class AudioError(LebenchError):
    """One audio file that cannot be turned into a 16 kHz waveform."""

    def __init__(self, path, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path = str(path)
        self.reason = reason


class CheckpointError(LebenchError):
    """A checkpoint that cannot be read, or whose content is not a wav2vec2 model."""


class UnsafeCheckpointError(CheckpointError):
    """A checkpoint that would run code or build objects outside the allowlist on load."""


class ModelNotFoundError(LebenchError):
    """A model name that is neither a local path nor a resolvable hub repository."""


class OutputError(LebenchError):
    """An output folder that cannot be written, is locked, or holds an incompatible run."""


class StoreReadError(InputError):
    """A shard of an output folder that HDF5 cannot read (damaged, truncated, not HDF5)."""


class StoreIntegrityError(LebenchError):
    """Stored bytes that do not match their checksum, or a shard that is not this store's."""
