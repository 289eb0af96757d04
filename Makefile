# The two commands of the README: `make demo` (main job) and `make test`.
MODEL ?= LeBenchmark/wav2vec2-FR-7K-base
OUT ?= features

.PHONY: install demo test

install:
	bash scripts/install-env.sh

demo: install
	.venv/bin/lebench info "$(MODEL)"

test:
	bash scripts/run-tests.sh
