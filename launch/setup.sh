#!/usr/bin/env bash
# Sets up flowpose on a fresh machine: virtual environment, pinned install, CC0 body-model build.
# Idempotent: re-running only does what is missing. Usage: bash launch/setup.sh
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  echo "[setup] creating .venv"
  "$PYTHON" -m venv .venv
fi
# Reinstall only when requirements.txt changed since the last successful install.
stamp=.venv/.flowpose-requirements.sha256
want=$(sha256sum requirements.txt pyproject.toml | sha256sum | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "[setup] installing pinned requirements (a few minutes on a fresh machine)"
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -r requirements.txt
  .venv/bin/python -m pip install -q --no-deps -e .
  echo "$want" > "$stamp"
fi
echo "[setup] building the CC0 body model (~10 s; the wheel download is cached)"
# One BLAS thread: the build is then byte-deterministic (same file hash on every machine).
OPENBLAS_NUM_THREADS=1 .venv/bin/python -m flowpose.body.build.assets
# A failed kernel build fails set-up (and so CI): posing would silently fall back to the slower XLA
# path. Platforms without a C++ compiler opt out explicitly with FLOWPOSE_LBS_KERNEL=0 (the build
# is skipped, posing uses XLA and the kernel tests skip).
if [ "${FLOWPOSE_LBS_KERNEL:-1}" = "0" ]; then
  echo "[setup] CPU skinning kernel disabled (FLOWPOSE_LBS_KERNEL=0): posing uses the XLA path"
else
  echo "[setup] building the CPU skinning kernel (~5 s)"
  if ! .venv/bin/python -m flowpose.body.cpu_kernel.build; then
    echo "[setup] error: the CPU skinning kernel failed to build (see above); install a C++17" \
      "compiler (or set CXX), or set FLOWPOSE_LBS_KERNEL=0 to use the XLA path" >&2
    exit 1
  fi
fi
.venv/bin/python -m flowpose.evidence.detector_weights  # BlazePose weights out of the mediapipe wheel (idempotent)
