import errno
import os

import numpy as np
import pytest
import soundfile

from lebench_cli.audio.loading import AudioInfo, MIN_SAMPLES, SAMPLE_RATE, load_audio, probe, read_audio
from lebench_cli.errors import AudioError


def noise(frames, channels=1, seed=0):
    shape = (frames,) if channels == 1 else (frames, channels)
    return np.random.default_rng(seed).uniform(-0.5, 0.5, shape).astype(np.float32)


def write(path, samples, rate=SAMPLE_RATE, subtype="FLOAT"):
    soundfile.write(str(path), samples, rate, subtype=subtype)
    return str(path)


def reason_of(path, **kwargs):
    with pytest.raises(AudioError) as caught:
        load_audio(path, **kwargs)
    assert caught.value.path == str(path)
    return caught.value.reason


def test_float_wav_round_trip_is_exact(tmp_path):
    samples = noise(16000)
    loaded = load_audio(write(tmp_path / "a.wav", samples))
    assert loaded.dtype == np.float32 and loaded.ndim == 1 and loaded.flags.c_contiguous
    np.testing.assert_array_equal(loaded, samples)


def test_pcm16_round_trip(tmp_path):
    ints = np.random.default_rng(1).integers(-32768, 32767, 8000, dtype=np.int16)
    loaded = load_audio(write(tmp_path / "ints.wav", ints, subtype="PCM_16"))
    np.testing.assert_array_equal(loaded, ints / np.float32(32768))

    samples = noise(8000)
    loaded = load_audio(write(tmp_path / "floats.flac", samples, subtype="PCM_16"))
    np.testing.assert_allclose(loaded, samples, rtol=0, atol=1 / 32768)


def test_stereo_is_averaged(tmp_path):
    samples = noise(4000, channels=2)
    loaded = load_audio(write(tmp_path / "stereo.wav", samples))
    np.testing.assert_allclose(loaded, samples.mean(axis=1), rtol=0, atol=1e-7)


def test_channel_picks_one_channel(tmp_path):
    samples = noise(4000, channels=3)
    path = write(tmp_path / "three.wav", samples)
    loaded = load_audio(path, channel=1)
    assert loaded.flags.c_contiguous
    np.testing.assert_array_equal(loaded, samples[:, 1])


def test_missing_channel_is_an_error(tmp_path):
    stereo = write(tmp_path / "stereo.wav", noise(4000, channels=2))
    mono = write(tmp_path / "mono.wav", noise(4000))
    assert reason_of(stereo, channel=2) == "has 2 channels, --channel 2 does not exist"
    assert reason_of(stereo, channel=-1) == "has 2 channels, --channel -1 does not exist"
    assert reason_of(mono, channel=1) == "has 1 channel, --channel 1 does not exist"


@pytest.mark.parametrize("rate", [8000, 22050, 44100, 48000])
def test_other_rates_are_resampled_and_keep_their_pitch(tmp_path, rate):
    frames = int(rate * 1.5) + 7
    tone = (0.5 * np.sin(2 * np.pi * 1000 * np.arange(frames) / rate)).astype(np.float32)
    loaded = load_audio(write(tmp_path / f"{rate}.wav", tone, rate))
    assert loaded.dtype == np.float32 and loaded.flags.c_contiguous
    assert abs(len(loaded) - round(frames * SAMPLE_RATE / rate)) <= 1
    peak_hz = np.argmax(np.abs(np.fft.rfft(loaded))) * SAMPLE_RATE / len(loaded)
    assert abs(peak_hz - 1000) < 2


def test_short_file_is_returned_as_it_is(tmp_path):
    samples = noise(MIN_SAMPLES - 300)
    np.testing.assert_array_equal(load_audio(write(tmp_path / "short.wav", samples)), samples)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_samples_are_an_error(tmp_path, bad):
    samples = noise(1000)
    samples[500] = bad
    assert reason_of(write(tmp_path / "bad.wav", samples)) == "contains NaN or infinite samples"


def test_missing_file(tmp_path):
    missing = tmp_path / "missing.wav"
    assert reason_of(missing) == "no such file"
    with pytest.raises(AudioError) as caught:
        probe(missing)
    assert str(caught.value) == f"{missing}: no such file"


def test_empty_file(tmp_path):
    (tmp_path / "empty.wav").write_bytes(b"")
    assert reason_of(tmp_path / "empty.wav") == "empty file (0 bytes)"


def test_text_file_named_wav(tmp_path):
    (tmp_path / "x.wav").write_text("not audio at all\n" * 20)
    assert reason_of(tmp_path / "x.wav") == "not a readable audio file (format not recognised)"


def test_directory_named_wav(tmp_path):
    (tmp_path / "x.wav").mkdir()
    assert reason_of(tmp_path / "x.wav") == "is a directory"


def test_symlink_loop(tmp_path):
    os.symlink(tmp_path / "b.wav", tmp_path / "a.wav")
    os.symlink(tmp_path / "a.wav", tmp_path / "b.wav")
    assert reason_of(tmp_path / "a.wav") == "symlink loop"


def test_valid_wav_without_samples(tmp_path):
    path = write(tmp_path / "zero.wav", np.zeros((0, 1), np.float32))
    assert reason_of(path) == "no samples"
    assert probe(path).frames == 0


def test_truncated_wav_is_an_error_naming_both_lengths(tmp_path):
    write(tmp_path / "full.wav", noise(16000), subtype="PCM_16")
    full = (tmp_path / "full.wav").read_bytes()
    (tmp_path / "cut.wav").write_bytes(full[: 44 + 2 * 8000])
    assert reason_of(tmp_path / "cut.wav") == "truncated: ends at 0.500 s of the 1.000 s its header declares"


def test_truncated_wav_kept_gives_the_samples_present(tmp_path):
    samples = noise(16000)
    write(tmp_path / "full.wav", samples, subtype="PCM_16")
    full = (tmp_path / "full.wav").read_bytes()
    (tmp_path / "cut.wav").write_bytes(full[: len(full) // 2])
    loaded, truncated = read_audio(tmp_path / "cut.wav", keep_truncated=True)
    assert truncated and 0 < len(loaded) < len(samples)
    np.testing.assert_array_equal(loaded, load_audio(tmp_path / "full.wav")[: len(loaded)])
    assert read_audio(tmp_path / "full.wav", keep_truncated=True)[1] is False


def test_truncated_flac_is_an_error(tmp_path):
    write(tmp_path / "full.flac", noise(32000), subtype="PCM_16")
    full = (tmp_path / "full.flac").read_bytes()
    (tmp_path / "cut.flac").write_bytes(full[: len(full) // 2])
    assert reason_of(tmp_path / "cut.flac") == "decoding failed (flac decoder lost sync)"


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root reads files whatever their mode")
def test_unreadable_file(tmp_path):
    path = write(tmp_path / "locked.wav", noise(1000))
    os.chmod(path, 0)
    try:
        assert reason_of(path) == "permission denied"
    finally:
        os.chmod(path, 0o644)


def test_permission_error_from_the_os(tmp_path, monkeypatch):
    path = write(tmp_path / "locked.wav", noise(1000))

    def refuse(file, *args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied", file)

    from lebench_cli.audio import origins  # where a file is opened and checked

    monkeypatch.setattr(origins, "open", refuse, raising=False)
    assert reason_of(path) == "permission denied"


def test_other_os_errors_give_the_os_message(tmp_path):
    (tmp_path / "file").write_bytes(b"x")
    assert reason_of(tmp_path / "file" / "a.wav") == "not a directory"


def test_probe_reads_the_header(tmp_path):
    path = write(tmp_path / "a.flac", noise(44100 * 2 + 10, channels=2), 44100, subtype="PCM_16")
    assert probe(path) == AudioInfo(44100, 2, 88210, 88210 / 44100)


def test_probe_rejects_non_audio(tmp_path):
    (tmp_path / "x.flac").write_text("hello")
    with pytest.raises(AudioError) as caught:
        probe(tmp_path / "x.flac")
    assert caught.value.reason == "not a readable audio file (format not recognised)"
