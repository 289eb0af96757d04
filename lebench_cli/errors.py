"""Typed exceptions of the library. The CLI turns each into a one-line `Error: ...`."""


class LebenchError(Exception):
    """Base class: every error the library raises on purpose."""

    exit_code = 1


def install_extra_hint(extra: str) -> str:
    """How to add an optional extra: lebench is installed from its checkout (it is not on
    PyPI), into the venv that `make install` made."""
    return f".venv/bin/pip install -e '.[{extra}]' in the lebench checkout"


def one_line(error: BaseException, first_line: bool = False) -> str:
    """An unexpected exception as one line, "Type: message", its whitespace collapsed;
    `first_line`: only the first line of a message that has several (a CUDA error's)."""
    text = str(error).strip()
    if first_line:
        text = text.splitlines()[0] if text else ""
    return " ".join(f"{type(error).__name__}: {text}".split())


class InputError(LebenchError):
    """An input path, manifest or option value that cannot be used."""


class AudioError(LebenchError):
    """One audio file that cannot be turned into a 16 kHz waveform."""

    def __init__(self, path, reason: str):
        from .names import printable

        self.path = printable(path)  # a name that is not UTF-8 must still print
        super().__init__(f"{self.path}: {reason}")
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


class WorkerError(LebenchError):
    """A `--devices` worker that died or stopped on an error; the others committed."""


class MissingExtraError(LebenchError):
    """An optional integration whose package is not installed."""


class PartFailedError(LebenchError):
    """A part that stopped with an error (its message and exit code are the part's)."""

    def __init__(self, message: str, exit_code: int = 1):
        super().__init__(message)
        self.exit_code = exit_code
