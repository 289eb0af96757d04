"""lebench.json records a run's options and identity under the keys every store so far was
written with (docs/format.md), whatever the code calls them inside: `shard` is the run's part
K/N, `chunk_seconds` the longest window of a long recording."""

import json

from click.testing import CliRunner

from lebench_cli.cli import main
from lebench_cli.testing.audio import write_audio

OPTION_KEYS = ["inputs", "output", "model", "layers", "pool", "store_frames", "extensions", "channel",
               "batch_seconds", "chunk_seconds", "overlap_seconds", "device", "dtype", "save_dtype", "shard_size",
               "compression", "commit_seconds", "workers", "shard", "overwrite", "update", "strict",
               "keep_truncated", "trust_checkpoint", "root", "id_prefix", "input_format", "allow_pipes", "id_column",
               "path_column", "time_unit"]  # the earlier keys kept, in order; new ones after
IDENTITY_KEYS = ["model_sha256", "layers", "store_frames", "pool", "save_dtype", "chunk_seconds", "overlap_seconds",
                 "channel"]


def test_lebench_json_keeps_the_keys_of_earlier_stores(checkpoints, tmp_path):
    corpus, out = tmp_path / "corpus", tmp_path / "out"
    write_audio(corpus / "a.wav", 1.0, seed=1)
    write_audio(corpus / "b.wav", 5.0, seed=2)  # over --chunk-seconds: run in windows
    args = ["extract", str(corpus), "-o", str(out), "--model", str(checkpoints("base")), "--device", "cpu",
            "--workers", "0", "-q", "--shard", "1/2", "--chunk-seconds", "4", "--overlap-seconds", "1"]
    result = CliRunner().invoke(main, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    metadata = json.loads((out / "lebench.json").read_text(encoding="utf-8"))
    assert list(metadata["options"]) == OPTION_KEYS
    assert metadata["options"]["shard"] == [1, 2] and metadata["options"]["chunk_seconds"] == 4.0
    assert list(metadata["identity"]) == IDENTITY_KEYS and metadata["identity"]["chunk_seconds"] == 4.0
    index = (out / "index-1of2.tsv").read_text(encoding="utf-8").splitlines()
    assert [line.split("\t")[:1] + line.split("\t")[5:6] for line in index[1:]] == [["b", "chunked"]]
