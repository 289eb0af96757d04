"""Extractions of a list of AudioSource (segments, tar members, table rows, pipes) through the
library pipeline, without the corpus readers, and what they stored."""

import json

import numpy as np
import soundfile as sf

from lebench_cli.pipeline.extract import Extraction
from lebench_cli.pipeline.options import ExtractOptions
from lebench_cli.reading.store import open_features


def extract_sources(sources, out, checkpoint, **options):
    """The ExtractSummary of extracting `sources` into `out` (CPU, no decoding workers, one
    utterance per batch: a batch of one and of three may differ in the last bit)."""
    settings = dict(device="cpu", workers=0, batch_seconds=1.0, layers="all")
    settings.update(options)
    return Extraction(ExtractOptions(inputs=[], output=str(out), model=str(checkpoint), **settings),
                      sources=list(sources)).run()


def stored_features(out) -> dict:
    """{id: [layers, frames, width] array} of every stored utterance."""
    with open_features(out) as store:
        return {utt_id: store.read(utt_id, "all") for utt_id in store.ids}


def failures(out) -> dict:
    """{id: reason} of the run's failure records."""
    path = out / "failures-1of1.jsonl"
    if not path.exists():
        return {}
    return {entry["id"]: entry["reason"] for entry in map(json.loads, path.read_text().splitlines())}


def write_recording(path, seconds: float, rate: int, channels: int = 1, seed: int = 0, subtype="PCM_16"):
    """A seeded noisy tone, written at `rate`; returns the samples as written (int16 for PCM_16)."""
    from lebench_cli.testing.audio import tone

    data = (tone(seconds, rate, channels, seed) * 32767).astype(np.int16)
    sf.write(path, data, rate, subtype=subtype)
    return data


def write_cut(path, data, rate: int, start: float, end, subtype="PCM_16"):
    """Frames round(start x rate) to round(end x rate) of `data` as a file of their own."""
    last = len(data) if end is None else round(end * rate)
    sf.write(path, data[round(start * rate): last], rate, subtype=subtype)
    return path
