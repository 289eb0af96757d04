"""The Kaldi data-directory files beside feats.scp: utt2spk, spk2utt, text, segments, wav.scp
(kaldi_recordings.py), and with `--kaldi-ids sanitize` the id_map that turns Kaldi's ids back
into the store's.

Kaldi splits every table line at its first whitespace, and `utils/validate_data_dir.sh` wants
each file sorted in C-locale byte order (`LC_ALL=C sort`), which is what `c_sorted` gives."""

from __future__ import annotations

import hashlib
import json

from ..errors import InputError
from .kaldi_recordings import WAV_SCP, recording_place, wav_scp_lines

KEEP, SANITIZE = "keep", "sanitize"
KALDI_IDS = (KEEP, SANITIZE)
ID_MAP = "id_map"


def c_sorted(names) -> list:
    """Sorted as `LC_ALL=C sort` sorts: by UTF-8 bytes."""
    return sorted(names, key=lambda name: name.encode("utf-8", "surrogateescape"))


def holds_kaldi(name: str) -> bool:
    """Whether a Kaldi table key can be this string as it is."""
    return bool(name) and all(character.isprintable() and not character.isspace() for character in name)


def kaldi_names(names) -> dict:
    """{name: Kaldi name} for `--kaldi-ids sanitize`: a name Kaldi holds stays itself; in the
    others each whitespace or non-printable character becomes "_", and where that meets
    another name, "_" and 8 hex digits of the name's hash follow. The same names always map
    the same way, in any order."""
    names = set(names)
    kept = {name for name in names if holds_kaldi(name)}
    replaced = {name: "".join(c if c.isprintable() and not c.isspace() else "_" for c in name) or "_"
                for name in names - kept}
    counts: dict = {}
    for candidate in replaced.values():
        counts[candidate] = counts.get(candidate, 0) + 1
    mapping = {name: name for name in kept}
    for name, candidate in replaced.items():
        if candidate in kept or counts[candidate] > 1:
            digest = hashlib.blake2b(name.encode("utf-8", "surrogateescape"), digest_size=4).hexdigest()
            candidate = f"{candidate}_{digest}"
        mapping[name] = candidate
    if len(set(mapping.values())) != len(mapping):  # a hash suffix that meets a name as it is
        taken: dict = {}
        for name in c_sorted(mapping):
            other = taken.setdefault(mapping[name], name)
            if other != name:
                raise InputError(f"ids {other!r} and {name!r} both become {mapping[name]!r} in Kaldi: rename one")
    return mapping


def check_names(store, kaldi_ids: str, other_formats: str = "npy or lhotse") -> None:
    """With `keep`, refuses an utterance id, speaker or recording Kaldi cannot hold, naming the
    way out (sanitize, or OTHER_FORMATS); with `sanitize`, every name maps (kaldi_names)."""
    if kaldi_ids not in KALDI_IDS:
        raise InputError(f"--kaldi-ids {kaldi_ids!r}: use keep or sanitize")
    if kaldi_ids == SANITIZE:
        kaldi_names(store.ids)
        return
    for row in store.utterances():
        if not holds_kaldi(row["id"]):
            raise InputError(f"utterance id {row['id']!r} holds whitespace or an unprintable character, which Kaldi "
                             "tables cannot: export with --kaldi-ids sanitize (ids mapped, see DEST/layer_L/id_map), "
                             f"or to {other_formats}")
        for field in ("speaker", "recording"):
            value = _name(row["metadata"], field)
            if value is not None and not holds_kaldi(value):
                raise InputError(f"the {field} {value!r} of utterance {row['id']!r} holds whitespace or an "
                                 "unprintable character, which Kaldi tables cannot: export with --kaldi-ids sanitize")


class DataFiles:
    """The lines of a layer folder's data files, utterance by utterance (`add`), then their
    text, C-sorted (`files`): {file name: text}; `text` only when some utterance has text,
    `segments` only when some has a start or end in a recording, `wav.scp` when every
    recording's audio can be written (else, with segments, `note` says why not), keyed
    by recording with segments and by utterance without, `id_map` with sanitize. `pipes()`:
    the sources the store recorded as pipe commands (kaldi_recordings.pipe_places)."""

    def __init__(self, rows: list, kaldi_ids: str, pipes=frozenset):
        self.sanitize = kaldi_ids == SANITIZE
        ids = [row["id"] for row in rows]
        self.ids = kaldi_names(ids) if self.sanitize else {utt_id: utt_id for utt_id in ids}
        speakers = {_name(row["metadata"], "speaker") or self.ids[row["id"]] for row in rows}
        recordings = {self._recording(row) for row in rows}
        self.speakers = kaldi_names(speakers) if self.sanitize else {name: name for name in speakers}
        self.recordings = kaldi_names(recordings) if self.sanitize else {name: name for name in recordings}
        self.rows = rows
        self.pipes = pipes
        self.note = ""

    def files(self) -> dict:
        utt2spk, text, segments, places = {}, {}, {}, {}
        with_text = any(isinstance(row["metadata"].get("text"), str) for row in self.rows)
        with_segments = any("start" in row["metadata"] or "end" in row["metadata"] for row in self.rows)
        for row in self.rows:
            key, metadata = self.ids[row["id"]], row["metadata"]
            utt2spk[key] = self.speakers[_name(metadata, "speaker") or key]
            if with_text:
                words = " ".join(str(metadata.get("text", "")).split())  # one line: Kaldi's transcripts
                text[key] = f"{key} {words}" if words else key
            if with_segments:
                start = float(metadata.get("start", 0.0))
                end = float(metadata.get("end", start + row["duration"]))
                segments[key] = f"{key} {self.recordings[self._recording(row)]} {start!r} {end!r}"
            recording = self.recordings[self._recording(row)] if with_segments else key
            places.setdefault(recording, set()).add(recording_place(row))
        spk2utt: dict = {}
        for key in c_sorted(utt2spk):
            spk2utt.setdefault(utt2spk[key], []).append(key)
        files = {"utt2spk": _lines(f"{key} {utt2spk[key]}" for key in c_sorted(utt2spk)),
                 "spk2utt": _lines(f"{speaker} {' '.join(spk2utt[speaker])}" for speaker in c_sorted(spk2utt))}
        if with_text:
            files["text"] = _lines(text[key] for key in c_sorted(text))
        if with_segments:
            files["segments"] = _lines(segments[key] for key in c_sorted(segments))
        wav_scp, note = wav_scp_lines(places, self.pipes)
        self.note = note if with_segments else ""  # without segments, nothing names a recording wav.scp lacks
        if wav_scp:
            files[WAV_SCP] = _lines(wav_scp[key] for key in c_sorted(wav_scp))
        if self.sanitize:
            original = {kaldi: utt_id for utt_id, kaldi in self.ids.items()}
            files[ID_MAP] = _lines(f"{key} {json.dumps(original[key], ensure_ascii=False)}" for key in c_sorted(original))
        return files

    def _recording(self, row: dict) -> str:
        """The recording a segment comes from: as the metadata names it, else the utterance itself
        (Kaldi's convention for a whole file)."""
        return _name(row["metadata"], "recording") or self.ids[row["id"]]


def read_id_map(path) -> dict:
    """{Kaldi id: store id} from an id_map file (kaldi_id, a space, the store's id as a JSON string)."""
    mapping = {}
    with open(path, encoding="utf-8") as file:
        for number, line in enumerate(file, 1):
            key, _, quoted = line.rstrip("\n").partition(" ")
            try:
                mapping[key] = json.loads(quoted)
            except ValueError:
                raise ValueError(f"line {number} of {path} is not 'kaldi_id \"store id\"'") from None
    return mapping


def _name(metadata: dict, field: str):
    value = metadata.get(field)
    return None if value is None or value == "" else str(value)


def _lines(lines) -> str:
    return "".join(f"{line}\n" for line in lines)
