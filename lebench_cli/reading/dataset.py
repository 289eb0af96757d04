"""A torch Dataset over an output folder: item i is (utterance id, features of one or several layers).

`import lebench_cli.reading.dataset` does not import torch; the first use of `FeatureDataset`
does. Safe with DataLoader workers: each worker process opens its own shard handles.
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from .batches import FeatureBatch, collate_features
from .selection import Layers
from .store import FeatureSet, open_features


class _FeatureDatasetMethods:
    """(utterance id, tensor) per utterance, in storage order (or the order of `ids`):
    the frames of one layer [frames, width], of a list of layers or "all" [layers, frames, width];
    with pooled=True the stored utterance means, [width] or [layers, width]. With metadata=True
    each item is (id, tensor, metadata dict): the utterance's speaker, text... (store.info).

    `collate_fn=dataset.collate` pads items into a FeatureBatch; `LengthBucketSampler(dataset,
    max_frames=...)` groups items of similar length."""

    def __init__(self, store, layers: Optional[Layers] = None, pooled: bool = False, dtype: str = "float32",
                 ids: Optional[Sequence[str]] = None, *, layer: Optional[Layers] = None,
                 metadata: bool = False):
        """store: an output folder or an open FeatureSet. layers: as FeatureSet.read takes them
        (`layer=` is the same, by its earlier name). dtype: what items hold, whatever the stored
        dtype (float16 storage saves disk, not precision in training). ids: the utterances to
        serve, in this order (default: all)."""
        if (layers is None) == (layer is None):
            raise TypeError("FeatureDataset takes the layers to read: give layers= (or layer=), once")
        layers = layer if layers is None else layers
        self.features = store if isinstance(store, FeatureSet) else open_features(store)
        self.layers = layers
        self.pooled = pooled
        self.metadata = bool(metadata)
        self.dtype = np.dtype(dtype)
        if ids is None:
            self.ids, self.lengths = list(self.features.ids), self.features.frame_counts()
        else:  # an unknown id fails here
            self.ids = list(ids)
            self.lengths = np.array([self.features.info(utt_id)["frames"] for utt_id in self.ids],
                                    dtype=np.int64)
        if self.ids:
            self._read(self.ids[0])  # an unknown layer fails here, not in a worker

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int):
        import torch

        utt_id = self.ids[index]
        if self.metadata:
            return utt_id, torch.from_numpy(self._read(utt_id)), self.features.metadata_of(utt_id)
        return utt_id, torch.from_numpy(self._read(utt_id))

    def collate(self, items: list) -> FeatureBatch:
        """Items padded with zeros to the longest: see collate_features. The padded features
        are made in the store's read blocks (in a DataLoader worker: shared, sent without a copy)."""
        return collate_features(items, pooled=self.pooled, empty=None if self.pooled else self._empty_batch)

    def _empty_batch(self, shape: tuple, dtype):
        import torch

        if dtype != torch.from_numpy(np.empty(0, self.dtype)).dtype:  # items converted since: their dtype
            return torch.zeros(shape, dtype=dtype)
        return torch.from_numpy(self.features._buffers.empty(shape, self.dtype))

    def _read(self, utt_id: str) -> np.ndarray:
        if self.pooled:
            values = self.features.read_mean(utt_id, self.layers)
        else:
            values = self.features.read(utt_id, self.layers)
        if values.dtype == self.dtype:
            return values
        converted = self.features._buffers.empty(values.shape, self.dtype)  # a block read reuses
        np.copyto(converted, values, casting="unsafe")
        return converted


def _feature_dataset_class():
    import torch

    cls = type("FeatureDataset", (_FeatureDatasetMethods, torch.utils.data.Dataset),
               {"__module__": __name__, "__doc__": _FeatureDatasetMethods.__doc__})
    globals()["FeatureDataset"] = cls  # pickling (spawned workers) finds it here
    return cls


def __getattr__(name):
    if name == "FeatureDataset":
        return _feature_dataset_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
