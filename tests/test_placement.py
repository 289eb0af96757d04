"""Where a shard's frames lie: utterances from chunk boundaries, one run of bytes per layer, the
layers of an utterance side by side, the chunk table; and shards laid out otherwise (written
before it, rewritten by another tool, compressed) still read back exactly."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from lebench_cli.reading import open_features
from lebench_cli.reading import rows as rows_module
from lebench_cli.storage import PartLock, ShardWriter, StoredUtterance, WriterOptions, prepare_output
from lebench_cli.storage.placement import CHUNK_OFFSETS, aligned, frames_chunk_rows

LAYERS = ["0", "1", "2", "cnn"]
WIDTH = 96  # float16: 32 KiB / 192 bytes = 170 rows, capped at 16


def utterances(frame_counts, seed=0):
    generator = np.random.default_rng(seed)
    return [StoredUtterance(f"u{index}", f"/audio/u{index}.wav", count * 0.02, count,
                            {name: generator.standard_normal((count, WIDTH)).astype(np.float32) for name in LAYERS})
            for index, count in enumerate(frame_counts)]


def write(out, utts, streamed=(), **options):
    prepare_output(out, {"identity": {"layers": LAYERS}, "model": {"num_layers": 2}}, overwrite=False)
    with PartLock(out, 1, 1), ShardWriter(out, WriterOptions(layers=LAYERS, **options)) as writer:
        for utt in utts:
            if utt.utt_id not in streamed:
                writer.add(utt)
                continue
            writer.begin_utterance(utt.utt_id, utt.source, utt.duration, utt.frames)
            for start in range(0, utt.frames, 50):
                writer.append_frames({name: states[start: start + 50] for name, states in utt.states.items()})
            writer.end_utterance()


def count_preads(monkeypatch) -> list:
    calls, real = [], rows_module._pread_fully
    monkeypatch.setattr(rows_module, "_pread_fully", lambda *args: (calls.append(args[2]), real(*args)))
    return calls


def shard_path(out):
    return next((out / "shards").glob("part-*.h5"))


def assert_reads_back(out, utts):
    with open_features(out) as store:
        for utt in utts:
            stacked = store.read(utt.utt_id, "all")
            for position, name in enumerate(["0", "1", "2"]):
                np.testing.assert_array_equal(stacked[position], utt.states[name].astype(np.float16))
            np.testing.assert_array_equal(store.read(utt.utt_id, "cnn"), utt.states["cnn"].astype(np.float16))
            np.testing.assert_array_equal(store.read(utt.utt_id, 1, start=0.1, end=0.5),
                                          utt.states["1"][5:25].astype(np.float16))


def test_utterances_start_on_chunk_boundaries_and_each_read_is_one_pread(tmp_path, monkeypatch):
    utts = utterances([3, 16, 17, 200, 1, 130])
    write(tmp_path, utts, streamed={"u3"})
    chunk_rows = frames_chunk_rows([WIDTH], 2)
    assert chunk_rows == 16
    with h5py.File(shard_path(tmp_path), "r") as shard:
        offsets = shard["offsets"][:]
        expected, row = [], 0
        for utt in utts:
            expected.append(row)
            row = aligned(row + utt.frames, chunk_rows)
        assert offsets.tolist() == expected
        for name in LAYERS:
            frames = shard[f"layers/{name}/frames"]
            assert frames.chunks == (chunk_rows, WIDTH)
            assert frames.shape[0] == offsets[-1] + utts[-1].frames
            table = shard[f"layers/{name}/{CHUNK_OFFSETS}"][:]
            index = [frames.id.get_chunk_info_by_coord((c * chunk_rows, 0)).byte_offset
                     for c in range(len(table))]
            assert table.tolist() == index
        padding = shard["layers/0/frames"][3:16]
        assert not padding.any()  # the rows between u0 and u1 belong to no utterance
    calls = count_preads(monkeypatch)
    assert_reads_back(tmp_path, utts)
    with open_features(tmp_path) as store:
        for utt in utts:
            for layers in (1, "all", [2, 0]):
                calls.clear()
                store.read(utt.utt_id, layers)
                # one layer: one run; all layers: side by side, one read (u3 came in pieces of
                # 50 frames, each written layer after layer: the runs are still near enough)
                assert len(calls) == 1, (utt.utt_id, layers, calls)


def test_a_shard_laid_out_before_the_chunk_table_reads_back_exactly(tmp_path, monkeypatch):
    """Utterances back to back, a chunk shared by two utterances, layer after layer in blocks,
    no chunk table: the layout lebench wrote before."""
    utts = utterances([30, 100, 7, 250])
    write(tmp_path, utts)
    path = shard_path(tmp_path)
    with h5py.File(path, "r") as shard:
        table = {key: shard[key][()] for key in ("ids", "frames", "durations", "sources", "flags")}
        attrs = {**{key: value for key, value in shard.attrs.items() if not key.startswith(("tables_", "identity"))},
                 "format_version": 1}  # no checksums, no identity: as lebench wrote it then
    packed = np.concatenate([[0], np.cumsum([utt.frames for utt in utts])[:-1]])
    with h5py.File(path, "w") as shard:
        shard.attrs.update(attrs)
        for key, value in table.items():
            shard[key] = value
        shard["offsets"] = packed
        for name in LAYERS:
            block = np.concatenate([utt.states[name] for utt in utts]).astype(np.float16)
            shard.create_dataset(f"layers/{name}/frames", data=block, chunks=(128, WIDTH), maxshape=(None, WIDTH))
    calls = count_preads(monkeypatch)
    assert_reads_back(tmp_path, utts)
    assert calls  # still read straight from the file, through HDF5's chunk index


def test_a_shard_rewritten_by_another_tool_ignores_its_stale_chunk_table(tmp_path):
    utts = utterances([40, 90, 5])
    write(tmp_path / "a", utts)
    source = shard_path(tmp_path / "a")
    write(tmp_path / "b", [])
    copy = tmp_path / "b" / "shards" / source.name
    with h5py.File(source, "r") as old, h5py.File(copy, "w") as new:
        new.attrs.update(dict(old.attrs))
        new.create_dataset("padding", data=np.zeros(10_000, np.uint8))  # moves what follows
        for key in old:
            old.copy(key, new)
        del new["padding"]
    with h5py.File(copy, "r") as new:
        frames = new["layers/1/frames"]
        table = new[f"layers/1/{CHUNK_OFFSETS}"][:]
        assert table[0] != frames.id.get_chunk_info_by_coord((0, 0)).byte_offset  # stale
    assert_reads_back(tmp_path / "b", utts)


def test_compressed_frames_are_read_through_hdf5(tmp_path, monkeypatch):
    utts = utterances([20, 70])
    write(tmp_path, utts, compression="gzip:1")
    with h5py.File(shard_path(tmp_path), "r") as shard:
        assert f"layers/0/{CHUNK_OFFSETS}" not in shard
    calls = count_preads(monkeypatch)
    assert_reads_back(tmp_path, utts)
    assert calls == []


@pytest.mark.parametrize("save_dtype", ["float16", "float32"])
def test_large_model_shapes_get_small_chunks_and_little_padding(save_dtype):
    itemsize = np.dtype(save_dtype).itemsize
    rows = frames_chunk_rows([1024, 512], itemsize)
    assert rows * 1024 * itemsize == 32 * 1024
    frames = np.random.default_rng(0).lognormal(np.log(250), 0.6, 2000).clip(100, 1000).astype(int)
    padding = sum(aligned(count, rows) - count for count in frames) / frames.sum()
    assert padding < 0.04
