"""Helpers only the tests use: stores written directly, a fake Hugging Face hub and its
cache, mutated audio files, the scale-out set-up, hostile pickles, signal set-up. Tests import
these and lebench_cli.testing (checkpoints, audio, corpora), never another test module."""
