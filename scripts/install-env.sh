#!/usr/bin/env bash
# Creates (or completes) the project's virtual environment: torch, fairseq, lebench.
# A stamp in the venv records what it was built from (the packaging files and the specs
# below): when they have not changed, the script does nothing, without network, in well
# under a second. Otherwise a step whose result is already there is skipped.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV="${VENV:-.venv}"
PYTHON="${PYTHON:-python3}"
TORCH_SPEC="${TORCH_SPEC:-torch==2.13.0}"
# Empty: torch from PyPI, which for Linux x86-64 is the CUDA build (several GB of nvidia-*
# wheels). https://download.pytorch.org/whl/cpu gives the CPU build (docs/install.md).
TORCH_INDEX_URL="${TORCH_INDEX_URL:-}"
FAIRSEQ_SPEC="${FAIRSEQ_SPEC:-fairseq-fixed==0.12.3.1}"
# fairseq's own requirements minus torchaudio: lebench never imports it, and the wheel pip
# picks for it does not load against a newer torch, which then breaks `import transformers`.
FAIRSEQ_DEPS=(cffi cython "hydra-core==1.3.2" "omegaconf==2.3.0" regex "sacrebleu>=1.4.12" bitarray scikit-learn packaging)
STAMP="$VENV/.lebench-install-stamp"

log() { printf 'install-env: %s\n' "$*" >&2; }

stamp_key() {
  { cat setup.cfg setup.py scripts/install-env.sh
    printf '%s\n' "$TORCH_SPEC" "$TORCH_INDEX_URL" "$FAIRSEQ_SPEC" "${FAIRSEQ_DEPS[@]}"
  } | { sha256sum 2>/dev/null || shasum -a 256; } | cut -d' ' -f1
}

KEY="$(stamp_key)"
if [ -x "$VENV/bin/python" ] && [ "$(cat "$STAMP" 2>/dev/null)" = "$KEY" ]; then
  log "up to date ($VENV; delete $STAMP to reinstall)"
  exit 0
fi
rm -f "$STAMP"

if [ ! -x "$VENV/bin/python" ]; then
  if ! version="$("$PYTHON" -c 'import platform; print(platform.python_version())' 2>/dev/null)"; then
    log "cannot run $PYTHON: lebench needs Python >= 3.10; pick one with PYTHON=python3.11"
    exit 1
  fi
  if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 10))' 2>/dev/null; then
    log "$PYTHON is Python $version: lebench needs Python >= 3.10 (torch 2.13); pick one with PYTHON=python3.11"
    exit 1
  fi
  log "creating virtual environment in $VENV"
  "$PYTHON" -m venv "$VENV"
fi
PY="$VENV/bin/python"
# --no-warn-conflicts: fairseq-fixed declares torchaudio, left out on purpose (above), and
# pip would print a red "ERROR: pip's dependency resolver ..." about it whenever it installs
# something fairseq depends on;
# `pip check` at the end reports any other conflict.
PIP=("$PY" -m pip install --disable-pip-version-check --no-warn-conflicts -q)

"${PIP[@]}" --upgrade pip setuptools wheel

# Torch first and pinned: an unpinned requirement would pull the newest torch whatever its size.
if ! "$PY" -c 'import torch' 2>/dev/null; then
  if [ -n "$TORCH_INDEX_URL" ]; then
    log "installing $TORCH_SPEC from $TORCH_INDEX_URL"
    "${PIP[@]}" --index-url "$TORCH_INDEX_URL" "$TORCH_SPEC"
  else
    log "installing $TORCH_SPEC from PyPI (on Linux x86-64: the CUDA build, several GB; TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu for the CPU build)"
    "${PIP[@]}" "$TORCH_SPEC"
  fi
fi

if ! "$PY" -c 'import fairseq' >/dev/null 2>&1; then
  log "installing $FAIRSEQ_SPEC (builds from source, a few minutes)"
  "${PIP[@]}" numpy "${FAIRSEQ_DEPS[@]}"
  # No build isolation: fairseq's build requires torch, and an isolated build would fetch
  # the newest CUDA torch instead of using the one installed above.
  "${PIP[@]}" --no-build-isolation --no-deps "$FAIRSEQ_SPEC"
fi

log "installing lebench and its test requirements"
# setuptools' "Editable installation ... be careful with folders named like your package"
# note, which pip forwards as a warning: informational only.
PYTHONWARNINGS="ignore:Editable installation" "${PIP[@]}" -e ".[test]"

conflicts="$("$PY" -m pip check --disable-pip-version-check 2>&1 | grep -v -e '^fairseq-fixed .* requires torchaudio' -e '^No broken requirements' || true)"
if [ -n "$conflicts" ]; then
  log "pip check reports (besides fairseq-fixed's torchaudio, left out on purpose):"
  printf '%s\n' "$conflicts" >&2
fi

# lebench's own quiet import of fairseq: a bare `import fairseq` logs an INFO line about
# tensorboardX, which lebench never uses.
log "ready: $("$PY" -c 'import torch, lebench_cli
from lebench_cli.model.conversion import import_fairseq_wav2vec2
import_fairseq_wav2vec2()
import fairseq
print(f"torch {torch.__version__}, fairseq {fairseq.__version__}, lebench {lebench_cli.__version__}")')"
printf '%s\n' "$KEY" > "$STAMP"
