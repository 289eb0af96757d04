"""Reading an output folder back, for inspection and for training (docs/reading.md):

- store: `open_features` and `FeatureSet`, reads of one or several layers, whole or a segment;
- selection: layer names ("last", "all", lists) and time segments as frame ranges;
- dataset: `FeatureDataset`, a torch Dataset (torch is imported on first use);
- batches: `collate_features` (padding) and `LengthBucketSampler` (batches of similar length).

`lebench_cli.reading.store` and `lebench_cli.reading.batches` re-export these names.
"""

from .batches import FeatureBatch, LengthBucketSampler, collate_features
from .store import FeatureSet, open_features

__all__ = ["FeatureBatch", "FeatureDataset", "FeatureSet", "LengthBucketSampler", "collate_features",
           "open_features"]


def __getattr__(name):
    if name == "FeatureDataset":
        from .dataset import FeatureDataset

        return FeatureDataset
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
