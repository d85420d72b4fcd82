#!/usr/bin/env bash
# The tests marked `slow` (a minute or more each on 2 cores; outside the README test command so that
# stays under 15 minutes): kill -9 / SIGTERM resume of the launcher, 2 processes training as one and
# stopping together, byte-identical body/evidence rebuilds, the network learning and the regressor
# benchmark, the notebook's tiny run, end-to-end video, the silhouette recovering hidden legs.
# ~12 min on 2 quiet cores.  Usage: bash benchmarks/slow_tests.sh [pytest args]
set -euo pipefail
cd "$(dirname "$0")/.."
bash launch/setup.sh
export OPENBLAS_NUM_THREADS="${OPENBLAS_NUM_THREADS:-1}"
exec .venv/bin/python -m pytest -q -m slow -n "${FLOWPOSE_TEST_WORKERS:-2}" --dist loadfile "$@"
