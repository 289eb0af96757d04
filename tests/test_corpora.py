"""Corpus manifests as inputs (audio/corpora/): Kaldi data dirs, SpeechBrain CSV/JSON, id lists
and Common Voice tables, each written as the corpus tools write them, read into the exact
AudioSources, and every bad manifest refused with its one line (file:line)."""

import io
import json

import pytest

from lebench_cli.audio.corpora.common import CorpusOptions
from lebench_cli.audio.inputs import discover, input_form
from lebench_cli.audio.sources import AudioSource, PipeCommand, Segment
from lebench_cli.errors import InputError
from lebench_cli.testing.audio import write_audio


@pytest.fixture
def audio(tmp_path):
    """Three short recordings: a.wav (mono), b.flac (stereo), c.wav (mono, 8 kHz)."""
    folder = tmp_path / "audio"
    return {"a": write_audio(folder / "a.wav", 1.0), "b": write_audio(folder / "b.flac", 1.5, channels=2, seed=1),
            "c": write_audio(folder / "c.wav", 0.5, rate=8000, seed=2)}


def write_lines(path, *lines):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def refused(inputs, **options):
    with pytest.raises(InputError) as error:
        discover([str(item) for item in inputs], **options)
    return str(error.value)


# ---- Kaldi ------------------------------------------------------------------------------

def test_kaldi_dir_with_segments_speakers_text_and_channels(tmp_path, audio):
    data = tmp_path / "data" / "train"
    write_lines(data / "wav.scp", f"recA {audio['a']}", f"recB {audio['b']}")
    write_lines(data / "segments", "spk1-recA-0000 recA 0.00 0.50", "spk1-recA-0001 recA 0.50 -1",
                "spk2-recB-0000 recB 0.25 1.25")
    write_lines(data / "utt2spk", "spk1-recA-0000 spk1", "spk1-recA-0001 spk1", "spk2-recB-0000 spk2")
    write_lines(data / "text", "spk1-recA-0000 bonjour à tous", "spk1-recA-0001", "spk2-recB-0000 merci")
    write_lines(data / "reco2file_and_channel", f"recA {audio['a']} 1", f"recB {audio['b']} B")
    assert input_form(str(data)) == "kaldi" and input_form(str(data / "wav.scp")) == "kaldi"
    assert discover([str(data)]) == [
        AudioSource("spk1-recA-0000", str(audio["a"]), segment=Segment(0.0, 0.5), channel=0,
                    metadata=(("speaker", "spk1"), ("text", "bonjour à tous"), ("recording", "recA"))),
        AudioSource("spk1-recA-0001", str(audio["a"]), segment=Segment(0.5, None), channel=0,
                    metadata=(("speaker", "spk1"), ("text", ""), ("recording", "recA"))),
        AudioSource("spk2-recB-0000", str(audio["b"]), segment=Segment(0.25, 1.25), channel=1,
                    metadata=(("speaker", "spk2"), ("text", "merci"), ("recording", "recB"))),
    ]


def test_kaldi_dir_without_segments_is_one_utterance_per_recording(tmp_path, audio):
    data = tmp_path / "data"
    write_lines(data / "wav.scp", f"recA {audio['a']}", "", f"recC   {audio['c']}  ")
    assert discover([str(data / "wav.scp")]) == [AudioSource("recA", str(audio["a"])),
                                                 AudioSource("recC", str(audio["c"]))]


def test_kaldi_pipes_run_only_with_allow_pipes(tmp_path, audio):
    data = tmp_path / "data"
    write_lines(data / "wav.scp", f"recA {audio['a']}", f"recB sox {audio['b']} -t wav - remix 2 |")
    write_lines(data / "reco2file_and_channel", f"recB {audio['b']} 2")
    assert refused([data]) == (f"{data}/wav.scp:2: a pipe command (ending in '|') runs shell code written in the "
                               "data file; pass --allow-pipes to run it")
    where = f"{data}/wav.scp:2"
    # The pipe picks its channel itself: reco2file_and_channel's is only carried.
    assert discover([str(data)], corpus=CorpusOptions(allow_pipes=True)) == [
        AudioSource("recA", str(audio["a"])),
        AudioSource("recB", where, origin=PipeCommand(f"sox {audio['b']} -t wav - remix 2", where),
                    metadata=(("channel", 1),)),
    ]


def test_speaker_of_an_utterance_not_in_segments_is_refused(tmp_path, audio):
    data = tmp_path / "data"
    write_lines(data / "wav.scp", f"recA {audio['a']}")
    write_lines(data / "segments", "u1 recA 0 0.5")
    write_lines(data / "utt2spk", "u1 s1", "recA s1")
    assert refused([data]) == f"{data}/utt2spk:2: utterance 'recA' is not in segments"


@pytest.mark.parametrize("table, lines, message", [
    ("segments", ["u1 recA 0 0.5", "u2 recX 0 0.5"], "segments:2: recording 'recX' is not in wav.scp"),
    ("segments", ["u1 recA 0.6 0.5"], "segments:1: end 0.5 is not after start 0.6"),
    ("segments", ["u1 recA 0 0.5", "u1 recA 0.5 0.9"], "segments:2: duplicate id 'u1' (first at {data}/segments:1)"),
    ("segments", ["u1 recA zero 0.5"], "segments:1: start 'zero' is not a number of seconds"),
    ("segments", ["u1 recA 0.5"], "segments:1: expected '<utterance-id> <recording-id> <start> <end>', found 3 fields"),
    ("wav.scp", ["recA {a}", "recA {a}"], "wav.scp:2: duplicate id 'recA' (first at {data}/wav.scp:1)"),
    ("wav.scp", ["recA {a}", "recB {missing}"], "wav.scp:2: {missing}: no such file"),
    ("wav.scp", ["recA"], "wav.scp:1: expected '<recording-id> <path or command |>', found one field"),
    ("reco2file_and_channel", ["recA {a} C"], "reco2file_and_channel:1: channel 'C' is not 1, 2, A or B"),
    ("segments", ["u1 recA 0 0.5", "u2 recA 0.5 1.6"],
     "segments:2: segment 'u2' ends at 1.6 s, past the end of recording 'recA' (1.000 s)"),
    ("utt2spk", ["recA spk1", "recX spk2"], "utt2spk:2: utterance 'recX' is not in wav.scp"),
    ("text", ["recA bonjour", "", "recZ"], "text:3: utterance 'recZ' is not in wav.scp"),
])
def test_bad_kaldi_tables_are_refused_naming_file_and_line(tmp_path, audio, table, lines, message):
    data = tmp_path / "data"
    missing = tmp_path / "gone.wav"
    write_lines(data / "wav.scp", f"recA {audio['a']}")
    write_lines(data / table, *(line.format(a=audio["a"], missing=missing) for line in lines))
    assert refused([data]) == f"{data}/" + message.format(data=data, missing=missing)


def test_segment_ends_are_checked_once_per_recording_file_and_never_by_opening_a_pipe(tmp_path, audio,
                                                                                    monkeypatch):
    """Thousands of segments of one recording read its header once; an end within 0.5 s of the
    recording's is taken (cut to it when decoded, as Kaldi's extract-segments does); a pipe,
    a header that cannot be read, or a truncated file whose header declares the segment are
    not refused here: those segments fail alone when decoded."""
    from lebench_cli.audio import loading

    data = tmp_path / "data"
    truncated = tmp_path / "truncated.wav"  # its header says 1 s, its bytes hold 0.25 s
    truncated.write_bytes(audio["a"].read_bytes()[: 44 + 8000])
    unreadable = write_lines(tmp_path / "text.wav", "not audio")
    write_lines(data / "wav.scp", f"recA {audio['a']}", f"recP cat {audio['a']} |", f"recT {truncated}",
                f"recU {unreadable}")
    write_lines(data / "segments", *(f"u{number:04d} recA {number / 2000:.4f} 1.4" for number in range(2000)),
                "p1 recP 0.5 9.0", "t1 recT 0.2 0.9", "x1 recU 0.5 9.0")
    opened = []
    real_open = loading._open
    monkeypatch.setattr(loading, "_open", lambda path: opened.append(path) or real_open(path))
    sources = discover([str(data)], corpus=CorpusOptions(allow_pipes=True))
    assert len(sources) == 2003 and sources[0].segment == Segment(0.0, 1.4)
    assert opened == [str(audio["a"]), str(truncated), str(unreadable)]
    write_lines(data / "segments", "t1 recT 0.2 1.6")
    assert refused([data], corpus=CorpusOptions(allow_pipes=True)) == (
        f"{data}/segments:1: segment 't1' ends at 1.6 s, past the end of recording 'recT' (1.000 s)")


# ---- id lists and Common Voice ------------------------------------------------------------

def test_id_lists_in_a_file_and_on_stdin(tmp_path, audio):
    listing = write_lines(tmp_path / "train.list", f"utt/one\t{audio['a']}", "", f"two\t{audio['c']}")
    expected = [AudioSource("utt/one", str(audio["a"])), AudioSource("two", str(audio["c"]))]
    assert input_form(str(listing)) == "list"
    assert discover([str(listing)]) == expected
    stdin = io.StringIO(listing.read_text())
    assert discover(["-"], stdin=stdin, input_format="list") == expected


@pytest.mark.parametrize("lines, message", [
    (["one\t{a}", "two {a}"], "2: expected 'id<TAB>path', found 1 tab-separated field"),
    (["one\t{a}\textra"], "1: expected 'id<TAB>path', found 3 tab-separated fields"),
    (["one\t"], "1: expected 'id<TAB>path', found 2 tab-separated fields (an empty one)"),
    (["one\t{a}", "one\t{a}"], "2: duplicate id 'one' (first at {listing}:1)"),
    (["one\t{missing}"], "1: {missing}: no such file"),
])
def test_bad_id_lists_are_refused_naming_the_line(tmp_path, audio, lines, message):
    listing = tmp_path / "ids.list"
    missing = tmp_path / "nowhere.wav"
    write_lines(listing, *(line.format(a=audio["a"], missing=missing) for line in lines))
    assert refused([listing]) == f"{listing}:" + message.format(listing=listing, missing=missing)


def write_common_voice(folder, audio):
    import csv

    clips = folder / "clips"
    clips.mkdir(parents=True)
    for name in ("common_voice_fr_1.wav", "common_voice_fr_2.wav"):
        (clips / name).write_bytes(audio["a"].read_bytes())
    table = folder / "train.tsv"
    with open(table, "w", newline="", encoding="utf-8") as file:
        writer = csv.writer(file, delimiter="\t", quoting=csv.QUOTE_NONE, quotechar=None, lineterminator="\n")
        writer.writerow(["client_id", "path", "sentence", "up_votes", "age", "locale"])
        writer.writerow(["c0ffee", "common_voice_fr_1.wav", 'Il a dit "oui".', "2", "", "fr"])
        writer.writerow(["bead", "common_voice_fr_2.wav", "Merci.", "3", "thirties", "fr"])
    return table


def test_common_voice_table(tmp_path, audio):
    table = write_common_voice(tmp_path / "cv" / "fr", audio)
    clips = tmp_path / "cv" / "fr" / "clips"
    assert input_form(str(table)) == "commonvoice"
    assert discover([str(table)]) == [
        AudioSource("common_voice_fr_1", str(clips / "common_voice_fr_1.wav"), metadata=(
            ("speaker", "c0ffee"), ("text", 'Il a dit "oui".'), ("up_votes", "2"), ("language", "fr"))),
        AudioSource("common_voice_fr_2", str(clips / "common_voice_fr_2.wav"), metadata=(
            ("speaker", "bead"), ("text", "Merci."), ("up_votes", "3"), ("age", "thirties"), ("language", "fr"))),
    ]
    by_speaker = discover([str(table)], corpus=CorpusOptions(id_column="client_id"))
    assert [s.utt_id for s in by_speaker] == ["c0ffee", "bead"]
    assert refused([table], corpus=CorpusOptions(path_column="clip")) == (
        f"{table}:1: no column 'clip' in the header (client_id, path, sentence, up_votes, age, locale): "
        "name the right one with --path-column")


def test_fairseq_manifest_is_still_told_from_common_voice(tmp_path, audio):
    manifest = write_lines(tmp_path / "train.tsv", str(audio["a"].parent), "a.wav\t16000")
    assert input_form(str(manifest)) == "fairseq"
    assert discover([str(manifest)]) == [AudioSource("a", str(audio["a"]), 16000)]


# ---- SpeechBrain --------------------------------------------------------------------------

def write_csv(path, header, rows):
    import csv

    with open(path, "w", newline="", encoding="utf-8") as file:
        writer = csv.writer(file)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def test_speechbrain_csv_with_data_root_and_seconds(tmp_path, audio):
    manifest = write_csv(tmp_path / "train.csv", ["ID", "duration", "wav", "start", "stop", "spk_id", "wrd"], [
        ["u1", "0.5", "$data_root/a.wav", "0.0", "0.5", "s1", "bonjour"],
        ["u2", "1.0", "{data_root}/b.flac", "0.25", "1.25", "s2", "merci, au revoir"],
    ])
    root = str(audio["a"].parent)
    assert input_form(str(manifest)) == "speechbrain"
    assert discover([str(manifest)], root=root) == [
        AudioSource("u1", f"{root}/a.wav", segment=Segment(0.0, 0.5),
                    metadata=(("duration", "0.5"), ("speaker", "s1"), ("text", "bonjour"))),
        AudioSource("u2", f"{root}/b.flac", segment=Segment(0.25, 1.25),
                    metadata=(("duration", "1.0"), ("speaker", "s2"), ("text", "merci, au revoir"))),
    ]
    assert refused([manifest]) == (f"{manifest}:2: the path $data_root/a.wav holds the placeholder $data_root: "
                                   "give its folder with --root DIR")


def test_speechbrain_units_said_by_option_or_column_name(tmp_path, audio):
    rows = [["u1", str(audio["c"]), "0", "2000"], ["u2", str(audio["b"]), "4000", "8000"]]
    manifest = write_csv(tmp_path / "samples.csv", ["ID", "wav", "start", "stop"], rows)
    assert refused([manifest]) == (f"{manifest}:2: stop 2000 is a whole number: seconds or samples? say "
                                   "--time-unit seconds or --time-unit samples (or name the columns stop_sec / "
                                   "stop_samples)")
    in_samples = discover([str(manifest)], corpus=CorpusOptions(time_unit="samples"))  # c is 8 kHz, b 16 kHz
    assert [s.segment for s in in_samples] == [Segment(0.0, 0.25), Segment(0.25, 0.5)]
    # Samples read as seconds end long past the recording: the header's length tells.
    past = f"2: segment 'u1' ends at 2000 s, past the end of recording '{audio['c']}' (0.500 s)"
    assert refused([manifest], corpus=CorpusOptions(time_unit="seconds")) == f"{manifest}:{past}"
    named = write_csv(tmp_path / "named.csv", ["ID", "wav", "start_samples", "stop_samples"], rows)
    assert [s.segment for s in discover([str(named)])] == [Segment(0.0, 0.25), Segment(0.25, 0.5)]
    seconds = write_csv(tmp_path / "sec.csv", ["ID", "wav", "start_sec", "stop_sec"], rows)
    assert refused([seconds]) == f"{seconds}:{past}"


@pytest.mark.parametrize("header, row, message", [
    (["ID", "wav", "start", "stop"], ["u1", "{a}", "0.6", "0.5"], "2: stop 0.5 is not after start 0.6"),
    (["ID", "path_to_audio"], ["u1", "{a}"],
     "1: no audio path column (wav or path or file or audio) among ID, path_to_audio: name it with --path-column"),
    (["name", "wav"], ["u1", "{a}"], "1: no id column (ID or id) among name, wav: name it with --id-column"),
    (["ID", "wav"], ["u1", "{missing}"], "2: {missing}: no such file"),
    (["ID", "wav"], ["u1", "{a}", "extra"], "2: 3 fields, the header has 2"),
    (["ID", "wav", "start_samples"], ["u1", "{a}", "0.5"], "2: start 0.5 is not a whole number of samples"),
    (["ID", "wav", "start", "stop"], ["u1", "{a}", "0.5", "1.6"],
     "2: segment 'u1' ends at 1.6 s, past the end of recording '{a}' (1.000 s)"),
    (["ID", "wav", "start_samples", "stop_samples"], ["u1", "{a}", "0", "25000"],
     "2: segment 'u1' ends at 1.5625 s, past the end of recording '{a}' (1.000 s)"),
])
def test_bad_speechbrain_csv_rows_are_refused_naming_the_line(tmp_path, audio, header, row, message):
    missing = tmp_path / "nowhere.wav"
    rows = [[field.format(a=audio["a"], missing=missing) for field in row]]
    manifest = write_csv(tmp_path / "bad.csv", header, rows)
    assert refused([manifest]) == f"{manifest}:" + message.format(a=audio["a"], missing=missing)


def test_a_speechbrain_json_segment_past_its_recording_is_refused_naming_the_entry(tmp_path, audio):
    manifest = tmp_path / "valid.json"
    manifest.write_text(json.dumps({"u1": {"wav": str(audio["c"]), "start": 0.1, "stop": 1.2}}))
    assert refused([manifest]) == (f"{manifest}: entry 'u1': segment 'u1' ends at 1.2 s, past the end of recording "
                                   f"'{audio['c']}' (0.500 s)")


def test_speechbrain_csv_duplicate_id(tmp_path, audio):
    manifest = write_csv(tmp_path / "dup.csv", ["ID", "wav"], [["u1", str(audio["a"])], ["u1", str(audio["c"])]])
    assert refused([manifest]) == f"{manifest}:3: duplicate id 'u1' (first at {manifest}:2)"


def test_speechbrain_json_manifest(tmp_path, audio):
    manifest = tmp_path / "valid.json"
    manifest.write_text(json.dumps({
        "u1": {"wav": "$data_root/a.wav", "duration": 1.0, "spk_id": "s1", "words": ["bon", "jour"]},
        "u2": {"wav": {"file": "$data_root/c.wav", "start": 1000, "stop": 3000}, "length": 2},
        "u3": {"wav": "$data_root/b.flac", "start": 0.5, "stop": 1.5},
    }))
    root = str(audio["a"].parent)
    assert discover([str(manifest)], root=root) == [
        AudioSource("u1", f"{root}/a.wav",
                    metadata=(("duration", 1.0), ("speaker", "s1"), ("words", '["bon", "jour"]'))),
        AudioSource("u2", f"{root}/c.wav", segment=Segment(0.125, 0.375), metadata=(("length", 2),)),
        AudioSource("u3", f"{root}/b.flac", segment=Segment(0.5, 1.5)),
    ]
    manifest.write_text(json.dumps({"u1": {"wav": str(audio["a"])}, "u2": 3}))
    assert refused([manifest]) == f"{manifest}: entry 'u2': expected an object of fields, found 3"


# ---- named forms --------------------------------------------------------------------------

def test_a_named_form_that_does_not_fit_is_refused(tmp_path, audio):
    folder = audio["a"].parent
    assert refused([folder], input_format="kaldi") == f"{folder}: not a Kaldi data folder (no wav.scp)"
    assert refused([folder], input_format="speechbrain") == f"{folder}: a folder, not a speechbrain manifest file"
    assert refused(["-"], input_format="kaldi", stdin=io.StringIO("")) == (
        "'-' (standard input) can hold paths or, with --input-format list, id<TAB>path lines; not kaldi manifests")
    assert refused([folder], input_format="csv") == (
        "unknown input format 'csv' (one of auto, files, fairseq, kaldi, speechbrain, lhotse, hf, tar, list, "
        "commonvoice)")
    listing = write_lines(tmp_path / "ids.txt", f"u1\t{audio['a']}")
    assert input_form(str(listing)) == "files"
    assert discover([str(listing)], input_format="list") == [AudioSource("u1", str(audio["a"]))]


def test_root_leaves_manifest_ids_alone(tmp_path, audio):
    listing = write_lines(tmp_path / "ids.list", f"spk/u1\t{audio['a']}")
    assert discover([str(listing)], root=str(tmp_path), id_prefix="train/") == [
        AudioSource("train/spk/u1", str(audio["a"]))]
    assert [s.utt_id for s in discover([str(audio["a"].parent)], root=str(tmp_path))] == [
        "audio/a", "audio/b", "audio/c"]


def test_options_refuse_an_unknown_time_unit(tmp_path):
    from lebench_cli.pipeline.options import ExtractOptions

    with pytest.raises(InputError, match="^--time-unit minutes: seconds or samples$"):
        ExtractOptions(inputs=[], output=str(tmp_path), model="m", time_unit="minutes").validate()
