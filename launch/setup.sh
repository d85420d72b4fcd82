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
echo "[setup] building the CPU skinning kernel (~5 s; without it posing uses the XLA path)"
.venv/bin/python -m flowpose.body.cpu_kernel.ffi --build || echo "[setup] kernel build failed; the XLA path will be used"
