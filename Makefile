# The two commands of the README: `make demo` (main job) and `make test`.
MODEL ?= LeBenchmark/wav2vec2-FR-7K-base
OUT ?= features
LAYERS ?= all,cnn

.PHONY: install demo test

install:
	bash scripts/install-env.sh

demo: install
	.venv/bin/lebench extract samples -o "$(OUT)" --model "$(MODEL)" --layers "$(LAYERS)"
	.venv/bin/lebench ls "$(OUT)" --header

test:
	bash scripts/run-tests.sh
