"""A truthful device: the summary names what computed, and a default device that falls back
to the CPU says why (torch's CUDA functions monkeypatched: no GPU needed)."""

import re
import warnings

import pytest
import torch
from click.testing import CliRunner

from lebench_cli.model import compute_device
from lebench_cli.cli import main
from lebench_cli.model.compute_device import cpu_fallback_reason, describe_device
from lebench_cli.pipeline.summary import merged_summaries as _merged
from lebench_cli.pipeline.summary import ExtractSummary
from lebench_cli.testing.audio import write_audio

SUMMARY = r"extracted 2 files \(1\.1 s of audio\) in \d+\.\d s \(\d+x real time; \d+\.\d s in all, with model loading\)"


@pytest.fixture
def two_files(tmp_path):
    write_audio(tmp_path / "corpus" / "a.wav", 0.5, seed=1)
    write_audio(tmp_path / "corpus" / "b.wav", 0.6, seed=2)
    return tmp_path / "corpus"


def extract(corpus, out, checkpoint, *extra):
    return CliRunner().invoke(main, ["extract", str(corpus), "-o", str(out), "--model", str(checkpoint),
                                     "--workers", "0", *extra], catch_exceptions=False)


@pytest.fixture
def no_cuda(monkeypatch):
    """torch as on a node where CUDA cannot start: `warning` is what is_available() warns."""
    def set_up(cuda_version, warning=None, driver=None):
        calls = []

        def is_available():
            if warning and not calls:  # as torch: it warns on the first call only
                warnings.warn(warning)
            calls.append(1)
            return False

        monkeypatch.setattr(torch.cuda, "is_available", is_available)
        monkeypatch.setattr(torch.version, "cuda", cuda_version)
        monkeypatch.setattr(compute_device, "driver_cuda_version", lambda: driver)
        monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    return set_up


def test_the_summary_names_the_cpu_and_the_precision(checkpoints, two_files, tmp_path):
    result = extract(two_files, tmp_path / "out", checkpoints("base"), "--device", "cpu")
    assert result.exit_code == 0
    assert re.fullmatch(SUMMARY + r" on cpu, float32\n", result.stderr), result.stderr


def test_a_default_device_that_falls_back_to_the_cpu_says_why(checkpoints, two_files, tmp_path, no_cuda):
    no_cuda("12.4", warning="CUDA initialization: The NVIDIA driver on your system is too old (found version "
                            "11040). Please update your GPU driver by downloading and installing a new version",
            driver=(11, 4))
    result = extract(two_files, tmp_path / "out", checkpoints("base"))
    assert result.exit_code == 0
    first, summary = result.stderr.splitlines()
    assert first == ("lebench: running on cpu: this torch's CUDA 12.4 needs a newer NVIDIA driver (the driver "
                     "here runs CUDA up to 11.4); --device cpu chooses it and silences this")
    assert re.fullmatch(SUMMARY + " on cpu, float32", summary), summary
    result = extract(two_files, tmp_path / "out2", checkpoints("base"), "--device", "cpu", "-q")
    assert (result.exit_code, result.stderr) == (0, "")


@pytest.mark.parametrize("cuda_version,warning,driver,visible,reason", [
    (None, None, None, None, "this torch is built for the CPU only"),
    ("12.4", None, None, None, "no GPU visible (no NVIDIA driver found)"),
    ("12.4", None, (12, 4), "", "no GPU visible (CUDA_VISIBLE_DEVICES='')"),
    ("12.4", None, (11, 8), None, "this torch's CUDA 12.4 needs a newer NVIDIA driver (the driver here runs "
                                  "CUDA up to 11.8)"),
    ("12.4", "CUDA initialization: CUDA unknown error - this may be due to an incorrectly set up environment",
     (12, 4), None, "CUDA did not start: CUDA initialization: CUDA unknown error - this may be due to an "
                    "incorrectly set up environment"),
    ("12.4", None, (12, 4), None, "no GPU visible"),
])
def test_the_fallback_reason(no_cuda, monkeypatch, cuda_version, warning, driver, visible, reason):
    no_cuda(cuda_version, warning, driver)
    if visible is not None:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    assert cpu_fallback_reason() == reason


def test_no_reason_when_cuda_is_available(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert cpu_fallback_reason() is None


def test_a_gpu_is_named_with_its_index_and_model(monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda index: f"NVIDIA H100 #{index}")
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    assert describe_device(torch.device("cuda:1")) == "cuda:1 (NVIDIA H100 #1)"
    assert describe_device(torch.device("cuda")) == "cuda:0 (NVIDIA H100 #0)"
    assert describe_device(torch.device("cpu")) == "cpu"


def test_a_multi_device_summary_names_each_device_once():
    def worker(device):
        return {**ExtractSummary(extracted=1, audio_seconds=1.0, processing_seconds=0.5, device=device,
                                 dtype="float16").__dict__}

    merged = _merged([worker("cuda:0 (NVIDIA H100)"), worker("cuda:1 (NVIDIA H100)"), worker("cuda:0 (NVIDIA H100)")],
                     "out", 2)
    assert merged.line().startswith("extracted 3 files (3.0 s of audio) in 0.5 s (6x real time; ")
    assert merged.line().endswith(" on cuda:0 (NVIDIA H100), cuda:1 (NVIDIA H100), float16")


def test_cuda_asked_for_but_unusable_says_why(no_cuda):
    from lebench_cli.model.encoder import check_device
    from lebench_cli.errors import InputError

    no_cuda("12.4", driver=(11, 8))
    with pytest.raises(InputError) as caught:
        check_device("cuda:0")
    assert str(caught.value) == ("device 'cuda:0' requested but CUDA is not available: this torch's CUDA 12.4 "
                                 "needs a newer NVIDIA driver (the driver here runs CUDA up to 11.8) "
                                 "(use --device cpu)")
