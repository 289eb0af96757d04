"""A torch Dataset over an output folder: item i is (utterance id, features of one layer).

`import lebench_cli.dataset` does not import torch; the first use of `FeatureDataset` does.
Safe with DataLoader workers: each worker process opens its own shard handles.
"""

from __future__ import annotations

import numpy as np

from .reader import FeatureSet, open_features


class _FeatureDatasetMethods:
    """(utterance id, tensor) per stored utterance, in storage order: the frames of one layer
    [frames, width], or with pooled=True its stored utterance mean [width]."""

    def __init__(self, path_or_featureset, layer, pooled: bool = False, dtype: str = "float32"):
        """dtype: what items hold, whatever the stored dtype (float16 storage saves disk,
        not precision in training)."""
        if isinstance(path_or_featureset, FeatureSet):
            self.features = path_or_featureset
        else:
            self.features = open_features(path_or_featureset)
        self.layer = layer
        self.pooled = pooled
        self.dtype = np.dtype(dtype)
        if len(self.features):
            self._read(self.features.ids[0])  # an unknown layer fails here, not in a worker

    def __len__(self) -> int:
        return len(self.features)

    def __getitem__(self, index: int):
        import torch

        utt_id = self.features.ids[index]
        return utt_id, torch.from_numpy(self._read(utt_id))

    def _read(self, utt_id: str) -> np.ndarray:
        if self.pooled:
            return self.features.read_mean(utt_id, self.layer).astype(self.dtype)
        return self.features.read(utt_id, self.layer).astype(self.dtype)


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
