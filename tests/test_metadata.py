"""Metadata stored with each utterance: written into the shard's `metadata` table, read back by
plain h5py, the reader and `lebench ls --columns`, checked by the tables checksum, filled by an
extraction from its sources' metadata and segments, and carried by --update's rewrites."""

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import soundfile as sf
from click.testing import CliRunner

from lebench_cli.audio.sources import AudioSource, Segment
from lebench_cli.cli import main
from lebench_cli.pipeline.extract import Extraction
from lebench_cli.pipeline.options import ExtractOptions
from lebench_cli.reading.store import open_features
from lebench_cli.testing.checkpoints import save_fairseq_checkpoint
from support.stores import random_utterances, write

METADATA = [
    {"speaker": "spkA", "text": "bonjour\tà tous\n", "language": "fr"},
    {},
    {"speaker": "spkB", "start": 1.5, "end": 2.25, "recording": "rec1", "channel_name": "left", "turn": 3},
]


def store_with_metadata(out: Path, **options) -> list:
    utts = random_utterances(3)
    for utt, metadata in zip(utts, METADATA):
        utt.metadata = dict(metadata)
    write(out, utts, **options)
    return utts


def shard_files(out: Path) -> list:
    return sorted((out / "shards").glob("*.h5"))


def test_plain_h5py_reads_one_json_object_per_utterance_keys_sorted(tmp_path):
    store_with_metadata(tmp_path)
    (shard,) = shard_files(tmp_path)
    with h5py.File(shard, "r") as file:
        texts = list(file["metadata"].asstr()[:])
        assert file["metadata"].dtype == h5py.string_dtype()
        assert "metadata" in file.attrs["tables_xxh3_covers"].split(",")
    assert [json.loads(text) for text in texts] == METADATA
    assert texts[1] == "{}"
    assert list(json.loads(texts[2])) == sorted(METADATA[2])


def test_the_reader_returns_metadata_in_info_and_utterances(tmp_path):
    store_with_metadata(tmp_path, shard_size_bytes=1)  # one shard per utterance
    with open_features(tmp_path) as features:
        assert [features.info(utt_id)["metadata"] for utt_id in features.ids] == METADATA
        assert [row["metadata"] for row in features.utterances()] == METADATA
        features.info("u0")["metadata"]["speaker"] = "changed"  # a copy: the store's stays
        assert features.metadata_of("u0")["speaker"] == "spkA"


def test_a_shard_written_before_the_table_reads_as_empty_metadata(tmp_path):
    store_with_metadata(tmp_path)
    (shard,) = shard_files(tmp_path)
    with h5py.File(shard, "a") as file:  # as an older lebench wrote it: no table, not covered
        del file["metadata"]
        covered = [name for name in file.attrs["tables_xxh3_covers"].split(",") if name != "metadata"]
        file.attrs["tables_xxh3_covers"] = ",".join(covered)
        from lebench_cli.storage.checksums import tables_digest
        tables = {name: file[name].asstr()[:] if file[name].dtype.kind == "O" else file[name][:] for name in covered}
        file.attrs["tables_xxh3"] = np.uint64(tables_digest(tables, file.attrs["identity"]))
    with open_features(tmp_path) as features:
        assert [row["metadata"] for row in features.utterances()] == [{}, {}, {}]
    result = CliRunner().invoke(main, ["ls", str(tmp_path), "--columns", "speaker"])
    assert result.exit_code == 0 and [line.split("\t")[4] for line in result.output.splitlines()] == ["", "", ""]


def test_a_flipped_byte_of_the_metadata_is_found_by_verify_and_refused_by_readers(tmp_path):
    store_with_metadata(tmp_path)
    (shard,) = shard_files(tmp_path)
    data = bytearray(shard.read_bytes())
    at = data.find(b'"spkB"')
    assert at > 0 and data.find(b'"spkB"', at + 1) < 0
    data[at + 4] ^= 0x08  # spkB -> spkJ: still valid JSON, only the checksum tells
    shard.write_bytes(bytes(data))
    message = (f"{shard}: its tables (ids, offsets, frame counts...) do not match their checksum: the shard is "
               "damaged (lebench verify --repair moves it aside)")
    result = CliRunner().invoke(main, ["verify", str(tmp_path)])
    assert result.exit_code == 1
    assert result.stdout.splitlines() == [f"shards/{shard.name}: " + message.split(": ", 1)[1]]
    result = CliRunner().invoke(main, ["ls", str(tmp_path)])
    assert (result.exit_code, result.output) == (1, f"Error: {message}\n")


def test_ls_columns_adds_metadata_fields_tsv_safe_and_empty_when_absent(tmp_path):
    utts = store_with_metadata(tmp_path)
    result = CliRunner().invoke(main, ["ls", str(tmp_path), "--header", "--columns", "speaker,text,start,turn"])
    assert result.exit_code == 0, result.output
    lines = [f"{utt.utt_id}\t{utt.frames}\t{utt.duration:.3f}\t" for utt in utts]
    assert result.output.splitlines() == [
        "id\tframes\tduration\tflags\tspeaker\ttext\tstart\tturn",
        lines[0] + "\tspkA\tbonjour\\tà tous\\n\t\t",
        lines[1] + "\t\t\t\t",
        lines[2] + "\tspkB\t\t1.5\t3",
    ]
    result = CliRunner().invoke(main, ["ls", str(tmp_path), "--columns", ","])
    assert (result.exit_code, result.output) == (1, "Error: --columns ',' names no field: give e.g. speaker,text\n")


# ---- filled by an extraction ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return save_fairseq_checkpoint(tmp_path_factory.mktemp("model") / "checkpoint_best.pt", "base")


def noise(path: Path, seconds: float, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    sf.write(path, (0.1 * rng.standard_normal(int(16000 * seconds))).astype(np.float32), 16000)
    return path


def test_an_extraction_stores_its_sources_metadata_and_segments(tmp_path, model):
    short, long = noise(tmp_path / "short.wav", 0.6), noise(tmp_path / "long.wav", 2.6, seed=1)
    sources = [
        AudioSource("spk1/a", str(short), metadata=(("speaker", "spk1"), ("text", "oui"), ("score", 0.5))),
        AudioSource("b", str(short)),
        AudioSource("long", str(long), metadata=(("speaker", "spk2"),)),  # streamed in windows
        AudioSource("seg", str(short), segment=Segment(0.25), metadata=(("speaker", "spk1"),)),
        AudioSource("seg2", str(short), segment=Segment(0.1, 0.5), metadata=(("recording", "R1"),)),
    ]
    options = ExtractOptions(inputs=[], output=str(tmp_path / "out"), model=str(model), layers="2", device="cpu",
                             workers=0, chunk_seconds=1.0, overlap_seconds=0.2)
    summary = Extraction(options, sources=sources).run()
    assert summary.extracted == 5 and summary.failed == 0
    with open_features(tmp_path / "out") as store:
        assert store.info("long")["flags"] == "chunked"
        seg = store.info("seg")
        assert store.info("spk1/a")["metadata"] == {"speaker": "spk1", "text": "oui", "score": 0.5}
        assert store.info("b")["metadata"] == {}
        assert store.info("long")["metadata"] == {"speaker": "spk2"}
        assert seg["metadata"] == {"speaker": "spk1", "start": 0.25, "end": 0.25 + seg["duration"],
                                   "recording": str(short)}
        assert store.info("seg2")["metadata"] == {"recording": "R1", "start": 0.1, "end": 0.5}


def test_a_source_with_a_value_the_store_cannot_hold_is_refused(tmp_path, model):
    source = noise(tmp_path / "a.wav", 0.5)
    options = ExtractOptions(inputs=[], output=str(tmp_path / "out"), model=str(model), layers="2", device="cpu",
                             workers=0)
    with pytest.raises(Exception, match=r"metadata 'speaker'=\['x'\] of a: names are strings, values strings"):
        Extraction(options, sources=[AudioSource("a", str(source), metadata=(("speaker", ["x"]),))]).run()


def test_an_update_rewrite_keeps_the_metadata_of_the_utterances_it_keeps(tmp_path, model):
    a, b = noise(tmp_path / "a.wav", 0.5), noise(tmp_path / "b.wav", 0.6, seed=2)
    sources = [AudioSource("a", str(a), metadata=(("speaker", "A"),)),
               AudioSource("b", str(b), metadata=(("speaker", "B"),))]
    options = ExtractOptions(inputs=[], output=str(tmp_path / "out"), model=str(model), layers="2", device="cpu",
                             workers=0)
    Extraction(options, sources=sources).run()
    noise(b, 0.7, seed=3)  # b changes: --update rewrites the shard without it, then stores it again
    options.update = True
    Extraction(options, sources=[sources[0], AudioSource("b", str(b), metadata=(("speaker", "B2"),))]).run()
    with open_features(tmp_path / "out") as store:
        assert {utt_id: store.info(utt_id)["metadata"] for utt_id in store.ids} == {"a": {"speaker": "A"},
                                                                                    "b": {"speaker": "B2"}}


def test_feature_dataset_items_carry_metadata_when_asked_and_collate_keeps_it(tmp_path):
    from lebench_cli import FeatureDataset

    store_with_metadata(tmp_path, store_mean=True)
    plain = FeatureDataset(tmp_path, 12)
    assert len(plain[0]) == 2 and plain.collate([plain[0], plain[1]]).metadata is None
    dataset = FeatureDataset(tmp_path, 12, metadata=True)
    utt_id, features, metadata = dataset[2]
    assert utt_id == "u2" and features.shape[1] == 8 and metadata == METADATA[2]
    batch = dataset.collate([dataset[0], dataset[1], dataset[2]])
    assert batch.ids == ["u0", "u1", "u2"] and batch.metadata == METADATA
    pooled = FeatureDataset(tmp_path, 12, metadata=True, pooled=True)
    assert pooled.collate([pooled[0]]).metadata == METADATA[:1]
