"""Nothing wrong is served (issue 19): a damaged store, through every command that reads it.

Each kind of damage is made to a copy of one small store: bits flipped in a frames chunk, in
the offsets table and in the superblock, a truncated shard, a deleted one, a shard of
another run under a free and under a taken name, lebench.json deleted then another model,
a stray .tmp file. ls, show, export, read, verify and a rerun each exit 1 with one line
naming the file, or (a rerun after a deleted shard) extract exactly what is missing.
"""

import json
import re
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
from click.testing import CliRunner

from lebench_cli.cli import main
from lebench_cli.errors import StoreIntegrityError, StoreReadError
from lebench_cli.reading.store import open_features
from lebench_cli.testing.checkpoints import save_fairseq_checkpoint

from support.small_runs import IDS, extract, write_noise_corpus


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    return {family: save_fairseq_checkpoint(root / family / "checkpoint_best.pt", family)
            for family in ("base", "large")}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return write_noise_corpus(tmp_path_factory.mktemp("corpus"))


@pytest.fixture(scope="module")
def reference(models, corpus, tmp_path_factory):
    """A clean store of three shards, and a store of the same corpus by another model."""
    root = tmp_path_factory.mktemp("reference")
    for name, model in (("store", models["base"]), ("other", models["large"])):
        assert extract(corpus, root / name, model).exit_code == 0
    assert len(shards(root / "store")) == 3
    return root


@pytest.fixture
def store(reference, tmp_path):
    out = tmp_path / "store"
    shutil.copytree(reference / "store", out)
    return out


def shards(out: Path) -> list:
    return sorted((out / "shards").glob("*.h5"))


def invoke(*args):
    return CliRunner().invoke(main, [str(arg) for arg in args])


def flip(path: Path, at: int, count: int = 2) -> None:
    """XOR 0x08 into `count` bytes from `at`, as a failing disk or a bad copy would."""
    data = bytearray(path.read_bytes())
    for position in range(at, at + count):
        data[position] ^= 0x08
    path.write_bytes(bytes(data))


def rows_offset(shard: Path, row: int, layer: str = "2") -> int:
    with h5py.File(shard, "r") as file:
        first = int(file["offsets"][row])
        chunk_rows = file[f"layers/{layer}/frames"].chunks[0]
        return int(file[f"layers/{layer}/frames_chunk_offsets"][first // chunk_rows])


def ids_of(shard: Path) -> list:
    with h5py.File(shard, "r") as file:
        return list(file["ids"].asstr()[:])


LISTINGS = ("ls", "show")


def every_reader_refuses(out: Path, message: str, error=StoreIntegrityError, utt_id=None, listings=True) -> None:
    """ls and show (which serve the tables only: with listings), export and read() each exit 1
    with exactly `Error: message` (read: raises it)."""
    line = f"Error: {message}\n"
    commands = [[name, out] for name in LISTINGS if listings]
    for args in commands + [["export", out, "--format", "npy", "-o", out.parent / "npy", "-q"]]:
        result = invoke(*args)
        assert (result.exit_code, result.output) == (1, line), (args, result.output)
    with pytest.raises(error) as raised:
        with open_features(out) as features:
            for name in [utt_id] if utt_id else features.ids:
                features.read(name, "all")
    assert str(raised.value) == message


def verify_finds(out: Path, *lines: str) -> None:
    result = CliRunner().invoke(main, ["verify", str(out)])
    assert result.exit_code == 1, result.output
    assert result.stdout.splitlines() == list(lines)


# ---- the damage kinds ---------------------------------------------------------------------------------


def test_flipped_bits_in_a_frames_chunk(store, models, corpus):
    shard = shards(store)[1]
    victim = ids_of(shard)[0]
    flip(shard, rows_offset(shard, 0) + 10)
    message = (f"{shard}: utterance {victim}, layer 2: the frames bytes read do not match their checksum: the "
               "shard is damaged (lebench verify --repair moves it aside)")
    # ls and show serve the tables, which are intact (and checked): they list the store as it is.
    assert all(invoke(name, store).exit_code == 0 for name in LISTINGS)
    every_reader_refuses(store, message, utt_id=victim, listings=False)
    verify_finds(store, f"shards/{shard.name}, utterance {victim}, layer 2: frames do not match their checksum")
    # A rerun reads tables, not frames: it has nothing to extract and says so; verify is what finds the damage.
    assert extract(corpus, store, models["base"]).exit_code == 0


def test_a_flipped_offsets_entry(store, models, corpus):
    shard = shards(store)[1]
    with h5py.File(shard, "r") as file:
        at = file["offsets"].id.get_offset() + 8  # the second utterance's first row
    flip(shard, at, count=1)
    message = (f"{shard}: its tables (ids, offsets, frame counts...) do not match their checksum: the shard is "
               "damaged (lebench verify --repair moves it aside)")
    every_reader_refuses(store, message)
    verify_finds(store, f"shards/{shard.name}: its tables (ids, offsets, frame counts...) do not match their "
                        "checksum: the shard is damaged (lebench verify --repair moves it aside)")
    result = extract(corpus, store, models["base"])
    assert (result.exit_code, result.output) == (1, f"Error: {message}\n")


def test_a_flipped_superblock(store, models, corpus):
    shard = shards(store)[0]
    version = shard.read_bytes()[8]
    flip(shard, 24 if version < 2 else 12, count=1)  # the base address
    result = invoke("ls", store)
    assert result.exit_code == 1
    expected = re.compile(rf"Error: {re.escape(str(shard))} is not a readable lebench shard \(.+\): move it out "
                          r"of the folder, then rerun to extract its utterances again\n")
    assert expected.fullmatch(result.output), result.output
    for args in (["show", store], ["export", store, "--format", "npy", "-o", store.parent / "npy", "-q"]):
        result = invoke(*args)
        assert result.exit_code == 1 and expected.fullmatch(result.output), result.output
    with pytest.raises(StoreReadError, match=re.escape(str(shard))):
        open_features(store)
    result = invoke("verify", store)
    assert result.exit_code == 1
    assert re.fullmatch(rf"shards/{shard.name}: is not a readable lebench shard \(.+\): move it out of the folder, "
                        r"then rerun to extract its utterances again\n", result.stdout), result.stdout
    result = extract(corpus, store, models["base"])
    assert result.exit_code == 1 and expected.fullmatch(result.output), result.output


def test_a_truncated_shard(store, models, corpus):
    shard = shards(store)[2]
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    expected = re.compile(rf"Error: {re.escape(str(shard))} is not a readable lebench shard \(.+\): move it out "
                          r"of the folder, then rerun to extract its utterances again\n")
    for args in (["ls", store], ["show", store], ["export", store, "--format", "npy", "-o", store.parent / "n"]):
        result = invoke(*args)
        assert result.exit_code == 1 and expected.fullmatch(result.output), (args, result.output)
    with pytest.raises(StoreReadError, match=re.escape(str(shard))):
        open_features(store)
    result = invoke("verify", store)
    assert result.exit_code == 1 and result.stdout.startswith(f"shards/{shard.name}: is not a readable"), result.stdout
    result = extract(corpus, store, models["base"])
    assert result.exit_code == 1 and expected.fullmatch(result.output), result.output


def test_a_deleted_shard_is_refused_until_a_rerun_extracts_its_utterances(store, models, corpus):
    shard = shards(store)[1]
    lost = ids_of(shard)
    shard.unlink()
    message = (f"{shard} is missing (index-1of1.tsv lists its {len(lost)} utterances): rerun the extraction to "
               "extract them again")
    every_reader_refuses(store, message)
    verify_finds(store, f"shards/{shard.name}: missing (index-1of1.tsv lists its {len(lost)} utterances): rerun "
                        "the extraction to extract them again")
    assert extract(corpus, store, models["base"]).exit_code == 0
    new = shards(store)[-1]
    assert sorted(ids_of(new)) == sorted(lost)
    assert invoke("verify", store).exit_code == 0


def test_a_shard_of_another_run_under_a_free_name(store, reference, models, corpus):
    foreign = store / "shards" / "part-1of1-00099.h5"
    shutil.copy(shards(reference / "other")[0], foreign)
    expected_sha = json.loads((store / "lebench.json").read_text())["identity"]["model_sha256"]
    with h5py.File(foreign, "r") as file:
        foreign_sha = json.loads(file.attrs["identity"])["model_sha256"]
    message = (f"{foreign} was written by another run than lebench.json records (model_sha256: {expected_sha} != "
               f"{foreign_sha}, lebench.json's value first): move it out of the folder")
    every_reader_refuses(store, message)
    verify_finds(store, f"shards/{foreign.name}: written by another run than lebench.json records (model_sha256: "
                        f"{expected_sha} != {foreign_sha}, lebench.json's value first)")
    result = extract(corpus, store, models["base"])
    assert (result.exit_code, result.output) == (1, f"Error: {message}\n")
    result = extract(corpus, store, models["base"], "--dry-run")
    assert (result.exit_code, result.output) == (1, f"Error: {message}\n")


def test_a_shard_of_another_run_over_a_taken_name(store, reference, models, corpus):
    replaced = shards(store)[0]
    shutil.copy(shards(reference / "other")[0], replaced)
    result = invoke("ls", store)
    assert result.exit_code == 1
    assert result.output.startswith(f"Error: {replaced} was written by another run than lebench.json records "
                                    "(model_sha256: ")
    assert extract(corpus, store, models["base"]).exit_code == 1
    result = invoke("verify", store, "--repair")
    assert result.exit_code == 1
    assert not replaced.exists() and (store / "damaged" / replaced.name).exists()
    assert extract(corpus, store, models["base"]).exit_code == 0
    assert invoke("verify", store).exit_code == 0
    with open_features(store) as features:
        assert sorted(features.ids) == IDS


def test_a_copy_of_a_shard_under_another_name(store):
    first = shards(store)[0]
    copy = store / "shards" / "part-1of1-00042.h5"
    shutil.copy(first, copy)
    utt_id = ids_of(first)[0]
    result = invoke("ls", store)
    assert (result.exit_code, result.output) == (
        1, f"Error: {utt_id} is stored twice (shards/{first.name} and shards/{copy.name}): remove one of these shards\n")
    result = invoke("verify", store)
    assert result.exit_code == 1
    assert f"shards/{copy.name}, utterance {utt_id}: also stored in shards/{first.name}" in result.stdout.splitlines()


def test_lebench_json_deleted_then_another_model_is_refused_and_never_relabels(store, models, corpus):
    (store / "lebench.json").unlink()
    result = invoke("ls", store)
    assert (result.exit_code, result.output) == (1, f"Error: {store} is not a lebench output folder (no lebench.json)\n")
    verify_finds(store, "lebench.json: missing: the shards' identity cannot be checked against it (rerun the "
                        "extraction to write it again)")
    for extra in ([], ["--dry-run"]):
        result = extract(corpus, store, models["large"], *extra)
        assert result.exit_code == 1, result.output
        assert re.fullmatch(rf"Error: {re.escape(str(store))} has no lebench.json and {re.escape(str(shards(store)[0]))} "
                            r"holds features of a different run \(model_sha256: .+\); use --overwrite to replace "
                            r"them\n", result.output), result.output
    assert not (store / "lebench.json").exists()
    # The same model rebuilds it: every shard records this very run.
    assert extract(corpus, store, models["base"]).exit_code == 0
    assert (store / "lebench.json").exists() and invoke("verify", store).exit_code == 0


def test_dry_run_applies_the_identity_checks_of_the_real_run(store, models, corpus):
    result = extract(corpus, store, models["large"], "--dry-run")
    assert result.exit_code == 1
    assert result.output.startswith(f"Error: {store} holds features of a different run (model_sha256: ")


def test_a_stray_tmp_file_is_never_read_and_verify_moves_it_aside(store):
    stray = store / "shards" / "part-1of1-00007.h5.tmp"
    shutil.copy(shards(store)[0], stray)
    assert invoke("ls", store).exit_code == 0
    verify_finds(store, f"shards/{stray.name}: a stray .tmp file left by an interrupted run (never read)")
    assert invoke("verify", store, "--repair").exit_code == 1
    assert (store / "damaged" / stray.name).exists() and not stray.exists()
    assert invoke("verify", store).exit_code == 0


def test_verify_repair_then_rerun_re_extracts_exactly_the_damaged_shards_ids(store, models, corpus):
    shard = shards(store)[1]
    damaged_ids = ids_of(shard)
    others = {path.name: path.read_bytes() for path in shards(store) if path != shard}
    flip(shard, rows_offset(shard, 0) + 10)
    (store / "failures-1of1.jsonl").write_text(
        "".join(json.dumps({"id": utt_id, "path": "x", "reason": "earlier"}) + "\n" for utt_id in damaged_ids))
    result = CliRunner().invoke(main, ["verify", str(store), "--repair", "--workers", "2"])
    assert result.exit_code == 1
    assert result.stderr.endswith(f"1 files moved into {store / 'damaged'}: rerun the same extraction to extract "
                                  "their utterances again\n")
    assert (store / "damaged" / shard.name).exists()
    result = extract(corpus, store, models["base"])
    assert result.exit_code == 0, result.output
    new = [path for path in shards(store) if path.name not in others]
    assert len(new) == 1 and sorted(ids_of(new[0])) == sorted(damaged_ids)
    assert all((store / "shards" / name).read_bytes() == data for name, data in others.items())  # untouched
    result = CliRunner().invoke(main, ["verify", str(store)])
    assert (result.exit_code, result.stdout) == (0, ""), result.output
    assert result.stderr == "3 shards, 6 utterances, 24 utterance-layers checked: no problem found\n"


def test_verify_of_a_clean_store_in_parallel(store):
    result = CliRunner().invoke(main, ["verify", str(store), "--workers", "3"])
    assert (result.exit_code, result.stdout, result.stderr) == (
        0, "", "3 shards, 6 utterances, 24 utterance-layers checked: no problem found\n")


def test_the_opt_out_serves_without_checking(store, monkeypatch):
    shard = shards(store)[1]
    victim = ids_of(shard)[0]
    flip(shard, rows_offset(shard, 0) + 10)
    with open_features(store, verify=False) as features:
        features.read(victim, "all")  # the risk the docs state: damaged values are served
    monkeypatch.setenv("LEBENCH_VERIFY", "0")
    with open_features(store) as features:
        assert not features.verify
        features.read(victim, 2)
    monkeypatch.delenv("LEBENCH_VERIFY")
    with open_features(store) as features, pytest.raises(StoreIntegrityError):
        features.read(victim, 2, start=0.1, end=0.2)  # a segment is checked too


# ---- format 1 ------------------------------------------------------------------------------------------


def as_format_1(out: Path) -> None:
    """What lebench wrote before checksums and identities: those datasets and attributes gone."""
    for shard in shards(out):
        with h5py.File(shard, "a") as file:
            for key in ("identity", "tables_xxh3", "tables_xxh3_covers", "compute"):
                file.attrs.pop(key, None)
            file.attrs["format_version"] = 1
            for name in list(file["layers"]):
                del file[f"layers/{name}/frames_xxh3"]


def test_a_format_1_store_reads_and_verify_says_what_it_could_not_check(store, models, corpus):
    with open_features(store) as features:
        expected = {utt_id: features.read(utt_id, "all") for utt_id in features.ids}
    as_format_1(store)
    with open_features(store) as features:
        for utt_id, values in expected.items():
            np.testing.assert_array_equal(features.read(utt_id, "all"), values)
    result = CliRunner().invoke(main, ["verify", str(store)])
    assert result.exit_code == 0, result.output
    lines = []
    for shard in shards(store):
        name = f"shards/{shard.name}"
        lines += [f"not checked: {name}: format 1: no identity recorded, taken as this store's",
                  f"not checked: {name}: format 1: no checksums of 0 frames, 1 frames, 2 frames, 3 frames: their "
                  "values were read, not checked"]
    assert result.stdout.splitlines() == lines
    assert result.stderr == ("3 shards, 6 utterances, 0 utterance-layers checked: no problem found, "
                             "6 shards not fully checked (format 1)\n")
    assert extract(corpus, store, models["base"]).exit_code == 0  # resume reads it as before
    (store / "lebench.json").unlink()
    result = extract(corpus, store, models["base"])
    assert result.exit_code == 1
    assert result.output == (f"Error: {store} has no lebench.json and {shards(store)[0]} (format 1) does not record "
                             "its run: restore lebench.json, or use --overwrite to replace these features\n")


# ---- compute settings ------------------------------------------------------------------------------------


def test_a_resume_with_another_dtype_is_recorded_per_shard_and_show_says_mixed(models, corpus, tmp_path):
    out, audio = tmp_path / "out", tmp_path / "audio"
    audio.mkdir()
    for utt_id in IDS[:3]:
        shutil.copy(corpus / f"{utt_id}.wav", audio / f"{utt_id}.wav")
    assert extract(audio, out, models["base"], "--dtype", "float32").exit_code == 0
    shown = json.loads(invoke("show", out).output)
    assert shown["shard_compute"] == [{"dtype": "float32", "device": "cpu", "shards": len(shards(out))}]
    assert shown["mixed_compute"] is False
    for utt_id in IDS[3:]:
        shutil.copy(corpus / f"{utt_id}.wav", audio / f"{utt_id}.wav")
    assert extract(audio, out, models["base"], "--dtype", "bfloat16").exit_code == 0
    shown = json.loads(invoke("show", out).output)
    assert shown["mixed_compute"] is True
    assert {entry["dtype"] for entry in shown["shard_compute"]} == {"float32", "bfloat16"}


# ---- the reader's own checks, on stores written by the writer ---------------------------------------


def written_store(out: Path, **options):
    from lebench_cli.storage import PartLock, ShardWriter, StoredUtterance, WriterOptions, prepare_output

    rng = np.random.default_rng(0)
    prepare_output(out, {"identity": {"layers": ["1", "2"]}}, overwrite=False)
    with PartLock(out, 1, 1), ShardWriter(out, WriterOptions(layers=["1", "2"], **options)) as writer:
        for number in range(3):
            states = {name: rng.normal(size=(20, 8)).astype(np.float32) for name in ("1", "2")}
            writer.add(StoredUtterance(f"w{number}", f"/audio/w{number}.wav", 0.4, 20, states))
    return shards(out)[0]


def test_a_damaged_mean_is_refused(tmp_path):
    shard = written_store(tmp_path / "out", store_mean=True, store_frames=False)
    with h5py.File(shard, "r") as file:
        dataset = file["layers/2/mean"]
        at = dataset.id.get_offset() if dataset.chunks is None else dataset.id.get_chunk_info(0).byte_offset
    flip(shard, at + 8 * 2 + 1, count=1)  # w1's row of 8 float16
    with open_features(tmp_path / "out") as features:
        features.read_mean("w0", 2)
        with pytest.raises(StoreIntegrityError) as raised:
            features.read_mean("w1", [1, 2])
    assert str(raised.value) == (f"{shard}: utterance w1, layer 2: the mean bytes read do not match their checksum: the "
                                 "shard is damaged (lebench verify --repair moves it aside)")


def test_an_hdf5_error_during_a_read_is_a_read_error_naming_the_shard(tmp_path, monkeypatch):
    from lebench_cli.reading import store as store_module

    shard = written_store(tmp_path / "out")

    def failing(*args):
        raise OSError("Unable to synchronously read data (wrong B-tree signature)")

    monkeypatch.setattr(store_module, "read_runs", failing)
    with open_features(tmp_path / "out") as features, pytest.raises(StoreReadError) as raised:
        features.read("w2", "all")
    assert str(raised.value) == (f"read error in {shard} (utterance w2): Unable to synchronously read data (wrong "
                                 "B-tree signature): the shard is damaged (lebench verify --repair moves it aside)")
