"""A lhotse CutSet per layer: DEST/layer_L/cuts.jsonl.gz, MonoCuts whose Features live in
DEST/layer_L/feats.h5 (lhotse's own `numpy_hdf5` storage, exact), so that lhotse reads them
without lebench: `cut.load_features()`, its samplers and datasets.

Each cut lasts frames x 0.02 s: a wav2vec2 frame sees 25 ms every 20 ms, and lhotse counts
round(duration / frame_shift) frames, so the audio's real duration would count one frame too
many. A cut has a Recording (the source audio) when the source file still exists and lasts
at least the cut; otherwise it is features-only. The cut names the channels the features come
from, as lebench.json records them: `--channel K` is a MonoCut on channel K, the down-mix of a
multi-channel recording a MultiCut on all its channels (custom "lebench_channel": "mix" says
which). Each cut holds one SupervisionSegment over the whole cut, from the utterance's metadata:
text, speaker, language, and the other fields in its `custom`; a segment of a recording is a cut
at its `start` in that recording, named by the metadata's `recording`. Atomic per layer: feats-partial.h5 and cuts-partial.jsonl.gz are renamed at the end,
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
                start = _start(row)
                recording = _recording(row, start)
                without_audio += recording is None
                for layer, (features_writer, cuts_writer, kind) in outputs.items():
                    array = exported_array(store, row["id"], layer, layers, dtype)
                    key = features_writer.write(row["id"], array)
                    features = _features(array, kind, folder=destination / layer_folder(layer), key=key,
                                         recording_id=_recording_id(row, recording), start=start)
                    cuts_writer.write(_cut(row, features, recording, channel))
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


def _cut(row: dict, features, recording, channel):
    """A MonoCut on the channel the features come from, or a MultiCut on every channel of a
    multi-channel recording whose mean they are; its one supervision spans it."""
    from lhotse import MonoCut, MultiCut

    custom = {"lebench_channel": "mix" if channel is None else channel}
    start, utt_id = features.start, row["id"]
    if channel is None and recording is not None and recording.num_channels > 1:
        channels = list(range(recording.num_channels))
        features.channels = channels
        return MultiCut(id=utt_id, start=start, duration=features.duration, channel=channels, features=features,
                        recording=recording, custom=custom,
                        supervisions=[_supervision(row, features, channels)])
    features.channels = channel or 0
    return MonoCut(id=utt_id, start=start, duration=features.duration, channel=channel or 0, features=features,
                   recording=recording, custom=custom, supervisions=[_supervision(row, features, channel or 0)])


# The metadata fields a SupervisionSegment has its own fields for; the others go to its custom.
_SUPERVISION_FIELDS = ("text", "speaker", "language")


def _supervision(row: dict, features, channel):
    """Over the whole cut (start 0: relative to the cut), with the utterance's metadata."""
    from lhotse import SupervisionSegment

    metadata = row["metadata"]
    named = {name: str(metadata[name]) for name in _SUPERVISION_FIELDS if name in metadata}
    custom = {name: value for name, value in metadata.items() if name not in _SUPERVISION_FIELDS}
    return SupervisionSegment(id=row["id"], recording_id=features.recording_id, start=0.0,
                              duration=features.duration, channel=channel, custom=custom or None, **named)


def _features(array, kind: str, folder: Path, key: str, recording_id: str, start: float):
    from lhotse import Features

    return Features(type=kind, num_frames=array.shape[0], num_features=array.shape[1], frame_shift=FRAME_SHIFT,
                    sampling_rate=SAMPLE_RATE, start=start, duration=round(array.shape[0] * FRAME_SHIFT, 6),
                    storage_type="numpy_hdf5", storage_path=str(folder / "feats.h5"), storage_key=key,
                    recording_id=recording_id)


def _start(row: dict) -> float:
    """Where the utterance starts in its recording: a segment's start, else 0."""
    start = row["metadata"].get("start", 0.0)
    return float(start) if isinstance(start, (int, float)) and start >= 0 else 0.0


def _recording_id(row: dict, recording) -> str:
    if recording is not None:
        return recording.id
    named = row["metadata"].get("recording")
    return str(named) if named not in (None, "") and "start" in row["metadata"] else row["id"]


def _recording(row: dict, start: float):
    """The source audio as a lhotse Recording, when it exists and holds the cut; a segment's
    recording is named as its metadata names it."""
    from lhotse import Recording

    source = row["source"]
    if "start" in row["metadata"]:  # a segment's source key is PATH#START,END (docs/format.md)
        source = source.rpartition("#")[0]
    if not source or not os.path.isfile(source):
        return None
    try:
        recording = Recording.from_file(source, recording_id=_recording_id(row, None))
    except Exception:  # a file lhotse's audio backends cannot read: features-only
        return None
    return recording if recording.duration + 1e-6 >= start + row["frames"] * FRAME_SHIFT else None
