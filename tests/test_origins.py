"""Where audio comes from (audio/origins.py): a tar member read in place, a HuggingFace
table row (save_to_disk's arrow stream, parquet), a Kaldi pipe. Each gives the features of
the file it holds; a pipe that fails, writes nothing or is interrupted is handled."""

import os
import signal
import subprocess
import sys
import tarfile
import time

import numpy as np
import pytest

from lebench_cli.audio.decoding import decode
from lebench_cli.audio.sources import AudioSource, PipeCommand, Segment, TableRow, TarMember
from tests.support.source_runs import extract_sources, failures, stored_features, write_recording

IDS = ["u0", "u1", "u2"]


@pytest.fixture
def files(tmp_path):
    """Three WAV files of their own length and rate: {id: path}."""
    folder = tmp_path / "wav"
    folder.mkdir()
    made = {}
    for number, utt_id in enumerate(IDS):
        made[utt_id] = folder / f"{utt_id}.wav"
        write_recording(made[utt_id], 0.6 + 0.3 * number, (16000, 22050, 8000)[number], seed=number)
    return made


def features_by_origin(tmp_path, checkpoint, sources, name):
    extract_sources(sources, tmp_path / name, checkpoint)
    return stored_features(tmp_path / name)


def assert_same_features(found: dict, expected: dict):
    assert sorted(found) == sorted(expected)
    for utt_id in expected:
        np.testing.assert_allclose(found[utt_id], expected[utt_id], atol=1e-5)


@pytest.fixture
def file_features(tmp_path, checkpoints, files):
    return features_by_origin(tmp_path, checkpoints("base"),
                              [AudioSource(utt_id, str(path)) for utt_id, path in files.items()], "files")


def test_tar_members_are_read_in_place(tmp_path, checkpoints, files, file_features):
    archive = tmp_path / "shard.tar"
    with tarfile.open(archive, "w") as tar:
        for utt_id, path in files.items():
            tar.add(path, arcname=f"spk/{utt_id}.wav")
    with tarfile.open(archive) as tar:
        sources = [AudioSource(member.name.split("/")[1][:-4], f"{archive}/{member.name}",
                               origin=TarMember(str(archive), member.name, member.offset_data, member.size))
                   for member in tar.getmembers()]
    assert_same_features(features_by_origin(tmp_path, checkpoints("base"), sources, "tar"), file_features)
    assert not (tmp_path / "spk").exists()  # nothing unpacked


def test_a_tar_cut_before_its_member_fails_it(tmp_path):
    archive = tmp_path / "cut.tar"
    archive.write_bytes(b"\0" * 1024)
    source = AudioSource("u", f"{archive}/u.wav", origin=TarMember(str(archive), "u.wav", 512, 4096))
    assert decode(source) == (None, f"{archive} ends at byte 1024, before member u.wav (4096 bytes at 512): "
                                    "a truncated tar")


def test_table_rows_of_saved_datasets_and_parquet(tmp_path, checkpoints, files, file_features, monkeypatch):
    datasets = pytest.importorskip("datasets")
    monkeypatch.chdir(tmp_path)  # parquet keeps the paths as given: relative to the table's folder here
    relative = [os.path.relpath(files[utt_id], tmp_path) for utt_id in IDS]
    table = datasets.Dataset.from_dict({"id": IDS, "audio": relative}).cast_column("audio", datasets.Audio())
    table.save_to_disk(str(tmp_path / "saved"))  # the audio's bytes embedded
    table.to_parquet(str(tmp_path / "rows.parquet"))  # the audio's paths only
    arrow = next((tmp_path / "saved").glob("*.arrow"))
    for kind, path in (("arrow", arrow), ("parquet", tmp_path / "rows.parquet")):
        sources = [AudioSource(utt_id, f"{path}[{row}]", origin=TableRow(str(path), row, "audio", kind))
                   for row, utt_id in reversed(list(enumerate(IDS)))]
        assert_same_features(features_by_origin(tmp_path, checkpoints("base"), sources, kind), file_features)


def test_a_table_row_that_does_not_exist_fails_it(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"audio": pa.array([b"RIFF"], pa.binary())}), tmp_path / "t.parquet")
    source = AudioSource("u", "t.parquet[5]", origin=TableRow(str(tmp_path / "t.parquet"), 5, "audio", "parquet"))
    assert decode(source) == (None, f"{tmp_path / 't.parquet'} has no row 5 (1 rows)")


def pipe(utt_id, command, line=1):
    return AudioSource(utt_id, f"wav.scp:{line}", origin=PipeCommand(command, f"wav.scp:{line}"))


def test_pipes_give_the_features_of_what_they_write(tmp_path, checkpoints, files, file_features):
    sources = [pipe(utt_id, f"cat {path} |", line) for line, (utt_id, path) in enumerate(files.items(), start=1)]
    assert_same_features(features_by_origin(tmp_path, checkpoints("base"), sources, "pipes"), file_features)


def test_a_pipe_segment_is_cut_from_its_output(tmp_path, files):
    data = write_recording(files["u0"], 1.0, 16000)
    source = AudioSource("s", "wav.scp:1", segment=Segment(0.25, 0.5),
                         origin=PipeCommand(f"cat {files['u0']} |", "wav.scp:1"))
    (waveform, _, samples), reason = decode(source)
    assert reason is None
    np.testing.assert_array_equal(waveform[:samples], data[4000:8000] / np.float32(32768))


def test_a_failing_or_silent_pipe_fails_its_utterance_with_its_line(tmp_path, checkpoints, files):
    sources = [pipe("good", f"cat {files['u0']} |", 1), pipe("false", "false |", 2), pipe("true", "true |", 3),
               pipe("said", "echo first >&2; echo 'sox FAIL formats: no such file' >&2; exit 3 |", 4)]
    summary = extract_sources(sources, tmp_path / "out", checkpoints("base"))
    assert (summary.extracted, summary.failed) == (1, 3)
    assert failures(tmp_path / "out") == {
        "false": "command failed (exit 1): no message",
        "true": "command wrote no audio",
        "said": "command failed (exit 3): sox FAIL formats: no such file",
    }
    assert decode(sources[1])[1] == "command failed (exit 1): no message"
    from lebench_cli.audio.origins import open_bytes
    from lebench_cli.errors import AudioError

    with pytest.raises(AudioError, match=r"^wav.scp:3: command wrote no audio$"):
        with open_bytes(sources[2]):
            pass


_SLOW_PIPE = """
import sys
from lebench_cli.audio.decoding import decode
from lebench_cli.audio.sources import AudioSource, PipeCommand
print(decode(AudioSource("u", "wav.scp:1", origin=PipeCommand(sys.argv[1], "wav.scp:1"))))
"""


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM])
def test_a_stopped_run_leaves_no_shell_of_a_slow_pipe(tmp_path, files, stop):
    group_file = tmp_path / "group"
    command = f"echo $$ > {group_file}; sleep 30; cat {files['u0']} |"
    child = subprocess.Popen([sys.executable, "-c", _SLOW_PIPE, command], env={**os.environ, "PYTHONPATH": os.getcwd()},
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 30
    while not (group_file.exists() and group_file.read_text().strip()) and time.monotonic() < deadline:
        time.sleep(0.05)
    group = int(group_file.read_text())
    os.kill(group, 0)  # the pipe's shell runs, in a process group of its own
    assert os.getpgid(group) == group
    child.send_signal(stop)
    _, errors = child.communicate(timeout=20)
    assert child.returncode == -stop, errors  # it died of the signal, as without a pipe
    if stop == signal.SIGINT:
        assert b"KeyboardInterrupt" in errors
    assert living_members(group) == []  # neither the shell nor its sleep is left


def living_members(group: int, wait: float = 5.0) -> list:
    """The processes of process group `group` that still run (zombies, killed and waiting for
    their reaper, are not), after up to `wait` seconds for them to go."""
    deadline = time.monotonic() + wait
    while True:
        living = []
        for entry in filter(str.isdigit, os.listdir("/proc")):
            try:
                fields = open(f"/proc/{entry}/stat").read().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            if int(fields[2]) == group and fields[0] != "Z":  # fields: state, ppid, pgrp
                living.append(int(entry))
        if not living or time.monotonic() > deadline:
            return living
        time.sleep(0.05)
