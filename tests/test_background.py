"""BackgroundWriter: ShardWriter's calls on a thread of their own, in order; the first failure
re-raised on the caller's thread, the calls after it dropped."""

import numpy as np
import pytest

from lebench_cli.errors import OutputError
from lebench_cli.pipeline.background import BackgroundWriter
from lebench_cli.reading.store import open_features
from lebench_cli.storage import PartLock, ShardWriter, WriterOptions, prepare_output, stored_ids
from support.stores import LAYERS, random_utterances


def prepared(out):
    prepare_output(out, {"identity": {"layers": LAYERS}, "model": "tiny"}, overwrite=False)
    return WriterOptions(layers=LAYERS)


def test_added_and_streamed_utterances_are_stored_in_call_order(tmp_path):
    out = tmp_path / "out"
    options = prepared(out)
    whole = random_utterances(3)
    streamed = random_utterances(1, seed=1, prefix="s")[0]
    with PartLock(out, 1, 1), ShardWriter(out, options) as writer:
        background = BackgroundWriter(writer, depth=2)
        background.add(whole[0])
        background.begin_utterance(streamed.utt_id, streamed.source, streamed.duration, streamed.frames,
                                   flags="chunked")
        half = streamed.frames // 2
        for piece in (slice(0, half), slice(half, streamed.frames)):
            background.append_frames({name: states[piece] for name, states in streamed.states.items()})
        background.end_utterance()
        background.begin_utterance("dropped", "/audio/dropped.wav", 0.1, 5)
        background.abort_utterance()
        for utt in whole[1:]:
            background.add(utt)
        background.finish()
    with open_features(out) as features:
        assert [row["id"] for row in features.utterances()] == ["u0", "s0", "u1", "u2"]
        assert features.info("s0")["flags"] == "chunked"
        for utt in [*whole, streamed]:
            for name in LAYERS:
                expected = utt.states[name].astype(np.float16)
                np.testing.assert_array_equal(features.read(utt.utt_id, name), expected)


def test_a_failed_call_is_raised_on_the_callers_thread_and_the_calls_after_it_are_dropped(tmp_path):
    out = tmp_path / "out"
    options = prepared(out)
    first, second = random_utterances(2)
    with PartLock(out, 1, 1), ShardWriter(out, options) as writer:
        background = BackgroundWriter(writer)
        background.add(first)
        background.add(first)  # already stored: fails on the writer's thread
        try:
            background.add(second)  # queued, then dropped; or refused, when the failure came first
        except OutputError:
            pass
        with pytest.raises(OutputError) as raised:
            background.finish()
        assert str(raised.value) == f"utterance u0 is already stored in {out}"
        assert not background.thread.is_alive()
        with pytest.raises(OutputError) as again:
            background.add(second)
        assert again.value is raised.value
    assert stored_ids(out) == {"u0"}
