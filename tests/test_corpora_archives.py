"""Corpus manifests read through their own libraries: lhotse RecordingSet/SupervisionSet/CutSet
(written by lhotse), HuggingFace datasets (save_to_disk and to_parquet), tar shards (tarfile):
the exact AudioSources, refusals, and the one-line hint when an extra is missing."""

import sys
import tarfile

import pytest

from lebench_cli.audio.corpora.common import CorpusOptions
from lebench_cli.audio.inputs import discover, input_form
from lebench_cli.audio.sources import AudioSource, PipeCommand, Segment, TableRow, TarMember
from lebench_cli.errors import InputError, LebenchError
from lebench_cli.testing.audio import write_audio


@pytest.fixture
def audio(tmp_path):
    folder = tmp_path / "audio"
    return {"a": write_audio(folder / "a.wav", 2.0), "b": write_audio(folder / "b.flac", 1.5, channels=2, seed=1),
            "left": write_audio(folder / "left.wav", 1.0, seed=2), "right": write_audio(folder / "right.wav", 1.0, seed=3)}


def refused(inputs, **options):
    with pytest.raises(LebenchError) as error:
        discover([str(item) for item in inputs], **options)
    return str(error.value)


# ---- lhotse -------------------------------------------------------------------------------

def recordings(audio):
    from lhotse import Recording, RecordingSet
    from lhotse.audio import AudioSource as LhotseSource

    two_files = Recording(id="meeting", sampling_rate=16000, num_samples=16000, duration=1.0, channel_ids=[0, 1],
                          sources=[LhotseSource("file", [0], str(audio["left"])),
                                   LhotseSource("file", [1], str(audio["right"]))])
    return RecordingSet.from_recordings([Recording.from_file(audio["a"], recording_id="recA"),
                                         Recording.from_file(audio["b"], recording_id="recB"), two_files])


def supervisions():
    from lhotse import SupervisionSegment, SupervisionSet

    return SupervisionSet.from_segments([
        SupervisionSegment("recA-0", "recA", start=0.5, duration=1.0, channel=0, text="bonjour", speaker="s1",
                           language="fr"),
        SupervisionSegment("recB-0", "recB", start=0.0, duration=1.5, channel=1, speaker="s2"),
        SupervisionSegment("meeting-1", "meeting", start=0.25, duration=0.5, channel=1, text="oui"),
    ])


def test_lhotse_recordings_and_supervisions(tmp_path, audio):
    recordings(audio).to_file(tmp_path / "corpus_recordings_train.jsonl.gz")
    supervisions().to_file(tmp_path / "corpus_supervisions_train.jsonl.gz")
    sups = tmp_path / "corpus_supervisions_train.jsonl.gz"
    assert input_form(str(sups)) == "lhotse"
    expected = [
        AudioSource("recA-0", str(audio["a"]), segment=Segment(0.5, 1.5), channel=None,
                    metadata=(("speaker", "s1"), ("text", "bonjour"), ("language", "fr"), ("recording", "recA"))),
        AudioSource("recB-0", str(audio["b"]), segment=Segment(0.0, 1.5), channel=1,
                    metadata=(("speaker", "s2"), ("recording", "recB"))),
        AudioSource("meeting-1", str(audio["right"]), segment=Segment(0.25, 0.75),
                    metadata=(("text", "oui"), ("recording", "meeting"))),
    ]
    # Alone, the supervisions find the recordings beside them, by lhotse's file names.
    assert discover([str(sups)]) == expected
    assert discover([str(tmp_path / "corpus_recordings_train.jsonl.gz"), str(sups)]) == expected
    # Alone, recordings are whole utterances; one file per channel has no whole to read.
    assert refused([tmp_path / "corpus_recordings_train.jsonl.gz"]) == (
        f"{tmp_path}/corpus_recordings_train.jsonl.gz:3: recording 'meeting' (2 files, channels [0, 1]): lebench "
        "reads one channel or one file's mix per utterance, not channels [0, 1] of several files")
    recordings(audio).filter(lambda r: r.id != "meeting").to_file(tmp_path / "two.jsonl.gz")
    assert discover([str(tmp_path / "two.jsonl.gz")]) == [AudioSource("recA", str(audio["a"])),
                                                          AudioSource("recB", str(audio["b"]))]


def test_lhotse_cuts_honour_offsets_and_channels(tmp_path, audio):
    from lhotse import CutSet

    cuts = CutSet.from_manifests(recordings=recordings(audio), supervisions=supervisions())
    trimmed = cuts.trim_to_supervisions(keep_overlapping=False)
    plain = CutSet.from_manifests(recordings=recordings(audio).filter(lambda r: r.id == "recA"))
    windows = plain.cut_into_windows(duration=1.0)  # cuts without supervisions, offsets 0 and 1
    trimmed.to_file(tmp_path / "cuts.jsonl.gz")
    windows.to_file(tmp_path / "windows.jsonl.gz")
    sources = discover([str(tmp_path / "cuts.jsonl.gz"), str(tmp_path / "windows.jsonl.gz")])
    assert [(s.utt_id, s.path, s.segment, s.channel) for s in sources] == [
        ("recA-0", str(audio["a"]), Segment(0.5, 1.5), None),
        ("recB-0", str(audio["b"]), Segment(0.0, 1.5), 1),
        ("meeting-1", str(audio["right"]), Segment(0.25, 0.75), None),
        (windows[0].id, str(audio["a"]), Segment(0.0, 1.0), None),
        (windows[1].id, str(audio["a"]), Segment(1.0, 2.0), None),
    ]
    assert sources[0].metadata == (("speaker", "s1"), ("text", "bonjour"), ("language", "fr"), ("recording", "recA"))


def test_lhotse_refusals(tmp_path, audio):
    from lhotse import CutSet, Recording, RecordingSet, SupervisionSegment, SupervisionSet
    from lhotse.audio import AudioSource as LhotseSource

    cuts = CutSet.from_manifests(recordings=recordings(audio))
    mixed = cuts[0].mix(cuts[1])
    CutSet.from_cuts([mixed]).to_file(tmp_path / "mixed.jsonl.gz")
    assert refused([tmp_path / "mixed.jsonl.gz"]) == (
        f"{tmp_path}/mixed.jsonl.gz:1: cut '{mixed.id}' is a MixedCut (mixed or padded audio): lebench extracts "
        "recordings, not mixes; give the cuts before mixing or padding")
    whole_meeting = SupervisionSet.from_segments([SupervisionSegment("m", "meeting", 0, 1.0, channel=[0, 1])])
    whole_meeting.to_file(tmp_path / "x_supervisions.jsonl.gz")
    recordings(audio).to_file(tmp_path / "x_recordings.jsonl.gz")
    assert refused([tmp_path / "x_supervisions.jsonl.gz"]) == (
        f"{tmp_path}/x_supervisions.jsonl.gz:1: recording 'meeting' (2 files, channels [0, 1]): lebench reads one "
        "channel or one file's mix per utterance, not channels [0, 1] of several files")
    unknown = SupervisionSet.from_segments([SupervisionSegment("s", "recZ", 0, 1.0)])
    unknown.to_file(tmp_path / "y_supervisions.jsonl.gz")
    assert refused([tmp_path / "x_recordings.jsonl.gz", tmp_path / "y_supervisions.jsonl.gz"]) == (
        f"{tmp_path}/y_supervisions.jsonl.gz:1: supervision 's' names recording 'recZ', which no RecordingSet given holds")
    assert refused([tmp_path / "y_supervisions.jsonl.gz"]) == (
        f"{tmp_path}/y_supervisions.jsonl.gz: a SupervisionSet names recordings but not their audio: give its "
        "RecordingSet manifest too")
    recording_a = recordings(audio)["recA"]
    past = SupervisionSet.from_segments([SupervisionSegment("near", "recA", 0.2, recording_a.duration + 0.2),
                                         SupervisionSegment("far", "recA", 0.2, recording_a.duration + 0.4)])
    past.to_file(tmp_path / "z_supervisions.jsonl.gz")
    assert refused([tmp_path / "x_recordings.jsonl.gz", tmp_path / "z_supervisions.jsonl.gz"]) == (
        f"{tmp_path}/z_supervisions.jsonl.gz:2: segment 'far' ends at {recording_a.duration + 0.6:g} s, past the "
        f"end of recording 'recA' ({recording_a.duration:.3f} s)")
    piped = Recording(id="p", sampling_rate=16000, num_samples=16000, duration=1.0,
                      sources=[LhotseSource("command", [0], f"sox {audio['a']} -t wav -")])
    RecordingSet.from_recordings([piped]).to_file(tmp_path / "piped.jsonl")
    assert refused([tmp_path / "piped.jsonl"]) == (f"{tmp_path}/piped.jsonl:1: a command source runs shell code "
                                                   "written in the data file; pass --allow-pipes to run it")
    where = f"{tmp_path}/piped.jsonl:1"
    assert discover([str(tmp_path / "piped.jsonl")], corpus=CorpusOptions(allow_pipes=True)) == [
        AudioSource("p", where, origin=PipeCommand(f"sox {audio['a']} -t wav -", where))]


def test_lhotse_missing_gives_the_install_hint(tmp_path, audio, monkeypatch):
    recordings(audio).to_file(tmp_path / "r.jsonl.gz")
    monkeypatch.setitem(sys.modules, "lhotse", None)
    assert refused([tmp_path / "r.jsonl.gz"]) == (
        "reading lhotse manifests needs lhotse: .venv/bin/pip install -e '.[lhotse]' in the lebench checkout")


# ---- HuggingFace datasets -----------------------------------------------------------------

def dataset(audio):
    from datasets import Audio, Dataset

    rows = {"id": ["spk1/u1", "spk2/u2", "spk3/u3"],
            "audio": [{"bytes": audio["a"].read_bytes(), "path": "a.wav"},
                      {"bytes": audio["b"].read_bytes(), "path": "b.flac"},
                      {"bytes": None, "path": str(audio["left"])}],
            "sentence": ["bonjour", "merci", "oui"], "duration": [2.0, 1.5, 1.0], "tags": [["x"], [], ["y"]]}
    return Dataset.from_dict(rows).cast_column("audio", Audio(decode=False))


def expected_rows(file, kind, audio):
    return [
        AudioSource("spk1/u1", f"{file}[0]", origin=TableRow(str(file), 0, "audio", kind),
                    metadata=(("text", "bonjour"), ("duration", 2.0))),
        AudioSource("spk2/u2", f"{file}[1]", origin=TableRow(str(file), 1, "audio", kind),
                    metadata=(("text", "merci"), ("duration", 1.5))),
        # save_to_disk embeds a local file's bytes, to_parquet keeps the path.
        AudioSource("spk3/u3", f"{file}[2]", origin=TableRow(str(file), 2, "audio", kind),
                    metadata=(("text", "oui"), ("duration", 1.0))) if kind == "arrow" else
        AudioSource("spk3/u3", str(audio["left"]), metadata=(("text", "oui"), ("duration", 1.0))),
    ]


def test_saved_dataset_and_parquet(tmp_path, audio):
    dataset(audio).save_to_disk(str(tmp_path / "saved"))
    dataset(audio).to_parquet(str(tmp_path / "train.parquet"))
    arrow = tmp_path / "saved" / "data-00000-of-00001.arrow"
    assert input_form(str(tmp_path / "saved")) == "hf" and input_form(str(tmp_path / "train.parquet")) == "hf"
    assert discover([str(tmp_path / "saved")]) == expected_rows(arrow, "arrow", audio)
    assert discover([str(tmp_path / "train.parquet")]) == expected_rows(tmp_path / "train.parquet", "parquet", audio)
    by_sentence = discover([str(tmp_path / "train.parquet")], corpus=CorpusOptions(id_column="sentence"))
    assert [s.utt_id for s in by_sentence] == ["bonjour", "merci", "oui"]
    assert refused([tmp_path / "train.parquet"], corpus=CorpusOptions(id_column="speaker")) == (
        f"{tmp_path}/train.parquet: no column 'speaker' (id, audio, sentence, duration, tags): name the id column "
        "with --id-column")


def test_rows_with_only_a_path_are_files_and_give_the_id(tmp_path, audio):
    import pyarrow as pa
    import pyarrow.parquet as pq

    struct = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    column = pa.array([{"bytes": None, "path": str(audio["left"])}, {"bytes": None, "path": str(audio["a"])}], struct)
    pq.write_table(pa.table({"speech": column}), tmp_path / "paths.parquet")
    assert discover([str(tmp_path / "paths.parquet")]) == [
        AudioSource(str(audio["left"].with_suffix("")), str(audio["left"])),
        AudioSource(str(audio["a"].with_suffix("")), str(audio["a"])),
    ]
    missing = pa.array([{"bytes": None, "path": None}], struct)
    pq.write_table(pa.table({"id": ["x"], "speech": missing}), tmp_path / "empty.parquet")
    assert refused([tmp_path / "empty.parquet"]) == (
        f"{tmp_path}/empty.parquet: row 0: no audio in column 'speech' (neither bytes nor a path)")


def test_dataset_dict_and_duplicate_ids_are_refused(tmp_path, audio):
    from datasets import DatasetDict

    DatasetDict({"train": dataset(audio), "test": dataset(audio)}).save_to_disk(str(tmp_path / "dict"))
    assert refused([tmp_path / "dict"]) == (f"{tmp_path}/dict: a DatasetDict of splits (test, train): give one "
                                            f"split's folder, e.g. {tmp_path}/dict/test")
    twice = tmp_path / "twice.parquet"
    dataset(audio).to_parquet(str(twice))
    assert refused([twice, twice]).startswith("duplicate utterance id 'spk1/u1'")


def test_pyarrow_missing_gives_the_install_hint(tmp_path, audio, monkeypatch):
    dataset(audio).to_parquet(str(tmp_path / "train.parquet"))
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    assert refused([tmp_path / "train.parquet"]) == (
        "reading HuggingFace datasets needs pyarrow: .venv/bin/pip install -e '.[hf]' in the lebench checkout")


# ---- tar shards ---------------------------------------------------------------------------

def test_tar_shard_members_with_their_offsets(tmp_path, audio):
    text = tmp_path / "u1.txt"
    text.write_text("bonjour\n", encoding="utf-8")
    shard = tmp_path / "shard-000.tar"
    with tarfile.open(shard, "w") as tar:
        tar.add(audio["a"], arcname="spk1/u1.wav")
        tar.add(text, arcname="spk1/u1.txt")
        tar.add(audio["b"], arcname="spk2/u2.seg.flac")
        tar.add(text, arcname="notes.md")
    with tarfile.open(shard) as tar:
        members = {info.name: info for info in tar.getmembers()}
    assert input_form(str(shard)) == "tar"
    sources = discover([str(shard)])
    assert sources == [
        AudioSource("spk1/u1", f"{shard}/spk1/u1.wav", metadata=(("text", "bonjour"),), origin=TarMember(
            str(shard), "spk1/u1.wav", members["spk1/u1.wav"].offset_data, audio["a"].stat().st_size)),
        AudioSource("spk2/u2", f"{shard}/spk2/u2.seg.flac", origin=TarMember(
            str(shard), "spk2/u2.seg.flac", members["spk2/u2.seg.flac"].offset_data, audio["b"].stat().st_size)),
    ]
    with open(shard, "rb") as file:  # the offsets hold the files' bytes
        file.seek(sources[1].origin.offset)
        assert file.read(sources[1].origin.size) == audio["b"].read_bytes()


def test_tar_refusals(tmp_path, audio):
    shard = tmp_path / "dup.tar"
    with tarfile.open(shard, "w") as tar:
        tar.add(audio["a"], arcname="u1.wav")
        tar.add(audio["b"], arcname="u1.flac")
    assert refused([shard]) == f"{shard}: two audio members for key 'u1': u1.wav and u1.flac"
    compressed = tmp_path / "shard.tar.gz"
    with tarfile.open(compressed, "w:gz") as tar:
        tar.add(audio["a"], arcname="u1.wav")
    assert refused([compressed]) == (f"{compressed}: a compressed tar has no byte offsets to read members from: "
                                     "decompress it first (webdataset shards are plain .tar)")
    not_tar = tmp_path / "fake.tar"
    not_tar.write_bytes(b"x" * 1000)
    assert refused([not_tar]).startswith(f"{not_tar}: not a readable tar file (")
    with pytest.raises(InputError):
        discover([str(tmp_path / "absent.tar")])
