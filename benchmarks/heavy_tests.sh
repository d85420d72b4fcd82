#!/usr/bin/env bash
# The tests marked `heavy` (minutes each on 2 cores; outside the README test command so that stays
# under 15 minutes): the network learns on held-out frames, the regressor benchmark scores every
# method, the flow-layer notebook runs end to end on its tiny setting, a locked workdir and a
# SIGTERM stop every process of a 2-process run.  Usage: bash benchmarks/heavy_tests.sh [pytest args]
set -euo pipefail
cd "$(dirname "$0")/.."
bash launch/setup.sh
export OPENBLAS_NUM_THREADS="${OPENBLAS_NUM_THREADS:-1}"
exec .venv/bin/python -m pytest -q -m heavy "$@"
