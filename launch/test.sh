#!/usr/bin/env bash
# Sets up (if needed) and runs the test suite, slow tests included (< 15 min on 2 cores): CI runs
# this, so the real kill -9/SIGTERM resume, 2-process training and the byte-deterministic build
# are checked on every landing. Tests marked `heavy` (minutes each: network learning, the
# regressor benchmark, the notebook's tiny run, more 2-process cases) run with the benchmarks:
# `bash benchmarks/heavy_tests.sh`. A bare `.venv/bin/python -m pytest` skips slow and heavy.
set -euo pipefail
cd "$(dirname "$0")/.."
bash launch/setup.sh
export OPENBLAS_NUM_THREADS="${OPENBLAS_NUM_THREADS:-1}"
set +e
.venv/bin/python -m pytest -q -m "not heavy" "$@"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then
  echo "pytest collected no tests: treating as a failure" >&2
  exit 1
fi
exit "$rc"
