#!/usr/bin/env bash
# The README's test command: sets up the environment (idempotent), then runs the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-env.sh
# The SLURM tests start a one-node SLURM as root; this lets them apt-get slurm-wlm and munge.
export LEBENCH_TEST_INSTALL_SLURM="${LEBENCH_TEST_INSTALL_SLURM:-1}"
set +e
.venv/bin/python -m pytest "$@"
status=$?
set -e
if [ "$status" -eq 5 ]; then
  echo "run-tests: pytest selected no tests" >&2
  exit 0
fi
exit "$status"
