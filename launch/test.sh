#!/usr/bin/env bash
# Sets up (if needed) and runs the default test suite (~13 min on 2 cores; CI runs this through
# .ci/run). Tests marked `slow` (a minute or more each: kill -9/SIGTERM resume of the launcher,
# 2-process training and its SIGTERM agreement, byte-identical rebuilds, the network learning,
# end-to-end video, the notebook's tiny run) run with the benchmarks: `bash benchmarks/slow_tests.sh`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash launch/setup.sh
export OPENBLAS_NUM_THREADS="${OPENBLAS_NUM_THREADS:-1}"
set +e
.venv/bin/python -m pytest -q -m "not slow" "$@"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then
  echo "pytest collected no tests: treating as a failure" >&2
  exit 1
fi
exit "$rc"
