"""`lebench info`, `--version`, `--help`: exact output and exit codes."""

import hashlib
import json
import subprocess
import sys

from click.testing import CliRunner

from lebench_cli import __version__
from lebench_cli.cli import main

CATALOG = """\
MODEL                                   ALIASES              ARCH    HOURS        LAYERS  WIDTH  NORMALIZE  FORMATS               CACHED
LeBenchmark/wav2vec2-FR-1K-base         wav2vec2-FR-S-base   base    1K           12      768    no         fairseq,transformers  no
LeBenchmark/wav2vec2-FR-1K-large        wav2vec2-FR-S-large  large   1K           24      1024   yes        fairseq,transformers  no
LeBenchmark/wav2vec2-FR-2.6K-base       -                    base    2.6K         12      768    no         fairseq,transformers  no
LeBenchmark/wav2vec2-FR-3K-base         wav2vec2-FR-M-base   base    2.9K         12      768    no         fairseq,transformers  yes
LeBenchmark/wav2vec2-FR-3K-large        wav2vec2-FR-M-large  large   2.9K         24      1024   yes        fairseq,transformers  no
LeBenchmark/wav2vec2-FR-7K-base         -                    base    7.6K         12      768    no         fairseq,transformers  no
LeBenchmark/wav2vec2-FR-7K-large        -                    large   7.6K         24      1024   yes        fairseq,transformers  no
LeBenchmark/wav2vec2-FR-14K-light       -                    light   14K          ?       ?      ?          speechbrain           no
LeBenchmark/wav2vec2-FR-14K-large       -                    large   14K          24      1024   ?          speechbrain           no
LeBenchmark/wav2vec2-FR-14K-xlarge      -                    xlarge  14K          ?       ?      ?          speechbrain           no
LeBenchmark/wav2vec-FR-1K-Male-base     -                    base    1K (male)    12      768    no         fairseq,transformers  no
LeBenchmark/wav2vec-FR-1K-Male-large    -                    large   1K (male)    24      1024   yes        fairseq,transformers  no
LeBenchmark/wav2vec-FR-1K-Female-base   -                    base    1K (female)  12      768    no         fairseq,transformers  no
LeBenchmark/wav2vec-FR-1K-Female-large  -                    large   1K (female)  24      1024   no*        fairseq,transformers  no
? = not confirmed: read from the checkpoint's own config by `lebench info MODEL`.
* wav2vec-FR-1K-Female-large: its published config says do_normalize: false where the other 1K-7K large models say true; lebench uses the flag of the checkpoint it loads (docs/models.md).
"""


CPU_WITH_BFLOAT16 = """\
CPU bfloat16: native here (AVX512-BF16, AMX): `--device cpu --dtype bfloat16` runs the model faster than float32 (about 2.5x for the base model on such a CPU, errors near 2e-2 of a layer's scale: docs/performance.md); float32 stays the default, the exact reference.
CPU float16: not native here (no AMX-FP16): at best float32's speed, far slower on some CPUs; use bfloat16 or float32 on the CPU.
"""


def cpu_features(monkeypatch, *present):
    from lebench_cli.model import cpu_precision

    monkeypatch.setattr(cpu_precision, "_has", lambda feature: feature in present)


def test_info_lists_every_known_model_and_the_cache(offline_cache, checkpoints, monkeypatch):
    from support.fake_hub import fake_hub_cache

    cpu_features(monkeypatch, "_is_avx512_bf16_supported", "_is_amx_tile_supported")
    fake_hub_cache(offline_cache, "LeBenchmark/wav2vec2-FR-3K-base",
                   {"checkpoint_best.pt": checkpoints("base").read_bytes()})
    result = CliRunner().invoke(main, ["info"])
    assert result.exit_code == 0
    assert result.output == CATALOG + CPU_WITH_BFLOAT16


def test_info_says_when_this_cpu_has_no_native_half_precision(offline_cache, monkeypatch):
    cpu_features(monkeypatch)
    result = CliRunner().invoke(main, ["info"])
    assert result.exit_code == 0
    assert result.output.endswith(
        "CPU bfloat16: not native here (no AVX512-BF16 or AMX found): `--dtype bfloat16` is likely no "
        "faster than float32, the default on CPU.\n"
        "CPU float16: not native here (no AMX-FP16): at best float32's speed, far slower on some CPUs; "
        "use float32 on the CPU.\n")


def test_info_names_native_float16(offline_cache, monkeypatch):
    cpu_features(monkeypatch, "_is_amx_tile_supported", "_is_amx_fp16_supported")
    lines = CliRunner().invoke(main, ["info"]).output.splitlines()
    assert lines[-2].startswith("CPU bfloat16: native here (AMX): ")
    assert lines[-1] == "CPU float16: native here (AMX-FP16)."


def test_cpu_feature_checks_answer_on_this_torch():
    from lebench_cli.model.cpu_precision import _has

    assert isinstance(_has("_is_avx512_bf16_supported"), bool)
    assert _has("_no_such_check") is False


def test_info_json_catalog(offline_cache):
    result = CliRunner().invoke(main, ["info", "--json"])
    assert result.exit_code == 0
    rows = json.loads(result.output)
    assert len(rows) == 14
    assert rows[4] == {
        "hub_id": "LeBenchmark/wav2vec2-FR-3K-large", "aliases": ["wav2vec2-FR-M-large"],
        "arch": "large", "hours": "2.9K", "layers": 24, "width": 1024, "normalize": True,
        "normalize_note": None, "formats": ["fairseq", "transformers"], "cached": False,
    }
    female_large = rows[13]
    assert (female_large["hub_id"], female_large["arch"], female_large["normalize"]) == (
        "LeBenchmark/wav2vec-FR-1K-Female-large", "large", False)
    assert female_large["normalize_note"].startswith("its published config says do_normalize: false")
    assert [row["hub_id"] for row in rows if row["normalize_note"]] == ["LeBenchmark/wav2vec-FR-1K-Female-large"]


def test_info_on_a_checkpoint(checkpoints):
    path = checkpoints("large")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    size = path.stat().st_size
    result = CliRunner().invoke(main, ["info", str(path)])
    assert result.exit_code == 0
    assert result.output == (
        f"model:          {path}\n"
        "hub id:         -\n"
        f"path:           {path}\n"
        "format:         fairseq\n"
        "layers:         3 transformer blocks (hidden states 0-3, plus cnn)\n"
        "width:          32\n"
        "ffn width:      64\n"
        "heads:          4\n"
        "extractor mode: layer_norm\n"
        "layer norm:     pre\n"
        "normalize:      yes\n"
        "conv layers:    (16,10,5) (16,3,2) (16,3,2) (16,3,2) (16,3,2) (16,2,2) (16,2,2)\n"
        "parameters:     35,008\n"  # fairseq model less its pre-training heads

        f"size:           {size:,} bytes\n"
        f"sha256:         {digest}\n"
    )
    result = CliRunner().invoke(main, ["info", "--json", str(path)])
    described = json.loads(result.output)
    assert described["layers"] == 3 and described["width"] == 32 and described["normalize"] is True
    assert described["sha256"] == digest and described["format"] == "fairseq"
    assert set(described) == {"model", "hub_id", "path", "format", "layers", "width", "ffn_width", "heads",
                              "extractor_mode", "layer_norm", "normalize", "conv_layers", "parameters",
                              "size_bytes", "sha256"}


def test_info_refuses_a_hostile_checkpoint_with_one_line(tmp_path):
    import torch
    from support.pickles import CreatesAFile

    evil = tmp_path / "evil.pt"
    torch.save({"payload": CreatesAFile(tmp_path / "pwned")}, evil)
    result = CliRunner().invoke(main, ["info", str(evil)])
    assert result.exit_code == 1
    assert result.output == (
        f"Error: {evil}: refused to load: it needs 'io.open', which is not in the allowlist of "
        "checkpoint config classes (loading it could run code); pass --trust-checkpoint only if "
        "you trust this file\n"
    )
    assert not (tmp_path / "pwned").exists()


def test_info_unknown_model():
    result = CliRunner().invoke(main, ["info", "nowhere"])
    assert result.exit_code == 1
    assert result.output == (
        "Error: 'nowhere' is neither a local checkpoint nor a hub id (see `lebench info` for known models)\n"
    )


def test_version():
    result = CliRunner().invoke(main, ["--version"])
    assert result.output == f"lebench, version {__version__}\n"


def test_help_does_not_import_torch():
    code = (
        "import sys\n"
        "from lebench_cli.cli import main\n"
        "try:\n"
        "    main(['--help'])\n"
        "except SystemExit:\n"
        "    pass\n"
        "heavy = [m for m in ('torch', 'fairseq', 'numpy', 'h5py', 'huggingface_hub') if m in sys.modules]\n"
        "print('HEAVY', heavy)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "HEAVY []" in result.stdout


def test_public_api_resolves():
    import lebench_cli

    for name in lebench_cli.__all__:
        assert getattr(lebench_cli, name) is not None, name
