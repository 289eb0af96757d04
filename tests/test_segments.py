"""Segments: an utterance that is a slice of a recording gives the features of that slice
cut out into a file of its own, its recording decoded once for all its segments; a segment
that does not fit its recording fails alone; resume binds a segment to its times."""

import numpy as np
import pytest
import soundfile as sf

from lebench_cli.audio import loading
from lebench_cli.audio.decoding import decode
from lebench_cli.audio.sources import AudioSource, Segment
from lebench_cli.errors import AudioError
from lebench_cli.pipeline.parts import split_parts
from lebench_cli.reading.store import open_features
from tests.support.source_runs import extract_sources, failures, stored_features, write_cut, write_recording

RATE = 22050  # not 16 kHz: each segment is resampled alone
CUTS = {"a": (0.3, 1.1), "b": (1.0, 2.5), "c": (2.5, None)}  # b overlaps a; c runs to the end


def segment_sources(recording, cuts=CUTS, **fields):
    return [AudioSource(utt_id, str(recording), segment=Segment(start, end), **fields)
            for utt_id, (start, end) in cuts.items()]


@pytest.mark.parametrize("extension", ["wav", "flac"])
def test_segment_features_are_those_of_the_cut_out_file(checkpoints, tmp_path, extension):
    recording = tmp_path / f"long.{extension}"
    data = write_recording(recording, 3.2, RATE)
    cuts = [AudioSource(utt_id, str(write_cut(tmp_path / f"{utt_id}.{extension}", data, RATE, start, end)))
            for utt_id, (start, end) in CUTS.items()]
    extract_sources(segment_sources(recording), tmp_path / "segments", checkpoints("base"))
    extract_sources(cuts, tmp_path / "cuts", checkpoints("base"))
    segments, files = stored_features(tmp_path / "segments"), stored_features(tmp_path / "cuts")
    assert sorted(segments) == sorted(files) == ["a", "b", "c"]
    for utt_id in files:
        np.testing.assert_allclose(segments[utt_id], files[utt_id], atol=1e-5)


def test_many_segments_of_one_recording_open_it_once(checkpoints, tmp_path, monkeypatch):
    recording = tmp_path / "long.wav"
    write_recording(recording, 3.2, RATE)
    opened = []
    real_open = loading._open

    def counted(audio):
        opened.append(getattr(audio, "path", audio))
        return real_open(audio)

    monkeypatch.setattr(loading, "_open", counted)
    # Every end given: their lengths come from their times (one that runs to the end reads
    # its recording's header first, to know its length).
    cuts = {**CUTS, "c": (2.5, 3.2), "d": (0.0, 0.5)}
    summary = extract_sources(segment_sources(recording, cuts), tmp_path / "out", checkpoints("base"))
    assert summary.extracted == 4
    assert opened == [str(recording)]


def test_a_segment_that_does_not_fit_its_recording_fails_alone(checkpoints, tmp_path):
    recording = tmp_path / "long.wav"
    write_recording(recording, 3.2, RATE)
    cuts = {"good": (0.5, 1.5), "past": (3.0, 9.0), "after": (4.0, 5.0), "backwards": (2.0, 1.0),
            "near": (2.8, 3.6)}  # at most 0.5 s past the end: cut to it, as Kaldi's extract-segments
    summary = extract_sources(segment_sources(recording, cuts), tmp_path / "out", checkpoints("base"))
    assert (summary.extracted, summary.failed) == (2, 3)
    assert sorted(stored_features(tmp_path / "out")) == ["good", "near"]
    with open_features(tmp_path / "out") as store:
        assert store.info("near")["duration"] == pytest.approx(0.4)
    assert failures(tmp_path / "out") == {
        "past": "segment 3-9 s: ends after the recording's end (3.200 s)",
        "after": "segment 4-5 s: starts after the recording's end (3.200 s)",
        "backwards": "segment 2-1 s: ends before it starts",
    }


def test_an_end_at_most_half_a_second_past_the_recording_is_cut_to_it():
    from lebench_cli.audio.segments import segment_frames

    assert segment_frames("r.wav", Segment(0.5, 1.5), 16000, 16000) == (8000, 16000)
    assert segment_frames("r.wav", Segment(0.5, 0.75), 16000, 16000) == (8000, 12000)
    with pytest.raises(AudioError) as error:
        segment_frames("r.wav", Segment(0.5, 1.51), 16000, 16000)
    assert error.value.reason == "segment 0.5-1.51 s: ends after the recording's end (1.000 s)"


def test_a_segment_channel_wins_over_the_runs_channel(tmp_path):
    recording = tmp_path / "stereo.wav"
    data = write_recording(recording, 1.0, 16000, channels=2)
    source = AudioSource("u", str(recording), segment=Segment(0.25, 0.75), channel=1)
    (waveform, flags, samples), reason = decode(source, channel=0)
    assert reason is None and samples == 8000
    np.testing.assert_array_equal(waveform, data[4000:12000, 1] / np.float32(32768))


def test_a_lossy_segment_is_the_slice_of_its_whole_decode(tmp_path):
    recording = tmp_path / "long.ogg"
    sf.write(recording, write_recording(tmp_path / "tmp.wav", 2.0, 16000) / 32768.0, 16000, format="OGG")
    whole = loading.load_audio(str(recording))
    cuts = segment_sources(recording, {"x": (1.2, 1.7), "y": (0.1, 0.9)})
    for source, result in zip(cuts, loading.read_segments(cuts)):
        start, end = source.segment.start, source.segment.end
        np.testing.assert_array_equal(result[0], whole[round(start * 16000): round(end * 16000)])


def test_parts_balance_segments_by_their_duration(tmp_path):
    recording = tmp_path / "long.wav"
    write_recording(recording, 6.0, 16000)
    cuts = {"three": (0.0, 3.0), "one": (3.0, 4.0), "also_one": (4.0, 5.0), "to_the_end": (5.0, None)}
    parts = split_parts(segment_sources(recording, cuts), 2)
    assert [[source.utt_id for source in part] for part in parts] == [["three"], ["one", "also_one", "to_the_end"]]
    assert [source.num_samples for source in parts[1]] == [16000, 16000, 16000]


def test_resume_extracts_a_segment_again_when_its_times_changed(checkpoints, tmp_path):
    recording = tmp_path / "long.wav"
    data = write_recording(recording, 3.2, RATE)
    out = tmp_path / "out"
    extract_sources(segment_sources(recording), out, checkpoints("base"))
    before = stored_features(out)

    same = extract_sources(segment_sources(recording), out, checkpoints("base"))
    assert (same.already_stored, same.extracted, same.failed) == (3, 0, 0)

    moved = {**CUTS, "b": (1.0, 2.0)}
    refused = extract_sources(segment_sources(recording, moved), out, checkpoints("base"))
    assert (refused.already_stored, refused.extracted, refused.failed) == (2, 0, 1)
    assert failures(out)["b"] == ("changed since its features were stored (segment 1.0-2.5 s -> 1.0-2.0 s); "
                                  "the stored features are kept: use --update to extract it again")

    updated = extract_sources(segment_sources(recording, moved), out, checkpoints("base"), update=True)
    assert (updated.already_stored, updated.extracted, updated.updated) == (2, 1, 1)
    extract_sources([AudioSource("b", str(write_cut(tmp_path / "b.wav", data, RATE, 1.0, 2.0)))], tmp_path / "cut",
                    checkpoints("base"))
    after = stored_features(out)
    np.testing.assert_allclose(after["b"], stored_features(tmp_path / "cut")["b"], atol=1e-5)
    np.testing.assert_array_equal(after["a"], before["a"])


class _Item:
    def __init__(self, source, seconds):
        self.source, self.seconds = source, seconds


def test_decoding_workers_give_the_segments_of_one_opening_in_order(tmp_path):
    from lebench_cli.audio.decoding import decoded_stream

    recording = tmp_path / "long.wav"
    write_recording(recording, 3.2, RATE)
    alone = tmp_path / "alone.wav"
    write_recording(alone, 1.0, 16000)
    items = [_Item(source, 1.0) for source in segment_sources(recording)]
    items.insert(1, _Item(AudioSource("alone", str(alone)), 1.0))
    in_workers = list(decoded_stream(items, 1, None, 4))
    here = list(decoded_stream(items, 0, None, 4))
    # The segments come together, where the first of them was.
    assert [item.source.utt_id for item, _ in in_workers] == ["a", "b", "c", "alone"]
    assert [item.source.utt_id for item, _ in here] == ["a", "b", "c", "alone"]
    for (_, (value, reason)), (_, (expected, _)) in zip(in_workers, here):
        assert reason is None
        np.testing.assert_array_equal(value[0], expected[0])
