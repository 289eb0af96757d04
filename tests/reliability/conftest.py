"""Fault injection for `lebench extract`: kill -9 at random moments, Ctrl-C and SIGTERM, a
full disk, unwritable outputs, concurrent runs, bad audio, hostile checkpoints and long
recordings, one file per kind of fault. docs/reliability.md lists each promise and the test
that holds it to it.

The default subset is what CI runs. LEBENCH_SOAK=1 adds the long variants (hundreds of kills,
a two-hour recording). Random schedules print their seed; LEBENCH_RELIABILITY_SEED=N
replays one.

Most runs are forked from a "zygote": a process that has imported torch, fairseq and lebench
once, then forks one child per `lebench extract` (the real click command, in a process of
its own, killed with real signals). A run then starts in milliseconds instead of seconds,
which is what lets twenty kills fit in CI. Tests whose subject is process start-up or
worker processes run `python -m lebench_cli` itself.
"""

from __future__ import annotations

import time

import pytest

from lebench_cli.testing.corpora import tone_corpus
from support.reliability import CORPUS_FILES, Reference, Zygote, extract_args, manifest_of, wait_for_lock


# Session scope: the folder's files share one zygote, corpus and reference run, as when they were one module.
@pytest.fixture(scope="session")
def zygote(tmp_path_factory):
    forks = Zygote(tmp_path_factory.mktemp("zygote"))
    yield forks
    forks.close()


@pytest.fixture(scope="session")
def model(checkpoints):
    return checkpoints("base")


@pytest.fixture(scope="session")
def corpus(tmp_path_factory):
    return tone_corpus(tmp_path_factory.mktemp("corpus"), CORPUS_FILES, first=0.3, step=0.15)


@pytest.fixture(scope="session")
def subset(corpus, tmp_path_factory):
    """A manifest of the corpus's first 16 files (same ids): runs that need less."""
    return manifest_of(corpus, 16, tmp_path_factory.mktemp("subset") / "subset.tsv")


@pytest.fixture(scope="session")
def reference(zygote, corpus, model, tmp_path_factory):
    out = tmp_path_factory.mktemp("reference") / "out"
    started = time.monotonic()
    run = zygote.start(extract_args(corpus, out, model, batch_seconds=2))
    assert wait_for_lock(zygote, run, out)
    locked = time.monotonic()
    assert zygote.wait(run, timeout=120) == 0, run.stderr
    reference = Reference(out, locked - started, time.monotonic() - locked)
    assert len(reference.arrays) == CORPUS_FILES
    return reference
