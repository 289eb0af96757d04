# The two commands of the README: `make demo` (main job) and `make test`.
MODEL ?= LeBenchmark/wav2vec2-FR-7K-base
OUT ?= features
LAYERS ?= all,cnn
# demo-offline: a checkpoint with random weights (features that mean nothing), no network.
RANDOM_MODEL ?= random-model/checkpoint_best.pt

.PHONY: install demo demo-offline test

install:
	bash scripts/install-env.sh

demo: install
	.venv/bin/lebench extract samples -o "$(OUT)" --model "$(MODEL)" --layers "$(LAYERS)" || { \
	  status=$$?; \
	  echo "make demo: no model at hand or no network? make demo-offline runs the demo with random weights," \
	    "or pass MODEL=/path/to/checkpoint_best.pt" >&2; \
	  exit $$status; }
	.venv/bin/lebench ls "$(OUT)" --header
	@echo "make demo: done; lebench is .venv/bin/lebench (or lebench after source .venv/bin/activate)" >&2

demo-offline: install
	test -f "$(RANDOM_MODEL)" || .venv/bin/python scripts/make-random-checkpoint.py "$(RANDOM_MODEL)"
	$(MAKE) --no-print-directory demo MODEL="$(RANDOM_MODEL)" OUT=features-random

test:
	bash scripts/run-tests.sh
