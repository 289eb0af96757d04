"""Metadata through every export, read back with the other tools' own libraries: Kaldi data
files (kaldiio reads the ark/scp; sorted in C order; --kaldi-ids sanitize and its id_map),
lhotse supervisions (lhotse's K2SpeechRecognitionDataset and samplers run on the cuts), npy's
metadata.jsonl; and stores of means only."""

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from click.testing import CliRunner

from lebench_cli.cli import main
from lebench_cli.export.kaldi_data import c_sorted, kaldi_names
from lebench_cli.reading.store import open_features
from lebench_cli.storage import PartLock, ShardWriter, StoredUtterance, WriterOptions, prepare_output

LAYERS = ["0", "2"]
ROWS = {  # id -> metadata
    "B a": {"speaker": "spk B", "text": "bonjour  à\ttous", "language": "fr", "start": 0.5, "end": 1.1,
            "recording": "rec1", "mood": "calm"},
    "a": {"speaker": "spkA", "text": "oui", "recording": "rec1", "start": 1.5, "end": 1.9},
    "_x": {},
}


def write_store(out: Path, rows: dict = ROWS, audio: Path = None, store_frames=True, store_mean=False) -> Path:
    rng = np.random.default_rng(0)
    prepare_output(out, {"identity": {"layers": LAYERS}, "model": {"hub_id": "x/tiny", "num_layers": 2}},
                   overwrite=False)
    options = WriterOptions(layers=LAYERS, store_frames=store_frames, store_mean=store_mean)
    with PartLock(out, 1, 1), ShardWriter(out, options) as writer:
        for number, (utt_id, metadata) in enumerate(rows.items()):
            frames = 10 + 5 * number
            source = str(audio / f"{number}.wav") if audio else f"/audio/{number}.wav"
            if audio:
                audio.mkdir(exist_ok=True)
                sf.write(source, np.zeros(frames * 320 + 80, np.float32), 16000)
            states = {name: rng.normal(size=(frames, 6)).astype(np.float32) for name in LAYERS}
            writer.add(StoredUtterance(utt_id, source, (frames * 320 + 80) / 16000, frames, states,
                                       metadata=dict(metadata)))
    return out


def export(*args):
    return CliRunner().invoke(main, ["export", *map(str, args)], catch_exceptions=False)


def lines(path: Path) -> list:
    return path.read_text(encoding="utf-8").splitlines()


def test_kaldi_sanitize_maps_ids_reversibly_and_sorts_every_file_in_c_order(tmp_path):
    import kaldiio

    store = write_store(tmp_path / "store")
    refused = export(store, "--format", "kaldi", "-o", tmp_path / "keep")
    assert (refused.exit_code, refused.output) == (1, (
        "Error: utterance id 'B a' holds whitespace or an unprintable character, which Kaldi tables cannot: export "
        "with --kaldi-ids sanitize (ids mapped, see DEST/layer_L/id_map), or to npy or lhotse\n"))
    result = export(store, "--format", "kaldi", "--kaldi-ids", "sanitize", "-o", tmp_path / "kaldi")
    assert result.exit_code == 0, result.output
    folder = tmp_path / "kaldi" / "layer_2"
    assert sorted(path.name for path in folder.iterdir()) == [
        "feats.ark", "feats.scp", "id_map", "segments", "spk2utt", "text", "utt2spk"]
    assert [line.split(" ", 1)[0] for line in lines(folder / "feats.scp")] == ["B_a", "_x", "a"]  # bytes: B < _ < a
    assert lines(folder / "id_map") == ['B_a "B a"', '_x "_x"', 'a "a"']
    assert lines(folder / "utt2spk") == ["B_a spk_B", "_x _x", "a spkA"]
    assert lines(folder / "spk2utt") == ["_x _x", "spkA a", "spk_B B_a"]
    assert lines(folder / "text") == ["B_a bonjour à tous", "_x", "a oui"]
    assert lines(folder / "segments") == ["B_a rec1 0.5 1.1", f"_x _x 0.0 {(20 * 320 + 80) / 16000!r}",
                                          "a rec1 1.5 1.9"]
    id_map = {line.split(" ", 1)[0]: json.loads(line.split(" ", 1)[1]) for line in lines(folder / "id_map")}
    scp = kaldiio.load_scp(str(folder / "feats.scp"))
    with open_features(store) as features:
        for kaldi_id, utt_id in id_map.items():
            np.testing.assert_array_equal(scp[kaldi_id], features.read(utt_id, 2).astype(np.float32))
        ark_order = [key for key, _ in kaldiio.load_ark(str(folder / "feats.ark"))]
        assert ark_order == [kaldi_names(features.ids)[utt_id] for utt_id in features.ids]  # storage order
    verified = CliRunner().invoke(main, ["verify", str(tmp_path / "kaldi")])
    assert verified.exit_code == 0, verified.output
    again = export(store, "--format", "kaldi", "--kaldi-ids", "sanitize", "-o", tmp_path / "kaldi")
    assert again.output.endswith("; 3 unchanged\n")


def test_sanitized_names_are_unique_deterministic_and_kept_where_kaldi_holds_them():
    names = ["a b", "a_b", "a\tb", "c d", "ok", "é\u200bx"]
    mapping = kaldi_names(names)
    assert mapping == kaldi_names(list(reversed(names)))
    assert mapping["a_b"] == "a_b" and mapping["ok"] == "ok" and mapping["c d"] == "c_d"
    assert mapping["a b"].startswith("a_b_") and mapping["a\tb"].startswith("a_b_") and len(mapping["a b"]) == 12
    assert len(set(mapping.values())) == len(names)
    assert all(" " not in value and "\t" not in value for value in mapping.values())
    assert c_sorted(["a", "B a", "_x", "é", "z"]) == ["B a", "_x", "a", "z", "é"]


def test_kaldi_keep_writes_the_data_files_of_kaldi_safe_ids(tmp_path):
    rows = {"spk1-u1": {"speaker": "spk1", "text": "un"}, "spk1-u0": {"speaker": "spk1"}, "spk2-u0": {}}
    store = write_store(tmp_path / "store", rows)
    result = export(store, "--format", "kaldi", "--layers", "0", "-o", tmp_path / "kaldi")
    # The sources are not on this machine: no wav.scp, and without segments nothing to say.
    assert (result.exit_code, result.output) == (0, f"exported 3 new, replaced 0, removed 0 in {tmp_path / 'kaldi'}\n")
    folder = tmp_path / "kaldi" / "layer_0"
    assert sorted(path.name for path in folder.iterdir()) == ["feats.ark", "feats.scp", "spk2utt", "text", "utt2spk"]
    assert lines(folder / "utt2spk") == ["spk1-u0 spk1", "spk1-u1 spk1", "spk2-u0 spk2-u0"]
    assert lines(folder / "spk2utt") == ["spk1 spk1-u0 spk1-u1", "spk2-u0 spk2-u0"]
    assert lines(folder / "text") == ["spk1-u0", "spk1-u1 un", "spk2-u0"]
    result = export(store, "--format", "npy", "--kaldi-ids", "sanitize", "-o", tmp_path / "npy")
    assert (result.exit_code, result.output) == (1, "Error: --kaldi-ids applies to --format kaldi only\n")


def test_a_kaldi_speaker_with_whitespace_needs_sanitize(tmp_path):
    store = write_store(tmp_path / "store", {"u1": {"speaker": "Jean Dupont"}})
    result = export(store, "--format", "kaldi", "-o", tmp_path / "kaldi")
    assert (result.exit_code, result.output) == (1, (
        "Error: the speaker 'Jean Dupont' of utterance 'u1' holds whitespace or an unprintable character, which "
        "Kaldi tables cannot: export with --kaldi-ids sanitize\n"))
    assert export(store, "--format", "kaldi", "--kaldi-ids", "sanitize", "-o", tmp_path / "kaldi").exit_code == 0
    assert lines(tmp_path / "kaldi" / "layer_0" / "utt2spk") == ["u1 Jean_Dupont"]


def write_store_of(out: Path, sources: list) -> Path:
    """A store of the AudioSources an input reader gave, each stored as extraction stores it
    (its source key, its recording's fingerprint, its metadata), with random features."""
    from lebench_cli.pipeline.extract import utterance_metadata
    from lebench_cli.pipeline.resume import source_fingerprint, source_key

    rng = np.random.default_rng(0)
    prepare_output(out, {"identity": {"layers": LAYERS}, "model": {"hub_id": "x/tiny", "num_layers": 2}},
                   overwrite=False)
    with PartLock(out, 1, 1), ShardWriter(out, WriterOptions(layers=LAYERS)) as writer:
        for source in sources:
            duration = source.segment.end - source.segment.start if source.segment else 1.0
            frames = int(duration / 0.02)
            found = source_fingerprint(source, with_hash=True)
            states = {name: rng.normal(size=(frames, 6)).astype(np.float32) for name in LAYERS}
            writer.add(StoredUtterance(source.utt_id, source_key(source), duration, frames, states,
                                       source_size=found.size, source_mtime_ns=found.mtime_ns,
                                       source_xxh3=found.content_hash,
                                       metadata=utterance_metadata(source, duration)))
    return out


def kaldi_input(folder: Path, wav_scp: str, segments: str = None) -> list:
    from lebench_cli.audio.corpora.common import CorpusOptions
    from lebench_cli.audio.corpora.kaldi import read_kaldi_dir

    folder.mkdir(exist_ok=True)
    (folder / "wav.scp").write_text(wav_scp, encoding="utf-8")
    if segments is not None:
        (folder / "segments").write_text(segments, encoding="utf-8")
    return read_kaldi_dir(str(folder), CorpusOptions(allow_pipes=True))


def test_kaldi_wav_scp_names_each_recording_of_segments_a_file_or_its_pipe(tmp_path):
    """A Kaldi dir of one file and one pipe, cut in segments, comes out as a data dir that
    Kaldi's rules hold (every recording of `segments` in wav.scp, each once, C order) and that
    reads back as the same segments of the same audio, with kaldiio and with lebench's reader."""
    import kaldiio

    audio = tmp_path / "audio"
    audio.mkdir()
    for name, seconds in (("a", 2.0), ("b", 1.5)):
        sf.write(audio / f"{name}.wav", np.linspace(-0.5, 0.5, int(seconds * 16000), dtype=np.float32), 16000)
    pipe = f"cat {audio / 'b.wav'}"
    sources = kaldi_input(tmp_path / "in", f"recA {audio / 'a.wav'}\nrecB {pipe} |\n",
                          "u2 recA 1.0 1.8\nu1 recA 0.0 0.9\nu3 recB 0.2 1.2\n")
    store = write_store_of(tmp_path / "store", sources)
    result = export(store, "--format", "kaldi", "--layers", "2", "-o", tmp_path / "kaldi")
    assert result.output == f"exported 3 new, replaced 0, removed 0 in {tmp_path / 'kaldi'}\n"
    folder = tmp_path / "kaldi" / "layer_2"
    assert sorted(path.name for path in folder.iterdir()) == [
        "feats.ark", "feats.scp", "segments", "spk2utt", "utt2spk", "wav.scp"]
    assert lines(folder / "wav.scp") == [f"recA {audio / 'a.wav'}", f"recB {pipe} |"]
    assert lines(folder / "segments") == ["u1 recA 0.0 0.9", "u2 recA 1.0 1.8", "u3 recB 0.2 1.2"]
    recordings = [line.split()[0] for line in lines(folder / "wav.scp")]
    assert recordings == c_sorted(set(recordings))  # validate_data_dir.sh: sorted, unique
    assert {line.split()[1] for line in lines(folder / "segments")} <= set(recordings)
    waves = kaldiio.load_scp(str(folder / "wav.scp"))
    for recording, name in (("recA", "a"), ("recB", "b")):
        rate, samples = waves[recording]
        expected, expected_rate = sf.read(audio / f"{name}.wav", dtype="int16")
        assert rate == expected_rate
        np.testing.assert_array_equal(samples, expected)
    again = kaldi_input(folder, (folder / "wav.scp").read_text())  # lebench reads its own export
    assert [(source.utt_id, source.segment) for source in again] == [
        (source.utt_id, source.segment) for source in sorted(sources, key=lambda source: source.utt_id)]
    assert {source.utt_id: source.path for source in again}["u2"] == str(audio / "a.wav")
    verified = CliRunner().invoke(main, ["verify", str(tmp_path / "kaldi")])
    assert verified.exit_code == 0, verified.output


def test_kaldi_wav_scp_of_whole_files_is_keyed_by_utterance_and_follows_sanitize(tmp_path):
    audio = tmp_path / "audio"
    rows = {"spk1 u1": {"speaker": "spk1"}, "spk1-u0": {"speaker": "spk1"}}
    store = write_store(tmp_path / "store", rows, audio=audio)
    result = export(store, "--format", "kaldi", "--kaldi-ids", "sanitize", "--layers", "0", "-o", tmp_path / "kaldi")
    assert result.exit_code == 0, result.output
    folder = tmp_path / "kaldi" / "layer_0"
    assert lines(folder / "wav.scp") == [f"spk1-u0 {audio / '1.wav'}", f"spk1_u1 {audio / '0.wav'}"]
    assert not (folder / "segments").exists()


@pytest.mark.parametrize("case", ["missing", "two sources", "whitespace"])
def test_kaldi_export_without_wav_scp_says_why(case, tmp_path):
    """All or nothing: a recording wav.scp cannot name leaves it out, and the summary says
    which and why; the other files are written as ever."""
    if case == "missing":
        rows, audio = {"u1": {"recording": "rec1", "start": 0.5, "end": 1.1}}, None
        why = "recording 'rec1': /audio/0.wav is not a file here (a tar member, a table row, or moved since)"
    elif case == "two sources":  # ROWS: "B a" and "a" are both of rec1, in files 0.wav and 1.wav
        rows, audio = {key: ROWS[key] for key in ("a", "B a")}, tmp_path / "audio"
        why = f"recording 'rec1' names two audio sources, {audio / '0.wav'} and {audio / '1.wav'}"
    else:
        rows, audio = {"u1": {"recording": "rec1", "start": 0.5, "end": 1.1}}, tmp_path / "my audio"
        why = (f"recording 'rec1': its path {str(audio / '0.wav')!r} holds whitespace or ends in '|', which a "
               "wav.scp line cannot hold (link it under another path and extract from there)")
    store = write_store(tmp_path / "store", rows, audio=audio)
    result = export(store, "--format", "kaldi", "--kaldi-ids", "sanitize", "--layers", "0", "-o", tmp_path / "kaldi")
    assert (result.exit_code, result.output) == (
        0, f"exported {len(rows)} new, replaced 0, removed 0 in {tmp_path / 'kaldi'}; no wav.scp: {why}\n")
    folder = tmp_path / "kaldi" / "layer_0"
    assert (folder / "segments").exists() and not (folder / "wav.scp").exists()


def test_k2_speech_recognition_dataset_runs_on_the_cuts_that_carry_a_text(tmp_path):
    """lhotse's ASR dataset collates every supervision's text and fails on one without (a
    None it cannot collate): the cuts of utterances without a text are filtered out first,
    as docs/cli.md says; lebench does not invent an empty transcript."""
    from lhotse import CutSet
    from lhotse.dataset import K2SpeechRecognitionDataset, SimpleCutSampler
    from lhotse.dataset.input_strategies import PrecomputedFeatures

    out = write_store(tmp_path / "out", audio=tmp_path / "audio")
    result = export(out, "--format", "lhotse", "-o", tmp_path / "lhotse", "--layers", "0")
    assert result.exit_code == 0, result.output
    cuts = CutSet.from_file(tmp_path / "lhotse" / "layer_0" / "cuts.jsonl.gz").to_eager()
    dataset = K2SpeechRecognitionDataset(input_strategy=PrecomputedFeatures())
    with pytest.raises(TypeError):
        dataset[cuts]
    with_text = cuts.filter(lambda cut: all(s.text is not None for s in cut.supervisions)).to_eager()
    batches = [dataset[batch] for batch in SimpleCutSampler(with_text, max_duration=100)]
    assert sorted(text for batch in batches for text in batch["supervisions"]["text"]) == sorted(
        metadata["text"] for metadata in ROWS.values() if "text" in metadata)
    with open_features(out) as store:
        frames = {utt_id: store.info(utt_id)["frames"] for utt_id in store.ids}
    for batch in batches:
        assert batch["inputs"].shape[1:] == (max(batch["supervisions"]["num_frames"].tolist()), 6)
    assert sorted(n for batch in batches for n in batch["supervisions"]["num_frames"].tolist()) == sorted(
        frames[utt_id] for utt_id, metadata in ROWS.items() if "text" in metadata)
