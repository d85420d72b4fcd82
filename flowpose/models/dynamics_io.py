"""Export and load a trained latent dynamics model (`dynamics_params.msgpack` + `config.json`).

The dynamics model lives in a prior's latent space, so it is only meaningful with that prior:
the export records the prior's workdir and the SHA-256 of its `prior_params.msgpack`, and
`load_dynamics(workdir, prior_workdir)` refuses a prior with other params. Every failure is one
`DynamicsLoadError` naming the file and what was expected.
"""

import hashlib
import json
import os
from typing import Any, Optional

import flax
import jax
import ml_collections
import numpy as np

from flowpose import io_utils
from flowpose.models import dynamics as dynamics_lib
from flowpose.prior import io as prior_io

PARAMS_FILE = "dynamics_params.msgpack"
CONFIG_FILE = "config.json"
CHECKSUM_FILE = "dynamics_params.sha256"


class DynamicsLoadError(ValueError):
  """A dynamics workdir is missing, unreadable, or belongs to another prior."""


def export_dynamics(workdir: str, params: Any, config: ml_collections.ConfigDict) -> str:
  """Writes `dynamics_params.msgpack` (+ `.sha256`) and `config.json` (with the prior's sha256).

  Args:
    workdir: the training workdir.
    params: `{"dynamics": ..., ...}` the task's params (only "dynamics" is written).
    config: the experiment config (`config.prior_workdir` names the prior).
  """
  config = ml_collections.ConfigDict(config.to_dict())
  config.prior_sha256 = prior_io.params_sha256(config.prior_workdir)
  io_utils.atomic_write(os.path.join(workdir, CONFIG_FILE),
                        config.to_json_best_effort(indent=2).encode())
  data = flax.serialization.to_bytes(jax.device_get(params["dynamics"]))
  path = os.path.join(workdir, PARAMS_FILE)
  io_utils.atomic_write(path, data)
  io_utils.atomic_write(os.path.join(workdir, CHECKSUM_FILE),
                        f"{hashlib.sha256(data).hexdigest()}  {PARAMS_FILE}\n".encode())
  return path


def _read(workdir: str, name: str) -> bytes:
  path = os.path.join(workdir, name)
  if not os.path.isfile(path):
    raise DynamicsLoadError(f"{path} not found: expected a workdir written by `python -m "
                            "launch.main --config=experiments/dynamics_cmu.py` after training")
  with open(path, "rb") as f:
    data = f.read()
  if not data:
    raise DynamicsLoadError(f"{path} is empty (an interrupted copy?)")
  return data


def load_dynamics(workdir: str, prior_workdir: Optional[str] = None):
  """Reads and verifies an exported dynamics model.

  Args:
    workdir: the dynamics training workdir.
    prior_workdir: the prior it will be used with (None: the one recorded at training); its
      params must be the ones the model was trained on.

  Returns:
    `(model, params, config)`: `dynamics_lib.Dynamics`, its params, the experiment config.

  Raises:
    DynamicsLoadError: missing/garbled files, a checksum mismatch, or another prior.
  """
  config_path = os.path.join(workdir, CONFIG_FILE)
  try:
    fields = json.loads(_read(workdir, CONFIG_FILE).decode("utf-8"))
  except (UnicodeDecodeError, json.JSONDecodeError) as e:
    raise DynamicsLoadError(f"{config_path} is not valid JSON ({e})") from None
  if not isinstance(fields, dict) or not isinstance(fields.get("dynamics"), dict):
    raise DynamicsLoadError(f"{config_path} has no `dynamics` section (not a dynamics workdir?)")
  config = ml_collections.ConfigDict(fields)
  config.dynamics.hidden_sizes = tuple(config.dynamics.hidden_sizes)
  prior_workdir = prior_workdir or config.get("prior_workdir")
  try:
    prior_sha = prior_io.params_sha256(prior_workdir)
  except (OSError, TypeError) as e:
    raise DynamicsLoadError(f"prior workdir {prior_workdir!r} of the dynamics model {workdir} "
                            f"cannot be read ({e})") from None
  if config.get("prior_sha256") and prior_sha != config.prior_sha256:
    raise DynamicsLoadError(
        f"{config_path}: the dynamics model was trained on the prior with params sha256 "
        f"{config.prior_sha256[:16]}... ({config.get('prior_workdir')}), but "
        f"{prior_workdir} has {prior_sha[:16]}...: pass the prior it was trained with")
  data = _read(workdir, PARAMS_FILE)
  path = os.path.join(workdir, PARAMS_FILE)
  checksum = os.path.join(workdir, CHECKSUM_FILE)
  if os.path.isfile(checksum):
    with open(checksum, "rb") as f:
      expected = f.read().decode("utf-8", errors="replace").split(maxsplit=1)[:1]
    if expected != [hashlib.sha256(data).hexdigest()]:
      raise DynamicsLoadError(f"{path}: SHA-256 differs from {checksum} (corrupt copy?)")
  try:
    model = dynamics_lib.make_dynamics(config.dynamics, int(config.latent_dim))
  except (KeyError, AttributeError, TypeError, ValueError) as e:
    raise DynamicsLoadError(f"{config_path}: cannot build the model ({e})") from None
  example = jax.ShapeDtypeStruct((1, dynamics_lib.ORDER + 1, model.dim), np.float32)
  target = jax.eval_shape(model.init, jax.random.key(0), example)
  try:
    params = flax.serialization.from_bytes(target, data)
  except (ValueError, TypeError, KeyError, IndexError, AttributeError) as e:
    raise DynamicsLoadError(f"{path} cannot be decoded ({type(e).__name__}: {e})") from None
  for leaf, spec in zip(jax.tree.leaves(params), jax.tree.leaves(target)):
    leaf = np.asarray(leaf)
    if leaf.shape != spec.shape or not np.all(np.isfinite(leaf)):
      raise DynamicsLoadError(f"{path}: a parameter is {leaf.shape} (expected {spec.shape}) "
                              "or holds NaN/inf")
  return model, params, config


def load_chart_residual(workdir: Optional[str]):
  """The chart residual beside a dynamics model (`chart_residual.FILE` in `workdir`), or None.

  The sequence fitter's `chart_dynamics` term uses it (`launch.chart_residual` writes it; a
  model trained before it existed has none: that term is then 0).

  Raises:
    DynamicsLoadError: the file exists but is garbled or of another chart.
  """
  from flowpose.models import chart_residual  # pylint: disable=g-import-not-at-top
  if not workdir or not os.path.isfile(os.path.join(workdir, chart_residual.FILE)):
    return None
  try:
    return chart_residual.load(os.path.join(workdir, chart_residual.FILE))
  except chart_residual.ChartResidualError as e:
    raise DynamicsLoadError(str(e)) from None
