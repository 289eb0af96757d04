"""`ExtractOptions.validate()`: the library refuses what `lebench extract` refuses, with the
same message, before anything is loaded or written."""

from dataclasses import replace

import numpy as np
import pytest
import soundfile as sf
from click.testing import CliRunner

from lebench_cli import ExtractOptions, features_of, run_extract
from lebench_cli.cli import main
from lebench_cli.scaleout.devices import DeviceRun
from lebench_cli.errors import InputError
from lebench_cli.pipeline.extract import plan_extract
from lebench_cli.scaleout.ray_parts import RayOptions, run_parts_on_ray

OVERLAP = "--overlap-seconds 20 must be under half of --chunk-seconds 30"
OVERWRITE = ("--overwrite cannot be combined with --shard: each part would delete the others' features; "
             "empty OUTPUT before launching the job array")
REFUSED = [(dict(overlap_seconds=20.0), ["--overlap-seconds", "20"], OVERLAP),
           (dict(overwrite=True, shard=(2, 3)), ["--overwrite", "--shard", "2/3"], OVERWRITE)]


@pytest.fixture
def corpus(tmp_path):
    folder = tmp_path / "corpus"
    folder.mkdir()
    sf.write(folder / "a.wav", np.zeros(16_000, dtype=np.float32), 16_000)
    return folder


def options_for(corpus, tmp_path, **changes) -> ExtractOptions:
    return replace(ExtractOptions(inputs=[str(corpus)], output=str(tmp_path / "out"), model="no-such-model.pt",
                                  device="cpu"), **changes)


@pytest.mark.parametrize("changes, flags, message", REFUSED)
def test_run_extract_refuses_what_the_cli_refuses(corpus, tmp_path, changes, flags, message):
    result = CliRunner().invoke(main, ["extract", str(corpus), "-o", str(tmp_path / "out"), "-m", "no-such-model.pt",
                                       "--device", "cpu", "-q", *flags])
    assert (result.exit_code, result.output) == (1, f"Error: {message}\n")
    options = options_for(corpus, tmp_path, **changes)
    for run in (run_extract, plan_extract):
        with pytest.raises(InputError) as raised:
            run(options)
        assert str(raised.value) == message
    assert not (tmp_path / "out").exists()


def test_devices_and_ray_refuse_it_before_starting_anything(corpus, tmp_path):
    options = options_for(corpus, tmp_path, overlap_seconds=20.0)
    with pytest.raises(InputError) as raised:
        DeviceRun(options, ["cpu", "cpu"])
    assert str(raised.value) == OVERLAP
    with pytest.raises(InputError) as raised:  # before Ray is imported or a cluster joined
        run_parts_on_ray(options, RayOptions())
    assert str(raised.value) == OVERLAP
    assert not (tmp_path / "out").exists()


def test_features_of_names_its_keywords(corpus):
    with pytest.raises(InputError) as raised:  # before the model is loaded
        features_of([str(corpus / "a.wav")], "no-such-model.pt", chunk_seconds=30, overlap_seconds=15)
    assert str(raised.value) == "overlap_seconds 15 must be under half of chunk_seconds 30"


def test_validate_returns_the_options_it_accepts(corpus, tmp_path):
    options = options_for(corpus, tmp_path, overlap_seconds=14.9, overwrite=True)
    assert options.validate() is options
