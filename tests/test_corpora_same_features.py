"""The same utterances given as cut-out files, as a Kaldi dir with segments, a SpeechBrain CSV
with start/stop, a lhotse CutSet, a saved HuggingFace dataset and a tar shard: the same ids and
the same features (a segment's are those of its cut-out file), and their speaker and text
carried into the store and through the Kaldi, lhotse and npy exports."""

import csv
import io
import json
import tarfile

import numpy as np
import pytest
import soundfile
from click.testing import CliRunner

from lebench_cli.cli import main
from lebench_cli.reading.store import open_features

RATE = 16_000
# utterance: (recording, start, end, speaker, text)
SEGMENTS = {
    "s1-u1": ("rec1", 0.10, 0.80, "s1", "bonjour"),
    "s1-u2": ("rec1", 1.05, 1.90, "s1", "au revoir"),
    "s2-u3": ("rec2", 0.25, 1.15, "s2", "merci"),
}


def extract(inputs, out, model, *extra):
    result = CliRunner().invoke(main, ["extract", *map(str, inputs), "-o", str(out), "--model", str(model),
                                       "--device", "cpu", "--workers", "0", "-q", "--layers", "1,cnn", *map(str, extra)])
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """Two recordings, their three segments cut out as files, and every manifest form over them."""
    root = tmp_path_factory.mktemp("same")
    generator = np.random.default_rng(7)
    recordings = {}
    for name, seconds in (("rec1", 2.2), ("rec2", 1.4)):
        samples = (0.1 * generator.standard_normal(int(seconds * RATE))).astype(np.float32)
        recordings[name] = root / "recordings" / f"{name}.wav"
        recordings[name].parent.mkdir(exist_ok=True)
        soundfile.write(recordings[name], samples, RATE, subtype="FLOAT")
    cut = root / "cut"
    cut.mkdir()
    for utt, (rec, start, end, _, _) in SEGMENTS.items():
        samples, _ = soundfile.read(recordings[rec], dtype="float32")
        soundfile.write(cut / f"{utt}.wav", samples[round(start * RATE):round(end * RATE)], RATE, subtype="FLOAT")

    kaldi = root / "kaldi"
    kaldi.mkdir()
    (kaldi / "wav.scp").write_text("".join(f"{name} {path}\n" for name, path in recordings.items()))
    (kaldi / "segments").write_text("".join(f"{u} {r} {s:.2f} {e:.2f}\n" for u, (r, s, e, _, _) in SEGMENTS.items()))
    (kaldi / "utt2spk").write_text("".join(f"{u} {spk}\n" for u, (_, _, _, spk, _) in SEGMENTS.items()))
    (kaldi / "text").write_text("".join(f"{u} {text}\n" for u, (_, _, _, _, text) in SEGMENTS.items()))

    speechbrain = root / "train.csv"
    with open(speechbrain, "w", newline="") as file:
        rows = [["ID", "duration", "wav", "start", "stop", "spk_id", "wrd"]]
        rows += [[u, f"{e - s:.2f}", f"$data_root/{r}.wav", f"{s:.2f}", f"{e:.2f}", spk, text]
                 for u, (r, s, e, spk, text) in SEGMENTS.items()]
        csv.writer(file).writerows(rows)

    from lhotse import CutSet, Recording, RecordingSet, SupervisionSegment, SupervisionSet

    recording_set = RecordingSet.from_recordings(Recording.from_file(path, recording_id=name)
                                                 for name, path in recordings.items())
    supervisions = SupervisionSet.from_segments(
        SupervisionSegment(id=u, recording_id=r, start=s, duration=round(e - s, 6), channel=0, speaker=spk, text=text)
        for u, (r, s, e, spk, text) in SEGMENTS.items())
    lhotse_cuts = root / "cuts.jsonl.gz"
    CutSet.from_manifests(recordings=recording_set, supervisions=supervisions).to_file(lhotse_cuts)

    import datasets

    table = {"id": list(SEGMENTS), "audio": [str(cut / f"{u}.wav") for u in SEGMENTS],
             "sentence": [text for (_, _, _, _, text) in SEGMENTS.values()]}
    dataset = datasets.Dataset.from_dict(table).cast_column("audio", datasets.Audio(decode=False))
    saved = root / "hf"
    dataset.map(lambda row: {"audio": {"bytes": open(row["audio"]["path"], "rb").read(), "path": None}}) \
        .save_to_disk(str(saved))

    shard = root / "shard.tar"
    with tarfile.open(shard, "w") as tar:
        for utt, (_, _, _, _, text) in SEGMENTS.items():
            tar.add(cut / f"{utt}.wav", arcname=f"{utt}.wav")
            data = text.encode()
            info = tarfile.TarInfo(f"{utt}.txt")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))

    return {"files": [cut], "kaldi": [kaldi], "speechbrain": [speechbrain, "--root", root / "recordings"],
            "lhotse": [lhotse_cuts], "hf": [saved], "tar": [shard]}


@pytest.fixture(scope="module")
def reference(corpus, checkpoints, tmp_path_factory):
    out = extract(corpus["files"], tmp_path_factory.mktemp("reference") / "out", checkpoints("base"))
    with open_features(out) as store:
        return {utt: {layer: store.read(utt, layer) for layer in (1, "cnn")} for utt in store.ids}


@pytest.mark.parametrize("form", ["kaldi", "speechbrain", "lhotse", "hf", "tar"])
def test_every_form_gives_the_ids_and_features_of_the_cut_out_files(form, corpus, reference, checkpoints, tmp_path):
    given = corpus[form]
    out = extract(given[:1], tmp_path / "out", checkpoints("base"), *given[1:])
    with open_features(out) as store:
        assert sorted(store.ids) == sorted(SEGMENTS)
        for utt, layers in reference.items():
            for layer, expected in layers.items():
                np.testing.assert_allclose(store.read(utt, layer), expected, rtol=0, atol=1e-5,
                                           err_msg=f"{form} {utt} layer {layer}")
            metadata = store.info(utt)["metadata"]
            recording, start, end, speaker, text = SEGMENTS[utt]
            assert metadata.get("text") == text, (form, metadata)
            if form in ("kaldi", "speechbrain", "lhotse"):
                assert metadata["speaker"] == speaker, (form, metadata)
                assert metadata["start"] == pytest.approx(start) and metadata["end"] == pytest.approx(end)


def test_a_kaldi_dirs_speakers_and_texts_go_through_every_export(corpus, checkpoints, tmp_path):
    out = extract(corpus["kaldi"], tmp_path / "out", checkpoints("base"))
    runner = CliRunner()
    for form in ("kaldi", "lhotse", "npy"):
        result = runner.invoke(main, ["export", str(out), "--format", form, "-o", str(tmp_path / form), "--layers", "1"])
        assert result.exit_code == 0, (form, result.output)
    assert (tmp_path / "kaldi" / "layer_1" / "utt2spk").read_text() == "".join(
        f"{u} {spk}\n" for u, (_, _, _, spk, _) in sorted(SEGMENTS.items()))
    assert (tmp_path / "kaldi" / "layer_1" / "text").read_text() == "".join(
        f"{u} {text}\n" for u, (_, _, _, _, text) in sorted(SEGMENTS.items()))
    segments = [line.split() for line in (tmp_path / "kaldi" / "layer_1" / "segments").read_text().splitlines()]
    assert [(u, r) for u, r, _, _ in segments] == [(u, r) for u, (r, *_) in sorted(SEGMENTS.items())]
    for u, _, start, end in segments:
        assert (float(start), float(end)) == pytest.approx(SEGMENTS[u][1:3])

    from lhotse import CutSet

    cuts = CutSet.from_file(tmp_path / "lhotse" / "layer_1" / "cuts.jsonl.gz")
    supervised = {cut.id: cut.supervisions[0] for cut in cuts}
    assert {u: (s.speaker, s.text) for u, s in supervised.items()} == {
        u: (spk, text) for u, (_, _, _, spk, text) in SEGMENTS.items()}

    lines = [json.loads(line) for line in next((tmp_path / "npy").rglob("metadata.jsonl")).read_text().splitlines()]
    carried = {line["id"]: line for line in lines}
    assert set(carried) == set(SEGMENTS)
    for utt, (_, _, _, speaker, text) in SEGMENTS.items():
        assert (carried[utt]["metadata"]["text"], carried[utt]["metadata"]["speaker"]) == (text, speaker)
