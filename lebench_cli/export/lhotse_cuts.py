"""A lhotse CutSet per layer: DEST/layer_L/cuts.jsonl.gz, MonoCuts whose Features live in
DEST/layer_L/feats.h5 (lhotse's own `numpy_hdf5` storage, exact), so that lhotse reads them
without lebench: `cut.load_features()`, its samplers and datasets.

Each cut lasts frames x 0.02 s: a wav2vec2 frame sees 25 ms every 20 ms, and lhotse counts
round(duration / frame_shift) frames, so the audio's real duration would count one frame too
many. A cut has a Recording (the source audio) when the source file still exists and lasts
at least the cut; otherwise it is features-only. The cut names the channels the features come
from, as lebench.json records them: `--channel K` is a MonoCut on channel K, the down-mix of a
multi-channel recording a MultiCut on all its channels (custom "lebench_channel": "mix" says
which). Atomic per layer: feats-partial.h5 and cuts-partial.jsonl.gz are renamed at the end,
the old cuts.jsonl.gz removed first and the new one renamed last; a rerun leaves a layer whose
cuts.jsonl.gz exists and whose record matches the store as it is. Paths in the manifests are
absolute."""

from __future__ import annotations

import os
from pathlib import Path

from . import EntryFileMissing, ExportSummary, converted, export_per_layer, layer_folder, read_layer, remove_partial, require

from ..frames import FRAME_SECONDS as FRAME_SHIFT, SAMPLE_RATE


def check_dependencies() -> None:
    require("lhotse", "lhotse")


def check_ids(store, options, layers: list) -> None:
    """lhotse takes any string as a cut id."""


def export(store, layers: list, options, bar, record) -> ExportSummary:
    channel = stored_channel(store)

    def write(store, todo: list, destination: Path, bar) -> int:
        return _write_layers(store, todo, destination, options.dtype, channel, bar)
    return export_per_layer(store, layers, record, "cuts.jsonl.gz", f"dtype={options.dtype or 'stored'}", write, bar)


def stored_channel(store):
    """The channel the store's features come from (`extract --channel`), or None: the mean of
    every channel of the recording."""
    identity = store.metadata.get("identity")
    channel = identity.get("channel") if isinstance(identity, dict) else None
    return channel if isinstance(channel, int) and not isinstance(channel, bool) else None


def _write_layers(store, layers: list, destination: Path, dtype, channel, bar) -> int:
    from lhotse import CutSet
    from lhotse.features.io import NumpyHdf5Writer

    model = store.metadata.get("model", {}) if isinstance(store.metadata.get("model"), dict) else {}
    name = (model.get("hub_id") or "wav2vec2").split("/")[-1]
    outputs, without_audio, done = {}, 0, False
    try:
        for layer in layers:
            folder = destination / layer_folder(layer)
            folder.mkdir(parents=True, exist_ok=True)
            outputs[layer] = (NumpyHdf5Writer(folder / "feats-partial.h5"),
                              CutSet.open_writer(folder / "cuts-partial.jsonl.gz"), f"lebench-{name}-L{layer}")
        with bar:
            for row in store.utterances():
                recording = _recording(row)
                without_audio += recording is None
                for layer, (features_writer, cuts_writer, kind) in outputs.items():
                    array = exported_array(store, row["id"], layer, layers, dtype)
                    key = features_writer.write(row["id"], array)
                    features = _features(array, kind, folder=destination / layer_folder(layer), key=key,
                                         recording=recording)
                    cuts_writer.write(_cut(row["id"], features, recording, channel))
                bar.update()
        for features_writer, cuts_writer, _ in outputs.values():
            features_writer.close()
            cuts_writer.close()
        for layer in outputs:
            folder = destination / layer_folder(layer)
            (folder / "cuts.jsonl.gz").unlink(missing_ok=True)  # first: the layer is not done
            os.replace(folder / "feats-partial.h5", folder / "feats.h5")
            os.replace(folder / "cuts-partial.jsonl.gz", folder / "cuts.jsonl.gz")  # last: the layer is done
        done = True
    finally:
        for features_writer, cuts_writer, _ in outputs.values():
            features_writer.close()
            cuts_writer.close()
        if not done:
            remove_partial(destination / layer_folder(layer) / name for layer in outputs
                           for name in ("feats-partial.h5", "cuts-partial.jsonl.gz"))
    return without_audio


def exported_array(store, utt_id: str, layer, layers: list, dtype):
    """What the export writes into feats.h5 for ID."""
    return converted(read_layer(store, utt_id, layer), dtype)


def stored_arrays(destination: Path, key: str, other_keys):
    """(id, load) of every cut of KEY/cuts.jsonl.gz, read lazily; load() is lhotse's own
    cut.load_features()."""
    from lhotse import CutSet

    cuts = destination / key / "cuts.jsonl.gz"
    if not cuts.is_file():
        raise EntryFileMissing(f"{key}/cuts.jsonl.gz is missing")
    for cut in CutSet.from_jsonl_lazy(cuts):
        yield cut.id, cut.load_features


def _cut(utt_id: str, features, recording, channel):
    """A MonoCut on the channel the features come from, or a MultiCut on every channel of a
    multi-channel recording whose mean they are."""
    from lhotse import MonoCut, MultiCut

    custom = {"lebench_channel": "mix" if channel is None else channel}
    if channel is None and recording is not None and recording.num_channels > 1:
        channels = list(range(recording.num_channels))
        features.channels = channels
        return MultiCut(id=utt_id, start=0.0, duration=features.duration, channel=channels, features=features,
                        recording=recording, custom=custom)
    features.channels = channel or 0
    return MonoCut(id=utt_id, start=0.0, duration=features.duration, channel=channel or 0, features=features,
                   recording=recording, custom=custom)


def _features(array, kind: str, folder: Path, key: str, recording):
    from lhotse import Features

    return Features(type=kind, num_frames=array.shape[0], num_features=array.shape[1], frame_shift=FRAME_SHIFT,
                    sampling_rate=SAMPLE_RATE, start=0.0, duration=round(array.shape[0] * FRAME_SHIFT, 6),
                    storage_type="numpy_hdf5", storage_path=str(folder / "feats.h5"), storage_key=key,
                    recording_id=recording.id if recording is not None else None)


def _recording(row: dict):
    from lhotse import Recording

    source = row["source"]
    if not source or not os.path.isfile(source):
        return None
    try:
        recording = Recording.from_file(source, recording_id=row["id"])
    except Exception:  # a file lhotse's audio backends cannot read: features-only
        return None
    return recording if recording.duration + 1e-6 >= row["frames"] * FRAME_SHIFT else None
