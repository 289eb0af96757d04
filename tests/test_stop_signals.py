"""A stop signal whose KeyboardInterrupt Python drops still stops the run.

Python runs a signal handler between two bytecodes of the main thread; when those are inside a
`__del__` or a weakref callback, the handler's KeyboardInterrupt is printed as "Exception
ignored in ..." and dropped. The handler has noted the stop all the same, and the engine
raises it again before its next batch (stop_signals.stop_if_requested)."""

import re
import signal
import sys

from click.testing import CliRunner

from lebench_cli.cli import main
from lebench_cli.model.encoder import Encoder
from lebench_cli.pipeline import stop_signals
from lebench_cli.testing.audio import write_audio


class _RaisesSigtermWhenCollected:
    def __del__(self):
        signal.raise_signal(signal.SIGTERM)
        sum(range(1000))  # bytecode after the signal: its handler runs here, inside __del__


def test_a_stop_signal_whose_interrupt_python_dropped_still_stops_the_run(checkpoints, tmp_path, monkeypatch):
    corpus = tmp_path / "corpus"
    for index in range(6):
        write_audio(corpus / f"u{index}.wav", 1.0 + 0.1 * index, seed=index)
    forward, calls = Encoder.forward, []

    def forward_then_a_dropped_interrupt(self, *args, **kwargs):
        calls.append(len(args[1]))
        if len(calls) == 1:
            _RaisesSigtermWhenCollected()  # made and collected at once
        return forward(self, *args, **kwargs)

    monkeypatch.setattr(Encoder, "forward", forward_then_a_dropped_interrupt)
    dropped = []
    monkeypatch.setattr(sys, "unraisablehook", lambda unraisable: dropped.append(unraisable.exc_type))
    result = CliRunner().invoke(main, ["extract", str(corpus), "-o", str(tmp_path / "out"), "--model",
                                       str(checkpoints("base")), "--batch-seconds", "1.2", "--workers", "0"])
    assert dropped == [KeyboardInterrupt]  # the handler's interrupt was dropped where it was raised
    assert result.exit_code == 130, result.output
    assert re.fullmatch(r"Error: interrupted after \d+ files; finished work is committed: "
                        r"rerun the same command to resume", result.stderr.splitlines()[-1]), result.stderr
    assert len(calls) == 1  # no batch after the stop
    assert not stop_signals.stop_requested()  # the run is over: a later one in this process starts afresh
