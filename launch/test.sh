#!/usr/bin/env bash
# Sets up (if needed) and runs the default test suite (slow tests excluded: see benchmarks/).
set -euo pipefail
cd "$(dirname "$0")/.."
bash launch/setup.sh
export OPENBLAS_NUM_THREADS="${OPENBLAS_NUM_THREADS:-1}"
set +e
.venv/bin/python -m pytest -q "$@"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then
  echo "pytest collected no tests: treating as a failure" >&2
  exit 1
fi
exit "$rc"
