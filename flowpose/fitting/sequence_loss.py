"""The sequence fitter's loss: one window of T frames (`flowpose.fitting.sequence`).

Variables (unbatched window): pose [T, D] latents, betas [S], orient [T, 6], transl [T, 3].
Terms (`config.loss_weights`, one dict, all present; `window_loss` returns them unweighted):

  keypoints      per frame the per-frame fitter's robust, confidence-weighted reprojection
                 (`losses.keypoint_reprojection_loss`, residuals in keypoint-box units), mean
                 over the frames that have evidence (>= 2 keypoints); a frame without evidence
                 (missing, occluded) adds nothing and is carried by the terms below
  dynamics       -2/T' sum_t log p(z_t | z_{t-1}, z_{t-2}) of the motion model
                 (`flowpose.models.dynamics`; -2 log p so that it is on the scale of ||z||^2);
                 without a model: mean ||z_t - 2 z_{t-1} + z_{t-2}||^2 (constant velocity)
  dynamics_backward  the same model run on the window reversed in time: a gap is then pulled
                 from both of its ends (forward alone extrapolates from the gap's start and only
                 the keypoints after the gap pull it back)
  chart_dynamics -2/T' sum_t log p(x_t | x_{t-1}, x_{t-2}) of constant velocity in the prior's
                 pose chart with a fitted full-covariance residual (`models.chart_residual`,
                 constant dropped); 0 without one
  pose_prior     mean_t ||z_t||^2 (the static prior per frame, as the per-frame fitter) over the
                 frames of `aux["prior_frames"]` (every frame, or only those with evidence)
  gap_prior      the same static prior over the frames WITHOUT evidence only (its own weight:
                 a weaker pull inside gaps than on frames with keypoints)
  gap_velocity   mean over frames without evidence of ||z_t - z_{t-1}||^2: the latent path
                 through a gap damped towards a line between its ends (a hold at a window's
                 end), against the motion model's extrapolation
  open_gap_velocity  the same step length over the OPEN gaps only (`aux["open_gap"]`: frames
                 without evidence before or after them, a gap touching the window's start or
                 end): nothing pulls such a gap back, so the motion models extrapolate; this
                 holds the last (first) pose there, what the per-frame baseline does
  open_gap_prior the static prior over the open gaps' frames only: the longer nothing is seen,
                 the nearer the mean pose (the least expected error when the pose is unknown)
  shape_prior    ||betas||^2
  transl_smooth  mean_t ||second difference of transl||^2 (metres^2)
  joint_smooth   mean_t,j ||second difference of the camera-frame joints||^2 (metres^2): the
                 acceleration the benchmark scores
  gap_smooth     the same, only at frames without evidence (mean over them): inside a gap the
                 least-acceleration path in 3D between the two visible ends, what linear
                 interpolation of the joints approximates, with its own (larger) weight
  gap_chord      mean over the frames of CLOSED gaps (evidence on both sides) of the mean squared
                 distance (metres^2) of each camera-frame joint from the straight line between
                 its positions at the gap's two ends, at the frame's place in time
                 (`aux["chord_index"]`, `aux["chord_weight"]`: `chord_ends`); the ends are held
                 fixed (stop-gradient): the line pulls the gap, not the frames that see the person
  orient_smooth  mean_t ||second difference of orient (6D)||^2
  depth          mean over frames with evidence of (log z_t - log z_init_t)^2
"""

import jax
import jax.numpy as jnp
import numpy as np

from flowpose import geometry
from flowpose import losses
from flowpose.fitting.reduced_body import FitBody, pose_points  # pylint: disable=g-importing-member
from flowpose.geometry import camera
from flowpose.models import chart_residual as chart_residual_lib

LOSS_TERMS = ("keypoints", "dynamics", "dynamics_backward", "chart_dynamics", "pose_prior",
              "gap_prior", "gap_velocity", "open_gap_velocity", "open_gap_prior", "shape_prior",
              "transl_smooth", "orient_smooth", "joint_smooth", "gap_smooth", "gap_chord",
              "depth")


def second_difference(x):
  """[T, ...] -> [T - 2, ...]: x_{t+1} - 2 x_t + x_{t-1} (centred on frames 1..T-2)."""
  return x[2:] - 2 * x[1:-1] + x[:-2]


def chord_ends(frame_valid) -> tuple:
  """The straight line across every closed gap: `(index [..., T, 2] int32, weight [..., T, 2]
  float32)`. A frame t inside a closed gap (no evidence at t, evidence at some a < t and b > t,
  the nearest such) has index (a, b) and weight ((b - t) / (b - a), (t - a) / (b - a)), so
  `weight[t, 0] x[a] + weight[t, 1] x[b]` is x's line at t; every other frame has index (t, t)
  and weight 0 (`frame_valid [..., T]`: 1 = evidence). Two ends per frame, not a [T, T] matrix:
  the video job fits a whole track as one window."""
  valid = np.asarray(frame_valid, bool)
  frames = valid.shape[-1]
  index = np.broadcast_to(np.arange(frames, dtype=np.int32)[:, None],
                          valid.shape + (2,)).copy()
  weight = np.zeros(valid.shape + (2,), np.float32)
  for window in np.ndindex(valid.shape[:-1]):
    have = np.flatnonzero(valid[window])
    for t in np.flatnonzero(~valid[window]):
      after = np.searchsorted(have, t)
      if 0 < after < len(have):
        a, b = have[after - 1], have[after]
        index[window + (t,)] = a, b
        weight[window + (t,)] = (b - t) / (b - a), (t - a) / (b - a)
  return index, weight


def decode_window(body: FitBody, space, prior_params, variables):
  """Decoded DOFs [T, 50], root rotations [T, 3, 3] and posed points of one window."""
  dofs = jax.vmap(space.decode, (None, 0))(prior_params, variables["pose"])
  roots = geometry.rot6d_to_matrix(variables["orient"])
  points = jax.vmap(pose_points, (None, 0, 0, None, 0, None))(
      body, dofs, roots, variables["betas"], variables["transl"], False)
  return dofs, roots, points


def _masked_mean(values, mask):
  return jnp.sum(values * mask) / jnp.maximum(jnp.sum(mask), 1.0)


def window_loss(variables, aux, weights, body: FitBody, space, prior_params, dynamics,
                dynamics_params, sigma: float, chart_residual=None, skip: tuple = ()):
  """(total, unweighted terms) of one window (unbatched; module docstring).

  Args:
    variables: the window's variables (module docstring).
    aux: keypoints [T, K, 2], confidence [T, K], focal [2], principal_point [2],
      keypoint_mask [K], frame_valid [T] (1 = evidence), prior_frames [T], depth_init [T],
      open_gap [T] (1 = no evidence before or after the frame: `sequence.open_gap_frames`),
      chord_index [T, 2], chord_weight [T, 2] (`chord_ends`).
    weights: name -> weight, every name of `LOSS_TERMS`.
    chart_residual: a `models.chart_residual.ChartResidual` (its arrays may be traced) or None.
    skip: terms not computed (reported as 0): those weighted 0 in every stage. The motion
      model's MLP runs over every frame, the backward term's a second time.
  """
  dofs, _, points = decode_window(body, space, prior_params, variables)
  pred = camera.perspective_project(points.keypoints, aux["focal"], aux["principal_point"])
  target, confidence = aux["keypoints"], aux["confidence"]

  def frame_term(p, t, c, mask):
    scale = losses.person_scale_from_keypoints(t, c)
    return losses.keypoint_reprojection_loss(p, t, c * mask, sigma=sigma, scale=scale)

  per_frame = jax.vmap(frame_term, (0, 0, 0, None))(pred, target, confidence,
                                                     aux["keypoint_mask"])
  has = aux["frame_valid"]
  gap = 1.0 - has
  z = variables["pose"]
  def motion_cost(z):
    if dynamics is None:
      return jnp.mean(jnp.sum(jnp.square(second_difference(z)), -1))
    return -2.0 * jnp.mean(dynamics.log_prob(dynamics_params, z))
  zero = jnp.zeros((), jnp.float32)
  dyn = zero if "dynamics" in skip else motion_cost(z)
  dyn_back = zero if "dynamics_backward" in skip else motion_cost(z[::-1])
  chart_dyn = zero if chart_residual is None else jnp.mean(
      chart_residual_lib.neg2_log_prob(chart_residual, dofs, chart_residual.mean,
                                       chart_residual.precision))
  penalty = jax.vmap(space.penalty, (None, 0))(prior_params, z)
  accel = jnp.mean(jnp.sum(jnp.square(second_difference(points.joints)), -1), -1)  # [T - 2]
  step = jnp.sum(jnp.square(z[1:] - z[:-1]), -1)  # [T - 1] latent step lengths.
  ends, ends_weight = aux["chord_index"], aux["chord_weight"]
  line = jax.lax.stop_gradient(ends_weight[:, 0, None, None] * points.joints[ends[:, 0]] +
                               ends_weight[:, 1, None, None] * points.joints[ends[:, 1]])
  chord = jnp.mean(jnp.sum(jnp.square(points.joints - line), -1), -1)  # [T]
  log_depth = jnp.log(jnp.maximum(variables["transl"][:, 2], camera.MIN_DEPTH))
  terms = {
      "keypoints": _masked_mean(per_frame, has),
      "dynamics": dyn,
      "dynamics_backward": dyn_back,
      "chart_dynamics": chart_dyn,
      "pose_prior": _masked_mean(penalty, aux["prior_frames"]),
      "gap_prior": _masked_mean(penalty, gap),
      "gap_velocity": _masked_mean(step, gap[1:]),
      # A step (t-1, t) is open when either end is: a leading gap's last step reaches its
      # first frame with evidence, a trailing gap's first step leaves its last one.
      "open_gap_velocity": _masked_mean(step, jnp.maximum(aux["open_gap"][1:],
                                                          aux["open_gap"][:-1])),
      "open_gap_prior": _masked_mean(penalty, aux["open_gap"]),
      "shape_prior": losses.shape_prior(variables["betas"]),
      "transl_smooth": jnp.mean(jnp.sum(jnp.square(second_difference(variables["transl"])),
                                        -1)),
      "orient_smooth": jnp.mean(jnp.sum(jnp.square(second_difference(variables["orient"])),
                                        -1)),
      "joint_smooth": jnp.mean(accel),
      "gap_smooth": _masked_mean(accel, gap[1:-1]),
      "gap_chord": _masked_mean(chord, jnp.sum(ends_weight, -1)),
      "depth": _masked_mean(jnp.square(log_depth - jnp.log(aux["depth_init"])), has),
  }
  return losses.weighted_sum(terms, weights)
