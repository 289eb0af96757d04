"""lebench: per-layer wav2vec2 features from LeBenchmark's French speech models.

Importing the package is cheap: torch and fairseq load only when a model is used."""

__version__ = "0.1.0"

__all__ = [
    "Checkpoint",
    "Encoder",
    "ExtractOptions",
    "FeatureBatch",
    "FeatureDataset",
    "LengthBucketSampler",
    "LebenchError",
    "StoreIntegrityError",
    "features_of",
    "iter_features",
    "load_checkpoint",
    "open_features",
    "run_extract",
    "collate_features",
    "__version__",
]

_LAZY = {
    "Checkpoint": ("checkpoints", "Checkpoint"),
    "Encoder": ("encoder", "Encoder"),
    "load_checkpoint": ("models", "load_checkpoint"),
    "open_features": ("reader", "open_features"),
    "FeatureDataset": ("dataset", "FeatureDataset"),
    "FeatureBatch": ("dataset", "FeatureBatch"),
    "LengthBucketSampler": ("dataset", "LengthBucketSampler"),
    "collate_features": ("dataset", "collate_features"),
    "ExtractOptions": ("extract", "ExtractOptions"),
    "run_extract": ("extract", "run_extract"),
    "LebenchError": ("errors", "LebenchError"),
    "StoreIntegrityError": ("errors", "StoreIntegrityError"),
    "features_of": ("in_memory", "features_of"),
    "iter_features": ("in_memory", "iter_features"),
}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        module, attribute = _LAZY[name]
        return getattr(importlib.import_module(f"{__name__}.{module}"), attribute)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    # The lazy names are not module globals until first used: list them too.
    return sorted(set(globals()) | set(__all__))
