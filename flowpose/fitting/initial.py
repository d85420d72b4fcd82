"""Starting points of a fit: each yaw restart's default (`initial_variables`), and
`fit(..., initial=...)` and the regressor.

`initial` is a dict holding any subset of `config.VARIABLES` ("pose" in the prior's space, e.g.
latent z for a flow prior; "betas", "orient" 6D body -> camera, "transl" metres, "log_focal"), each
with a leading [B]. `fit` turns it into one extra restart, restart 0 (see `flowpose.fitting.fit`).

The reconstruction network (issue 12, `flowpose.tasks.regressor`) provides such dicts:
`load_predictor(workdir) -> predict(evidence: fit.Evidence, image_size) -> dict`;
`load_regressor(workdir)` imports it lazily and turns a missing module/function or an unreadable
workdir into one `FitInputError` naming `--regressor_workdir`.
"""

import importlib
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from flowpose import geometry
from flowpose.fitting.config import VARIABLES, FitInputError  # pylint: disable=g-importing-member
from flowpose.fitting.reduced_body import (FitBody, PosePrior, facing_camera_rotation,  # pylint: disable=g-importing-member
                                           initial_translation, rest_points)
from flowpose.geometry import camera

REGRESSOR_MODULE = "flowpose.tasks.regressor"


def initial_variables(body: FitBody, prior: PosePrior, evidence,
                      yaw_deg: float) -> tuple[dict, dict]:
  """The default start of one yaw restart (`fit.Evidence` of B persons): the prior's mean pose,
  zero betas, the yaw facing the camera, the similar-triangles translation; and its aux entries
  (depth/focal init, depth clamp flag, the `pose_anchor` centre)."""
  kp = np.asarray(evidence.keypoints, np.float64)
  num = kp.shape[0]
  focal = np.asarray(evidence.focal, np.float64).reshape(num, 2)
  pp = np.asarray(evidence.principal_point, np.float64).reshape(num, 2)
  root = np.broadcast_to(facing_camera_rotation(yaw_deg), (num, 3, 3))
  transl, clamped = initial_translation(kp, np.asarray(evidence.confidence), focal, pp,
                                        *rest_points(body, prior), root)
  log_f = np.log(focal.mean(-1))
  variables = {
      "pose": jnp.broadcast_to(prior.init, (num, prior.space.dim)),
      "betas": jnp.zeros((num, body.j_shapedirs.shape[-1])),
      "orient": geometry.matrix_to_rot6d(jnp.asarray(root, jnp.float32)),
      "transl": jnp.asarray(transl, jnp.float32),
      "log_focal": jnp.asarray(log_f, jnp.float32),
  }
  aux = {"depth_init": jnp.asarray(transl[:, 2], jnp.float32),
         "pose_init": jnp.asarray(variables["pose"], jnp.float32),
         "depth_init_clamped": jnp.asarray(clamped),
         "log_focal_init": jnp.asarray(log_f, jnp.float32)}
  return jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), variables), aux


def initial_restart(initial: dict, default: tuple, num: int) -> tuple:
  """(variables, aux) of the extra restart: `initial` over `default` (the yaw-0 start).

  Args:
    initial: dict, a subset of VARIABLES, each [B, ...] as in `default`'s variables.
    default: (variables, aux) of `initial_variables(..., yaw_deg=0)`.
    num: B (for the messages).

  Raises:
    FitInputError: unknown names, wrong shapes, non-finite values (naming `initial[name]`).
  """
  variables, aux = default
  unknown = sorted(set(initial) - set(VARIABLES))
  if unknown:
    raise FitInputError(f"fit initial: unknown variables {unknown}; expected a subset of "
                        f"{VARIABLES}")
  variables = dict(variables)
  for name, value in initial.items():
    value = np.asarray(value, np.float32)
    if value.shape != variables[name].shape:
      raise FitInputError(f"fit initial[{name!r}]: expected shape {variables[name].shape} "
                          f"(leading [B={num}]), got {value.shape}")
    if not np.all(np.isfinite(value)):
      raise FitInputError(f"fit initial[{name!r}]: non-finite values")
    variables[name] = jnp.asarray(value)
  aux = dict(aux)
  if "transl" in initial:
    # The depth prior then pulls towards the start's own depth (kept in front of the camera):
    # the network resolved the scale/depth ambiguity, not the similar-triangles guess.
    depth = np.maximum(np.asarray(initial["transl"], np.float32)[:, 2], 10 * camera.MIN_DEPTH)
    aux["depth_init"] = jnp.asarray(depth)
  if "log_focal" in initial:
    aux["log_focal_init"] = variables["log_focal"]
  aux["pose_init"] = variables["pose"]  # The `pose_anchor` term's centre.
  return variables, aux


def initial_list(initial) -> list:
  """`fit`'s `initial` as a list of start dicts: [] for None, [initial] for one dict.

  Raises:
    FitInputError: `initial` is neither None, a dict, nor a non-empty sequence of dicts.
  """
  if initial is None:
    return []
  if isinstance(initial, dict):
    return [initial]
  starts = list(initial) if isinstance(initial, (list, tuple)) else None
  if not starts or not all(isinstance(s, dict) for s in starts):
    raise FitInputError(f"fit initial: expected a dict of {VARIABLES} or a non-empty sequence "
                        f"of such dicts, got {type(initial).__name__}")
  return starts


def restart_labels(config: ml_collections.ConfigDict, num_initial: int) -> tuple:
  """What each restart of `fit` starts from: ("initial",) for one given start, ("initial0",
  "initial1", ...) for several, then the yaws (degrees)."""
  yaws = tuple(float(y) for y in config.restart_yaws_deg)
  starts = (("initial",) if num_initial == 1 else
            tuple(f"initial{i}" for i in range(num_initial)))
  return starts + yaws


def load_regressor(workdir: Optional[str]) -> Callable:
  """`predict(evidence, image_size) -> initial dict` of a trained reconstruction network.

  Raises:
    FitInputError: naming `--regressor_workdir` when the network module or its `load_predictor`
      is not installed, or the workdir cannot be loaded.
  """
  if not workdir:
    raise FitInputError(f"--regressor_workdir: expected a trained regressor workdir, got "
                        f"{workdir!r}")
  try:
    module = importlib.import_module(REGRESSOR_MODULE)
  except ImportError as e:
    raise FitInputError(f"--regressor_workdir: the reconstruction network ({REGRESSOR_MODULE}) "
                        f"is not installed ({e})") from e
  load = getattr(module, "load_predictor", None)
  if load is None:
    raise FitInputError(f"--regressor_workdir: {REGRESSOR_MODULE} has no load_predictor(workdir)"
                        "; this flowpose has no reconstruction network yet")
  try:
    return load(workdir)
  except (OSError, ValueError, KeyError) as e:
    raise FitInputError(f"--regressor_workdir: cannot load {workdir} ({e})") from e


def predict_initial(predict: Callable, evidence, image_size) -> dict:
  """Runs a regressor's `predict` and keeps the `VARIABLES` it returns (numpy, [B, ...]).

  Raises:
    FitInputError: the prediction is not a dict or names no fitting variable.
  """
  out = predict(evidence, image_size)
  if not isinstance(out, dict):
    raise FitInputError(f"--regressor_workdir: predict returned {type(out).__name__}, expected "
                        f"a dict of {VARIABLES}")
  initial = {k: np.asarray(v) for k, v in out.items() if k in VARIABLES}
  if not initial:
    raise FitInputError(f"--regressor_workdir: predict returned {sorted(out)}, none of "
                        f"{VARIABLES}")
  return initial
