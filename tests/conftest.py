import pytest
import torch

from lebench_cli.testing.checkpoints import save_fairseq_checkpoint

NEEDS_CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@pytest.fixture(params=["cpu", pytest.param("cuda", marks=NEEDS_CUDA)])
def device(request):
    """Every test that takes it runs on the CPU, and again on CUDA where there is a GPU:
    the same checks, so the GPU run tests exactly what CI tests."""
    return request.param


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory):
    """{(family, style): path} of tiny fairseq checkpoints, built once per session."""
    root = tmp_path_factory.mktemp("checkpoints")
    made = {}

    def get(family="base", style="cfg"):
        key = (family, style)
        if key not in made:
            made[key] = save_fairseq_checkpoint(root / f"{family}-{style}" / "checkpoint_best.pt", family, style)
        return made[key]

    return get


@pytest.fixture
def offline_cache(tmp_path, monkeypatch):
    from huggingface_hub import constants

    cache = tmp_path / "hub"
    cache.mkdir()
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return cache


def _stop_handlers() -> dict:
    import signal

    return {name: signal.getsignal(getattr(signal, name)) for name in ("SIGINT", "SIGTERM", "SIGUSR1")}


_STOP_HANDLERS = _stop_handlers()  # as the test process started


@pytest.fixture(autouse=True)
def stop_signals_restored():
    """`lebench extract` in-process (CliRunner) ignores the stop signals once its summary is
    decided, until the process exits: the test process goes on, and its children must not
    inherit them ignored. Restored to what the test process started with, before and after
    every test: a module or session fixture may have run such an extraction in between."""
    import signal

    for name, handler in _STOP_HANDLERS.items():
        signal.signal(getattr(signal, name), handler)
    yield
    for name, handler in _STOP_HANDLERS.items():
        signal.signal(getattr(signal, name), handler)
