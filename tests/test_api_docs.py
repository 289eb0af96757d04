"""docs/api.md cannot rot: every public name is documented with an example, and every
example runs (on a tiny random 12-layer checkpoint and generated audio, offline)."""

import re
import warnings
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

import lebench_cli
from lebench_cli.testing.checkpoints import save_fairseq_checkpoint

API_DOC = (Path(__file__).resolve().parents[1] / "docs" / "api.md").read_text()
MODEL = "LeBenchmark/wav2vec2-FR-7K-base"  # the name the examples use; replaced by a tiny checkpoint
EXAMPLES = re.findall(r"^```python\n(.*?)^```", API_DOC, flags=re.S | re.M)
HEADINGS = [line for line in API_DOC.splitlines() if line.startswith("#")]


def test_dir_lists_the_public_names():
    names = dir(lebench_cli)
    assert set(lebench_cli.__all__) <= set(names)
    assert names == sorted(names)
    assert "features_of" in lebench_cli.__all__ and "iter_features" in lebench_cli.__all__


@pytest.mark.parametrize("name", lebench_cli.__all__)
def test_every_public_name_has_a_section_and_an_example(name):
    assert any(f"`{name}`" in heading for heading in HEADINGS), f"no heading names `{name}` in docs/api.md"
    assert any(re.search(rf"\b{re.escape(name)}\b", example) for example in EXAMPLES), \
        f"no example uses {name} in docs/api.md"


@pytest.fixture(scope="module")
def twelve_layers(tmp_path_factory):
    """Base-like, with the real base model's 12 layers, so that the examples' layer numbers exist."""
    return save_fairseq_checkpoint(tmp_path_factory.mktemp("model") / "checkpoint_best.pt", "base", encoder_layers=12)


def write_corpus(root: Path):
    """The corpus docs/api.md lists."""
    generator = np.random.default_rng(0)
    for relpath, seconds, rate, channels in [("spk1/utt001.wav", 1.3, 16_000, 1), ("spk1/utt002.wav", 0.8, 16_000, 1),
                                             ("spk2/utt003.wav", 2.0, 44_100, 2)]:
        samples = (0.1 * generator.standard_normal((int(seconds * rate), channels))).astype(np.float32)
        path = root / "corpus" / relpath
        path.parent.mkdir(parents=True, exist_ok=True)
        sf.write(path, samples.squeeze(), rate)


def test_the_examples_run(twelve_layers, tmp_path, monkeypatch, offline_cache):
    """In document order, each in a namespace of its own (a reader copies one block), in one
    folder (the reading examples read what the extract example wrote)."""
    assert len(EXAMPLES) >= 10
    write_corpus(tmp_path)
    monkeypatch.chdir(tmp_path)
    for number, example in enumerate(EXAMPLES, start=1):
        code = example.replace(repr(MODEL).replace("'", '"'), repr(str(twelve_layers)))
        assert "LeBenchmark/" not in code, f"example {number} names a model the test does not replace"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the skip_bad_files example warns on purpose
            exec(compile(code, f"docs/api.md python example {number}", "exec"), {"__name__": "__main__"})
    assert (tmp_path / "feats" / "lebench.json").exists()
