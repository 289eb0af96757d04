"""`open_features` and `FeatureSet`, where they have always been imported from; the reading code
lives in lebench_cli/reading/."""

from .reading.store import FeatureSet, open_features

__all__ = ["FeatureSet", "open_features"]
