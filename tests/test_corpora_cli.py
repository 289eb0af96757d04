"""`lebench extract` on corpus manifests of plain paths (Kaldi wav.scp, SpeechBrain CSV, id
lists, Common Voice): the manifest's ids, with the features of the files themselves; pipes
refused without --allow-pipes; the new options reach `lebench slurm` and `lebench ray` parts."""

import csv

import numpy as np
import pytest
from click.testing import CliRunner

from lebench_cli.cli import main
from lebench_cli.reading.store import open_features
from lebench_cli.testing.audio import write_audio


def extract(inputs, out, model, *extra, input=None):
    return CliRunner().invoke(main, ["extract", *map(str, inputs), "-o", str(out), "--model", str(model),
                                     "--device", "cpu", "--workers", "0", "-q", "--layers", "1", *extra], input=input)


@pytest.fixture(scope="module")
def reference(checkpoints, tmp_path_factory):
    """Two files, and their features extracted from the folder: {file stem: layer 1}."""
    root = tmp_path_factory.mktemp("corpus")
    files = {"a": write_audio(root / "clips" / "a.wav", 0.8), "b": write_audio(root / "clips" / "b.flac", 1.1, seed=1)}
    out = root / "reference"
    result = extract([root / "clips"], out, checkpoints("base"))
    assert result.exit_code == 0, result.output
    with open_features(out) as store:
        return root, files, {stem: store.read(stem, 1) for stem in files}


def write_manifests(root, files):
    kaldi = root / "data" / "train"
    kaldi.mkdir(parents=True, exist_ok=True)
    (kaldi / "wav.scp").write_text(f"spk1-a {files['a']}\nspk2-b {files['b']}\n")
    speechbrain = root / "train.csv"
    with open(speechbrain, "w", newline="") as file:
        csv.writer(file).writerows([["ID", "duration", "wav", "spk_id"], ["spk1-a", "0.8", "$data_root/a.wav", "s1"],
                                    ["spk2-b", "1.1", "$data_root/b.flac", "s2"]])
    listing = root / "ids.list"
    listing.write_text(f"spk1-a\t{files['a']}\nspk2-b\t{files['b']}\n")
    common_voice = root / "cv"
    (common_voice / "clips").mkdir(parents=True, exist_ok=True)
    for stem, path in files.items():
        (common_voice / "clips" / f"spk{1 + (stem == 'b')}-{stem}{path.suffix}").write_bytes(path.read_bytes())
    (common_voice / "train.tsv").write_text("client_id\tpath\tsentence\ns1\tspk1-a.wav\tun\ns2\tspk2-b.flac\tdeux\n")
    return {"kaldi": [kaldi], "speechbrain": [speechbrain, "--root", root / "clips"], "list": [listing],
            "commonvoice": [common_voice / "train.tsv"]}


@pytest.mark.parametrize("form", ["kaldi", "speechbrain", "list", "commonvoice"])
def test_manifest_ids_with_the_features_of_the_files(checkpoints, reference, tmp_path, form):
    root, files, features = reference
    inputs = write_manifests(tmp_path, files) if form == "commonvoice" else write_manifests(root, files)
    arguments = [str(item) for item in inputs[form]]
    extra = arguments[1:]
    out = tmp_path / "out"
    result = extract(arguments[:1], out, checkpoints("base"), *extra)
    assert result.exit_code == 0, result.output
    with open_features(out) as store:
        assert sorted(store.ids) == ["spk1-a", "spk2-b"]
        np.testing.assert_array_equal(store.read("spk1-a", 1), features["a"])
        np.testing.assert_array_equal(store.read("spk2-b", 1), features["b"])


def test_id_list_on_stdin_and_named_format(checkpoints, reference, tmp_path):
    root, files, features = reference
    out = tmp_path / "out"
    result = extract(["-"], out, checkpoints("base"), "--input-format", "list", input=f"x/one\t{files['a']}\n")
    assert result.exit_code == 0, result.output
    with open_features(out) as store:
        np.testing.assert_array_equal(store.read("x/one", 1), features["a"])


def test_pipe_refused_without_allow_pipes_and_nothing_written(checkpoints, reference, tmp_path):
    _, files, _ = reference
    data = tmp_path / "data"
    data.mkdir()
    (data / "wav.scp").write_text(f"r1 sox {files['a']} -t wav - |\n")
    out = tmp_path / "out"
    result = extract([data], out, checkpoints("base"))
    assert result.exit_code == 1
    assert result.stderr == (f"Error: {data}/wav.scp:1: a pipe command (ending in '|') runs shell code written in "
                             "the data file; pass --allow-pipes to run it\n")
    assert not out.exists()


def test_manifest_listing_refuses_corpus_forms(checkpoints, reference, tmp_path):
    root, files, _ = reference
    inputs = write_manifests(tmp_path, files)
    result = extract(inputs["kaldi"], tmp_path / "out", checkpoints("base"), "--dry-run", "--manifest",
                     tmp_path / "m.tsv")
    assert result.exit_code == 1
    assert result.stderr == (f"Error: --manifest {tmp_path}/m.tsv: {inputs['kaldi'][0]} is a kaldi manifest, which "
                             "already lists the corpus: give it to each task as it is\n")


def test_new_options_reach_slurm_and_ray_parts(tmp_path):
    from lebench_cli.commands.extract import extract_options
    from lebench_cli.commands.extract_args import parse_extract_args

    data = tmp_path / "data"
    data.mkdir()
    args = ("extract", str(data), "-o", str(tmp_path / "out"), "-m", "model.pt", "--input-format", "speechbrain",
            "--allow-pipes", "--id-column", "utt", "--path-column", "file", "--time-unit", "samples")
    options = extract_options(parse_extract_args(args, "ray"), part=(2, 3))
    assert (options.input_format, options.allow_pipes, options.id_column, options.path_column, options.time_unit,
            options.part) == ("speechbrain", True, "utt", "file", "samples", (2, 3))
    script = CliRunner().invoke(main, ["slurm", "--no-check", "--array", "2", "--", *args])
    assert script.exit_code == 0, script.output
    assert ("--input-format speechbrain --allow-pipes --id-column utt --path-column file --time-unit samples "
            "--shard auto") in script.output
