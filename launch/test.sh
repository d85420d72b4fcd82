#!/usr/bin/env bash
# Sets up (if needed) and runs the default test suite on 2 pytest-xdist workers, one test file per
# worker at a time (most of a test's time is a single-threaded XLA compile, so 2 workers use both
# cores; serial it took ~13 min on 2 quiet cores). $FLOWPOSE_TEST_WORKERS sets the count (0 =
# serial). CI runs this through .ci/run. Tests marked `slow` (a minute or more each: kill -9/SIGTERM resume of the launcher,
# 2-process training and its SIGTERM agreement, byte-identical rebuilds, the network learning,
# end-to-end video, the notebook's tiny run) run with the benchmarks: `bash benchmarks/slow_tests.sh`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash launch/setup.sh
export OPENBLAS_NUM_THREADS="${OPENBLAS_NUM_THREADS:-1}"
set +e
.venv/bin/python -m pytest -q -m "not slow" -n "${FLOWPOSE_TEST_WORKERS:-2}" --dist loadfile "$@"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then
  echo "pytest collected no tests: treating as a failure" >&2
  exit 1
fi
exit "$rc"
