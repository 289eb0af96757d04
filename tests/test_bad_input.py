"""A file can only fail itself: mutated files of every format through one `lebench extract`
(tests/support/mutated_audio.py makes them), and each rule of docs/extract.md's "Damaged and lying
files" with its exact message: bounded decoding, rate and channel bounds, lengths the bytes
can back, truncated files failed or kept with a flag."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import soundfile as sf
from click.testing import CliRunner

from support import mutated_audio
from lebench_cli.audio import decoding, loading as audio
from lebench_cli.audio.loading import backed_frames, probe, read_audio
from lebench_cli.model.formats import load_local
from lebench_cli.cli import main
from lebench_cli.model.encoder import Encoder
from lebench_cli.errors import AudioError
from lebench_cli.audio.headers import declared_data_bytes, ogg_stream_ends
from lebench_cli.reading.store import open_features
from lebench_cli.pipeline.summary import human_duration
from support.mutated_audio import FORMATS, clean_file, make_corpus, ogg_last_granule, wav_field, xing_frames

RATE = 16_000
PEAK_RSS_LIMIT_MB = 1200  # the tiny model's run holds about 500 MB; a header's length would be terabytes


def reason_of(path, **kwargs) -> str:
    with pytest.raises(AudioError) as raised:
        read_audio(path, **kwargs)
    return raised.value.reason


def lebench_extract(folder: Path, out: Path, model, *extra) -> tuple:
    """(exit status, stderr, peak RSS in MB) of `python -m lebench_cli extract` in a process of its own."""
    stderr_path = out.parent / f"{out.name}.stderr"
    with open(stderr_path, "w") as stderr:
        process = subprocess.Popen([sys.executable, "-m", "lebench_cli", "extract", str(folder), "-o", str(out),
                                    "--model", str(model), "--device", "cpu", "--save-dtype", "float32",
                                    "--layers", "1,3", "-q", *map(str, extra)],
                                   stdout=subprocess.DEVNULL, stderr=stderr)
        _, status, usage = os.wait4(process.pid, 0)
        process.returncode = os.waitstatus_to_exitcode(status)
    return process.returncode, stderr_path.read_text(errors="replace"), usage.ru_maxrss / 1024


def outcome(out: Path) -> tuple:
    """({id: flags} stored, {id: reason} failed) of an output folder."""
    with open_features(out) as store:
        stored = {utt_id: store.info(utt_id)["flags"] for utt_id in store.ids}
    failures = [json.loads(line) for line in (out / "failures-1of1.jsonl").read_text().splitlines()]
    return stored, {entry["id"]: entry["reason"] for entry in failures}


def extract(*args):
    return CliRunner().invoke(main, ["extract", *map(str, args)], catch_exceptions=False)


# ---- the mutation suite -------------------------------------------------------------------

@pytest.fixture(scope="module")
def mutated_run(checkpoints, tmp_path_factory):
    """The mutated corpus through one `lebench extract --workers 0`: (folder, cases, out,
    exit status, stderr, peak RSS in MB)."""
    root = tmp_path_factory.mktemp("mutated")
    cases = make_corpus(root / "corpus")
    status, stderr, peak_mb = lebench_extract(root / "corpus", root / "out", checkpoints("base"), "--workers", "0")
    return SimpleNamespace(folder=root / "corpus", cases=cases, out=root / "out", status=status, stderr=stderr,
                           peak_mb=peak_mb)


def test_mutated_files_can_only_fail_themselves(checkpoints, mutated_run):
    run, cases, out = mutated_run, mutated_run.cases, mutated_run.out
    assert run.status == 3, run.stderr
    assert "Traceback" not in run.stderr
    stored, failed = outcome(out)
    assert run.stderr.splitlines()[-1] == f"Error: {len(failed)} files failed (see {out}/failures-1of1.jsonl)"
    assert sorted([*stored, *failed]) == sorted(case.utt_id for case in cases)  # every input, once
    assert not set(stored) & set(failed)
    assert run.peak_mb < PEAK_RSS_LIMIT_MB, f"peak RSS {run.peak_mb:.0f} MB"
    for case in cases:
        if case.expect == "stored":
            assert stored.get(case.utt_id) == "", (case.kind, case.utt_id, failed.get(case.utt_id))
        elif case.expect == "failed":
            assert case.utt_id in failed, (case.kind, case.utt_id)
        if case.reason is not None:
            assert failed[case.utt_id] == case.reason, case.utt_id
    assert "truncated" not in ",".join(stored.values())  # without --keep-truncated, none is stored
    # The good files hold what each gives alone.
    encoder = Encoder(load_local(checkpoints("base")))
    with open_features(out) as store:
        for case in cases:
            if case.expect == "stored":
                (expected,) = encoder.encode([audio.load_audio(case.path)], [1, 3])
                for layer, value in expected.items():
                    assert np.abs(store.read(case.utt_id, layer) - value).max() <= 1e-4 * np.abs(value).max()
    print(f"\n{len(cases)} mutated inputs: {len(stored)} stored, {len(failed)} failed; peak RSS {run.peak_mb:.0f} MB")


def test_a_rerun_over_mutated_files_changes_nothing(checkpoints, mutated_run):
    before, index = outcome(mutated_run.out), (mutated_run.out / "index-1of1.tsv").read_text()
    status, stderr, _ = lebench_extract(mutated_run.folder, mutated_run.out, checkpoints("base"), "--workers", "0")
    assert status == 3 and "Traceback" not in stderr, stderr
    assert outcome(mutated_run.out) == before
    assert (mutated_run.out / "index-1of1.tsv").read_text() == index


def test_mutated_files_fail_alike_in_worker_processes(checkpoints, mutated_run, tmp_path):
    """The liars, truncations, absurd rates and clean files again, decoded in two workers."""
    (tmp_path / "in").mkdir()
    chosen = [case for case in mutated_run.cases if case.kind in ("huge declared length", "truncated", "clean",
                                                                  "absurd rate")]
    for case in chosen:
        os.link(case.path, tmp_path / "in" / case.path.name)
    status, stderr, _ = lebench_extract(tmp_path / "in", tmp_path / "out", checkpoints("base"), "--workers", "2")
    assert status == 3 and "Traceback" not in stderr, stderr
    stored, failed = outcome(mutated_run.out)
    ids = {case.utt_id for case in chosen}
    assert outcome(tmp_path / "out") == ({k: v for k, v in stored.items() if k in ids},
                                         {k: v for k, v in failed.items() if k in ids})


# ---- each rule, with its message ----------------------------------------------------------

def test_decoding_is_bounded_by_the_content_not_the_header(tmp_path):
    """The issue's liars: an MP3 whose Xing tag declares 2^32 - 1 and 2e7 frames, an Ogg and
    an Opus file whose last page (valid checksum) says granule 2^40."""
    mp3 = clean_file(tmp_path / "clean.mp3", "mp3", seconds=1.0).read_bytes()
    (tmp_path / "xing-2e32.mp3").write_bytes(xing_frames(mp3, 2**32 - 1))
    (tmp_path / "xing-2e7.mp3").write_bytes(xing_frames(mp3, 20_000_000))
    assert reason_of(tmp_path / "xing-2e32.mp3") == "truncated: ends at 1.011 s of the 154618822.540 s its header declares"
    assert reason_of(tmp_path / "xing-2e7.mp3") == "truncated: ends at 1.011 s of the 719999.920 s its header declares"
    waveform, truncated = read_audio(tmp_path / "xing-2e7.mp3", keep_truncated=True)
    assert truncated and 16_000 <= len(waveform) < 16_200  # the content: 1 s and the MPEG frames around it
    ogg = clean_file(tmp_path / "clean.ogg", "ogg", seconds=1.0).read_bytes()
    (tmp_path / "granule.ogg").write_bytes(ogg_last_granule(ogg, 2**40))
    assert reason_of(tmp_path / "granule.ogg") == "truncated: ends at 1.008 s of the 68719476.736 s its header declares"
    opus = clean_file(tmp_path / "clean.opus", "opus", seconds=1.0).read_bytes()
    (tmp_path / "granule.opus").write_bytes(ogg_last_granule(opus, 2**40))
    assert reason_of(tmp_path / "granule.opus") == "not a readable audio file (supported file format but file is malformed)"


def test_lengths_are_planned_by_what_the_bytes_can_back(tmp_path):
    mp3 = clean_file(tmp_path / "clean.mp3", "mp3", seconds=1.0).read_bytes()
    (tmp_path / "liar.mp3").write_bytes(xing_frames(mp3, 2**32 - 1))
    assert probe(tmp_path / "liar.mp3").frames == len(mp3) * 64  # MPEG: at most 64 frames a byte
    wav = clean_file(tmp_path / "clean.wav", "wav").read_bytes()
    (tmp_path / "liar.wav").write_bytes(mutated_audio.declare_huge_length(wav, "wav"))
    assert probe(tmp_path / "liar.wav").frames == 8000
    assert backed_frames(1000, "WAV", "PCM_24", 2) == 166
    assert backed_frames(1000, "FLAC", "PCM_16", 2) == 1000 * 8192  # FLAC names its width as a PCM subtype
    assert backed_frames(1000, "OGG", "OPUS", 1) == 1000 * 4096


def test_a_decoder_exception_fails_its_file_only(checkpoints, tmp_path, monkeypatch):
    real = decoding.read_audio

    def failing(source, **kwargs):  # decode() reads its AudioSource
        if Path(source.path).stem == "oom":
            raise MemoryError("Unable to allocate 9.00 TiB for an array with shape (2473901162496,)")
        if Path(source.path).stem == "odd":
            raise ValueError("a surprise\non two lines")
        return real(source, **kwargs)

    monkeypatch.setattr(decoding, "read_audio", failing)
    for name in ("oom", "odd", "good"):
        clean_file(tmp_path / "in" / f"{name}.wav", "wav")
    out = tmp_path / "out"
    result = extract(tmp_path / "in", "-o", out, "--model", checkpoints("base"), "--device", "cpu", "--workers", "0",
                     "-q")
    assert result.exit_code == 3, result.output
    stored, failed = outcome(out)
    assert stored == {"good": ""}
    assert failed == {"oom": "decoding failed (out of memory)", "odd": "decoding failed (ValueError: a surprise on two lines)"}


def test_probe_exceptions_fail_their_file_only(tmp_path, monkeypatch):
    from lebench_cli.pipeline.extract import _Item, _probe

    def surprised(path):
        raise OverflowError("int too large to convert")

    path = clean_file(tmp_path / "a.wav", "wav")
    monkeypatch.setattr(audio.soundfile, "SoundFile", surprised)
    item = _Item(SimpleNamespace(path=path, num_samples=None))
    assert _probe(item) == "not a readable audio file (OverflowError: int too large to convert)"


@pytest.mark.parametrize("rate", [1, 999, 768_001])
def test_rates_outside_the_documented_range_fail_naming_the_rate(tmp_path, rate):
    wav = clean_file(tmp_path / "clean.wav", "wav").read_bytes()
    (tmp_path / "rate.wav").write_bytes(wav_field(wav, "rate", rate))
    assert reason_of(tmp_path / "rate.wav") == f"sample rate {rate} Hz is outside 1000-768000 Hz"
    with pytest.raises(AudioError, match=f"sample rate {rate} Hz"):
        probe(tmp_path / "rate.wav")


def test_the_bounds_themselves_are_accepted(tmp_path):
    sf.write(tmp_path / "low.wav", np.zeros((1000, 1), np.float32), 1000)
    sf.write(tmp_path / "high.wav", np.zeros((768, 256), np.float32), 768_000)
    assert len(read_audio(tmp_path / "low.wav")[0]) == RATE
    assert probe(tmp_path / "high.wav").channels == 256 and len(read_audio(tmp_path / "high.wav")[0]) == 16


def test_channel_counts_over_the_bound_fail_naming_the_count(tmp_path):
    sf.write(tmp_path / "many.wav", np.zeros((100, 300), np.float32), RATE)
    assert reason_of(tmp_path / "many.wav") == "300 channels: more than 256"


def test_dry_run_uses_the_same_bounds(checkpoints, tmp_path):
    """The issue's 88 KB WAV whose rate field says 1 Hz was planned as 12.15 h (201 MB)."""
    sf.write(tmp_path / "in.wav", np.zeros(44_000, np.float32), RATE, subtype="PCM_16")
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "one-hertz.wav").write_bytes(wav_field((tmp_path / "in.wav").read_bytes(), "rate", 1))
    mp3 = clean_file(tmp_path / "clean.mp3", "mp3", seconds=1.0).read_bytes()
    (folder / "liar.mp3").write_bytes(xing_frames(mp3, 2**32 - 1))
    result = extract(folder, "-o", tmp_path / "out", "--model", checkpoints("base"), "--device", "cpu", "--dry-run")
    assert result.exit_code == 0, result.output
    seconds = len(mp3) * 64 / RATE  # what its bytes can back, not 2^32 MPEG frames
    assert result.output.startswith(f"1 file to extract ({human_duration(seconds)} of audio), 0 already stored, "
                                    "1 unreadable; estimated output ")


@pytest.mark.parametrize("extension", mutated_audio.UNCOMPRESSED)
def test_uncompressed_headers_declare_their_data_length(tmp_path, extension):
    path = clean_file(tmp_path / f"a.{extension}", extension)
    assert declared_data_bytes(path, FORMATS[extension][0]) == 2 * 8000


def test_streamed_headers_declare_no_length(tmp_path):
    """A WAV written without seeking back says 0 or 0xFFFFFFFF: no length, so no truncation."""
    wav = clean_file(tmp_path / "a.wav", "wav").read_bytes()
    data = mutated_audio.riff_chunk(wav, b"data")
    for unknown in (0, 0xFFFFFFFF):
        (tmp_path / "streamed.wav").write_bytes(wav[: data + 4] + unknown.to_bytes(4, "little") + wav[data + 8:])
        assert declared_data_bytes(tmp_path / "streamed.wav", "WAV") is None


def test_ogg_without_its_last_page_is_truncated(tmp_path):
    ogg = clean_file(tmp_path / "a.ogg", "ogg", seconds=3.0).read_bytes()
    assert ogg_stream_ends(tmp_path / "a.ogg")
    last = ogg.rindex(b"OggS")
    (tmp_path / "cut.ogg").write_bytes(ogg[:last])  # whole pages, the final one gone
    assert not ogg_stream_ends(tmp_path / "cut.ogg")
    assert reason_of(tmp_path / "cut.ogg").startswith("truncated: ends at ")
    assert reason_of(tmp_path / "cut.ogg").endswith(" s, without the last page of its Ogg stream")


# ---- truncated files: failed by default, kept with a flag -------------------------------

def truncated_corpus(folder: Path) -> dict:
    """{id: the failure reason without --keep-truncated}: the issue's WAV (4.07 s declared,
    0.34 s present), a cut MP3 and FLAC, and a cut recording long enough to be chunked."""
    folder.mkdir(parents=True)
    whole = folder.parent / "whole"
    sf.write(whole.with_suffix(".wav"), mutated_audio.waveform(4.07), RATE, subtype="PCM_16")
    (folder / "wav.wav").write_bytes(whole.with_suffix(".wav").read_bytes()[: 44 + 2 * 5440])
    mp3 = clean_file(whole.with_suffix(".mp3"), "mp3", seconds=2.0).read_bytes()
    (folder / "mp3.mp3").write_bytes(mp3[: len(mp3) // 2])
    flac = clean_file(whole.with_suffix(".flac"), "flac", seconds=2.0).read_bytes()
    (folder / "flac.flac").write_bytes(flac[: len(flac) // 2])
    sf.write(whole.with_suffix(".long.wav"), mutated_audio.waveform(9.0), RATE, subtype="PCM_16")
    (folder / "long.wav").write_bytes(whole.with_suffix(".long.wav").read_bytes()[: 44 + 2 * 6 * RATE])
    clean_file(folder / "good.wav", "wav")
    return {"wav": "truncated: ends at 0.340 s of the 4.070 s its header declares",
            "mp3": "truncated: ends at 0.903 s of the 2.000 s its header declares",
            "flac": "decoding failed (flac decoder lost sync)",
            "long": "truncated: ends at 6.000 s of the 9.000 s its header declares"}


@pytest.mark.parametrize("workers", ["0", "2"])
def test_truncated_files_fail_with_both_lengths(checkpoints, tmp_path, workers):
    reasons = truncated_corpus(tmp_path / "in")
    out = tmp_path / "out"
    result = extract(tmp_path / "in", "-o", out, "--model", checkpoints("base"), "--device", "cpu",
                     "--workers", workers, "--chunk-seconds", "4", "--overlap-seconds", "1", "-q")
    assert result.exit_code == 3, result.output
    assert outcome(out) == ({"good": ""}, reasons)


def test_keep_truncated_stores_what_is_present_flagged(checkpoints, tmp_path):
    truncated_corpus(tmp_path / "in")
    out = tmp_path / "out"
    result = CliRunner().invoke(main, [
        "extract", str(tmp_path / "in"), "-o", str(out), "--model", str(checkpoints("base")), "--device", "cpu",
        "--workers", "0", "--chunk-seconds", "4", "--overlap-seconds", "1", "--keep-truncated"])
    assert result.exit_code == 0, result.output
    assert "; 4 truncated, stored as far as they go" in result.stderr
    stored, failed = outcome(out)
    assert failed == {}
    assert stored == {"good": "", "wav": "truncated", "mp3": "truncated", "flac": "truncated",
                      "long": "chunked,truncated"}
    listing = CliRunner().invoke(main, ["ls", str(out)]).output.splitlines()
    assert "wav\t16\t0.340\ttruncated" in listing and "good\t24\t0.500\t" in listing
    assert "long\t299\t6.000\tchunked,truncated" in listing
    with open_features(out) as store:
        assert store.info("wav")["duration"] == 0.34


@pytest.mark.parametrize("extra", [["--workers", "1"], ["--strict"]])
def test_liars_listed_in_a_manifest_with_their_true_length_fail_alone(checkpoints, tmp_path, extra):
    """The issue's variants: a .tsv giving the true length (so no header is probed before
    decoding), decoded in one worker, or with --strict (which stops there, with exit 1)."""
    folder = tmp_path / "in"
    mp3 = clean_file(tmp_path / "clean.mp3", "mp3", seconds=1.0).read_bytes()
    folder.mkdir()
    (folder / "liar.mp3").write_bytes(xing_frames(mp3, 2**32 - 1))
    clean_file(folder / "good.wav", "wav")
    manifest = tmp_path / "corpus.tsv"
    manifest.write_text(f"{folder}\nliar.mp3\t16175\ngood.wav\t8000\n")
    out = tmp_path / "out"
    result = extract(manifest, "-o", out, "--model", checkpoints("base"), "--device", "cpu", "-q", *extra)
    reason = "truncated: ends at 1.011 s of the 154618822.540 s its header declares"
    if "--strict" in extra:
        assert result.exit_code == 1 and result.output == f"Error: {folder / 'liar.mp3'}: {reason}\n", result.output
    else:
        assert result.exit_code == 3, result.output
        assert outcome(out) == ({"good": ""}, {"liar": reason})


class _Unsendable:
    def __reduce__(self):
        raise TypeError("cannot send this source")


def test_a_worker_task_that_raises_fails_its_file_only(tmp_path):
    """Whatever a worker's task raises, besides the pool breaking, is that file's failure;
    the files after it are decoded in the same pool."""
    good = clean_file(tmp_path / "good.wav", "wav")
    items = [SimpleNamespace(source=SimpleNamespace(path=good, extra=_Unsendable()), seconds=0.5),
             SimpleNamespace(source=SimpleNamespace(path=good), seconds=0.5)]
    results = [result for _, result in decoding.decoded_stream(items, workers=1, channel=None, ahead=2)]
    assert results[0] == (None, "decoding failed (TypeError: cannot send this source)")
    waveform, flags, samples = results[1][0]
    assert results[1][1] is None and samples == 8000 and flags == ""


def test_an_aiff_padded_past_its_frame_count_is_whole(tmp_path):
    """The SSND chunk may hold more bytes than COMM's frames: those frames are the length."""
    aiff = clean_file(tmp_path / "a.aiff", "aiff").read_bytes()
    ssnd = aiff.index(b"SSND")
    size = int.from_bytes(aiff[ssnd + 4: ssnd + 8], "big")
    form = int.from_bytes(aiff[4:8], "big")
    padded = aiff[:4] + (form + 100).to_bytes(4, "big") + aiff[8: ssnd + 4] + (size + 100).to_bytes(4, "big") \
        + aiff[ssnd + 8:] + bytes(100)
    (tmp_path / "padded.aiff").write_bytes(padded)
    waveform, truncated = read_audio(tmp_path / "padded.aiff")
    assert not truncated and len(waveform) == 8050  # libsndfile decodes the padding too
    (tmp_path / "cut.aiff").write_bytes(padded[:-60])  # cut in the padding only: COMM's frames are all there
    assert not read_audio(tmp_path / "cut.aiff")[1]
