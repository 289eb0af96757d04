#!/usr/bin/env bash
# Every GPU measurement docs/performance.md asks for, in phases that each fit a short
# session on a rented or shared GPU machine, with logs and JSON left in one folder.
#
#   bash benchmarks/gpu_session.sh OUTDIR [PHASE ...]      (default: env tests model)
#
# Phases, each writing OUTDIR/PHASE.log (and JSON beside it):
#   env       the GPU, driver, Python and package versions
#   tests     the test suite's CUDA cases: the encoder and extract exactness tests, float16
#             within 1e-2 of float32, the asynchronous read-back (a few minutes)
#   model     bench_model.py: the large model alone in float16 (1, 3 and all layers; 60,
#             120 and 240 s batches), under torch.compile, and the base model's
#             per-utterance GroupNorm on short clips (a few minutes)
#   extract   bench_extract.py, the three runs below (each also a phase of its own, so that
#             one call can take only as many as fit in its time):
#     extract-large       large float16, layers 8,16,24, LARGE_HOURS (default 2) of audio,
#                         against the naive fairseq and transformers loops
#     extract-base        base float16, last layer, BASE_HOURS (default 1), against them too
#     extract-all-layers  large float16, all layers, ALL_LAYERS_HOURS (default 1), lebench
#                         alone: the write rate (about 9 GB per hour of audio under WORK)
#   pipeline  bench_pipeline.py on this host's CPUs: decoding with 0-8 workers, the
#             writer, the whole pipeline without the model (the ceiling a GPU cannot pass)
#
# The Python that runs it needs torch with CUDA; what else lebench needs (fairseq, soundfile,
# soxr, ...) may come as wheels in WHEELS (see scripts/download-wheels.sh), installed into
# SITE (default /tmp/lebench-site) without touching that Python. Other settings: DEVICE
# (default cuda), WORK (corpora and checkpoints, default $TMPDIR/lebench-bench), PYTHON.
set -uo pipefail

if [ $# -lt 1 ]; then
  awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"
  exit 2
fi
OUTDIR="$1"; shift
PHASES=("$@")
[ ${#PHASES[@]} -gt 0 ] || PHASES=(env tests model)

REPO="$(cd "$(dirname "$0")/.." && pwd)"
PYTHON="${PYTHON:-python3}"
DEVICE="${DEVICE:-cuda}"
SITE="${SITE:-/tmp/lebench-site}"
WORK="${WORK:-${TMPDIR:-/tmp}/lebench-bench}"
LARGE_HOURS="${LARGE_HOURS:-2}"
BASE_HOURS="${BASE_HOURS:-1}"
ALL_LAYERS_HOURS="${ALL_LAYERS_HOURS:-1}"
mkdir -p "$OUTDIR" "$WORK"
OUTDIR="$(cd "$OUTDIR" && pwd)"

log() { printf 'gpu-session: %s\n' "$*" >&2; }

# -- set-up: carried wheels into SITE, and a `lebench` command that runs this checkout
if [ -n "${WHEELS:-}" ] && [ ! -e "$SITE/.installed" ]; then
  log "installing the wheels in $WHEELS into $SITE"
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" "$WHEELS"/*.whl \
    || { log "wheel install failed"; exit 1; }
  touch "$SITE/.installed"
fi
mkdir -p "$SITE/bin"
export PYTHONPATH="$REPO:$SITE${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
printf '#!/bin/sh\nexec "%s" -m lebench_cli "$@"\n' "$(command -v "$PYTHON")" >"$SITE/bin/lebench"
chmod +x "$SITE/bin/lebench"
LEBENCH="$SITE/bin/lebench"
cd "$REPO"

run_phase() {  # run_phase NAME COMMAND...: COMMAND's output into OUTDIR/NAME.log, timed
  local name="$1"; shift
  local started=$SECONDS
  log "phase $name: $*"
  "$@" >>"$OUTDIR/$name.log" 2>&1
  local status=$?
  log "phase $name: exit $status after $((SECONDS - started)) s"
  return $status
}

phase_env() {
  {
    date -u +%Y-%m-%dT%H:%M:%SZ
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv 2>&1 || true
    nproc; free -g | head -2; df -h "$WORK" | tail -1
    "$PYTHON" - <<'EOF'
import importlib, platform, torch
print("python", platform.python_version(), "torch", torch.__version__, "cuda", torch.version.cuda,
      "cudnn", torch.backends.cudnn.version(), "available", torch.cuda.is_available())
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print("gpu", p.name, f"{p.total_memory / 2**30:.0f} GiB", p.multi_processor_count, "SMs")
for name in ("fairseq", "soundfile", "soxr", "h5py", "click", "tqdm", "huggingface_hub", "transformers", "lebench_cli"):
    try:
        module = importlib.import_module(name)
        print(name, getattr(module, "__version__", "?"), module.__file__)
    except Exception as error:  # report every missing piece, not only the first
        print(name, "MISSING:", repr(error)[:200])
EOF
  } >"$OUTDIR/env.log" 2>&1
  cat "$OUTDIR/env.log"
}

phase_tests() {
  run_phase tests "$PYTHON" -m pytest -q -p no:cacheprovider -k cuda -rs \
    tests/test_encoder.py tests/test_extract.py tests/test_readback.py
  local status=$?
  tail -5 "$OUTDIR/tests.log"
  return $status
}

phase_model() {
  local status=0
  run_phase model "$PYTHON" -m benchmarks.bench_model --arch large --device "$DEVICE" --layers "last;8,16,24;all" \
    --batch-seconds 60,120,240 --clip-seconds 10 --work "$WORK" --json-out "$OUTDIR/model-large.json" || status=1
  run_phase model "$PYTHON" -m benchmarks.bench_model --arch large --device "$DEVICE" --layers "8,16,24" \
    --batch-seconds 120 --clip-seconds 3,10,20 --compile --work "$WORK" --json-out "$OUTDIR/model-compile.json" || status=1
  run_phase model "$PYTHON" -m benchmarks.bench_model --arch base --device "$DEVICE" --layers "last" \
    --batch-seconds 120 --clip-seconds 1,10 --group-norm --work "$WORK" --json-out "$OUTDIR/model-base.json" || status=1
  grep -v '^\s*$' "$OUTDIR/model.log" | grep -E '^(variant|compute|readback|compiled|group_norm)' | tail -30
  return $status
}

extract_run() {  # extract_run NAME ARGS...: one bench_extract.py run, JSON into OUTDIR/extract-NAME.json
  local name="$1"; shift
  run_phase extract "$PYTHON" -m benchmarks.bench_extract --device "$DEVICE" --dtype float16 --lebench "$LEBENCH" \
    --work "$WORK" --json-out "$OUTDIR/extract-$name.json" "$@"
}

phase_extract_large() {
  extract_run large --hours "$LARGE_HOURS" --arch large --layers 8,16,24
}

phase_extract_base() {
  extract_run base --hours "$BASE_HOURS" --arch base --layers last
}

phase_extract_all_layers() {
  extract_run all-layers --hours "$ALL_LAYERS_HOURS" --arch large --layers all --methods lebench --no-startup-probe
}

phase_extract() {
  local status=0
  phase_extract_large || status=1
  phase_extract_base || status=1
  phase_extract_all_layers || status=1
  return $status
}

phase_pipeline() {
  run_phase pipeline "$PYTHON" -m benchmarks.bench_pipeline --hours "$BASE_HOURS" --workers 0,2,4,8 \
    --layers "last;8,16,24" --work "$WORK" --json-out "$OUTDIR/pipeline.json"
  local status=$?
  tail -20 "$OUTDIR/pipeline.log"
  return $status
}

failed=()
for phase in "${PHASES[@]}"; do
  case "$phase" in
    env|tests|model|extract|extract-large|extract-base|extract-all-layers|pipeline)
      "phase_${phase//-/_}" || failed+=("$phase")
      if [[ "$phase" == extract* ]]; then tail -25 "$OUTDIR/extract.log"; fi
      ;;
    *) log "unknown phase '$phase' (env tests model extract extract-large extract-base extract-all-layers pipeline)"; exit 2 ;;
  esac
done
if [ ${#failed[@]} -gt 0 ]; then
  log "failed phases: ${failed[*]} (logs in $OUTDIR)"
  exit 1
fi
log "done: logs and JSON in $OUTDIR"
