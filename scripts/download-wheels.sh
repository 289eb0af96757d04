#!/usr/bin/env bash
# Collects, as wheels in one folder, everything lebench needs at run time except torch, for a
# machine without network that already has torch (a GPU node, say). Run it where there is network:
#   bash scripts/download-wheels.sh DIR                        # for this machine's Python
#   PYTHON_VERSION=3.12 bash scripts/download-wheels.sh DIR    # for another CPython, x86-64 manylinux
#   ONLY="fairseq-fixed hydra-core" bash scripts/download-wheels.sh DIR  # just these, no dependencies
# then on the target, in the environment that has torch:
#   python -m pip install --no-index --no-deps DIR/*.whl
# Three wheels are built here rather than downloaded, all pure Python, so they suit any Python 3:
# lebench itself; antlr4-python3-runtime (omegaconf's dependency, published as source only); and
# fairseq-fixed (source only, and its build needs torch): it is built without its compiled
# helpers, which only fairseq's training and decoding code loads, never its wav2vec2 model.
# torch, torchaudio (lebench never imports it), triton and nvidia-* are never collected.
# Rerunning into the same DIR reuses what is there; lebench's wheel is rebuilt each time.
set -euo pipefail

PYTHON="${PYTHON:-python3}"
PYTHON_VERSION="${PYTHON_VERSION:-}"
TARGET_GLIBC="${TARGET_GLIBC:-2.28}"   # with PYTHON_VERSION: newest glibc the wheels may need
ONLY="${ONLY:-}"
FAIRSEQ_SPEC="${FAIRSEQ_SPEC:-fairseq-fixed==0.12.3.1}"
ANTLR_SPEC="${ANTLR_SPEC:-antlr4-python3-runtime==4.9.3}"   # omegaconf 2.3 needs 4.9.*
# fairseq's run-time requirements as in install-env.sh (minus cython, needed only to build it);
# numpy and tqdm, which fairseq needs too, come with lebench's own requirements.
FAIRSEQ_DEPS=(cffi "hydra-core==1.3.2" "omegaconf==2.3.0" regex "sacrebleu>=1.4.12" bitarray scikit-learn packaging)

log() { printf 'download-wheels: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }
# pip's normalised project name: "Hydra_Core" and "hydra-core" are the same project.
canon() { printf '%s' "$1" | tr 'A-Z_.' 'a-z--'; }
name_of() { local spec="${1%%[<>=!~;\[ ]*}"; canon "$spec"; }
is_excluded() { case "$(name_of "$1")" in torch | torchaudio | triton | nvidia-*) return 0 ;; esac; return 1; }

[ $# -eq 1 ] || die "usage: [PYTHON_VERSION=3.X] [ONLY=\"name ...\"] bash $0 DIR"
for name in $ONLY; do
  is_excluded "$name" && die "$name is never collected: the target has its own torch"
done
mkdir -p "$1"
DIR="$(cd "$1" && pwd)"
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT

DOWNLOAD=("$PYTHON" -m pip download --disable-pip-version-check -q --only-binary=:all: -d "$DIR" --find-links "$DIR")
if [ -n "$PYTHON_VERSION" ]; then
  # pip matches platform tags exactly, so every manylinux level up to TARGET_GLIBC is listed.
  case "$TARGET_GLIBC" in 2.[0-9] | 2.[0-9][0-9]) ;; *) die "TARGET_GLIBC must read 2.N, not $TARGET_GLIBC" ;; esac
  DOWNLOAD+=(--python-version "$PYTHON_VERSION" --implementation cp)
  for ((n = ${TARGET_GLIBC#*.}; n >= 5; n--)); do DOWNLOAD+=(--platform "manylinux_2_${n}_x86_64"); done
  DOWNLOAD+=(--platform manylinux2014_x86_64 --platform manylinux1_x86_64)
  TARGET="CPython $PYTHON_VERSION, x86-64 Linux with glibc >= $TARGET_GLIBC"
else
  TARGET="$("$PYTHON" -c 'import platform, sys; print(f"{platform.python_implementation()} {sys.version_info[0]}.{sys.version_info[1]}, {platform.system()} {platform.machine()}")')"
fi
log "collecting wheels for $TARGET into $DIR"

# The three local builds use a scratch environment with current setuptools and wheel, and no
# build isolation (an isolated fairseq build would fetch torch, GBs of it).
log "preparing a scratch build environment"
"$PYTHON" -m venv "$WORK/build"
BPY="$WORK/build/bin/python"
"$BPY" -m pip install --disable-pip-version-check -q --upgrade pip setuptools wheel
# No cache: pip would hand back a wheel it once built differently (fairseq with its helpers).
BUILD=("$BPY" -m pip wheel --disable-pip-version-check -q --no-cache-dir --no-deps --no-build-isolation)

# True if DIR already has the pure-Python wheel of SPEC, when SPEC pins one version (NAME==VERSION).
have_wheel() {
  local spec="$1" version
  case "$spec" in *==*) version="${spec##*==}" ;; *) return 1 ;; esac
  [ -e "$DIR/$(name_of "$spec" | tr - _)-$version-py3-none-any.whl" ]
}

build_lebench() {
  # Built from a copy of the packaging files, so that the checkout gets no build/ or egg-info.
  log "building lebench's wheel from $ROOT"
  local src="$WORK/lebench-src" f
  mkdir -p "$src"
  for f in setup.py setup.cfg pyproject.toml MANIFEST.in README.md LICENSE LICENSE.txt; do
    if [ -e "$ROOT/$f" ]; then cp "$ROOT/$f" "$src/"; fi
  done
  cp -r "$ROOT/lebench_cli" "$src/"
  find "$src" -name __pycache__ -prune -exec rm -rf {} +
  "${BUILD[@]}" -w "$WORK/lebench-wheel" "$src"
}

keep_lebench() {
  rm -f "$DIR"/lebench-*.whl
  cp "$WORK"/lebench-wheel/lebench-*.whl "$DIR/"
}

build_antlr() {
  if have_wheel "$ANTLR_SPEC"; then log "have $ANTLR_SPEC"; return; fi
  log "building $ANTLR_SPEC (published as source only; pure Python)"
  "${BUILD[@]}" --no-binary=:all: -w "$DIR" "$ANTLR_SPEC"
}

build_fairseq() {
  if have_wheel "$FAIRSEQ_SPEC"; then log "have $FAIRSEQ_SPEC"; return; fi
  log "building $FAIRSEQ_SPEC (published as source only) without its compiled helpers"
  # fairseq's setup.py imports torch.utils.cpp_extension at the top, for the helpers only; with
  # READTHEDOCS set it drops them, so this stand-in is all it needs of torch.
  local stub="$WORK/torch-stub"
  mkdir -p "$stub/torch/utils"
  : >"$stub/torch/__init__.py"
  : >"$stub/torch/utils/__init__.py"
  cat >"$stub/torch/utils/cpp_extension.py" <<'EOF'
from setuptools import Extension


def CppExtension(name, sources, *args, **kwargs):
    return Extension(name, sources)


BuildExtension = None
EOF
  PYTHONPATH="$stub" READTHEDOCS=1 "${BUILD[@]}" --no-binary=:all: -w "$DIR" "$FAIRSEQ_SPEC"
  compgen -G "$DIR/$(name_of "$FAIRSEQ_SPEC" | tr - _)-*-py3-none-any.whl" >/dev/null ||
    die "the $FAIRSEQ_SPEC wheel built is not pure Python"
}

build_lebench
# lebench's install_requires, read from the wheel just built (extras, i.e. the tests', left out).
requires="$("$BPY" - "$WORK"/lebench-wheel/lebench-*.whl <<'EOF'
import email, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as wheel:
    name = next(n for n in wheel.namelist() if n.endswith(".dist-info/METADATA"))
    metadata = email.message_from_bytes(wheel.read(name))
for requirement in metadata.get_all("Requires-Dist") or []:
    if "extra ==" not in requirement:
        print(requirement)
EOF
)"
REQS=()
while IFS= read -r spec; do
  if [ -n "$spec" ] && ! is_excluded "$spec"; then REQS+=("$spec"); fi
done < <(printf '%s\n' "$requires" "${FAIRSEQ_DEPS[@]}")

if [ -z "$ONLY" ]; then
  keep_lebench
  build_antlr
  build_fairseq
  # One resolution for all, so that versions agree; the antlr wheel built above is found in
  # DIR (--find-links) when omegaconf asks for it.
  log "downloading ${REQS[*]} and their dependencies"
  "${DOWNLOAD[@]}" "${REQS[@]}"
else
  PICKED=()
  for name in $ONLY; do
    case "$(name_of "$name")" in
      lebench) keep_lebench ;;
      "$(name_of "$ANTLR_SPEC")") build_antlr ;;
      "$(name_of "$FAIRSEQ_SPEC")") build_fairseq ;;
      *)
        spec="$name"   # a bare name gets the version constraint lebench or fairseq puts on it
        if [ "${name%%[<>=!~;\[ ]*}" = "$name" ]; then
          for req in "${REQS[@]}"; do
            if [ "$(name_of "$req")" = "$(canon "$name")" ]; then spec="$req"; fi
          done
        fi
        PICKED+=("$spec")
        ;;
    esac
  done
  if [ ${#PICKED[@]} -gt 0 ]; then
    log "downloading ${PICKED[*]} (no dependencies)"
    "${DOWNLOAD[@]}" --no-deps "${PICKED[@]}"
  fi
fi

bad=""
for f in "$DIR"/*.whl; do
  f="${f##*/}"
  if is_excluded "${f%%-*}"; then bad+="$f "; fi
done
[ -z "$bad" ] || die "$DIR holds wheels that must not be carried (the target has its own torch): $bad"
dups="$(for f in "$DIR"/*.whl; do f="${f##*/}"; canon "${f%%-*}"; echo; done | sort | uniq -d | tr '\n' ' ')"
[ -z "$dups" ] || die "$DIR holds more than one version of: $dups(remove the older wheels, or start from an empty DIR)"

count="$(compgen -G "$DIR/*.whl" | wc -l)"
size="$(du -ch "$DIR"/*.whl | tail -n 1 | cut -f 1)"
log "done: $count wheels, $size in total, in $DIR"
cat >&2 <<EOF
To install on the target ($TARGET), into the environment that already has torch:
  python -m pip install --no-index --no-deps $DIR/*.whl
(--no-deps because fairseq-fixed declares torchaudio and cython, which its wav2vec2 model, all
lebench uses, does not need: 'python -m pip check' then names those two, and nothing else unless
the folder was made with ONLY and the environment lacks some dependency.)
EOF
