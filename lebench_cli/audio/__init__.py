"""Audio in: finding sources (inputs), headers, decoding with the worker pool, loading and resampling."""
