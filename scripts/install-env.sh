#!/usr/bin/env bash
# Creates (or completes) the project's virtual environment: CPU torch, fairseq, lebench.
# Idempotent: a step whose result is already there is skipped, so reruns take seconds.
set -euo pipefail

VENV="${VENV:-.venv}"
PYTHON="${PYTHON:-python3}"
TORCH_SPEC="${TORCH_SPEC:-torch==2.13.0}"
FAIRSEQ_SPEC="${FAIRSEQ_SPEC:-fairseq-fixed==0.12.3.1}"
# fairseq's own requirements minus torchaudio: lebench never imports it, and the wheel pip
# picks for it does not load against a newer torch, which then breaks `import transformers`.
FAIRSEQ_DEPS=(cffi cython "hydra-core==1.3.2" "omegaconf==2.3.0" regex "sacrebleu>=1.4.12" bitarray scikit-learn packaging)

log() { printf 'install-env: %s\n' "$*" >&2; }

if [ ! -x "$VENV/bin/python" ]; then
  log "creating virtual environment in $VENV"
  "$PYTHON" -m venv "$VENV"
fi
PY="$VENV/bin/python"
PIP=("$PY" -m pip install --disable-pip-version-check -q)

"${PIP[@]}" --upgrade pip setuptools wheel

# Torch first and pinned: an unpinned requirement would pull the newest CUDA build (GBs).
if ! "$PY" -c 'import torch' 2>/dev/null; then
  log "installing $TORCH_SPEC"
  "${PIP[@]}" "$TORCH_SPEC"
fi

if ! "$PY" -c 'import fairseq' 2>/dev/null; then
  log "installing $FAIRSEQ_SPEC (builds from source, a few minutes)"
  "${PIP[@]}" numpy "${FAIRSEQ_DEPS[@]}"
  # No build isolation: fairseq's build requires torch, and an isolated build would fetch
  # the newest CUDA torch instead of using the one installed above.
  "${PIP[@]}" --no-build-isolation --no-deps "$FAIRSEQ_SPEC"
fi

log "installing lebench and its test requirements"
"${PIP[@]}" -e ".[test]"
"$PY" -c 'import fairseq, torch, lebench_cli' 
log "ready: $("$PY" -c 'import torch, fairseq, lebench_cli; print(f"torch {torch.__version__}, fairseq {fairseq.__version__}, lebench {lebench_cli.__version__}")')"
