"""Stage 1 of the temporal fit from the reconstruction network (issue 12) instead of per-frame fits.

    predict = load_network(regressor_workdir, prior_workdir)   # same prior checked
    frames = network_frames(predict, evidence, image_size)      # every frame with evidence
    starts = sequence_init.warm_starts(seq_config, frames)      # chain, gaps filled, betas median
    result = sequence.fit_sequence(seq_config, body, prior, evidence, dyn, dyn_params,
                                   initial=starts)
    # or all at once, with the per-frame refinement of the network's keyframe starts
    # (`seq_config.network_refine_steps`):
    result, network, stage1 = fit_network_two_stage(predict, seq_config, model, body, prior,
                                                    evidence, dyn, dyn_params)

The network (`flowpose.models.predictor.load_predictor`, through `fitting.initial`) reads each
frame's keypoints alone (part and mask channels zero: in its training data through
`model.map_dropout`), cropped around that frame's keypoints, and predicts the fitter's variables
in the frame's camera (latent z, betas, 6D orientation, translation). It runs once per frame
with evidence (hundreds of frames/s on CPU against ~20-50 for a per-frame fit). On keypoints
alone its poses are rough (`fully` network, validation frames with evidence: PA-MPJPE 118-120
mm against 61-71 for a per-frame fit, `results/video/tune_val_s9_*.json`), and the sequence
stage does not recover that in 150 steps (79.5 / 85.9 mm against 63.9 / 59.7 from per-frame
fits), so by default (`seq_config.network_refine_steps`) the network's start of each keyframe
(`keyframe_stride`) is refined by a per-frame fit from 2 restarts (the network's and yaw 0,
against 4 yaws without it): half the per-frame stage 1's work, a better start, and the
sequence stage then needs fewer steps (`seq_config.network_sequence_steps`). The warm start is `sequence_init.warm_starts` of those frames: the longest
orientation-consistent chain (a front/back flip of a frame is left out and interpolated), the
window's shape the median of the chain's betas, other frames interpolated.
"""

import copy
import os
from typing import Any, Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from flowpose import geometry
from flowpose.fitting import fit as fitting
from flowpose.fitting import initial as initial_lib
from flowpose.fitting import sequence
from flowpose.fitting import sequence_init
from flowpose.fitting.config import FitInputError  # pylint: disable=g-importing-member
from flowpose.fitting.reduced_body import pose_points  # pylint: disable=g-importing-member
from flowpose.prior import io as prior_io

# Frames per network call: a batch is padded to a multiple of BATCH_STEP (few compiled sizes
# whatever the track length, at most BATCH_STEP - 1 wasted rows); longer tracks go in chunks of
# MAX_BATCH (a multiple of BATCH_STEP).
MAX_BATCH = 1024
BATCH_STEP = 64


def _regressor_prior_dir(regressor_workdir: str) -> str:
  """The prior a regressor run was trained with: its exported copy, else its config's."""
  from flowpose.models import predictor  # pylint: disable=g-import-not-at-top
  copy = os.path.join(regressor_workdir, predictor.PRIOR_DIR)
  if os.path.isdir(copy):
    return copy
  import json  # pylint: disable=g-import-not-at-top
  path = os.path.join(regressor_workdir, predictor.CONFIG_FILE)
  try:
    with open(path) as f:
      return json.load(f)["model"]["prior_workdir"]
  except (OSError, ValueError, KeyError, TypeError) as e:
    raise FitInputError(f"--regressor_workdir: {path}: cannot read the network's prior "
                        f"(model.prior_workdir; {e})") from None


def load_network(regressor_workdir: str, prior_workdir: str) -> Callable:
  """`predict(evidence, image_size)` of a trained network whose flow prior is `prior_workdir`'s.

  The network's latent z means something only under the prior it was trained with, so the
  sequence fit's prior must be the same (params sha256 compared).

  Raises:
    FitInputError: naming --regressor_workdir (unreadable run, or trained on another prior).
  """
  mine = _regressor_prior_dir(regressor_workdir)
  try:
    theirs = prior_io.params_sha256(mine)
  except OSError as e:
    raise FitInputError(f"--regressor_workdir {regressor_workdir}: cannot read the params of "
                        f"the prior it was trained with ({e})") from None
  try:
    ours = prior_io.params_sha256(prior_workdir)
  except OSError as e:
    raise FitInputError(f"--prior_workdir {prior_workdir}: cannot read the prior's params "
                        f"({e})") from None
  if theirs != ours:
    raise FitInputError(
        f"--regressor_workdir {regressor_workdir}: the network was trained with the prior "
        f"{mine} (params sha256 {theirs[:16]}...), but the fit uses {prior_workdir} "
        f"({ours[:16]}...): pass the prior the network was trained with")
  return initial_lib.load_regressor(regressor_workdir)


def _bucket(n: int) -> int:
  return -(-n // BATCH_STEP) * BATCH_STEP


def predict_frames(predict: Callable, evidence: fitting.Evidence,
                   image_size: Optional[Sequence[int]]) -> dict:
  """The network on N frames in padded chunks (`MAX_BATCH`); dict of VARIABLES, each [N, ...].

  Padding repeats the last frame, so calls share a few batch sizes (one compile each).
  """
  num = np.asarray(evidence.keypoints).shape[0]
  parts = []
  for lo in range(0, num, MAX_BATCH):
    rows = np.arange(lo, min(lo + MAX_BATCH, num))
    rows = np.concatenate([rows, np.full(_bucket(len(rows)) - len(rows), rows[-1])])
    chunk = fitting.Evidence(*(np.asarray(x)[rows] for x in evidence[:4]))
    out = initial_lib.predict_initial(predict, chunk, image_size)
    parts.append({k: v[:min(MAX_BATCH, num - lo)] for k, v in out.items()})
  return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def network_frames(predict: Callable, evidence: sequence.SequenceEvidence,
                   image_size: Optional[Sequence[int]] = None) -> sequence_init.FrameFits:
  """Stage 1: the network on every fittable frame of every window (module docstring).

  Args:
    predict: `load_network(...)`.
    evidence: `sequence.SequenceEvidence` [W, T, ...] (keypoints NaN / confidence 0 where
      missing).
    image_size: (H, W) of the frames, or None: frames whose labelled keypoints leave it (or
      cannot determine a body, `sequence_init.fittable_frames`) get no prediction.

  Returns:
    `sequence_init.FrameFits` (pose [W, T, D], betas [W, T, S], orient [W, T, 6], transl
    [W, T, 3]; NaN rows and valid False where no prediction; `result` None).

  Raises:
    FitInputError: a window without any fittable frame.
  """
  kp = np.asarray(evidence.keypoints, np.float32)
  conf = np.asarray(evidence.confidence, np.float32)
  num, frames = kp.shape[:2]
  valid = sequence_init.fittable_frames(evidence, image_size)
  empty = np.flatnonzero(~valid.any(1))
  if len(empty):
    raise FitInputError(f"sequence evidence: window(s) {empty.tolist()} have no frame whose "
                        "keypoints can determine a body (no person to fit)")
  flat = np.flatnonzero(valid.reshape(-1))
  labelled = (conf > 0) & np.all(np.isfinite(kp), -1)
  rep = lambda x: np.repeat(np.asarray(x, np.float32), frames, 0)[flat]
  frame_evidence = fitting.Evidence(
      np.where(labelled[..., None], kp, np.nan).reshape(num * frames, -1, 2)[flat],
      np.where(labelled, conf, 0.0).reshape(num * frames, -1)[flat],
      rep(evidence.focal), rep(evidence.principal_point))
  out = predict_frames(predict, frame_evidence, image_size)
  missing = sorted(set(("pose", "betas", "orient", "transl")) - set(out))
  if missing:
    raise FitInputError(f"--regressor_workdir: the network predicts no {missing}")

  def scatter(x):
    x = np.asarray(x, np.float32)
    full = np.full((num * frames,) + x.shape[1:], np.nan, np.float32)
    full[flat] = x
    return full.reshape((num, frames) + x.shape[1:])
  return sequence_init.FrameFits(scatter(out["pose"]), scatter(out["betas"]),
                                 scatter(out["orient"]), scatter(out["transl"]), valid, None)


def _joints(body, prior_params, pose, orient, betas, transl, *, space):
  dofs = jax.vmap(space.decode, (None, 0))(prior_params, pose)
  roots = geometry.rot6d_to_matrix(orient)
  return jax.vmap(pose_points, (None, 0, 0, 0, 0, None))(
      body, dofs, roots, betas, transl, False).joints


_joints = jax.jit(_joints, static_argnames=("space",))


def frame_joints(body, prior, frames: sequence_init.FrameFits) -> np.ndarray:
  """[W, T, J, 3] camera-frame joints of each frame's own prediction (no fitting); NaN rows
  where `frames.valid` is False."""
  num, length = frames.valid.shape
  flat = np.flatnonzero(frames.valid.reshape(-1))
  pick = lambda x: jnp.asarray(np.asarray(x).reshape((num * length,) + x.shape[2:])[flat])
  joints = np.asarray(_joints(body, prior.params, pick(frames.pose), pick(frames.orient),
                              pick(frames.betas), pick(frames.transl), space=prior.space))
  out = np.full((num * length,) + joints.shape[1:], np.nan, np.float32)
  out[flat] = joints
  return out.reshape((num, length) + joints.shape[1:])


def refine_config(steps: Sequence[int]) -> ml_collections.ConfigDict:
  """The per-frame fit that refines the network's starts: `sequence_init.per_frame_config`
  with one yaw restart (0) beside the network's and (camera, body) `steps`."""
  config = sequence_init.per_frame_config((0.0,))
  config.stages[0]["steps"], config.stages[1]["steps"] = (int(n) for n in steps)
  return config


def network_stage1(predict: Callable, seq_config: ml_collections.ConfigDict, model, body,
                   prior, evidence: sequence.SequenceEvidence,
                   image_size: Optional[Sequence[int]] = None):
  """Stage 1 as `seq_config` asks: the network on every frame, then (`network_refine_steps`
  not empty) its keyframes (`keyframe_stride`) refined by a per-frame fit from 2 restarts.

  Returns:
    (network `FrameFits`, stage-1 `FrameFits`: the refined keyframes, or the network's).
  """
  frames = network_frames(predict, evidence, image_size)
  steps = tuple(seq_config.get("network_refine_steps", ()))
  if not steps:
    return frames, frames
  refined = sequence_init.fit_frames(refine_config(steps), model, body, prior, evidence,
                                     int(seq_config.get("keyframe_stride", 1)), initial=frames)
  return frames, refined


def network_sequence_config(seq_config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """`seq_config` with the warm stage's steps set to `network_sequence_steps` (when > 0): the
  sequence stage after the network's stage 1 (a copy; `seq_config` is not changed)."""
  config = copy.deepcopy(seq_config)  # Its stages are lists of dicts: a shallow copy shares them.
  steps = int(seq_config.get("network_sequence_steps", 0))
  if steps > 0:
    config.warm_stages[0]["steps"] = steps
  return config


def fit_network_two_stage(predict: Callable, seq_config: ml_collections.ConfigDict, model, body,
                          prior, evidence: sequence.SequenceEvidence,
                          dynamics=None, dynamics_params: Optional[Any] = None,
                          chart_residual=None, image_size: Optional[Sequence[int]] = None,
                          flow=None):
  """`network_stage1` + warm start + the sequence fit; returns `(SequenceResult, FrameFits of
  the network, FrameFits of stage 1)`.

  Raises:
    FitInputError: bad config or evidence, or a window without a fittable frame.
  """
  sequence.validate_sequence_config(seq_config)
  network, stage1 = network_stage1(predict, seq_config, model, body, prior, evidence, image_size)
  starts = sequence_init.warm_starts(seq_config, stage1, flow)
  result = sequence.fit_sequence(network_sequence_config(seq_config), body, prior, evidence,
                                 dynamics, dynamics_params, initial=starts,
                                 chart_residual=chart_residual)
  return result, network, stage1
