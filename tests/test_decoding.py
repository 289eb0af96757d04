from types import SimpleNamespace

import numpy as np
import pytest
import soundfile

from lebench_cli.audio.loading import MIN_SAMPLES, PADDED_FLAG, SAMPLE_RATE
from lebench_cli.audio import decoding
from lebench_cli.audio.decoding import SampleRing, decoded_stream, ring_capacity


def test_ring_reserves_first_in_first_out_and_wraps():
    ring = SampleRing(100)
    try:
        assert ring.reserve(40) == 0
        assert ring.reserve(40) == 40
        assert ring.reserve(40) is None  # 20 left at the end, the start is taken
        ring.samples[0:40] = 1.0
        np.testing.assert_array_equal(ring.take(0, 40), np.ones(40, dtype=np.float32))
        assert ring.reserve(30) == 0  # wraps to the room the first one left
        assert ring.reserve(15) is None  # between the newest (ends at 30) and the oldest (40): 10
        assert ring.reserve(10) == 30
        ring.release(40)
        ring.release(0)
        ring.release(30)
        assert ring.reserve(100) == 0  # empty again: the whole ring
    finally:
        ring.close()


def test_ring_refuses_release_out_of_order():
    ring = SampleRing(100)
    try:
        ring.reserve(10)
        ring.reserve(10)
        with pytest.raises(RuntimeError):
            ring.release(10)
    finally:
        ring.close()


def write_files(folder, seconds_list):
    items = []
    for index, seconds in enumerate(seconds_list):
        path = folder / f"f{index}.wav"
        samples = np.random.default_rng(index).uniform(-0.5, 0.5, int(seconds * SAMPLE_RATE)).astype(np.float32)
        soundfile.write(str(path), samples, SAMPLE_RATE, subtype="FLOAT")
        items.append(SimpleNamespace(source=SimpleNamespace(path=str(path)), seconds=seconds, samples=samples))
    return items


def test_the_ring_leaves_half_of_dev_shm_free(monkeypatch):
    def free(megabytes):
        return lambda path: SimpleNamespace(f_bavail=megabytes * 256, f_frsize=4096)

    monkeypatch.setattr(decoding.os, "statvfs", free(1000))
    assert ring_capacity(10**6) == 10**6
    assert ring_capacity(10**9) == 16 * 1024**2  # 64 MB at most
    monkeypatch.setattr(decoding.os, "statvfs", free(8))  # a container's small /dev/shm
    assert ring_capacity(10**9) == 1024**2  # 4 MB: half of it


@pytest.mark.parametrize("room, through_ring", [("fits", 6), ("ring full", 0), ("header too short", 1),
                                                ("no /dev/shm", 0)])
def test_workers_hand_back_the_same_samples_through_the_ring_or_the_pipe(tmp_path, monkeypatch, room, through_ring):
    taken = []
    original_take = SampleRing.take
    monkeypatch.setattr(SampleRing, "take", lambda ring, start, count: taken.append(count) or original_take(ring, start, count))
    items = write_files(tmp_path, [0.5, 2.0, 0.01, 1.2, 3.0, 0.7])
    if room == "ring full":
        monkeypatch.setattr(SampleRing, "reserve", lambda ring, count: None)  # every file through the pipe
    if room == "no /dev/shm":
        monkeypatch.setattr(decoding, "_SHM_FOLDER", str(tmp_path / "missing"))
    if room == "header too short":
        for item in items:
            item.seconds /= 2  # less room reserved than the file decodes to: only the 0.01 s file (padded) fits
    (broken := tmp_path / "broken.wav").write_bytes(b"RIFF0000WAVEnot audio")
    items.insert(3, SimpleNamespace(source=SimpleNamespace(path=str(broken)), seconds=1.0))
    results = list(decoded_stream(items, workers=2, channel=None, ahead=4))
    assert [item for item, _ in results] == items
    for item, (value, reason) in results:
        if item.source.path == str(broken):
            assert value is None and reason
            continue
        waveform, flags, samples = value
        assert reason is None and samples == len(item.samples)
        if samples < MIN_SAMPLES:
            assert flags == PADDED_FLAG and len(waveform) == MIN_SAMPLES
            np.testing.assert_array_equal(waveform[samples:], 0)
        np.testing.assert_array_equal(waveform[:samples], item.samples)
    assert len(taken) == through_ring


@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.parametrize("normalize", [True, False])
def test_long_recordings_are_measured_not_decoded(tmp_path, workers, normalize):
    items = write_files(tmp_path, [3.0, 2.5, 0.8, 1.1])
    (broken := tmp_path / "broken.wav").write_bytes(b"RIFF0000WAVEnot audio")
    items.insert(1, SimpleNamespace(source=SimpleNamespace(path=str(broken)), seconds=5.0))
    results = list(decoded_stream(items, workers=workers, channel=None, ahead=3, streamed_over=2.0,
                                  normalize=normalize))
    assert [item for item, _ in results] == items
    for item, (value, reason) in results:
        if item.source.path == str(broken):
            assert value is None and reason
        elif item.seconds > 2.0:
            samples = item.samples.astype(np.float64)
            assert reason is None and isinstance(value, decoding.RecordingStatistics)
            assert value.samples == len(samples)
            if normalize:
                np.testing.assert_allclose(value.mean, samples.mean(), rtol=1e-5, atol=1e-9)
                np.testing.assert_allclose(value.std, np.sqrt(samples.var() + 1e-5), rtol=1e-6)
            else:
                assert (value.mean, value.std) == (0.0, 1.0)
        else:
            np.testing.assert_array_equal(value[0], item.samples)
