"""What `--update` may replace (issue 19): a damaged row it would carry over is refused before
anything is written, and only a shard that --update marked supersedes another; plus one
export at a time into a destination, with two real processes."""

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import soundfile as sf
from click.testing import CliRunner

from lebench_cli.cli import main
from lebench_cli.errors import InputError
from lebench_cli.reading.store import open_features
from lebench_cli.testing.checkpoints import save_fairseq_checkpoint

from support.small_runs import extract, write_noise_corpus as write_corpus


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return save_fairseq_checkpoint(tmp_path_factory.mktemp("models") / "base" / "checkpoint_best.pt", "base")


@pytest.fixture(scope="module")
def reference(model, tmp_path_factory):
    """A store of three shards, and a store of the same run (same model and options) made from
    other audio under the same names."""
    root = tmp_path_factory.mktemp("reference")
    write_corpus(root / "corpus")
    write_corpus(root / "other-audio", seed=1)
    assert extract(root / "corpus", root / "store", model).exit_code == 0
    assert extract(root / "other-audio", root / "twin", model).exit_code == 0
    assert len(shards(root / "store")) == 3
    return root


@pytest.fixture
def copies(reference, tmp_path):
    """(corpus, store): fresh copies, free to change."""
    shutil.copytree(reference / "corpus", tmp_path / "corpus")
    shutil.copytree(reference / "store", tmp_path / "store")
    return tmp_path / "corpus", tmp_path / "store"


def shards(out: Path) -> list:
    return sorted((out / "shards").glob("*.h5"))


def ids_of(shard: Path) -> list:
    with h5py.File(shard, "r") as file:
        return list(file["ids"].asstr()[:])


def invoke(*args):
    return CliRunner().invoke(main, [str(arg) for arg in args])


def snapshot(out: Path) -> dict:
    return {path.relative_to(out).as_posix(): path.read_bytes() for path in sorted(out.rglob("*"))
            if path.is_file() and not path.name.startswith(".lock")}


# ---- --update never launders damage -----------------------------------------------------------------


def test_update_refuses_a_damaged_row_it_would_carry_over_and_writes_nothing(copies, model):
    corpus, store = copies
    shard = next(path for path in shards(store) if len(ids_of(path)) >= 2)
    changed, kept = ids_of(shard)[0], ids_of(shard)[1]
    with h5py.File(shard, "r") as file:
        first = int(file["offsets"][1])
        chunk_rows = file["layers/2/frames"].chunks[0]
        at = int(file["layers/2/frames_chunk_offsets"][first // chunk_rows])
    data = bytearray(shard.read_bytes())
    data[at + 10] ^= 0x08
    shard.write_bytes(bytes(data))
    sf.write(corpus / f"{changed}.wav", np.zeros(12000, np.float32) + 0.01, 16000)
    before = snapshot(store)
    result = extract(corpus, store, model, "--update")
    assert (result.exit_code, result.output) == (
        1, f"Error: {shard}: utterance {kept}, layer 2: the frames bytes read do not match their checksum: the shard "
           "is damaged (lebench verify --repair moves it aside)\n")
    assert snapshot(store) == before  # no new shard, no .tmp, no index or failure record
    with open_features(store) as features:
        assert features.info(changed)["shard"] == f"shards/{shard.name}"  # the old features, as they were


def test_a_successful_update_marks_the_shard_it_supersedes(copies, model):
    corpus, store = copies
    old = next(path for path in shards(store) if len(ids_of(path)) >= 2)
    changed = ids_of(old)[0]
    sf.write(corpus / f"{changed}.wav", np.zeros(12000, np.float32) + 0.01, 16000)
    result = extract(corpus, store, model, "--update")
    assert result.exit_code == 0, result.output
    (new,) = [path for path in shards(store) if changed in ids_of(path) and path.name != old.name]
    with h5py.File(new, "r") as file:
        assert json.loads(file.attrs["supersedes"]) == [old.name]
    assert changed not in ids_of(old)
    assert invoke("verify", store).exit_code == 0


# ---- a foreign shard of the same run is not an --update ---------------------------------------------


def test_a_foreign_shard_of_the_same_run_under_a_free_name_is_refused(copies, reference):
    _, store = copies
    source = shards(reference / "twin")[0]
    foreign = store / "shards" / "part-1of1-00099.h5"
    shutil.copy(source, foreign)
    utt_id = ids_of(foreign)[0]
    (first,) = [path for path in shards(store) if path != foreign and utt_id in ids_of(path)]
    message = (f"{utt_id} is stored twice (shards/{first.name} and shards/{foreign.name}): remove one of these "
               "shards")
    for command in ("ls", "show"):
        result = invoke(command, store)
        assert (result.exit_code, result.output) == (1, f"Error: {message}\n"), command
    result = invoke("export", store, "--format", "npy", "-o", store.parent / "npy", "-q")
    assert (result.exit_code, result.output) == (1, f"Error: {message}\n")
    with pytest.raises(InputError) as raised:
        open_features(store)
    assert str(raised.value) == message
    result = invoke("verify", store)
    assert result.exit_code == 1
    lines = result.stdout.splitlines()
    for duplicate in ids_of(foreign):
        (holder,) = [path for path in shards(store) if path != foreign and duplicate in ids_of(path)]
        assert f"shards/{foreign.name}, utterance {duplicate}: also stored in shards/{holder.name}" in lines


# ---- one export at a time into a destination --------------------------------------------------------

HELD_EXPORT = """
import sys, time
from pathlib import Path
from lebench_cli.export import npy
gate = Path(sys.argv[1])
original = npy._save
def held(path, array):
    gate.with_name("started").touch()
    while not gate.exists():
        time.sleep(0.02)
    original(path, array)
npy._save = held
from lebench_cli.cli import main
main(sys.argv[2:], prog_name="lebench")
"""


def test_a_second_export_into_the_same_destination_is_refused_naming_the_first(copies, tmp_path):
    _, store = copies
    destination = tmp_path / "npy"
    gate = tmp_path / "gate"
    first = subprocess.Popen([sys.executable, "-c", HELD_EXPORT, str(gate), "export", str(store), "--format", "npy",
                              "-o", str(destination), "-q"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not (tmp_path / "started").exists():
            assert first.poll() is None, first.communicate()
            assert time.monotonic() < deadline
            time.sleep(0.05)
        second = subprocess.run([sys.executable, "-m", "lebench_cli", "export", str(store), "--format", "npy", "-o",
                                 str(destination), "-q"], capture_output=True, text=True, timeout=120)
        assert (second.returncode, second.stdout, second.stderr) == (
            1, "", f"Error: another lebench export (pid {first.pid}) is writing into {destination}: "
                   "rerun when it ends\n")
    finally:
        gate.touch()
        out, err = first.communicate(timeout=120)
    assert first.returncode == 0, err
    result = invoke("export", store, "--format", "npy", "-o", destination, "-q")
    assert result.exit_code == 0, result.output
    with open_features(store) as features:
        for utt_id in features.ids:
            assert (destination / "layer_2" / f"{utt_id}.npy").exists()


# ---- extract's start reads each shard's tables once for the resume scan and the writer -------------


def test_a_resume_reads_each_shards_tables_once_for_the_scan_and_the_writer(copies, model, monkeypatch):
    from lebench_cli.storage import layout

    corpus, store = copies
    before = shards(store)
    sf.write(corpus / "u9.wav", np.zeros(12000, np.float32) + 0.01, 16000)
    reads, real = {}, layout._read_table

    def counted(shard, path):
        reads[Path(path).name] = reads.get(Path(path).name, 0) + 1
        return real(shard, path)

    monkeypatch.setattr(layout, "_read_table", counted)
    result = extract(corpus, store, model)
    assert result.exit_code == 0, result.output
    # The start-of-run recovery of an --update cut short, the resume scan (whose tables the
    # writer takes), and the end-of-run one: the writer reads none again.
    assert {path.name: reads.get(path.name) for path in before} == {path.name: 3 for path in before}
