"""docs/reading.md's examples, the weighted-sum training loop included, run on a store that
`lebench extract` made from a tiny checkpoint."""

import math
import re
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from lebench_cli.cli import main
from lebench_cli.testing.audio import write_audio

READING_DOC = Path(__file__).resolve().parents[1] / "docs" / "reading.md"


@pytest.fixture
def features(checkpoints, tmp_path):
    corpus = tmp_path / "corpus"
    for speaker in range(2):
        for utterance in range(4):
            write_audio(corpus / f"spk{speaker}" / f"u{utterance}.wav", 1.2 + 0.4 * utterance,
                        seed=10 * speaker + utterance)
    out = tmp_path / "features"
    result = CliRunner().invoke(main, ["extract", str(corpus), "-o", str(out), "--model", str(checkpoints("base")),
                                       "--device", "cpu", "--workers", "0", "-q", "--layers", "all,cnn"])
    assert result.exit_code == 0, result.output
    return out


def test_the_reading_docs_examples_run_and_train(features, monkeypatch):
    monkeypatch.chdir(features.parent)
    blocks = re.findall(r"```python\n(.*?)```", READING_DOC.read_text(), re.DOTALL)
    assert len(blocks) == 3
    import torch

    torch.manual_seed(0)  # the example's model starts from torch's random weights
    namespaces = []
    for block in blocks:
        namespaces.append({"__name__": "reading_doc"})
        exec(compile(block, str(READING_DOC), "exec"), namespaces[-1])
    reads, training, h5py_example = namespaces

    frames = reads["last"].shape[0]
    assert frames == 119  # the first id in storage order is one of the longest files: 2.4 s
    assert reads["last"].shape == (frames, 32) and reads["last"].dtype == np.float16
    assert reads["every"].shape == (4, frames, 32) and reads["some"].shape == (2, frames, 32)
    np.testing.assert_array_equal(reads["every"][3], reads["last"])
    assert reads["cnn"].shape == (frames, 16) and reads["labels"] == {}
    np.testing.assert_array_equal(reads["segment"], reads["every"][:, 25:50])

    losses = training["losses"]
    assert len(losses) == 5 and all(math.isfinite(loss) for loss in losses)  # 8 utterances: 1 batch an epoch
    assert losses[-1] < losses[0]
    weights = training["torch"].softmax(training["model"].layer_logits, dim=0)
    assert weights.shape == (4,) and not training["torch"].allclose(weights, training["torch"].full((4,), 0.25))

    np.testing.assert_array_equal(h5py_example["stacked"], reads["segment"])
