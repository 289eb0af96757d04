"""Writing the input listing once (`lebench extract --dry-run --manifest FILE.tsv`).

A fairseq-style manifest: the first line is the root folder, then one `relative/path<TAB>samples`
line per file, the count in 16 kHz samples (what lebench computes on; for 16 kHz files, the
only rate fairseq's wav2vec recipes take, that is the file's own frame count, as fairseq's
wav2vec_manifest.py writes it). Job-array tasks then read lengths from it instead of walking
the corpus and reading every header again, and the ids read back are the ids of the walk.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ..errors import InputError, OutputError
from ..names import canonical_id, is_printable, printable, with_slashes


@dataclass
class ManifestReport:
    path: str
    files: int
    audio_seconds: float
    unreadable: int

    def line(self) -> str:
        from .summary import count, human_duration

        unreadable = f", {self.unreadable} unreadable (listed without a length)" if self.unreadable else ""
        return (f"wrote {self.path}: {count(self.files, 'file')} "
                f"({human_duration(self.audio_seconds)} of audio){unreadable}")


def write_listing(options, path: str, stdin=None) -> ManifestReport:
    """Every input of `options` (all parts) with its length, written to `path`."""
    from ..audio.inputs import AUDIO_EXTENSIONS, discover, input_form

    if not str(path).endswith(".tsv"):
        raise InputError(f"--manifest {path}: the name must end in .tsv (extract reads .tsv files as manifests)")
    # Written with the walk's own ids; --root and --id-prefix apply again when it is read,
    # so the extract that reads it must be given the same ones (checked below).
    listed = _replayable(stdin)
    for item in options.inputs:
        if input_form(item, options.input_format) not in ("files", "fairseq"):
            raise InputError(f"--manifest {path}: {printable(item)} is a {input_form(item, options.input_format)} "
                             "manifest, which already lists the corpus: give it to each task as it is")
    sources = discover(options.inputs, options.extensions or AUDIO_EXTENSIONS, stdin=listed())
    if not sources:
        raise InputError("no audio files found in " + ", ".join(map(str, options.inputs)))
    report = write_manifest(sources, path)
    if options.root is not None or options.id_prefix:
        final = discover(options.inputs, options.extensions or AUDIO_EXTENSIONS, stdin=listed(),
                         root=options.root, id_prefix=options.id_prefix)
        read = discover([str(path)], root=options.root, id_prefix=options.id_prefix)
        if [s.utt_id for s in read] != [s.utt_id for s in final]:
            os.unlink(path)
            raise InputError(f"--manifest {path}: with --root/--id-prefix, reading it back does not give the "
                             "same ids; nothing written")
    return report


def _replayable(stdin):
    """A function giving the paths on `stdin` afresh at each call (None without stdin), as
    bytes where it has them: a name that is not UTF-8 reaches the walk as it is."""
    import io

    if stdin is None:
        return lambda: None
    binary = getattr(stdin, "buffer", None)
    if binary is None:
        text = stdin.read()
        return lambda: io.StringIO(text)
    data = binary.read()
    return lambda: io.TextIOWrapper(io.BytesIO(data))


def write_manifest(sources: list, path: str) -> ManifestReport:
    """Writes every source with its 16 kHz length to `path` and checks that reading it back
    gives the same ids and lengths. Raises InputError when the ids cannot be kept (inputs
    that are not paths under one folder) and OutputError when `path` cannot be written."""
    from .parts import SAMPLE_RATE, samples_16k

    if not str(path).endswith(".tsv"):
        raise InputError(f"--manifest {path}: the name must end in .tsv (extract reads .tsv files as manifests)")
    root, relpaths = _root_and_relpaths(sources)
    samples = [samples_16k(source) for source in sources]
    lines = [root] + [rel if count is None else f"{rel}\t{count}" for rel, count in zip(relpaths, samples)]
    _write_atomically(Path(path), "\n".join(lines) + "\n")
    _check_round_trip(path, sources, samples)
    known = [count for count in samples if count is not None]
    return ManifestReport(str(path), len(sources), sum(known) / SAMPLE_RATE, len(sources) - len(known))


def _root_and_relpaths(sources: list) -> tuple:
    """One root for all sources, and each one's path under it, chosen so that the id read
    back from the manifest (its relative path without extension) is the source's id."""
    roots, relpaths = set(), []
    for source in sources:
        path = with_slashes(os.path.normpath(source.path))
        # As many trailing components as the id has, spelled as on disk: the id is NFC,
        # the name may be NFD; reading the manifest makes the id canonical again.
        components = path.split("/")
        depth = source.utt_id.count("/") + 1
        relpath = "/".join(components[-depth:])
        if canonical_id(os.path.splitext(relpath)[0]) != source.utt_id:
            roots.add(None)
        elif len(components) == depth:
            roots.add("")
        else:
            roots.add("/".join(components[:-depth]) or "/")
        if "\t" in relpath or "\n" in relpath or "\r" in relpath:
            raise InputError(f"{printable(source.path)}: a tab or line break in its path cannot be written to a "
                             ".tsv manifest")
        if not is_printable(source.path):
            raise InputError(f"{printable(source.path)}: a name that is not UTF-8 cannot be written to a .tsv "
                             "manifest (UTF-8 text); rename it, or extract without --manifest")
        relpaths.append(relpath)
    if len(roots) != 1 or None in roots:
        raise InputError("--manifest needs inputs whose ids are paths under one folder: "
                         "give one folder, one manifest, or files relative to the current folder")
    return os.path.abspath(roots.pop() or "."), relpaths


def _check_round_trip(path: str, sources: list, samples: list):
    from ..audio.inputs import discover

    read = discover([str(path)])
    if [s.utt_id for s in read] != [s.utt_id for s in sources] or [s.num_samples for s in read] != samples:
        os.unlink(path)
        raise InputError(f"--manifest {path}: reading it back does not give the same ids; nothing written")


def _write_atomically(path: Path, text: str):
    temporary = path.with_name(path.name + ".tmp")
    try:
        temporary.write_text(text, encoding="utf-8")
        os.replace(temporary, path)
    except OSError as error:
        raise OutputError(f"cannot write {path}: {(error.strerror or str(error)).lower()}") from None
