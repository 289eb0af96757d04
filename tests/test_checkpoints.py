"""Loading: refusal of hostile or broken files, exhaustive key checks, hub resolution
(downloads and an unreachable hub: test_fetch.py)."""

import datetime
import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from lebench_cli.model.formats import load_local
from lebench_cli.model.conversion import export_speechbrain, export_transformers
from lebench_cli.model.encoder import Encoder
from lebench_cli.errors import CheckpointError, ModelNotFoundError, UnsafeCheckpointError
from lebench_cli.model.models import load_checkpoint
from support.fake_hub import fake_hub_cache
from support.pickles import CreatesAFile


def test_hostile_pickle_is_refused_and_nothing_runs(tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "checkpoint_best.pt"
    torch.save({"model": {}, "cfg": None, "payload": CreatesAFile(marker)}, evil)
    with pytest.raises(UnsafeCheckpointError) as caught:
        load_local(evil)
    assert str(caught.value) == (
        f"{evil}: refused to load: it needs 'io.open', which is not in the allowlist of "
        "checkpoint config classes (loading it could run code); pass --trust-checkpoint only if "
        "you trust this file"
    )
    assert not marker.exists()


def test_global_outside_the_allowlist_needs_trust(checkpoints, tmp_path):
    state = torch.load(checkpoints("base", "container"), weights_only=False)
    state["extra_state"]["saved_on"] = datetime.date(2021, 6, 1)
    path = tmp_path / "dated.pt"
    torch.save(state, path)
    with pytest.raises(UnsafeCheckpointError, match="it needs 'datetime.date'"):
        load_local(path)
    assert load_local(path, trust=True).layers == 3


def test_truncated_archive_is_a_checkpoint_error(checkpoints, tmp_path):
    data = checkpoints("base").read_bytes()
    path = tmp_path / "truncated.pt"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"truncated.pt: not a readable PyTorch checkpoint"):
        load_local(path)


def test_not_a_checkpoint_at_all(tmp_path):
    path = tmp_path / "notes.pt"
    path.write_text("hello")
    with pytest.raises(CheckpointError, match="notes.pt: not a readable PyTorch checkpoint"):
        load_local(path)


def test_code_in_conv_feature_layers_is_not_evaluated(checkpoints, tmp_path):
    state = torch.load(checkpoints("base", "container"), weights_only=False)
    state["cfg"]["model"]["conv_feature_layers"] = "__import__('os').system('true')"
    path = tmp_path / "eval.pt"
    torch.save(state, path)
    with pytest.raises(CheckpointError, match="invalid conv_feature_layers"):
        load_local(path)


@pytest.mark.parametrize("change", ["missing", "unexpected"])
def test_transformers_keys_are_checked_exhaustively(checkpoints, tmp_path, change):
    export_transformers(load_local(checkpoints("base")), tmp_path)
    weights = tmp_path / "model.safetensors"
    state = load_file(str(weights))
    if change == "missing":
        del state["encoder.layers.1.feed_forward.output_dense.bias"]
        message = "missing weight 'encoder.layers.1.fc2.bias'"
    else:
        state["encoder.adapter.weight"] = torch.zeros(2)
        message = "unexpected weight 'encoder.adapter.weight'"
    save_file(state, str(weights))
    with pytest.raises(CheckpointError, match=message):
        Encoder(load_local(tmp_path))


def test_speechbrain_prefixes_and_preprocessor_flag(checkpoints, tmp_path):
    checkpoint = load_local(checkpoints("large"))
    export_speechbrain(checkpoint, tmp_path, prefix="")
    loaded = load_local(tmp_path / "wav2vec2.ckpt")
    assert (loaded.format, loaded.normalize) == ("speechbrain", True)
    # The one released anomaly: a layer-norm model whose preprocessor says no normalisation.
    config = json.loads((tmp_path / "preprocessor_config.json").read_text())
    config["do_normalize"] = False
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(config))
    assert load_local(tmp_path).normalize is False


def test_folder_prefers_the_fairseq_checkpoint(checkpoints, tmp_path):
    checkpoint = load_local(checkpoints("base"))
    export_transformers(checkpoint, tmp_path)
    (tmp_path / "checkpoint_best.pt").write_bytes(checkpoints("base").read_bytes())
    assert load_local(tmp_path).format == "fairseq"


def test_hub_alias_resolves_from_the_cache_offline(checkpoints, offline_cache):
    fake_hub_cache(offline_cache, "LeBenchmark/wav2vec2-FR-3K-base",
                   {"checkpoint_best.pt": checkpoints("base").read_bytes()})
    checkpoint = load_checkpoint("wav2vec2-FR-M-base")
    assert checkpoint.hub_id == "LeBenchmark/wav2vec2-FR-3K-base"
    assert checkpoint.format == "fairseq"


def test_hub_speechbrain_repo_from_the_cache(checkpoints, offline_cache, tmp_path):
    export_speechbrain(load_local(checkpoints("large")), tmp_path / "sb")
    files = {p.name: p.read_bytes() for p in (tmp_path / "sb").iterdir()}
    fake_hub_cache(offline_cache, "LeBenchmark/wav2vec2-FR-14K-large", files)
    checkpoint = load_checkpoint("LeBenchmark/wav2vec2-FR-14K-large")
    assert (checkpoint.format, checkpoint.normalize) == ("speechbrain", True)


def test_offline_and_not_cached_says_how_to_fetch(offline_cache):
    with pytest.raises(ModelNotFoundError) as caught:
        load_checkpoint("LeBenchmark/wav2vec2-FR-7K-large")
    assert str(caught.value) == (
        "LeBenchmark/wav2vec2-FR-7K-large is not in the local hub cache and HF_HUB_OFFLINE is set: "
        "run `lebench fetch LeBenchmark/wav2vec2-FR-7K-large` on a machine with network, into a hub cache "
        "this one reads (HF_HOME), or pass a local checkpoint path"
    )


def test_neither_path_nor_hub_id():
    with pytest.raises(ModelNotFoundError, match="'no such model' is neither a local checkpoint nor a hub id"):
        load_checkpoint("no such model")
