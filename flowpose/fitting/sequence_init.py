"""Two-stage temporal fit: per-frame fits, then the sequence fit warm-started from them.

    frames = fit_frames(fit_config, model, body, prior, evidence)          # stage 1
    starts = hypotheses(frames)                                             # 1-2 per window
    result = sequence.fit_sequence(seq_config, body, prior, evidence, dyn, dyn_params,
                                   initial=starts)                         # stage 2
    # or both at once:
    result, frames = fit_two_stage(fit_config, seq_config, model, body, prior, evidence,
                                   dyn, dyn_params)

Stage 1 (`fitting.fit`, its yaw restarts) fits every frame with evidence on its own. A fit
whose keypoint term is far above its window's median failed (`reliable_fits`) and is treated as
no fit. Its orientation is unreliable frame to frame (a front/back or left/right flip fits the 2D
keypoints almost as well), so the frames of a window are grouped by orientation: starting from
an anchor frame, a frame joins the chain when its root rotation is within `max_turn_deg` of the
chain's last frame (a person may turn over a window; a flip jumps). The anchor with the longest
chain gives hypothesis 0; the longest chain among the frames left out gives hypothesis 1 (the
other reading of the ambiguous frames), when some window has one. In a hypothesis the chain's
frames keep their per-frame latent, orientation and translation; every other frame (missing,
occluded, or off-chain) is linearly interpolated from its nearest chain frames (held at the
ends), and the window's shape is the median of the chain's betas. `fit_sequence` runs each
hypothesis and keeps the one with the lower loss per window.
"""

from typing import Any, NamedTuple, Optional

import jax.numpy as jnp
import ml_collections
import numpy as np

from flowpose import geometry
from flowpose.fitting import checks
from flowpose.fitting import config as fit_config_lib
from flowpose.fitting import fit as fitting
from flowpose.fitting import sequence


class FrameFits(NamedTuple):
  """Stage-1 fits of W windows of T frames (numpy; rows of frames without a fit are NaN).

  Attributes:
    pose: [W, T, D] latents. betas: [W, T, S]. orient: [W, T, 6]. transl: [W, T, 3].
    valid: [W, T] bool, frames that were fitted.
    result: the `fitting.FitResult` of the fitted frames (flattened, valid frames only).
    keypoint_error: [W, T] each fit's final (unweighted, robust, person-box units) keypoint
      term, NaN where not fitted; None: unknown (e.g. the network's predictions alone).
  """
  pose: np.ndarray
  betas: np.ndarray
  orient: np.ndarray
  transl: np.ndarray
  valid: np.ndarray
  result: Any
  keypoint_error: Optional[np.ndarray] = None


# A stage-1 fit whose keypoint term exceeds this many times its window's median did not fit its
# frame: a start of a few keypoints can put the body tens of metres away, where it stays (seen
# on every validation set, 1-4 of 272 frames: depth 13-96 m, 55-120 px off; its term 20-300x
# the median). Such a fit is not a start: `hypotheses` fills its frame like a missing one.
FAILED_FIT_FACTOR = 20.0


def reliable_fits(frames: FrameFits, factor: float = FAILED_FIT_FACTOR) -> np.ndarray:
  """[W, T] bool: the fitted frames whose keypoint term is at most `factor` x the median of
  their window's (`frames.valid` when the terms are unknown)."""
  if frames.keypoint_error is None:
    return frames.valid.copy()
  error = np.where(frames.valid, frames.keypoint_error, np.nan)
  median = np.nanmedian(np.where(frames.valid.any(1, keepdims=True), error, 0.0), 1)
  return frames.valid & (error <= factor * median[:, None])


def fittable_frames(evidence: sequence.SequenceEvidence, image_size=None) -> np.ndarray:
  """[W, T] bool: frames whose keypoints can determine a body (`checks.evidence_errors`;
  `image_size` (H, W): also inside the image)."""
  kp = np.asarray(evidence.keypoints, np.float64)
  conf = np.asarray(evidence.confidence, np.float64)
  num, frames = kp.shape[:2]
  labelled = (conf > 0) & np.all(np.isfinite(kp), -1)
  ok = labelled.sum(-1) >= sequence.MIN_KEYPOINTS
  flat = np.where(labelled[..., None], kp, 0.0).reshape(num * frames, -1, 2)
  errors = checks.evidence_errors(flat, np.where(labelled, conf, 0.0).reshape(num * frames, -1),
                                  image_size)
  return ok & np.asarray([not e for e in errors]).reshape(num, frames)


def keyframes(valid: np.ndarray, stride: int) -> np.ndarray:
  """[W, T] bool: every `stride`-th frame of `valid [W, T]`, plus the first and last frame of
  every run of valid frames (the ends of gaps and of the window, where the warm start's
  interpolation is anchored). `stride` 1: `valid` itself."""
  valid = np.asarray(valid, bool)
  if stride <= 1:
    return valid.copy()
  t = np.arange(valid.shape[1])
  edge = np.zeros_like(valid)
  edge[:, 0], edge[:, -1] = valid[:, 0], valid[:, -1]
  edge[:, 1:] |= valid[:, 1:] & ~valid[:, :-1]  # A run starts.
  edge[:, :-1] |= valid[:, :-1] & ~valid[:, 1:]  # A run ends.
  return valid & ((t % stride == 0)[None] | edge)


def subset_frames(frames: FrameFits, keep: np.ndarray) -> FrameFits:
  """`frames` with only the fits of `keep [W, T]` (others NaN, not valid; `result` as given):
  what stage 1 on those frames alone gives (each frame's fit is independent of the others)."""
  keep = np.asarray(keep, bool) & frames.valid
  drop = lambda x: np.where(keep[..., None], x, np.nan).astype(np.float32)
  error = (None if frames.keypoint_error is None else
           np.where(keep, frames.keypoint_error, np.nan).astype(np.float32))
  return FrameFits(drop(frames.pose), drop(frames.betas), drop(frames.orient),
                   drop(frames.transl), keep, frames.result, error)


def fit_frames(fit_config: ml_collections.ConfigDict, model, body, prior,
               evidence: sequence.SequenceEvidence, stride: int = 1,
               initial: Optional[FrameFits] = None) -> FrameFits:
  """Stage 1: `fitting.fit` on every fittable frame of every window (one batch); `stride` > 1:
  only on their `keyframes` (the others are interpolated by `hypotheses`). `initial`: per-frame
  starts (e.g. the network's, `sequence_network.network_frames`), an extra restart 0 of each
  fitted frame (`fit(initial=)`); only its valid frames are fitted."""
  kp = np.asarray(evidence.keypoints, np.float32)
  conf = np.asarray(evidence.confidence, np.float32)
  num, frames = kp.shape[:2]
  valid = keyframes(fittable_frames(evidence), stride)
  if initial is not None:
    valid &= initial.valid
  flat = np.flatnonzero(valid.reshape(-1))
  rep = lambda x: np.repeat(np.asarray(x, np.float32), frames, 0)[flat]
  labelled = (conf > 0) & np.all(np.isfinite(kp), -1)
  frame_evidence = fitting.Evidence(
      np.where(labelled[..., None], kp, np.nan).reshape(num * frames, -1, 2)[flat],
      np.where(labelled, conf, 0.0).reshape(num * frames, -1)[flat],
      rep(evidence.focal), rep(evidence.principal_point))
  start = None
  if initial is not None:
    start = {k: getattr(initial, k).reshape((num * frames,) + getattr(initial, k).shape[2:])[flat]
             for k in ("pose", "betas", "orient", "transl")}
  result = fitting.fit(fit_config, model, body, prior, frame_evidence, initial=start)

  def scatter(x):
    x = np.asarray(x, np.float32)
    out = np.full((num * frames,) + x.shape[1:], np.nan, np.float32)
    out[flat] = x
    return out.reshape((num, frames) + x.shape[1:])
  v = result.variables
  return FrameFits(scatter(v["pose"]), scatter(v["betas"]), scatter(v["orient"]),
                   scatter(v["transl"]), valid, result, scatter(result.terms["keypoints"]))


def _angles(rot: np.ndarray) -> np.ndarray:
  """[T, T] geodesic angles (degrees) between rotations [T, 3, 3]."""
  trace = np.einsum("sij,tij->st", rot, rot)
  return np.degrees(np.arccos(np.clip((trace - 1) / 2, -1.0, 1.0)))


def _chain(angles: np.ndarray, allowed: np.ndarray, anchor: int, max_turn: float) -> np.ndarray:
  """[T] bool: frames reachable from `anchor` in time order by turns <= `max_turn`."""
  member = np.zeros(len(allowed), bool)
  member[anchor] = True
  for direction in (1, -1):
    last = anchor
    for t in range(anchor + direction, len(allowed) if direction > 0 else -1, direction):
      if allowed[t] and angles[last, t] <= max_turn:
        member[t], last = True, t
  return member


def orientation_chains(orient: np.ndarray, valid: np.ndarray, max_turn_deg: float = 45.0,
                       max_anchors: int = 32):
  """The two longest orientation-consistent chains of one window (module docstring).

  Args:
    orient: [T, 6] per-frame orientations (6D). valid: [T] bool.

  Returns:
    (chain0 [T] bool, chain1 [T] bool or None when every valid frame is on chain 0).
  """
  index = np.flatnonzero(valid)
  rot = np.eye(3, dtype=np.float32)[None].repeat(len(valid), 0)
  rot[index] = np.asarray(geometry.rot6d_to_matrix(jnp.asarray(orient[index])))
  angles = _angles(rot)

  def longest(allowed):
    candidates = np.flatnonzero(allowed)
    if len(candidates) > max_anchors:  # Long tracks: evenly spaced anchors.
      candidates = candidates[np.linspace(0, len(candidates) - 1, max_anchors).astype(int)]
    chains = [_chain(angles, allowed, a, max_turn_deg) for a in candidates]
    return max(chains, key=lambda c: c.sum()) if chains else None
  first = longest(valid)
  rest = valid & ~first
  return first, (longest(rest) if rest.any() else None)


def _fill(values: np.ndarray, keep: np.ndarray) -> np.ndarray:
  """[T, ...] with rows outside `keep` linearly interpolated from `keep` rows (ends held)."""
  t = np.arange(len(values))
  flat = values.reshape(len(values), -1)
  out = np.stack([np.interp(t, t[keep], flat[keep, c]) for c in range(flat.shape[1])], 1)
  return out.reshape(values.shape).astype(np.float32)


def _smooth(values: np.ndarray, length: int) -> np.ndarray:
  """[T, ...] Savitzky-Golay filtered along time (order 2; `length` odd, clipped to T)."""
  from scipy import signal  # pylint: disable=g-import-not-at-top
  length = min(length, len(values) - (1 - len(values) % 2))
  if length < 3:
    return values
  return signal.savgol_filter(values, length, 2, axis=0).astype(np.float32)


def _fill_chart(latents: np.ndarray, keep: np.ndarray, flow) -> np.ndarray:
  """[T, D] latents; rows outside `keep` interpolated in the flow's pose CHART, then encoded.

  A straight line in the latent decodes to a curve that leaves the pose manifold where the flow
  stretches; a line between the chain frames' chart angles (the shorter way round for a
  periodic chart) is the pose a linear joint-angle interpolation gives.

  Args:
    latents: [T, D] (rows outside `keep` ignored). keep: [T] bool, at least one True.
    flow: `(flowpose.prior.flow.FlowPrior, its params)`.
  """
  import jax  # pylint: disable=g-import-not-at-top
  from flowpose.prior import charts  # pylint: disable=g-import-not-at-top
  prior_flow, params = flow
  out = np.array(latents, np.float32)
  if keep.all():
    return out
  t = np.arange(len(latents))
  chart = np.asarray(jax.vmap(prior_flow.latent_to_pose, (None, 0))(
      params, jnp.asarray(out[keep])), np.float64)
  if charts.is_periodic(prior_flow.chart):
    chart = np.unwrap(chart, axis=0)  # Consecutive chain frames: the shorter way round.
  filled = np.stack([np.interp(t, t[keep], chart[:, c]) for c in range(chart.shape[1])], 1)
  if charts.is_periodic(prior_flow.chart):
    filled = np.arctan2(np.sin(filled), np.cos(filled))
  gap = ~keep
  out[gap] = np.asarray(jax.vmap(prior_flow.pose_to_latent, (None, 0))(
      params, jnp.asarray(filled[gap], jnp.float32)))
  return out


def hypotheses(frames: FrameFits, max_turn_deg: float = 45.0, smooth: int = 0,
               flow=None, max_count: int = 2) -> list:
  """Warm starts for `sequence.fit_sequence(initial=)` (module docstring).

  `smooth`: a Savitzky-Golay window (frames, odd; 0 = off) applied along time to the filled
  latents, orientations and translations: per-frame jitter removed before the joint fit.
  `flow`: `(FlowPrior, params)` to fill the latents of frames off the chain by interpolating
  in the pose chart (`_fill_chart`); None: a straight line in the latent.
  `max_count`: 1 = the longest chain's hypothesis only (half the sequence stage's work).

  Returns:
    1 or 2 dicts of "pose" [W, T, D], "betas" [W, S], "orient" [W, T, 6], "transl" [W, T, 3].
  """
  num = frames.valid.shape[0]
  usable = reliable_fits(frames)
  chains = [orientation_chains(frames.orient[w], usable[w], max_turn_deg)
            for w in range(num)]
  count = 2 if max_count > 1 and any(c1 is not None for _, c1 in chains) else 1
  out = []
  for h in range(count):
    start = {k: [] for k in ("pose", "betas", "orient", "transl")}
    for w, (c0, c1) in enumerate(chains):
      keep = c1 if h == 1 and c1 is not None else c0
      for key in ("pose", "orient", "transl"):
        if key == "pose" and flow is not None:
          filled = _fill_chart(frames.pose[w], keep, flow)
        else:
          filled = _fill(getattr(frames, key)[w], keep)
        start[key].append(_smooth(filled, smooth) if smooth else filled)
      start["betas"].append(np.median(frames.betas[w][keep], 0).astype(np.float32))
    out.append({k: np.stack(v) for k, v in start.items()})
  return out


def fit_two_stage(fit_config: ml_collections.ConfigDict, seq_config: ml_collections.ConfigDict,
                  model, body, prior, evidence: sequence.SequenceEvidence,
                  dynamics=None, dynamics_params: Optional[Any] = None, chart_residual=None,
                  flow=None):
  """Stage 1 + hypotheses + stage 2; returns `(sequence.SequenceResult, FrameFits)`.

  `flow`: `(FlowPrior, params)`, needed when `seq_config.warm_gaps == "chart"`.

  Raises:
    FitInputError: bad configs or evidence, or a window without a fittable frame.
  """
  valid = fittable_frames(evidence)
  empty = np.flatnonzero(~valid.any(1))
  if len(empty):
    raise fit_config_lib.FitInputError(
        f"sequence evidence: window(s) {empty.tolist()} have no frame whose keypoints can "
        "determine a body (no person to fit)")
  frames = fit_frames(fit_config, model, body, prior, evidence,
                      int(seq_config.get("keyframe_stride", 1)))
  starts = warm_starts(seq_config, frames, flow)
  result = sequence.fit_sequence(seq_config, body, prior, evidence, dynamics, dynamics_params,
                                 initial=starts, chart_residual=chart_residual)
  return result, frames


def warm_starts(seq_config: ml_collections.ConfigDict, frames: FrameFits, flow=None) -> list:
  """`hypotheses` as `seq_config` asks (max_turn_deg, warm_smooth, warm_gaps, max_hypotheses)."""
  return hypotheses(frames, float(seq_config.max_turn_deg), int(seq_config.warm_smooth),
                    gap_flow(seq_config, flow), int(seq_config.get("max_hypotheses", 2)))


def gap_flow(seq_config: ml_collections.ConfigDict, flow):
  """The `flow` argument of `hypotheses` for `seq_config.warm_gaps` ("latent" | "chart")."""
  mode = seq_config.get("warm_gaps", "latent")
  if mode not in ("latent", "chart"):
    raise fit_config_lib.FitInputError(
        f"sequence config: warm_gaps must be 'latent' or 'chart', got {mode!r}")
  if mode == "latent":
    return None
  if flow is None:
    raise fit_config_lib.FitInputError(
        "sequence config: warm_gaps='chart' needs the flow prior (flow=(FlowPrior, params))")
  return flow


# Stage 1's restart pruning (`fitting.restarts`): the 4 yaw restarts for the body stage's first
# 30 steps, the best 2 to step 80, the best one to the end: 280 instead of 560 restart-steps per
# frame (~1.7x faster stage 1). Session 13 (3 validation sets, WORKSPACE.md): the pruned fit keeps
# the final winner for 95-99% of frames; sequence PA within +0.6 mm.
RESTART_PRUNING = ((30, 2), (80, 1))


def per_frame_config(restart_yaws_deg=(0.0, 90.0, 180.0, 270.0)) -> ml_collections.ConfigDict:
  """Stage 1's config: the per-frame fitter's defaults, known focal, 4 yaw restarts pruned
  (`RESTART_PRUNING`; none with fewer restarts than its first cut keeps)."""
  config = fit_config_lib.default_fit_config()
  config.restart_yaws_deg = tuple(restart_yaws_deg)
  config.select_restart_after = -1
  if len(restart_yaws_deg) > RESTART_PRUNING[0][1]:
    config.restart_pruning = RESTART_PRUNING
  return config

