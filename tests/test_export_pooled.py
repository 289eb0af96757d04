"""`lebench export` of a store of utterance means (`extract --pool mean`): npy's one matrix per
layer with its ids, Kaldi's vector ark, each read back with numpy and kaldiio and equal to the
store's means; `lebench verify` checks their values; lhotse, which needs frames, is refused."""

import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from lebench_cli.cli import main
from lebench_cli.export.kaldi_data import c_sorted, read_id_map
from lebench_cli.reading.store import open_features
from lebench_cli.testing.audio import write_audio

ROWS = [  # ID, file, speaker, words, start, stop: the CSV's rows, in the order extract stores them
    ("spk2/b", "b.wav", "s2", "deux", "", ""),
    ("spk1/a", "a.wav", "s1", "un  et\tun", "", ""),
    ("spk1/c", "a.wav", "s1", "", "0.2", "0.9"),
]


def invoke(*args):
    return CliRunner().invoke(main, [*map(str, args)], catch_exceptions=False)


def extract_means(checkpoint, root: Path, rows: list) -> Path:
    """A store of utterance means of layers 1, 2 and cnn, from a SpeechBrain CSV of ROWS."""
    write_audio(root / "clips" / "a.wav", 1.2)
    write_audio(root / "clips" / "b.wav", 0.8, seed=1)
    manifest = root / "train.csv"
    with open(manifest, "w", newline="") as file:
        csv.writer(file).writerows([["ID", "wav", "spk_id", "wrd", "start_sec", "stop_sec"],
                                    *[[utt_id, f"$data_root/{name}", *rest] for utt_id, name, *rest in rows]])
    out = root / "store"
    result = invoke("extract", manifest, "--root", root / "clips", "-o", out, "--model", checkpoint, "--device", "cpu",
                    "--workers", "0", "-q", "--layers", "1,2,cnn", "--pool", "mean")
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture(scope="module")
def store(checkpoints, tmp_path_factory):
    return extract_means(checkpoints("base"), tmp_path_factory.mktemp("pooled"), ROWS)


def means(store: Path, layer) -> dict:
    with open_features(store) as features:
        return {utt_id: features.read_mean(utt_id, layer) for utt_id in features.ids}


def stored_ids(store: Path) -> list:
    with open_features(store) as features:
        return list(features.ids)


def test_the_store_holds_means_only(store):
    with open_features(store) as features:
        assert sorted(features.ids) == sorted(row[0] for row in ROWS)
        with pytest.raises(KeyError):
            features.read(features.ids[0], 1)
        assert features.read_mean(features.ids[0], 1).dtype == np.float16  # --save-dtype's default


def test_npy_one_matrix_per_layer_its_rows_in_store_order(store, tmp_path):
    destination = tmp_path / "npy"
    result = invoke("export", store, "--format", "npy", "--layers", "1,cnn", "-o", destination)
    assert (result.exit_code, result.output) == (0, f"exported 3 new, replaced 0, removed 0 in {destination}\n")
    ids = stored_ids(store)
    for layer in (1, "cnn"):
        folder = destination / f"layer_{layer}"
        assert sorted(path.name for path in folder.iterdir()) == ["ids.txt", "means.npy"]
        assert (folder / "ids.txt").read_text(encoding="utf-8") == "".join(f"{utt_id}\n" for utt_id in ids)
        matrix = np.load(folder / "means.npy", allow_pickle=False)
        expected = means(store, layer)
        assert matrix.dtype == np.float16 and matrix.shape == (3, expected[ids[0]].shape[0])
        for row, utt_id in enumerate(ids):
            assert matrix[row].tobytes() == expected[utt_id].tobytes()
    assert not (destination / "layer_2").exists()
    assert not list(destination.rglob("*.tmp"))
    lines = [json.loads(line) for line in (destination / "metadata.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [line["id"] for line in lines] == ids
    metadata = {line["id"]: line["metadata"] for line in lines}
    assert (metadata["spk1/a"]["speaker"], metadata["spk1/a"]["text"]) == ("s1", "un  et\tun")
    assert (metadata["spk1/c"]["start"], metadata["spk1/c"]["end"]) == (pytest.approx(0.2), pytest.approx(0.9))
    again = invoke("export", store, "--format", "npy", "--layers", "1,cnn", "-o", destination)
    assert again.output == f"exported 0 new, replaced 0, removed 0 in {destination}; 3 unchanged\n"


def test_npy_dtype_and_stack(store, tmp_path):
    ids = stored_ids(store)
    assert invoke("export", store, "--format", "npy", "--layers", "2", "--dtype", "float32", "-o", tmp_path / "f32",
                  "-q").output == ""
    matrix = np.load(tmp_path / "f32" / "layer_2" / "means.npy")
    assert matrix.dtype == np.float32
    np.testing.assert_array_equal(matrix, np.stack([means(store, 2)[utt_id].astype(np.float32) for utt_id in ids]))
    result = invoke("export", store, "--format", "npy", "--layers", "1,2", "--stack", "-o", tmp_path / "stack")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "stack" / "layers.txt").read_text() == "1\n2\n"
    assert (tmp_path / "stack" / "ids.txt").read_text(encoding="utf-8") == "".join(f"{utt_id}\n" for utt_id in ids)
    stacked = np.load(tmp_path / "stack" / "means.npy")
    assert stacked.shape[:2] == (3, 2)
    one, two = means(store, 1), means(store, 2)
    np.testing.assert_array_equal(stacked, np.stack([np.stack([one[utt_id], two[utt_id]]) for utt_id in ids]))
    widths = {layer: next(iter(means(store, layer).values())).shape[0] for layer in ("cnn", 1, 2)}
    refused = invoke("export", store, "--format", "npy", "--stack", "-o", tmp_path / "bad")
    assert (refused.exit_code, refused.output) == (1, (
        f"Error: --stack needs layers of one width (cnn: {widths['cnn']}, 1: {widths[1]}, 2: {widths[2]}): "
        "export cnn separately\n"))


def test_kaldi_vector_ark_and_the_data_files(store, tmp_path):
    import kaldiio

    destination = tmp_path / "kaldi"
    result = invoke("export", store, "--format", "kaldi", "--layers", "2,cnn", "-o", destination)
    assert (result.exit_code, result.output) == (0, f"exported 3 new, replaced 0, removed 0 in {destination}\n")
    ids = c_sorted(stored_ids(store))
    for layer in (2, "cnn"):
        folder = destination / f"layer_{layer}"
        assert sorted(path.name for path in folder.iterdir()) == [
            "segments", "spk2utt", "text", "utt2spk", "wav.scp", "xvector.ark", "xvector.scp"]
        vectors = kaldiio.load_scp(str(folder / "xvector.scp"))
        assert list(vectors) == ids
        expected = means(store, layer)
        for utt_id in ids:
            assert vectors[utt_id].dtype == np.float32 and vectors[utt_id].ndim == 1
            np.testing.assert_array_equal(vectors[utt_id], expected[utt_id].astype(np.float32))
        assert dict(kaldiio.load_ark(str(folder / "xvector.ark"))).keys() == set(ids)
        key, location = (folder / "xvector.scp").read_text().splitlines()[0].split(" ", 1)
        path, offset = location.rsplit(":", 1)
        with open(path, "rb") as ark:
            ark.seek(int(offset))
            assert ark.read(5) == b"\0BFV "  # Kaldi's binary float32 vector
        assert (folder / "utt2spk").read_text() == "spk1/a s1\nspk1/c s1\nspk2/b s2\n"
        assert (folder / "spk2utt").read_text() == "s1 spk1/a spk1/c\ns2 spk2/b\n"
        assert (folder / "text").read_text() == "spk1/a un et un\nspk1/c\nspk2/b deux\n"
        segments = [line.split() for line in (folder / "segments").read_text().splitlines()]
        assert [(fields[0], Path(fields[1]).name) for fields in segments] == [  # recording: the source file
            ("spk1/a", "a.wav"), ("spk1/c", "a.wav"), ("spk2/b", "b.wav")]
        assert [float(value) for value in segments[1][2:]] == [pytest.approx(0.2), pytest.approx(0.9)]
        recordings = sorted({fields[1] for fields in segments})  # named by their path: each its own audio
        assert (folder / "wav.scp").read_text() == "".join(f"{path} {path}\n" for path in recordings)
    again = invoke("export", store, "--format", "kaldi", "--layers", "2", "-o", destination)
    assert again.output == f"exported 0 new, replaced 0, removed 0 in {destination}; 3 unchanged\n"
    refused = invoke("export", store, "--format", "kaldi", "--dtype", "float16", "-o", tmp_path / "f16")
    assert (refused.exit_code, refused.output) == (
        1, "Error: kaldi vectors are float32 or float64: drop --dtype float16\n")


def test_kaldi_vectors_to_standard_output(store):
    import kaldiio

    result = CliRunner().invoke(main, ["export", str(store), "--format", "kaldi", "--layers", "1", "-o", "-"],
                                catch_exceptions=False)
    assert result.exit_code == 0 and result.stderr == "exported 3 utterances\n"
    read = dict(kaldiio.load_ark(io.BytesIO(result.stdout_bytes)))
    assert list(read) == stored_ids(store)
    for utt_id, mean in means(store, 1).items():
        np.testing.assert_array_equal(read[utt_id], mean.astype(np.float32))


def test_kaldi_ids_sanitized(checkpoints, tmp_path):
    import kaldiio

    rows = [("a b", "a.wav", "spk 1", "oui", "", ""), ("c", "b.wav", "s2", "", "", "")]
    store = extract_means(checkpoints("base"), tmp_path, rows)
    refused = invoke("export", store, "--format", "kaldi", "-o", tmp_path / "keep")
    assert (refused.exit_code, refused.output) == (1, (
        "Error: utterance id 'a b' holds whitespace or an unprintable character, which Kaldi tables cannot: export "
        "with --kaldi-ids sanitize (ids mapped, see DEST/layer_L/id_map), or to npy\n"))
    destination = tmp_path / "sanitized"
    result = invoke("export", store, "--format", "kaldi", "--layers", "1", "--kaldi-ids", "sanitize", "-o",
                    destination, "-q")
    assert result.exit_code == 0, result.output
    folder = destination / "layer_1"
    assert read_id_map(folder / "id_map") == {"a_b": "a b", "c": "c"}
    assert (folder / "utt2spk").read_text() == "a_b spk_1\nc s2\n"
    vectors = kaldiio.load_scp(str(folder / "xvector.scp"))
    assert list(vectors) == ["a_b", "c"]
    expected = means(store, 1)
    np.testing.assert_array_equal(vectors["a_b"], expected["a b"].astype(np.float32))
    np.testing.assert_array_equal(vectors["c"], expected["c"].astype(np.float32))
    verified = invoke("verify", destination)
    assert (verified.exit_code, verified.stdout) == (0, "")
    piped = invoke("export", store, "--format", "kaldi", "--layers", "1", "--kaldi-ids", "sanitize", "-o", "-")
    assert (piped.exit_code, piped.output) == (
        1, "Error: --kaldi-ids sanitize writes id_map beside xvector.scp: export to a folder, not -\n")


@pytest.mark.parametrize("export_format, options", [("npy", ()), ("npy", ("--stack", "--layers", "1,2")),
                                                    ("kaldi", ())])
def test_verify_checks_the_values_of_a_means_export(store, tmp_path, export_format, options):
    destination = tmp_path / export_format
    assert invoke("export", store, "--format", export_format, "-o", destination, "-q", *options).exit_code == 0
    entries = 1 if options else 3
    result = invoke("verify", destination)
    assert (result.exit_code, result.stdout, result.stderr) == (0, "", (
        f"{entries} entr{'y' if entries == 1 else 'ies'}, 3 utterances, {3 * entries} arrays checked against "
        f"{store.resolve()}: no problem found\n"))


def test_verify_finds_a_changed_mean_and_a_missing_ids_file(store, tmp_path):
    destination = tmp_path / "npy"
    assert invoke("export", store, "--format", "npy", "--layers", "1,2", "-o", destination, "-q").exit_code == 0
    path = destination / "layer_1" / "means.npy"
    matrix = np.load(path)
    matrix[1, 3] += 1
    np.save(path, matrix)
    (destination / "layer_2" / "ids.txt").unlink()
    result = invoke("verify", destination)
    assert result.exit_code == 1
    assert result.stdout.splitlines() == [
        f"layer_1, utterance {stored_ids(store)[1]}: values differ from the store's (1 of {matrix.shape[1]}, "
        "the first at [3])",
        "layer_2: layer_2/ids.txt is missing: none of its 3 utterances can be read; rerun lebench export"]
    assert result.stderr.endswith("2 problems\n")


def test_a_means_store_refuses_lhotse_naming_the_formats_it_takes(store, tmp_path):
    pytest.importorskip("lhotse")
    result = invoke("export", store, "--format", "lhotse", "-o", tmp_path / "cuts")
    assert (result.exit_code, result.output) == (1, (
        f"Error: {store} holds utterance means only (extract --pool mean), and a lhotse export needs frames: "
        "export it with --format kaldi or npy\n"))
    assert not (tmp_path / "cuts").exists()


def test_verify_finds_a_flipped_byte_in_a_vector_ark(store, tmp_path):
    destination = tmp_path / "kaldi"
    assert invoke("export", store, "--format", "kaldi", "--layers", "1", "-o", destination, "-q").exit_code == 0
    ark = destination / "layer_1" / "xvector.ark"
    data = bytearray(ark.read_bytes())
    data[-1] ^= 0x08  # the last float of the last utterance written
    ark.write_bytes(bytes(data))
    width = next(iter(means(store, 1).values())).shape[0]
    result = invoke("verify", destination)
    assert (result.exit_code, result.stdout) == (1, (
        f"layer_1, utterance {stored_ids(store)[-1]}: values differ from the store's (1 of {width}, the first at "
        f"[{width - 1}])\n"))


def test_a_rerun_writes_a_layer_again_whole_where_its_ids_file_is_gone(store, tmp_path):
    destination = tmp_path / "npy"
    assert invoke("export", store, "--format", "npy", "--layers", "1,2", "-o", destination, "-q").exit_code == 0
    (destination / "layer_2" / "ids.txt").unlink()
    (destination / "layer_2" / "means.npy").write_bytes(b"cut by a crash")
    (destination / "layer_2" / "means.npy.tmp").write_bytes(b"cut by a crash")
    result = invoke("export", store, "--format", "npy", "--layers", "1,2", "-o", destination)
    assert result.output == f"exported 3 new, replaced 0, removed 0 in {destination}\n"
    assert not list(destination.rglob("*.tmp"))
    assert invoke("verify", destination).stdout == ""
