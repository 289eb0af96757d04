"""kill -9 at random moments, then resume: the result equals the uninterrupted run.
The harness: tests/support/reliability.py."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np

from lebench_cli.reading.store import open_features
from support.reliability import (CORPUS_FILES, ROUNDING, SEED, SOAK, check_complete, check_shards, extract_args,
                                 leftover_tmp, plant_decoy, replay, seeded, soak_only, wait_for_lock)


# ---- 1. kill -9 at random moments --------------------------------------------------------


KILLS_PER_CAMPAIGN = 10  # then the campaign's run completes and is checked; a new one starts


def kill_campaigns(zygote, corpus, model, reference, tmp_path, kills_wanted: int, name: str) -> dict:
    """Runs into fresh outputs, each killed at random moments and resumed until complete,
    until `kills_wanted` kills have landed. Checks every intermediate state."""
    rng = seeded(name)
    stats = {"kills": 0, "campaigns": 0, "killed_with_tmp": 0, "final_resume_seconds": [], "stale_locks": 0}

    def more_kills() -> bool:  # up to 3x as many while none has landed on a shard being written
        return stats["kills"] < kills_wanted or (not stats["killed_with_tmp"] and stats["kills"] < 3 * kills_wanted)

    scale = reference.work_seconds  # shrinks when runs finish before their kill (a loaded machine
    while more_kills():  # measured a slow reference)
        out = tmp_path / f"campaign{stats['campaigns']}"
        stats["campaigns"] += 1
        plant_decoy(out)
        campaign_kills = 0
        while True:
            # One kill in five lands during start-up (model loading, resume bookkeeping), the
            # others at a random moment after the run took the lock: extracting, committing.
            started = time.monotonic()
            run = zygote.start(extract_args(corpus, out, model, batch_seconds=2))
            remaining = 1 - len(check_shards(out, reference)) / CORPUS_FILES
            delay = None
            if more_kills() and campaign_kills < KILLS_PER_CAMPAIGN:
                if rng.random() < 0.2:
                    delay = rng.uniform(0, reference.startup_seconds)
                elif wait_for_lock(zygote, run, out):
                    delay = rng.uniform(0, 1.0) * scale * max(remaining, 0.05)
            context = f"campaign {stats['campaigns']}, kill {stats['kills'] + 1} after {delay} s {replay(name)}"
            if run.status is None and zygote.wait(run, timeout=delay if delay is not None else 120) is None:
                os.kill(run.pid, signal.SIGKILL)
                zygote.wait(run)
            if run.status == -signal.SIGKILL:
                stats["kills"] += 1
                campaign_kills += 1
                lock = out / ".lock-1of1"
                if lock.exists() and lock.read_text().strip() == str(run.pid):
                    stats["stale_locks"] += 1  # held by the dead run: the next run must get it
                check_shards(out, reference, context)
                for tmp in leftover_tmp(out):  # poisoned: a run or reader that read it would fail
                    stats["killed_with_tmp"] += 1
                    tmp.write_bytes(b"poison: a .tmp shard must never be read\n")
                continue
            assert run.status == 0, f"{context}: exit {run.status}: {run.stderr}"
            stats["final_resume_seconds"].append(time.monotonic() - started)
            if delay is not None:
                scale *= 0.7
            break
        check_complete(out, reference, replay(name))
        with open_features(out) as store:
            assert "decoy/never-read" not in store
        shutil.rmtree(out)
    print(f"\n{name}: {stats['kills']} kills in {stats['campaigns']} campaigns, "
          f"{stats['killed_with_tmp']} with a shard being written, {stats['stale_locks']} stale locks; "
          f"uninterrupted run: start-up {reference.startup_seconds:.2f} s, then {reference.work_seconds:.2f} s; final resumes "
          f"{np.mean(stats['final_resume_seconds']):.2f} s mean, "
          f"{np.max(stats['final_resume_seconds']):.2f} s max; {ROUNDING['differing']} of "
          f"{ROUNDING['values']} values checked one float16 ulp off the reference; seed {SEED}")
    return stats


def test_kill_9_at_random_moments_then_resume_equals_the_uninterrupted_run(zygote, corpus, model, reference,
                                                                            tmp_path):
    stats = kill_campaigns(zygote, corpus, model, reference, tmp_path, 200 if SOAK else 20, "kill-9")
    # The schedule must have hit runs while they were writing, not only while starting.
    assert stats["stale_locks"] >= stats["kills"] // 4, f"{stats} {replay('kill-9')}"
    assert stats["killed_with_tmp"] >= 1, f"{stats} {replay('kill-9')}"


@soak_only
def test_soak_kill_9_of_a_freshly_started_process(corpus, model, reference, tmp_path):
    """As above with `python -m lebench_cli` itself: kills also land while Python, torch and
    fairseq import, and every resume pays a real start-up."""
    rng, kills = seeded("kill-9-process"), 0
    out = tmp_path / "out"
    while kills < 30:
        process = subprocess.Popen([sys.executable, "-m", "lebench_cli", *map(str, extract_args(corpus, out, model, batch_seconds=2))],
                                   stderr=subprocess.PIPE, text=True)
        delay = rng.uniform(0, 8)
        try:
            process.wait(timeout=delay)
        except subprocess.TimeoutExpired:
            process.kill()
        _, stderr = process.communicate()
        if process.returncode == -signal.SIGKILL:
            kills += 1
            check_shards(out, reference, f"kill {kills} after {delay:.2f} s {replay('kill-9-process')}")
            continue
        assert process.returncode == 0, stderr
        check_complete(out, reference, replay("kill-9-process"))
        shutil.rmtree(out)
    print(f"\n{kills} kills of fresh processes; seed {SEED}")
