"""Creating an output folder, or checking that it holds the same run (resume)."""

from __future__ import annotations

import errno
import json
import os
import shutil
from contextlib import contextmanager
from pathlib import Path

from ..errors import OutputError
from .files import fsync_path, os_reason, write_atomic
from .identity import canonical as _canonical, first_difference, key_difference
from .layout import METADATA_FILE, SHARDS_DIR, STORE_FILES, committed_shards, read_shard_table
from .locks import PartLock, StoreLock, every_part_locked

# Where --overwrite moves the old content before deleting it: while it exists, a removal is
# under way or was cut short, and the next writer finishes it before anything else.
REMOVING_DIR = ".lebench-removing"


@contextmanager
def writing_part(out: Path, metadata: dict, part: int, num_parts: int, overwrite: bool):
    """OUT prepared (prepare_output) and part K/N's lock held, for as long as the block runs.

    Taken in this order: the store lock (exclusive with overwrite: refused while any part is
    written, naming it), then the checks or the removal, then the part lock; so nothing is
    removed while a writer lives, and no writer starts while OUT is being emptied.
    """
    out = Path(out)
    require_writable_folder(out)
    with StoreLock(out, exclusive=overwrite) as store_lock:
        finishing = (out / REMOVING_DIR).exists() and not overwrite
        if finishing:
            store_lock.make_exclusive()
        prepare_output(out, metadata, overwrite)
        if finishing:
            store_lock.make_shared()
        with PartLock(out, part, num_parts):
            yield


def prepare_output(out: Path, metadata: dict, overwrite: bool) -> None:
    """Creates OUT and writes lebench.json, or checks that OUT holds the same run (resume).

    metadata["identity"] decides whether two runs may share OUT. With overwrite, lebench's
    files are removed first (remove_store). A removal that a crash cut short is finished
    first, whatever overwrite says. Parts of one array may call this concurrently with equal
    metadata; writers call it through writing_part, which holds the locks.
    """
    out = Path(out)
    identity = _identity_of(metadata)
    require_writable_folder(out)
    if overwrite or (out / REMOVING_DIR).exists():
        remove_store(out)
    if not overwrite:
        _require_same_run(out, identity)
    if not (out / METADATA_FILE).exists():
        text = json.dumps(metadata, indent=2, ensure_ascii=False) + "\n"
        try:
            write_atomic(out / METADATA_FILE, text)
        except OSError as error:
            raise OutputError(f"cannot write {out / METADATA_FILE}: {os_reason(error)}") from error


def remove_store(out: Path) -> None:
    """Removes lebench's files from OUT, holding every part's lock (refused, naming the
    part, while one is written); lock files stay (removing a held one breaks it).

    Crash-safe: the files are first moved (renamed) into OUT/.lebench-removing, lebench.json
    first so that no reader takes what is left for a store, then that folder is deleted. A
    run that finds the folder finishes the removal (prepare_output).
    """
    out = Path(out)
    trash = out / REMOVING_DIR
    with every_part_locked(out):
        try:
            (trash / SHARDS_DIR).mkdir(parents=True, exist_ok=True)
            fsync_path(out)
        except OSError as error:
            raise OutputError(f"cannot create {trash}: {os_reason(error)}") from error
        for pattern in STORE_FILES:
            for path in sorted(out.glob(pattern)):
                try:
                    os.replace(path, trash / path.relative_to(out))
                except OSError as error:
                    raise OutputError(f"cannot remove {path}: {os_reason(error)}") from error
        try:
            shutil.rmtree(trash)
        except OSError as error:
            raise OutputError(f"cannot remove {trash}: {os_reason(error)}") from error


def _identity_of(metadata: dict) -> dict:
    identity = metadata.get("identity")
    if not isinstance(identity, dict):
        raise ValueError("metadata needs an 'identity' dict")
    return json.loads(json.dumps(identity))  # compare as it will read back from JSON


def require_writable_folder(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise OutputError(f"cannot write to {out}: it exists and is not a folder")
    probe = out / f".lebench-probe-{os.getpid()}"
    try:
        (out / SHARDS_DIR).mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as error:
        raise OutputError(f"cannot write to {out}: {os_reason(error)}") from error


def check_writable_destination(out: Path) -> None:
    """Fails as require_writable_folder would, but creates nothing: a run that stops on a
    later check (a model that does not load, a missing GPU) leaves no folder behind. A
    probe file is created and removed in OUT, or else in the nearest folder above it."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise OutputError(f"cannot write to {out}: it exists and is not a folder")
    target = out
    while not target.exists() and target != target.parent:
        target = target.parent
    probe = target / f".lebench-probe-{os.getpid()}"
    try:
        if not target.is_dir():
            raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(target))
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as error:
        raise OutputError(f"cannot write to {out}: {os_reason(error)}") from error


def check_same_run(out: Path, identity: dict) -> None:
    """Fails as a run with `identity` would on OUT, without writing anything (--dry-run)."""
    _require_same_run(Path(out), _identity_of({"identity": identity}))


def _require_same_run(out: Path, identity: dict) -> None:
    path = out / METADATA_FILE
    if not path.exists():
        _require_shards_of_run(out, identity)
        return
    try:
        stored = json.loads(path.read_text(encoding="utf-8")).get("identity")
    except (OSError, ValueError, AttributeError) as error:
        raise OutputError(f"{path} is not lebench metadata ({error}); "
                          "use --overwrite to replace it") from error
    stored = _canonical(stored) if isinstance(stored, dict) else {}
    identity = _canonical(identity)
    if stored != identity:
        if stored.get("layers") != identity.get("layers") and _without_layers(stored) == _without_layers(identity):
            difference = key_difference(stored, identity, "layers")
            raise OutputError(f"{out} holds features of other layers ({difference}): to store more layers, "
                              "extract them into a second output folder, or use --overwrite to replace "
                              "these features")
        raise OutputError(f"{out} holds features of a different run ({_first_difference(stored, identity)}); "
                          "use --overwrite to replace them")


def _require_shards_of_run(out: Path, identity: dict) -> None:
    """Without lebench.json, OUT's shards say whose they are: lebench.json is written afresh
    only when every shard records this very run, never over features of another."""
    for _, shard in committed_shards(out):
        recorded = read_shard_table(shard).identity
        if recorded is None:
            raise OutputError(f"{out} has no {METADATA_FILE} and {shard} (format 1) does not record its run: "
                              f"restore {METADATA_FILE}, or use --overwrite to replace these features")
        difference = first_difference(recorded, identity)
        if difference is not None:
            raise OutputError(f"{out} has no {METADATA_FILE} and {shard} holds features of a different run "
                              f"({difference}); use --overwrite to replace them")


def _without_layers(identity: dict) -> dict:
    return {key: value for key, value in identity.items() if key != "layers"}


def _first_difference(stored: dict, new: dict) -> str:
    return first_difference(stored, new) or "unknown difference"
