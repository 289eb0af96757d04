"""Parts balanced by audio duration, and the manifest that lists lengths once."""

import importlib.util
import random
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from click.testing import CliRunner

from lebench_cli.cli import main
from lebench_cli.audio.inputs import AudioSource, discover
from lebench_cli.pipeline.manifest import write_manifest
from lebench_cli.pipeline.parts import select_part, split_by_duration
from lebench_cli.reading.store import open_features


def realistic_lengths(count=5000, long_recordings=5, seed=0):
    """Utterances log-normal around 5 s, kept within 1-30 s, and a few 10-40 min recordings."""
    generator = np.random.default_rng(seed)
    short = np.clip(generator.lognormal(mean=np.log(5.0), sigma=0.7, size=count), 1.0, 30.0)
    long = generator.uniform(600, 2400, size=long_recordings)
    return [float(x) for x in np.concatenate([short, long])]


@pytest.mark.parametrize("parts", [2, 3, 8, 16])
def test_parts_are_within_5_percent_in_audio_seconds(parts):
    seconds = realistic_lengths()
    owners = split_by_duration(seconds, [f"utt{i:05d}" for i in range(len(seconds))], parts)
    totals = [sum(s for s, owner in zip(seconds, owners) if owner == part) for part in range(1, parts + 1)]
    assert max(totals) <= 1.05 * min(totals), totals
    assert sorted(set(owners)) == list(range(1, parts + 1))


def test_the_split_depends_on_the_list_not_on_its_order():
    seconds = realistic_lengths(count=2000)
    keys = [f"spk{i % 37}/utt{i}" for i in range(len(seconds))]
    owners = dict(zip(keys, split_by_duration(seconds, keys, 8)))
    shuffled = list(zip(keys, seconds))
    random.Random(1).shuffle(shuffled)
    again = split_by_duration([s for _, s in shuffled], [k for k, _ in shuffled], 8)
    assert dict(zip([k for k, _ in shuffled], again)) == owners


def write_wav(path: Path, seconds: float, rate: int = 16000):
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, np.zeros(int(round(seconds * rate)), dtype=np.float32), rate)
    return path


@pytest.fixture
def mixed_corpus(tmp_path):
    root = tmp_path / "corpus"
    for index, seconds in enumerate([3, 3, 3, 2, 2, 2, 1, 1, 1]):
        write_wav(root / f"spk{index % 2}" / f"u{index}.wav", seconds, rate=(16000, 44100, 8000)[index % 3])
    (root / "spk0" / "broken.wav").write_bytes(b"not audio")
    return root


def test_every_file_is_in_exactly_one_part(mixed_corpus):
    sources = discover([str(mixed_corpus)])
    for parts in (1, 2, 3, 4, 11, 12):
        chosen = [s.utt_id for k in range(1, parts + 1) for s in select_part(sources, (k, parts))]
        assert sorted(chosen) == sorted(s.utt_id for s in sources), parts


def test_parts_from_headers_balance_and_carry_their_lengths(mixed_corpus):
    sources = discover([str(mixed_corpus)])
    parts = [select_part(sources, (k, 3)) for k in (1, 2, 3)]
    totals = [sum((s.num_samples or 0) for s in part) / 16000 for part in parts]
    assert totals == [6.0, 6.0, 6.0]
    broken = [s for part in parts for s in part if s.utt_id == "spk0/broken"]
    assert broken[0].num_samples is None  # fails in its part, with its reason


def test_manifest_round_trip_keeps_ids_and_16khz_lengths(mixed_corpus, tmp_path):
    sources = discover([str(mixed_corpus)])
    report = write_manifest(sources, str(tmp_path / "corpus.tsv"))
    assert (report.files, report.audio_seconds, report.unreadable) == (10, 18.0, 1)
    lines = (tmp_path / "corpus.tsv").read_text().splitlines()
    assert lines[0] == str(mixed_corpus)
    assert "spk0/broken.wav" in lines  # no length: probed again, and failed, at extract time
    assert "spk1/u1.wav\t48000" in lines  # 3 s at 44.1 kHz, counted at 16 kHz
    read = discover([str(tmp_path / "corpus.tsv")])
    assert [s.utt_id for s in read] == [s.utt_id for s in sources]
    assert [Path(s.path) for s in read] == [Path(s.path) for s in sources]
    assert [select_part(read, (k, 3)) == select_part(sources, (k, 3)) for k in (1, 2, 3)] == [True] * 3


def test_a_manifest_needs_ids_under_one_folder(tmp_path):
    sources = [AudioSource("a", str(tmp_path / "x" / "a.wav")), AudioSource("b", str(tmp_path / "y" / "c.wav"))]
    with pytest.raises(Exception) as caught:
        write_manifest(sources, str(tmp_path / "m.tsv"))
    assert str(caught.value) == ("--manifest needs inputs whose ids are paths under one folder: give one folder, "
                                 "one manifest, or files relative to the current folder")


def run(*args):
    return CliRunner().invoke(main, ["extract", *map(str, args)], catch_exceptions=False)


def test_dry_run_writes_the_manifest_then_plans_from_it(checkpoints, mixed_corpus, tmp_path):
    listing = tmp_path / "corpus.tsv"
    result = run(mixed_corpus, "-o", tmp_path / "out", "-m", checkpoints("base"), "--device", "cpu",
                 "--dry-run", "--manifest", listing)
    assert result.exit_code == 0, result.output
    wrote, plan = result.output.splitlines()
    assert wrote == f"wrote {listing}: 10 files (18.0 s of audio), 1 unreadable (listed without a length)"
    # The estimate's fixed costs depend on path lengths (tests/test_sizing.py checks its accuracy).
    assert re.fullmatch(r"9 files to extract \(18\.0 s of audio\), 0 already stored, 1 unreadable; "
                        r"estimated output \d+\.\d KB", plan), plan
    assert not (tmp_path / "out").exists()
    result = run(mixed_corpus, "-o", tmp_path / "out", "-m", checkpoints("base"), "--manifest", listing)
    assert (result.exit_code, result.output) == (1, "Error: --manifest writes the listing of a dry run: add --dry-run\n")
    result = run(mixed_corpus, "-o", tmp_path / "out", "-m", checkpoints("base"), "--dry-run", "--manifest", "x.txt")
    assert result.output == "Error: --manifest x.txt: the name must end in .tsv (extract reads .tsv files as manifests)\n"


def test_parts_from_a_manifest_make_the_store_of_a_folder_run(checkpoints, mixed_corpus, tmp_path):
    listing = tmp_path / "corpus.tsv"
    assert run(mixed_corpus, "-o", tmp_path / "x", "-m", checkpoints("base"), "--dry-run", "--manifest", listing).exit_code == 0
    common = ["-m", checkpoints("base"), "--device", "cpu", "--workers", "0", "-q"]
    codes = [run(listing, "-o", tmp_path / "parts", *common, "--shard", part).exit_code for part in ("1/3", "2/3", "3/3")]
    assert sorted(codes) == [0, 0, 3]  # the broken file fails in exactly one part
    assert run(mixed_corpus, "-o", tmp_path / "whole", *common).exit_code == 3
    with open_features(tmp_path / "parts") as parts, open_features(tmp_path / "whole") as whole:
        assert sorted(parts.ids) == sorted(whole.ids) and len(parts.ids) == 9
        for part in (1, 2, 3):  # 6 s of audio in each part
            index = (tmp_path / "parts" / f"index-{part}of3.tsv").read_text().splitlines()[1:]
            assert sum(float(line.split("\t")[4]) for line in index) == pytest.approx(6.0, abs=0.01)
    failures = sorted((tmp_path / "parts").glob("failures-*of3.jsonl"))
    assert sorted(len(path.read_text().splitlines()) for path in failures) == [0, 0, 1]


@pytest.mark.skipif(importlib.util.find_spec("fairseq") is None, reason="fairseq is not installed")
def test_a_manifest_from_fairseqs_own_script_is_read(tmp_path):
    """fairseq's wav2vec_manifest.py (frames at the file's own rate: 16 kHz here, as its
    recipes require) gives the ids and lengths of lebench's folder walk."""
    corpus = tmp_path / "corpus"
    for index, seconds in enumerate([1.5, 0.5, 2.25]):
        write_wav(corpus / f"s{index}" / f"utt{index}.wav", seconds)
    script = Path(importlib.util.find_spec("fairseq").submodule_search_locations[0]) / "examples/wav2vec/wav2vec_manifest.py"
    if not script.exists():
        pytest.skip("this fairseq install has no examples/wav2vec/wav2vec_manifest.py")
    subprocess.run([sys.executable, str(script), str(corpus), "--dest", str(tmp_path), "--ext", "wav",
                    "--valid-percent", "0"], check=True, capture_output=True)
    from_fairseq = discover([str(tmp_path / "train.tsv")])
    walked = discover([str(corpus)])
    assert sorted((s.utt_id, s.num_samples) for s in from_fairseq) == [("s0/utt0", 24000), ("s1/utt1", 8000),
                                                                       ("s2/utt2", 36000)]
    ours = tmp_path / "ours.tsv"
    write_manifest(walked, str(ours))
    described = lambda sources: sorted((s.utt_id, s.num_samples, str(Path(s.path).resolve())) for s in sources)
    assert described(discover([str(ours)])) == described(from_fairseq)
