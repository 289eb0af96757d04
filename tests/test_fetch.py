"""`lebench fetch` against a hub on 127.0.0.1 (tests/support/fake_hub.py), an unreachable hub that
fails at once, and extract finding offline what fetch put in the cache. Never the network."""

import os
import subprocess
import sys
import time

import pytest
from click.testing import CliRunner

from support.fake_hub import COMMIT, FakeHub, closed_port_url
from lebench_cli.model.formats import load_local
from lebench_cli.cli import main
from lebench_cli.model.conversion import export_transformers
from lebench_cli.reading.store import open_features

BASE = "LeBenchmark/wav2vec2-FR-3K-base"


def lebench(*args, endpoint, home, offline=False):
    """The `lebench` command in a fresh process, with the hub settings of a user's shell."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("HF_", "HUGGINGFACE_", "TRANSFORMERS_")) and not k.lower().endswith("_proxy")}
    env.update(HF_ENDPOINT=endpoint, HF_HOME=str(home), HF_HUB_DISABLE_PROGRESS_BARS="1", NO_PROXY="127.0.0.1")
    if offline:
        env["HF_HUB_OFFLINE"] = "1"
    return subprocess.run([sys.executable, "-m", "lebench_cli", *map(str, args)], env=env,
                          capture_output=True, text=True, timeout=60)


def snapshot(home, repo_id):
    return home / "hub" / ("models--" + repo_id.replace("/", "--")) / "snapshots" / COMMIT


def test_fetch_downloads_what_extract_loads_and_extract_finds_it_offline(checkpoints, tmp_path, monkeypatch):
    weights = checkpoints("base").read_bytes()
    home = tmp_path / "hf"
    with FakeHub({BASE: {"checkpoint_best.pt": weights, "config.json": b"{}"}}) as hub:
        fetched = lebench("fetch", "wav2vec2-FR-M-base", endpoint=hub.url, home=home)
        assert (fetched.returncode, fetched.stderr) == (0, "")
        assert fetched.stdout == f"{BASE}\tdownloaded\t{snapshot(home, BASE)}\n"
        # The fairseq checkpoint only, as extract loads it: not the transformers files.
        assert sorted(p.name for p in snapshot(home, BASE).iterdir()) == ["checkpoint_best.pt"]
        assert (snapshot(home, BASE) / "checkpoint_best.pt").read_bytes() == weights
        assert [r for r in hub.requests if "/resolve/" in r[1]] == [  # one file, looked up, then downloaded
            ("HEAD", f"/{BASE}/resolve/main/checkpoint_best.pt"), ("HEAD", f"/{BASE}/resolve/main/checkpoint_best.pt"),
            ("GET", f"/{BASE}/resolve/main/checkpoint_best.pt")]

    again = lebench("fetch", BASE, endpoint=closed_port_url(), home=home)
    assert (again.returncode, again.stdout, again.stderr) == (0, f"{BASE}\tcached\t{snapshot(home, BASE)}\n", "")

    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(home / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    audio = tmp_path / "corpus" / "spk1" / "a.wav"
    audio.parent.mkdir(parents=True)
    _write_tone(audio)
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["extract", str(tmp_path / "corpus"), "-o", str(out), "--model", BASE,
                                       "--device", "cpu", "--workers", "0", "-q"], catch_exceptions=False)
    assert (result.exit_code, result.output) == (0, "")
    with open_features(out) as store:
        assert [row["id"] for row in store.utterances()] == ["spk1/a"]
        assert store.metadata["model"]["hub_id"] == BASE


def _write_tone(path):
    import numpy as np
    import soundfile as sf

    t = np.arange(16_000) / 16_000
    sf.write(path, (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32), 16_000)


def test_fetch_picks_the_transformers_files_when_there_is_no_fairseq_checkpoint(checkpoints, tmp_path):
    folder = tmp_path / "tf"
    export_transformers(load_local(checkpoints("large")), folder)
    files = {p.name: p.read_bytes() for p in folder.iterdir() if p.name != "preprocessor_config.json"}
    home = tmp_path / "hf"
    with FakeHub({"someone/w2v": files}) as hub:
        fetched = lebench("fetch", "someone/w2v", endpoint=hub.url, home=home)
        assert (fetched.returncode, fetched.stderr) == (0, "")
        assert fetched.stdout == f"someone/w2v\tdownloaded\t{snapshot(home, 'someone/w2v')}\n"
        assert sorted(p.name for p in snapshot(home, "someone/w2v").iterdir()) == ["config.json", "model.safetensors"]
        # preprocessor_config.json is optional: asked for, absent, not an error.
        assert ("HEAD", "/someone/w2v/resolve/main/preprocessor_config.json") in hub.requests
    assert load_local(snapshot(home, "someone/w2v")).format == "transformers"


def test_fetch_errors_one_line_each_and_the_rest_still_fetched(checkpoints, tmp_path):
    home = tmp_path / "hf"
    local = checkpoints("base")
    repos = {BASE: {"checkpoint_best.pt": local.read_bytes()}, "someone/empty": {"README.md": b"hi"}}
    with FakeHub(repos) as hub:
        result = lebench("fetch", "nobody/nothing", local, "someone/empty", BASE, "not a model",
                         endpoint=hub.url, home=home)
    assert result.returncode == 1
    assert result.stdout == f"{local}\tlocal\t{local}\n{BASE}\tdownloaded\t{snapshot(home, BASE)}\n"
    assert result.stderr == (
        "Error: no hub repository 'nobody/nothing' (or it is private)\n"
        "Error: hub repository 'someone/empty' holds no wav2vec2 checkpoint lebench can read\n"
        "Error: 'not a model' is neither a local checkpoint nor a hub id (see `lebench info` for known models)\n"
    )


def test_fetch_offline_and_not_cached(tmp_path):
    result = lebench("fetch", BASE, endpoint=closed_port_url(), home=tmp_path / "hf", offline=True)
    assert (result.returncode, result.stdout) == (1, "")
    assert result.stderr == (
        f"Error: {BASE} is not in the local hub cache and HF_HUB_OFFLINE is set: run `lebench fetch {BASE}` "
        "on a machine with network, into a hub cache this one reads (HF_HOME), or pass a local checkpoint path\n"
    )


def test_fetch_requires_a_model():
    result = CliRunner().invoke(main, ["fetch"])
    assert result.exit_code == 2
    assert "Missing argument 'MODELS...'" in result.output


def unreachable_message(repo_id, endpoint):
    return (
        f"Error: cannot download {repo_id} from {endpoint} (ConnectError): run `lebench fetch {repo_id}` on a "
        "machine with network, into a hub cache this one reads (HF_HOME), or pass a local checkpoint path; "
        "HF_HUB_OFFLINE=1 skips the network\n"
    )


@pytest.mark.parametrize("command", ["fetch", "info"])
def test_unreachable_hub_fails_at_once_with_one_line(command, tmp_path):
    """huggingface_hub alone retries a refused connection for ~23 s, logging `Retrying in 8s`
    lines. The process must fail within 2 s of its start-up (importing Python, click and
    huggingface_hub, timed here too: on a loaded machine that alone can take seconds)."""
    endpoint = closed_port_url()
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    started = time.monotonic()
    subprocess.run([sys.executable, "-c", "import huggingface_hub.file_download, lebench_cli.cli"], env=env, check=True)
    start_up = time.monotonic() - started

    started = time.monotonic()
    result = lebench(command, BASE, endpoint=endpoint, home=tmp_path / "hf")
    elapsed = time.monotonic() - started
    assert (result.returncode, result.stdout) == (1, "")
    assert result.stderr == unreachable_message(BASE, endpoint)
    assert elapsed - start_up < 2, f"{elapsed:.1f} s, of which {start_up:.1f} s start-up"


def test_unreachable_hub_fails_within_two_seconds_in_process(tmp_path, monkeypatch):
    import huggingface_hub
    from huggingface_hub import constants

    from lebench_cli.errors import ModelNotFoundError
    from lebench_cli.model.models import load_checkpoint

    for name in [k for k in os.environ if k.lower().endswith("_proxy")]:
        monkeypatch.delenv(name)  # 127.0.0.1 directly, not through a proxy of the environment
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    # huggingface_hub's client reads the environment when it is made (close_session: >= 1.0)
    (getattr(huggingface_hub, "close_session", None) or huggingface_hub.utils.reset_sessions)()
    endpoint = closed_port_url()
    monkeypatch.setattr(constants, "ENDPOINT", endpoint)
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", endpoint + "/{repo_id}/resolve/{revision}/{filename}")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    started = time.monotonic()
    with pytest.raises(ModelNotFoundError) as caught:
        load_checkpoint("wav2vec2-FR-14K-light")
    assert time.monotonic() - started < 2
    assert f"Error: {caught.value}\n" == unreachable_message("LeBenchmark/wav2vec2-FR-14K-light", endpoint)
