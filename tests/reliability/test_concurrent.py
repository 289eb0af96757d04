"""Two runs on one output: never written at once.
The harness: tests/support/reliability.py."""

from __future__ import annotations

from support.reliability import SOAK, check_complete, check_shards, extract_args, subset_ids


# ---- 5. concurrent runs -----------------------------------------------------------------


LOCKED = "Error: another lebench extract is writing part {part} of {out} (pid {pid})\n"


def test_two_runs_started_together_never_write_at_once(zygote, subset, model, reference, tmp_path):
    ids = subset_ids(subset)
    rounds, refused = (12 if SOAK else 2), 0
    for round_ in range(rounds):
        out = tmp_path / f"round{round_}"
        first, second = (zygote.start(extract_args(subset, out, model)) for _ in range(2))
        statuses = (zygote.wait(first, 120), zygote.wait(second, 120))
        if statuses == (0, 0):  # one finished before the other looked: nothing to prove
            continue
        refused += 1
        winner, loser = (first, second) if statuses == (0, 1) else (second, first)
        assert sorted(statuses) == [0, 1], (statuses, first.stderr, second.stderr)
        assert loser.stderr == LOCKED.format(part="1/1", out=out, pid=winner.pid)
        assert loser.stdout_path.read_text() == ""
        check_complete(out, reference, f"round {round_}", ids)
    assert refused >= rounds - 1, f"only {refused} of {rounds} rounds overlapped"
    # A job array: parts of one OUT run side by side, but never two writers of one part.
    out = tmp_path / "array"
    runs = [zygote.start(extract_args(subset, out, model, "--shard", part)) for part in ("1/2", "1/2", "2/2")]
    statuses = [zygote.wait(run, 120) for run in runs]
    assert statuses[2] == 0, runs[2].stderr
    assert sorted(statuses[:2]) in ([0, 1], [0, 0]), [run.stderr for run in runs]
    if statuses[:2] != [0, 0]:
        loser, winner = (runs[0], runs[1]) if statuses[0] == 1 else (runs[1], runs[0])
        assert loser.stderr == LOCKED.format(part="1/2", out=out, pid=winner.pid)
    where = check_shards(out, reference)
    assert sorted(where) == sorted(ids)
    assert {name.split("-")[1] for name in where.values()} == {"1of2", "2of2"}
