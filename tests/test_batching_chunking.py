"""Length batching and long-recording windows."""

import numpy as np
import pytest

from lebench_cli.pipeline.batching import length_batches, pad_batch
from lebench_cli.pipeline.windows import frame_count, plan_windows


def test_batches_respect_the_padded_seconds_cap():
    lengths = sorted([16_000 * s for s in (1, 2, 2, 3, 5, 8, 9, 20, 40)], reverse=True)
    batches = list(length_batches(lengths, lambda n: n, batch_seconds=20, max_padding=1.0))
    assert [len(b) for b in batches] == [1, 1, 2, 4, 1]
    assert batches[0] == [640_000]  # longer than the cap: alone
    for batch in batches[1:]:
        assert max(batch) * len(batch) <= 20 * 16_000
    assert sorted(n for b in batches for n in b) == sorted(lengths)


@pytest.mark.parametrize("order", [-1, 1])
def test_batches_cap_their_padding(order):
    seconds = (1, 2, 2, 3, 5, 8, 9, 20, 40, 0.5, 0.5, 0.52, 0.55, 0.6)
    lengths = sorted((int(16_000 * s) for s in seconds), reverse=order < 0)
    batches = list(length_batches(lengths, lambda n: n, batch_seconds=20))
    for batch in batches:
        padded = max(batch) * len(batch)
        assert padded - sum(batch) <= 0.1 * padded
    assert sorted(n for b in batches for n in b) == sorted(lengths)
    if order < 0:  # the extractor's order: longest first
        assert batches == [[640_000], [320_000], [144_000, 128_000], [80_000], [48_000], [32_000, 32_000], [16_000],
                           [9_600, 8_800, 8_320, 8_000], [8_000]]


def test_pad_batch():
    padded, lengths = pad_batch([np.ones(3, np.float32), np.ones(5, np.float32)])
    assert padded.shape == (2, 5) and lengths.tolist() == [3, 5]
    assert padded[0].tolist() == [1, 1, 1, 0, 0]


@pytest.mark.parametrize("samples", [400, 16_000 * 30, 16_000 * 30 + 1, 16_000 * 31, 16_000 * 75 + 123, 16_000 * 3_600])
def test_windows_cover_every_frame_once(samples):
    windows = plan_windows(samples, window_seconds=30, overlap_seconds=5)
    covered = []
    for window in windows:
        assert frame_count(window.end_sample - window.start_sample) >= window.keep_to
        assert window.start_sample % 320 == 0
        covered.extend(range(window.first_frame + window.keep_from, window.first_frame + window.keep_to))
    assert covered == list(range(frame_count(samples)))
    if len(windows) > 1:
        lengths = {w.end_sample - w.start_sample for w in windows}
        assert len(lengths) == 1 and lengths.pop() <= 480_000  # equal windows batch without padding
        # as few windows as leave 5 s (250 frames) of overlap, less one frame of rounding
        assert len(windows) == -(-(frame_count(samples) - 250) // (frame_count(480_000) - 250))
        for before, after in zip(windows, windows[1:]):
            assert before.first_frame + frame_count(before.end_sample - before.start_sample) - after.first_frame >= 249
        # cuts sit inside overlaps, away from both windows' edges
        for window in windows[1:-1]:
            assert window.keep_from >= 100 and window.keep_to <= frame_count(480_000) - 100


def test_window_batches_of_a_file_shorter_than_measured_fail_as_changed(tmp_path):
    import soundfile as sf

    from lebench_cli.pipeline.windows import normalised_window_batches, plan_windows
    from lebench_cli.errors import AudioError

    path = tmp_path / "short.wav"
    sf.write(path, np.full(16000 * 10, 0.5, dtype=np.float32), 16000)
    windows = plan_windows(16000 * 70, 30, 5)  # measured at 70 s, now 10 s long
    batches = normalised_window_batches(path, None, windows, 30, 30, 0.25, 0.5)
    with pytest.raises(AudioError, match=r"short\.wav: changed while being read$"):
        list(batches)
    whole = plan_windows(16000 * 10, 30, 5)
    ((group, (wave,)),) = normalised_window_batches(path, None, whole, 30, 30, 0.25, 0.5)
    assert group == whole and np.allclose(wave, 0.5)
