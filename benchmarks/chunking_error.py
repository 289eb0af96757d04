"""How far chunked features of a long recording are from one full-context pass.

`lebench extract` runs recordings longer than --chunk-seconds in overlapping windows
(docs/extract.md, "Long recordings"). This script extracts one generated recording through
the real command, windows and all, computes the same recording in one pass with the Encoder,
and prints, per layer, the difference relative to the largest full-context value: the
largest, the largest over frames at least one overlap away from any cut, and the median.

    python -m benchmarks.chunking_error --model path/to/checkpoint_best.pt
    python -m benchmarks.chunking_error --model M --seconds 7.3 --chunk-seconds 2 --overlap-seconds 0.6
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np

from lebench_cli.testing.audio import write_speechlike


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="any checkpoint or model folder lebench reads")
    parser.add_argument("--seconds", type=float, default=95.0, help="recording length (default 95)")
    parser.add_argument("--chunk-seconds", type=float, default=30.0)
    parser.add_argument("--overlap-seconds", type=float, default=5.0)
    parser.add_argument("--layers", default="cnn,last", help="lebench --layers syntax (default cnn,last)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    from lebench_cli.audio.loading import load_audio
    from lebench_cli.pipeline.windows import plan_windows
    from lebench_cli.model.encoder import Encoder
    from lebench_cli.pipeline.options import ExtractOptions
    from lebench_cli.pipeline.extract import run_extract
    from lebench_cli.layers import parse_layers
    from lebench_cli.model.models import load_checkpoint
    from lebench_cli.reading.store import open_features

    with tempfile.TemporaryDirectory() as work:
        audio = Path(work) / "recording.wav"
        write_speechlike(audio, args.seconds, np.random.default_rng(args.seed))
        out = Path(work) / "out"
        run_extract(ExtractOptions(
            inputs=[str(audio)], output=str(out), model=args.model, layers=args.layers, device="cpu",
            chunk_seconds=args.chunk_seconds, overlap_seconds=args.overlap_seconds, save_dtype="float32", workers=0,
        ))
        checkpoint = load_checkpoint(args.model)
        layers = parse_layers(args.layers, checkpoint.layers)
        waveform = load_audio(audio)
        (full,) = Encoder(checkpoint).encode([waveform], layers)
        windows = plan_windows(len(waveform), args.chunk_seconds, args.overlap_seconds)
        cuts = [window.first_frame + window.keep_from for window in windows[1:]]
        margin = int(args.overlap_seconds * 50)
        frames = np.arange(len(full[layers[0]]))
        far = np.all([np.abs(frames - cut) >= margin for cut in cuts], axis=0) if cuts else np.ones_like(frames, bool)
        print(f"model {args.model}; {args.seconds:g} s recording in {len(windows)} windows of "
              f"{(windows[0].end_sample - windows[0].start_sample) / 16000:.2f} s (--chunk-seconds "
              f"{args.chunk_seconds:g}, --overlap-seconds {args.overlap_seconds:g})")
        print("layer  max      far from cuts  median")
        with open_features(out) as store:
            (utt_id,) = store.ids
            for layer in layers:
                difference = np.abs(store.read(utt_id, layer) - full[layer]) / np.abs(full[layer]).max()
                per_frame = difference.max(axis=1)
                far_max = per_frame[far].max() if far.any() else float("nan")
                print(f"{str(layer):<6} {per_frame.max():<8.2g} {far_max:<14.2g} {np.median(difference):.2g}")


if __name__ == "__main__":
    main()
