"""What tests, benchmarks and `make demo-offline` build to run lebench without network or
data: random wav2vec2 checkpoints in every format lebench reads (`checkpoints`), speech-like
audio (`audio`) and small corpora of it (`corpora`). Their features mean nothing.

Importing this package costs nothing: numpy, soundfile, torch and fairseq load in its
submodules or inside their functions."""
