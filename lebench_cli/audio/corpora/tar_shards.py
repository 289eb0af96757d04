"""Tar shards of audio files (the webdataset convention): the members sharing a key (the
member's name up to the first dot of its last component: `spk1/u1.flac`, `spk1/u1.txt`)
are one sample; its audio member becomes a source read from its bytes in the tar, and a
`.txt` member its text. Only the tar's headers are read; nothing is unpacked."""

from __future__ import annotations

import os
import tarfile

from ...errors import InputError
from ...names import printable
from ..sources import AudioSource, TarMember

TAR_EXTENSIONS = ("tar",)
_COMPRESSED = (".tar.gz", ".tgz", ".tar.bz2", ".tar.xz", ".tar.zst")


def is_compressed_tar(path: str) -> bool:
    return path.lower().endswith(_COMPRESSED)


def split_key(member: str) -> tuple:
    """("spk1/u1", "flac") for "spk1/u1.flac"; webdataset's key and extension."""
    folder, name = os.path.split(member)
    stem, dot, extension = name.partition(".")
    return (f"{folder}/{stem}" if folder else stem), extension


def read_tar(path: str, extensions: tuple) -> list:
    if is_compressed_tar(path):
        raise InputError(f"{printable(path)}: a compressed tar has no byte offsets to read members from: "
                         "decompress it first (webdataset shards are plain .tar)")
    audio, texts = {}, {}
    try:
        # Seekable mode: the data of each member is skipped, not read.
        with tarfile.open(path, mode="r:") as tar:
            for info in tar:
                if not info.isfile():
                    continue
                key, extension = split_key(info.name)
                kind = extension.rsplit(".", 1)[-1].lower()
                if kind in extensions:
                    if key in audio:
                        raise InputError(f"{printable(path)}: two audio members for key '{printable(key)}': "
                                         f"{printable(audio[key].member)} and {printable(info.name)}")
                    audio[key] = TarMember(path, info.name, info.offset_data, info.size)
                elif extension == "txt" and info.size < 1 << 20:
                    texts[key] = tar.extractfile(info).read().decode("utf-8", "replace").strip()
    except tarfile.TarError as error:
        raise InputError(f"{printable(path)}: not a readable tar file ({error})") from None
    except OSError as error:
        raise InputError(f"cannot read {printable(path)}: {(error.strerror or str(error)).lower()}") from None
    return [AudioSource(key, f"{path}/{member.member}", origin=member,
                        metadata=(("text", texts[key]),) if key in texts else ())
            for key, member in audio.items()]
