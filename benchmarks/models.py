"""The model side of the benchmarks: a random checkpoint of a real architecture (or the one
given), its description (the numbers the FLOP formula needs), its transformers export, and
the useful FLOPs of a corpus. The checkpoint is built and described in subprocesses
(`python -m benchmarks.models _build-model|_describe-model ...`): the measuring process never
holds a model."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from .common import REPO, SAMPLE_RATE, quiet_env


def worker_describe_model(model: str, export_folder: str, out_json: str):
    """The architecture numbers the FLOP formula needs; optionally the transformers export."""
    from lebench_cli.model.formats import load_local
    from lebench_cli.model.conversion import parse_conv_layers
    from lebench_cli.model.conversion import export_transformers

    checkpoint = load_local(Path(model))
    config = checkpoint.model_config
    conv = checkpoint.model_config["conv_feature_layers"]

    description = {
        "layers": int(config["encoder_layers"]), "width": int(config["encoder_embed_dim"]),
        "ffn_width": int(config["encoder_ffn_embed_dim"]), "heads": int(config["encoder_attention_heads"]),
        "conv_pos": int(config.get("conv_pos", 128)), "conv_pos_groups": int(config.get("conv_pos_groups", 16)),
        "cnn_width": int(parse_conv_layers(checkpoint.weights_path, conv)[-1][0]),
        "extractor_mode": config.get("extractor_mode", "default"),
        "layer_norm_first": bool(config.get("layer_norm_first", False)), "normalize": bool(checkpoint.normalize),
        "parameters": int(sum(v.numel() for v in checkpoint.state_dict.values())),
    }
    if export_folder and not (Path(export_folder) / "model.safetensors").exists():
        temporary = Path(export_folder + ".tmp")
        shutil.rmtree(temporary, ignore_errors=True)
        export_transformers(checkpoint, temporary)
        shutil.rmtree(export_folder, ignore_errors=True)
        os.replace(temporary, export_folder)
    Path(out_json).write_text(json.dumps(description))


def prepare_model(args) -> tuple:
    """(checkpoint path, transformers folder or None, description)."""
    if args.model is not None:
        checkpoint = args.model.resolve()
        key = f"given-{abs(hash(str(checkpoint))) % 10**8}"
    else:
        checkpoint = args.work / f"model-{args.arch}-seed{args.seed}" / "checkpoint_best.pt"
        key = f"{args.arch}-seed{args.seed}"
        if not checkpoint.exists():
            print(f"building a random {args.arch} checkpoint in {checkpoint} ...", file=sys.stderr)
            run_worker(["_build-model", args.arch, str(checkpoint), str(args.seed)])
    export = args.work / f"transformers-{key}" if "transformers" in args.methods else None
    description_path = args.work / f"describe-{key}.json"
    run_worker(["_describe-model", str(checkpoint), str(export or ""), str(description_path)])
    return checkpoint, export, json.loads(description_path.read_text())


def run_worker(arguments: list):
    result = subprocess.run([sys.executable, "-m", "benchmarks.models", *arguments], env=quiet_env(), cwd=REPO)
    if result.returncode:
        raise SystemExit(f"error: {' '.join(arguments[:1])} failed (exit {result.returncode})")


# ---- FLOPs ------------------------------------------------------------------------------------

CNN_MAC_PER_SECOND = 2.45e9  # the 7 convolutions of 512 channels, per audio second
WINDOW_FRAMES = 1500  # 30 s: attention context of lebench's windows and the naive pieces


def useful_flops(seconds_list, description) -> float:
    d, f, layers = description["width"], description["ffn_width"], description["layers"]
    per_frame = (description["cnn_width"] * d + d * (d // description["conv_pos_groups"]) * description["conv_pos"]
                 + layers * (4 * d * d + 2 * d * f))
    total = 0.0
    for seconds in seconds_list:
        n = max(1, int((seconds * SAMPLE_RATE - 400) // 320 + 1))
        total += CNN_MAC_PER_SECOND * seconds + n * per_frame + layers * 2 * n * min(n, WINDOW_FRAMES) * d
    return 2 * total


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv[0] == "_build-model":
        from lebench_cli.testing.checkpoints import save_real_shape_checkpoint

        return save_real_shape_checkpoint(Path(argv[2]), argv[1], int(argv[3]))
    if argv[0] == "_describe-model":
        return worker_describe_model(*argv[1:4])
    raise SystemExit(f"error: unknown worker {argv[0]!r} (_build-model, _describe-model)")


if __name__ == "__main__":
    main()
