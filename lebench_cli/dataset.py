"""`FeatureDataset`, `collate_features` and `LengthBucketSampler`, where users import them from;
the code lives in lebench_cli/reading/. Importing this module does not import torch."""

from .reading.batches import FeatureBatch, LengthBucketSampler, collate_features

__all__ = ["FeatureBatch", "FeatureDataset", "LengthBucketSampler", "collate_features"]


def __getattr__(name):
    if name == "FeatureDataset":
        from .reading.dataset import FeatureDataset

        return FeatureDataset
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
