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
    "Checkpoint": ("model.checkpoint", "Checkpoint"),
    "Encoder": ("model.encoder", "Encoder"),
    "load_checkpoint": ("model.models", "load_checkpoint"),
    "open_features": ("reading.store", "open_features"),
    "FeatureDataset": ("reading.dataset", "FeatureDataset"),
    "FeatureBatch": ("reading.batches", "FeatureBatch"),
    "LengthBucketSampler": ("reading.batches", "LengthBucketSampler"),
    "collate_features": ("reading.batches", "collate_features"),
    "ExtractOptions": ("pipeline.options", "ExtractOptions"),
    "run_extract": ("pipeline.extract", "run_extract"),
    "LebenchError": ("errors", "LebenchError"),
    "StoreIntegrityError": ("errors", "StoreIntegrityError"),
    "features_of": ("pipeline.in_memory", "features_of"),
    "iter_features": ("pipeline.in_memory", "iter_features"),
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
