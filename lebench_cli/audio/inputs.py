"""Finding audio: folders, single files, path lists on stdin and fairseq .tsv manifests, and
the corpus manifests of audio/corpora/ (each input's form detected, or named by `input_format`)."""

from __future__ import annotations

import os
import re
import sys
from dataclasses import replace
from typing import Sequence, TextIO

from ..errors import InputError
from ..names import canonical_id, printable, with_slashes
from .corpora.common import CorpusOptions
from .sources import AudioSource
from .streams import read_to_end

# What a folder walk takes by default: the formats speech is stored in that libsndfile
# decodes. Not the other types it reads (.mat, .htk, .sd2, .xi, .voc, ...): beside a corpus
# those are labels, features or instrument samples, and a MATLAB or HTK file decodes as
# audio at a guessed rate. No "raw" (headerless: the rate is unknown) and no "wv" (WavPack,
# which libsndfile does not read). Any extension can still be asked for with --ext.
AUDIO_EXTENSIONS: tuple[str, ...] = (
    "wav", "flac", "ogg", "oga", "opus", "mp3", "wave", "aiff", "aif", "aifc",
    "au", "snd", "caf", "w64", "rf64", "sph", "nist",
)

STDIN = "-"

# The forms an input can take (`--input-format`); "auto" detects each input's own.
INPUT_FORMATS = ("auto", "files", "fairseq", "kaldi", "speechbrain", "lhotse", "hf", "tar", "list", "commonvoice")
# Forms whose ids are file paths: --root makes those relative to it. The others take the
# manifest's own ids.
_PATH_FORMS = ("files", "fairseq")


def discover(
    inputs: Sequence[str],
    extensions: Sequence[str] = AUDIO_EXTENSIONS,
    stdin: TextIO | None = None,
    root: str | None = None,
    id_prefix: str = "",
    input_format: str = "auto",
    corpus: CorpusOptions = CorpusOptions(),
) -> list[AudioSource]:
    """Expand folders, audio files, `-` (paths on stdin), .tsv manifests and corpus manifests
    into sources.

    Sources come in the order of `inputs`, each folder's files sorted by relative path.
    Ids are `/`-separated and without extension: with `root`, every file's path relative
    to root; without, relative to the folder for a folder, the path as given for a file or
    a stdin line, the manifest's relative path for a .tsv. `id_prefix` is prepended to
    every id as it is; the id is then made canonical (`names.canonical_id`: bytes that are
    not UTF-8 as \\xNN, Unicode NFC). Paths listed on stdin or in a manifest are not checked
    here: a missing one fails later, when it is decoded. Corpus manifests (`input_format`,
    or detected: see `input_form`) give their own ids, which `root` leaves alone (it fills
    SpeechBrain's $data_root instead), and their paths are checked. Raises InputError on
    unusable inputs, files outside root and duplicate ids (two names of one canonical id
    included).
    """
    inputs = [os.fspath(item) for item in inputs]
    if inputs.count(STDIN) > 1:
        raise InputError("'-' (paths on standard input) given more than once")
    check_id_prefix(id_prefix)
    if root is not None and not os.path.isdir(root):
        raise InputError(f"--root {root}: no such folder")
    if input_format not in INPUT_FORMATS:
        raise InputError(f"unknown input format '{input_format}' (one of {', '.join(INPUT_FORMATS)})")
    wanted = tuple(dict.fromkeys(ext.lower().lstrip(".") for ext in extensions))
    corpus = CorpusOptions(**{**vars(corpus), "root": root})
    forms = [input_form(item, input_format) for item in inputs]
    lhotse_items = [item for item, form in zip(inputs, forms) if form == "lhotse"]
    sources = []
    for item, form in zip(inputs, forms):
        if form == "lhotse":
            if not os.path.isfile(item):
                raise InputError(f"no such file: {printable(item)}")
            if item == lhotse_items[0]:  # read together: supervisions find their recordings
                from .corpora.lhotse_manifests import read_lhotse

                sources.extend(read_lhotse(lhotse_items, corpus))
            continue
        found = _read_form(item, form, wanted, stdin if stdin is not None else sys.stdin, corpus)
        if root is not None and form in _PATH_FORMS:
            found = [_relative_to_root(source, root) for source in found]
        sources.extend(found)
    names = [id_prefix + source.utt_id for source in sources]
    sources = [replace(s, utt_id=canonical_id(name)) for name, s in zip(names, sources)]
    _check_unique(sources, names)
    return sources


def check_id_prefix(prefix: str) -> None:
    """A prefix is pasted before ids as it is ("train/" gives "train/spk1/u1")."""
    if not prefix:
        return
    if prefix.startswith("/") or any(c in prefix for c in "\t\n\r"):
        raise InputError(f"invalid --id-prefix {prefix!r}: no leading '/', tabs or line breaks")
    if ".." in prefix.split("/") or "." in prefix.split("/")[:-1]:
        raise InputError(f"invalid --id-prefix {prefix!r}: no '.' or '..' path components")


def _relative_to_root(source: AudioSource, root: str) -> AudioSource:
    # Absolute but not resolved: a corpus reached through a symlink keeps the ids it has
    # under the link.
    relative = os.path.relpath(os.path.abspath(source.path), os.path.abspath(root))
    if relative == os.curdir or relative.split(os.sep)[0] == os.pardir:
        raise InputError(f"{printable(source.path)} is outside --root {printable(root)}")
    return replace(source, utt_id=os.path.splitext(with_slashes(relative))[0])


def input_form(item: str, input_format: str = "auto") -> str:
    """The form `item` is read as: `input_format` unless "auto", else detected by its form
    (docs/extract.md has the table)."""
    from .corpora import hf_tables, kaldi, lhotse_manifests, tar_shards

    if input_format != "auto":
        return input_format
    if item == STDIN:
        return "files"
    if os.path.isdir(item):
        if kaldi.is_kaldi_dir(item):
            return "kaldi"
        if hf_tables.is_saved_dataset(item) or hf_tables.is_dataset_dict(item):
            return "hf"
        return "files"
    lowered = item.lower()
    if os.path.basename(item) == kaldi.WAV_SCP:
        return "kaldi"
    if lhotse_manifests.is_lhotse_manifest(item):
        return "lhotse"
    if lowered.endswith((".tar", *tar_shards._COMPRESSED)):
        return "tar"
    extension = _extension(item)
    if extension == "tsv" and os.path.isfile(item):
        from .corpora.id_lists import looks_like_common_voice

        return "commonvoice" if looks_like_common_voice(item) else "fairseq"
    return {"csv": "speechbrain", "json": "speechbrain", "parquet": "hf", "arrow": "hf", "list": "list",
            "lst": "list"}.get(extension, "files")


def _read_form(item: str, form: str, wanted: tuple, stdin: TextIO, corpus: CorpusOptions) -> list[AudioSource]:
    if form == "files":
        return _expand(item, wanted, stdin)
    if item == STDIN:
        if form != "list":
            raise InputError(f"'-' (standard input) can hold paths or, with --input-format list, id<TAB>path "
                             f"lines; not {form} manifests")
        from .corpora.id_lists import read_id_list

        return read_id_list(_stdin_lines(stdin), "stdin")
    if not os.path.exists(item):
        raise InputError(f"no such file or folder: {printable(item)}")
    if form == "fairseq":
        if os.path.isdir(item):
            raise InputError(f"{printable(item)}: a folder, not a fairseq .tsv manifest")
        return _from_manifest(item)
    from .corpora import reading

    return reading.read_form(item, form, wanted, corpus)


def _stdin_lines(stream: TextIO) -> list[str]:
    binary = getattr(stream, "buffer", None)
    if binary is None:
        return stream.read().splitlines()
    return [os.fsdecode(line) for line in read_to_end(binary).splitlines()]


def _expand(item: str, wanted: tuple[str, ...], stdin: TextIO) -> list[AudioSource]:
    if item == STDIN:
        return _from_list(stdin)
    if os.path.isdir(item):
        return _from_folder(item, wanted)
    if not os.path.exists(item):
        raise InputError(f"no such file or folder: {printable(item)}")
    if _extension(item) == "tsv":
        return _from_manifest(item)
    if _extension(item) in wanted:
        return [AudioSource(_file_id(item), item)]
    listing = ", ".join(wanted[:6]) + (", ..." if len(wanted) > 6 else "")
    raise InputError(f"{printable(item)}: not an audio file or .tsv manifest (extensions: {listing})")


def _from_folder(folder: str, wanted: tuple[str, ...]) -> list[AudioSource]:
    found = []
    # followlinks=False: a symlink to a parent folder must not make the walk loop.
    for dirpath, _, filenames in os.walk(folder, onerror=_unreadable_folder, followlinks=False):
        reldir = with_slashes(os.path.relpath(dirpath, folder))
        for name in filenames:
            if _extension(name) in wanted:
                relpath = name if reldir == "." else f"{reldir}/{name}"
                found.append((relpath, os.path.join(dirpath, name)))
    return [AudioSource(os.path.splitext(relpath)[0], path) for relpath, path in sorted(found)]


def _unreadable_folder(error: OSError):
    # os.walk skips unreadable folders silently; missing files are worse than stopping.
    reason = (error.strerror or str(error)).lower()
    raise InputError(f"cannot read folder {printable(error.filename)}: {reason}")


def _from_list(stream: TextIO) -> list[AudioSource]:
    # Every non-blank line is a path, even one that starts with '#'. Read as bytes where the
    # stream has them: `find` prints names that are not UTF-8 as they are.
    paths = [line.strip() for line in _stdin_lines(stream)]
    return [AudioSource(_file_id(path), path) for path in paths if path]


def _from_manifest(manifest: str) -> list[AudioSource]:
    lines = _read_lines(manifest)
    root = lines[0].strip()
    return [
        _manifest_entry(manifest, number, line, root)
        for number, line in enumerate(lines[1:], start=2)
        if line.strip()
    ]


def _read_lines(manifest: str) -> list[str]:
    try:
        with open(manifest, "rb") as file:  # a FIFO or process substitution may come slowly
            text = read_to_end(file).decode("utf-8")
        return text.replace("\r\n", "\n").replace("\r", "\n").split("\n")  # as text mode reads lines
    except UnicodeDecodeError:
        raise InputError(f"{manifest}: not a UTF-8 text manifest") from None
    except OSError as error:
        raise InputError(f"cannot read {manifest}: {(error.strerror or str(error)).lower()}") from None


def _manifest_entry(manifest: str, number: int, line: str, root: str) -> AudioSource:
    fields = [field.strip() for field in line.split("\t")]
    where = f"{manifest}:{number}"
    if len(fields) > 2:
        raise InputError(f"{where}: expected 'path<TAB>samples', found {len(fields)} tab-separated fields")
    relpath = fields[0]
    if not relpath:
        raise InputError(f"{where}: empty path")
    num_samples = None
    if len(fields) == 2:
        if not re.fullmatch(r"[0-9]+", fields[1]):
            raise InputError(f"{where}: bad sample count '{fields[1]}' (expected a whole number)")
        num_samples = int(fields[1])
    return AudioSource(_file_id(relpath), os.path.join(root, relpath), num_samples)


def _check_unique(sources: list[AudioSource], names: list[str]):
    """`names`: each source's id before it was made canonical, to say why two ids clash."""
    first = {}
    for position, source in enumerate(sources):
        seen = first.setdefault(source.utt_id, position)
        if seen != position:
            other = sources[seen]
            raise InputError(f"duplicate utterance id '{source.utt_id}': {printable(other.path)} and "
                             f"{printable(source.path)}{_clash_hint(other, source, names[seen], names[position])}")


def _clash_hint(first: AudioSource, second: AudioSource, first_name: str, second_name: str) -> str:
    if first_name != second_name:
        if printable(first_name) == printable(second_name):
            return " (one name has bytes that are not UTF-8, the other spells them \\xNN: rename one)"
        return " (their names differ only in Unicode normalisation, NFC and NFD: rename one)"
    first_extension, second_extension = _extension(first.path), _extension(second.path)
    if first_extension != second_extension:
        return f" (two formats of one file? pick one with --ext {first_extension} or --ext {second_extension})"
    return ""


def _file_id(path: str) -> str:
    return os.path.splitext(with_slashes(os.path.normpath(path)))[0]


def _extension(name: str) -> str:
    return os.path.splitext(name)[1][1:].lower()
