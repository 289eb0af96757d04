"""Corpus manifests as inputs: one module per form (Kaldi data dirs, SpeechBrain CSV/JSON,
lhotse manifests, HuggingFace tables, tar shards, id lists and Common Voice tables), each
turning its files into `AudioSource`s whose ids are the manifest's own. `audio/inputs.py`
detects the form and dispatches here."""
