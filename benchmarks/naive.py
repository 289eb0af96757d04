"""The naive loops lebench races in bench_extract: LeBenchmark's scripts as they are, one file at
a time in float32 (fairseq's model and extract_features, or transformers' Wav2Vec2Model on the
exported checkpoint), the chosen layers written as float16. Run by bench_extract as

    python -m benchmarks.naive METHOD CORPUS MODEL OUT LAYERS DEVICE DTYPE MAX_SECONDS SAVE THREADS RESULT_JSON
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

from .common import SAMPLE_RATE, audio_files


def worker_naive(method: str, corpus: str, model: str, out: str, layers_spec: str, device: str, dtype: str,
                 max_seconds: float, save: str, threads: int, result_json: str):
    started = time.monotonic()
    import soundfile
    import torch
    import torch.nn.functional as F

    if threads:
        torch.set_num_threads(threads)
    torch_dtype = getattr(torch, dtype)
    from lebench_cli.layers import parse_layers

    if method == "fairseq":
        run, num_layers, normalize = fairseq_runner(model, device, torch_dtype)
    else:
        run, num_layers, normalize = transformers_runner(model, device, torch_dtype)
    layers = parse_layers(layers_spec, num_layers)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    loaded = time.monotonic()

    corpus_path = Path(corpus)
    Path(out).mkdir(parents=True, exist_ok=True)
    store = None
    if save == "h5":
        import h5py

        store = h5py.File(Path(out) / "features.h5", "w")
    piece_samples = int(max_seconds * SAMPLE_RATE) // 320 * 320 if max_seconds > 0 else 0
    audio_seconds = 0.0
    files = 0
    for path in audio_files(corpus_path):
        wav, rate = soundfile.read(str(path), dtype="float32")
        if wav.ndim > 1:
            wav = wav.mean(axis=1)
        if rate != SAMPLE_RATE:
            import soxr

            wav = soxr.resample(wav, rate, SAMPLE_RATE, quality="HQ").astype(np.float32)
        audio_seconds += len(wav) / SAMPLE_RATE
        pieces = [wav]
        if piece_samples and len(wav) > piece_samples:
            cuts = list(range(piece_samples, len(wav), piece_samples))
            if len(wav) - cuts[-1] < 400:  # a last sliver without a frame joins the piece before
                cuts.pop()
            pieces = np.split(wav, cuts)
        outputs = []
        for piece in pieces:
            source = torch.from_numpy(np.ascontiguousarray(piece)).to(device)
            with torch.no_grad():
                if normalize:
                    source = F.layer_norm(source, source.shape)
                outputs.append(run(source.to(torch_dtype), layers))
        utt_id = path.relative_to(corpus_path).with_suffix("").as_posix()
        for layer in layers:
            value = torch.cat([o[layer] for o in outputs]).float().cpu().numpy().astype(np.float16)
            if store is not None:
                store.create_dataset(f"{utt_id}/{layer}", data=value)
            else:
                target = Path(out) / f"{utt_id}.{layer}.npy"
                target.parent.mkdir(parents=True, exist_ok=True)
                np.save(target, value)
        files += 1
    if store is not None:
        store.close()
    finished = time.monotonic()
    result = {"files": files, "audio_s": audio_seconds, "startup_s": loaded - started, "loop_s": finished - loaded,
              "torch_threads": torch.get_num_threads(), "layers": [str(layer) for layer in layers]}
    if device.startswith("cuda"):
        result["torch_max_allocated_mb"] = torch.cuda.max_memory_allocated() / 1024**2
    Path(result_json).write_text(json.dumps(result))


def fairseq_runner(model_path: str, device: str, dtype):
    """LeBenchmark's loop: fairseq's own model and extract_features, one utterance."""
    import logging
    import warnings

    import torch

    logging.disable(logging.WARNING)
    from fairseq.models.wav2vec.wav2vec2 import Wav2Vec2Config, Wav2Vec2Model
    from omegaconf import OmegaConf

    # fairseq's checkpoint_utils fails on torch >= 2.6 (weights_only); this file is our own.
    state = torch.load(model_path, map_location="cpu", weights_only=False)
    cfg = state["cfg"]
    model_cfg = OmegaConf.to_container(cfg["model"]) if not isinstance(cfg["model"], dict) else dict(cfg["model"])
    model_cfg.pop("_name", None)
    fields = set(Wav2Vec2Config.__dataclass_fields__)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = Wav2Vec2Model.build_model(Wav2Vec2Config(**{k: v for k, v in model_cfg.items() if k in fields}))
    model.load_state_dict(state["model"], strict=True)
    del state
    model = model.eval().to(device=device, dtype=dtype)
    num_layers = len(model.encoder.layers)
    normalize = bool(cfg["task"].get("normalize", False))
    captured = {}
    # Hidden state 0 (the transformer input) is not in extract_features' result: catch it.
    model.encoder.layers[0].register_forward_pre_hook(lambda module, inputs: captured.__setitem__(0, inputs[0]))

    def run(source, layers):
        result = model.extract_features(source[None], None, mask=False)
        states = {}
        for layer in layers:
            if layer == "cnn":
                states[layer] = result["features"][0]
            elif layer == num_layers:
                states[layer] = result["x"][0]
            elif layer == 0:
                states[layer] = captured[0][: result["x"].shape[1], 0]
            else:
                states[layer] = result["layer_results"][layer - 1][0][:, 0]
        return states

    return run, num_layers, normalize


def transformers_runner(folder: str, device: str, dtype):
    from transformers import Wav2Vec2FeatureExtractor, Wav2Vec2Model
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    try:
        model = Wav2Vec2Model.from_pretrained(folder, dtype=dtype)
    except TypeError:  # transformers 4.x
        model = Wav2Vec2Model.from_pretrained(folder, torch_dtype=dtype)
    model = model.eval().to(device)
    extractor = Wav2Vec2FeatureExtractor.from_pretrained(folder)
    num_layers = model.config.num_hidden_layers

    def run(source, layers):
        # The feature extractor normalises (do_normalize) as users call it; the generic
        # loop's F.layer_norm is skipped for this runner (normalize=False below).
        values = extractor(source.float().cpu().numpy(), sampling_rate=SAMPLE_RATE, return_tensors="pt").input_values
        output = model(values.to(device=device, dtype=dtype), output_hidden_states=True)
        states = {}
        for layer in layers:
            if layer == "cnn":
                states[layer] = output.extract_features[0]
            elif layer == num_layers:
                states[layer] = output.last_hidden_state[0]  # 5.x hidden_states[L] lacks the final LayerNorm
            else:
                states[layer] = output.hidden_states[layer][0]
        return states

    return run, num_layers, False


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 11:
        raise SystemExit(__doc__.strip().splitlines()[-1].strip())
    method, corpus, model, out, layers, device, dtype, max_seconds, save, threads, result = argv
    worker_naive(method, corpus, model, out, layers, device, dtype, float(max_seconds), save, int(threads), result)


if __name__ == "__main__":
    main()
