"""Temporal fitting: T frames of one person jointly, with the latent dynamics model as prior.

Per window (a leading [W] batches independent windows; jitted, `vmap`ped):

  pose [T, D]     a latent z per frame (the flow prior's space, `flowpose.prior.registry`)
  betas [S]       one body shape for the whole window
  orient [T, 6]   global orientation per frame, 6D (body -> OpenCV camera)
  transl [T, 3]   translation per frame (camera frame, metres)

The focal length is known (fixed). Loss: `flowpose.fitting.sequence_loss` (its terms, weighted
by `config.loss_weights`, one dict with every term).

Schedule: `config.stages` as in `flowpose.fitting.fit` (`stage.adam_optimizer` +
`stage.stage_schedule`, frozen variables through `set_to_zero`), restarts over
`config.restart_yaws_deg`, the best restart per window kept after the last stage. The body and
the initial translation come from `fitting.reduced_body` (`rest_points`, `initial_translation`).

Warm start (`initial=`, what `fitting.sequence_init.fit_two_stage` passes): a list of start
hypotheses built from per-frame fits, each a dict of every variable with a leading [W]; they
replace the yaw restarts, `config.warm_stages` replaces `config.stages`, and the depth term
pulls towards each start's own depths.
"""

from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from flowpose import geometry
from flowpose.fitting import sequence_loss
from flowpose.fitting import stage as stage_lib
from flowpose.fitting import xla_options
from flowpose.fitting.config import FitInputError  # pylint: disable=g-importing-member
from flowpose.fitting.reduced_body import (TORSO_KEYPOINTS, FitBody, PosePrior,  # pylint: disable=g-importing-member
                                           facing_camera_rotation, initial_translation,
                                           rest_points)
from flowpose.geometry import camera
from flowpose.models import chart_residual as chart_residual_lib
from flowpose.models import dynamics as dynamics_lib

VARIABLES = ("pose", "betas", "orient", "transl")
LOSS_TERMS = sequence_loss.LOSS_TERMS
window_loss = sequence_loss.window_loss
MIN_KEYPOINTS = 2  # A frame with fewer labelled keypoints has no evidence.


def default_sequence_config() -> ml_collections.ConfigDict:
  """The sequence-fitting config (experiments/benchmarks override fields)."""
  c = ml_collections.ConfigDict()
  c.restart_yaws_deg = (0.0, 180.0)
  c.keypoint_sigma = 0.3  # Person-box units, as the per-frame fitter.
  c.final_lr_fraction = 0.05
  # Tuned on validation windows (subject 13, benchmarks/tune_video.py, WORKSPACE.md) and on the
  # same windows with every joint angle x1.4 (off the pose prior, as unseen subjects are):
  # dynamics 0.5 + joint_smooth 1e2 beat session 5's dynamics 0.2 + no joint_smooth on both
  # (PA equal / -2.1 mm, accel -1.2 / -8.6, occluded PA -1.5 / -2.2); joint_smooth 1e3 costs
  # 2.5 mm PA on validation; the chart term (`chart_dynamics`) costs 2-8 mm there, so it is off.
  # Session 7 (4 sets: validation seeds 0/1, each also x1.4): the motion model half forward,
  # half backward (0.25 + 0.25) beat forward 0.5 on 3 of 4 (x1.4 PA -0.8 / -2.5 mm); with the
  # keyframes below, gap_velocity 30: occluded PA -1.3 / -1.2 / -1.4 mm on 3 of 4 (+0.7 on
  # one; 300 loses 5-9 mm); the 3D least acceleration and the static prior in gaps lost.
  # Session 8 (the 0.5 s occlusion touching the window's end, `--occlusion_at=end`, the same 4
  # sets): the static prior on gaps open at a window end, open_gap_prior 0.2: occluded PA
  # -5.1 / -1.4 / -1.8 / -4.9 mm (1 and 5 pull to the mean pose: +16 to +33); holding the
  # last latent (open_gap_velocity 30-3e4) tied or lost (-0.7 to +6.1); on gaps with 1-2
  # frames of evidence beyond them (open_gap_support 2, 3) the prior loses (+0.6 to +2.3).
  # Session 12 (3 sets, 16 windows each: validation seeds 0 / 1 and cmu_more/asfamc fitted with
  # a prior and motion model trained without it; failed stage-1 fits dropped, `sequence_init.
  # reliable_fits`): the gap pulled to the straight 3D line between its ends (gap_chord 1e4)
  # instead of the latent step damping (gap_velocity 30 -> 0), and the motion model lighter
  # (0.25 -> 0.1 each way): PA 53.3 / 59.2 / 87.2 -> 49.7 / 53.9 / 80.0 mm, occluded PA 65.1 /
  # 68.1 / 102.8 -> 60.6 / 61.4 / 94.0 (smoothed 63.0 / 68.4 / 102.4), accel 7.4 / 6.9 / 10.6
  # -> 7.6 / 7.2 / 10.6 (`results/video/tune_val_s12.json`; the motion model at 0: accel 17-24).
  c.loss_weights = dict(keypoints=1e4, dynamics=0.1, dynamics_backward=0.1,
                        chart_dynamics=0.0, pose_prior=0.05, gap_prior=0.0, gap_velocity=0.0,
                        open_gap_velocity=0.0, open_gap_prior=0.2,
                        shape_prior=0.05, transl_smooth=1e4, orient_smooth=1e2,
                        joint_smooth=1e2, gap_smooth=0.0, gap_chord=1e4, depth=1.0)
  c.stages = [
      dict(name="camera", steps=40, lr=0.02, free=("orient", "transl"), keypoints="torso",
           loss_weights={}),
      dict(name="body", steps=200, lr=0.05, free=VARIABLES, keypoints="all", loss_weights={}),
  ]
  # From per-frame fits (`initial=`): one joint stage (validation: lr 0.05 beat 0.02; 300 steps
  # were worse than 150). Session 13 (speed, the 3 sets above, PA mm; tune_val_s13.json): with
  # keyframes every 8th frame, 150 -> 120 steps at lr 0.06: 49.3 / 54.5 / 79.5 -> 49.3 / 55.7 /
  # 80.4 (135 at 0.05: 49.3 / 55.0 / 80.2, 106 and 100 frames/s on two test runs: too near 100).
  c.warm_stages = [
      dict(name="joint", steps=120, lr=0.06, free=VARIABLES, keypoints="all", loss_weights={}),
  ]
  c.max_turn_deg = 45.0  # sequence_init: largest orientation change between chained frames.
  # "evidence" (module docstring): validation 61.4 -> 61.1 mm PA, occluded 73.8 -> 73.2; x1.4
  # angles: equal (114.7 / 114.8).
  c.pose_prior_frames = "evidence"
  c.warm_gaps = "latent"  # Gap warm start: a line in "latent" | "chart" (chart worse: see tuning).
  c.warm_smooth = 0  # sequence_init: Savitzky-Golay window over the warm starts (0 = off).
  # Stage 1 on every 4th frame (+ the ends of gaps) and one warm start per window: better AND
  # ~2x cheaper per stage (validation seed 1: accel 23.2 -> 7.6, a warm start's 105-degree flip
  # gone; x1.4: PA 101.7 -> 96.3, occluded 112.0 -> 105.9; seed 0 within +-1 mm PA). Every 8th
  # (session 13, 3 sets, PA mm): 49.7 / 53.9 / 80.0 -> 49.3 / 54.5 / 79.5, stage 1 ~1.6x faster.
  c.max_hypotheses = 1  # sequence_init: warm starts per window (1: the longest chain only).
  c.keyframe_stride = 8  # sequence_init: stage 1 fits every k-th frame (+ gap ends) only.
  # The `open_gap_*` terms' gaps: fewer than this many frames with evidence on one side.
  c.open_gap_support = 1
  # Stage 1 from the reconstruction network (`fitting.sequence_network`, when a network is
  # given): the network's start of each keyframe refined by `fitting.fit` for (camera, body)
  # steps from 2 restarts (the network's, yaw 0: half the 4 yaw restarts of per-frame stage 1);
  # () = the network's predictions alone. Session 9 (validation seeds 0 / 1, gap inside; the
  # `fully` network, keypoints only; dynamics PA / accel / occluded PA mm, 150 sequence steps):
  # per-frame fits 63.9/7.7/75.9, 59.7/7.6/68.2; network alone 79.5/12.4/89.0, 85.9/11.3/93.5;
  # refined (20, 60) 69.8/7.9/82.2, 62.4/7.2/70.0; (30, 100) 66.6/8.0/80.6, 64.1/7.0/71.4;
  # (60, 140) 60.3/7.5/74.4, 58.7/6.7/67.6 (better than per-frame fits on all three); gap at
  # the window's end (`--occlusion_at=end`): 64.8/6.7/88.3, 78.7/6.6/102.6 against 69.8/7.1/88.8,
  # 70.6/6.5/98.0 (seed 1 loses 8 mm: mixed). Every 8th frame refined: 65.2 (seed 0, loses).
  c.network_refine_steps = (60, 140)
  # The warm stage's steps when stage 1 is the network (0: `warm_stages`' own). From the refined
  # network start, 100 steps keep the per-frame-start errors at 150 (seeds 0 / 1: 61.5/7.8/75.8,
  # 59.9/7.0/67.7); 80: 62.3/8.1/76.3, 60.5/7.3/68.4; 50: 63.5/9.1/76.7, 61.4/8.7/69.3; gap at
  # the end, 100 vs 150: +1.6 / +1.4 mm PA. (`results/video/tune_val_s9_*.json`.)
  c.network_sequence_steps = 100
  return c


def validate_sequence_config(config: ml_collections.ConfigDict) -> None:
  """Raises FitInputError naming the first bad field."""
  def bad(field, expected, value):
    raise FitInputError(f"sequence config {field}: expected {expected}, got {value!r}")
  if sorted(dict(config.loss_weights)) != sorted(LOSS_TERMS):
    bad("loss_weights", f"exactly the terms {LOSS_TERMS}", sorted(dict(config.loss_weights)))
  if config.get("pose_prior_frames", "all") not in ("all", "evidence"):
    bad("pose_prior_frames", "'all' or 'evidence'", config.pose_prior_frames)
  steps = config.get("network_sequence_steps", 0)
  if not isinstance(steps, int) or steps < 0:
    bad("network_sequence_steps", "an int >= 0 (0: the warm stage's steps)", steps)
  for field in ("max_hypotheses", "keyframe_stride", "open_gap_support"):
    if not isinstance(config.get(field, 1), int) or config.get(field, 1) < 1:
      bad(field, "an int >= 1", config.get(field))
  if not config.restart_yaws_deg:
    bad("restart_yaws_deg", "a non-empty tuple", config.restart_yaws_deg)
  refine = tuple(config.get("network_refine_steps", ()))
  if refine and (len(refine) != 2 or not all(isinstance(n, int) and n >= 1 for n in refine)):
    bad("network_refine_steps", "() or (camera steps, body steps), ints >= 1", refine)
  stages = [(f"stages[{i}]", s) for i, s in enumerate(config.stages)]
  stages += [(f"warm_stages[{i}]", s) for i, s in enumerate(config.get("warm_stages", []))]
  for i, stage in stages:
    stage = dict(stage)
    if not set(stage.get("free", ())) <= set(VARIABLES) or not stage.get("free"):
      bad(f"{i}.free", f"a non-empty subset of {VARIABLES}", stage.get("free"))
    if not isinstance(stage.get("steps"), int) or stage["steps"] < 1:
      bad(f"{i}.steps", "an int >= 1", stage.get("steps"))
    if stage.get("keypoints") not in ("all", "torso"):
      bad(f"{i}.keypoints", "'all' or 'torso'", stage.get("keypoints"))
    if not set(dict(stage.get("loss_weights", {}))) <= set(LOSS_TERMS):
      bad(f"{i}.loss_weights", f"keys among {LOSS_TERMS}", stage.get("loss_weights"))


class SequenceEvidence(NamedTuple):
  """2D tracks of W windows of T frames (one person each).

  Attributes:
    keypoints: [W, T, K, 2] pixels (NaN where missing).
    confidence: [W, T, K] (0 = missing; a frame of zeros has no evidence).
    focal: [W, 2] pixels (known). principal_point: [W, 2].
  """
  keypoints: Any
  confidence: Any
  focal: Any
  principal_point: Any


class SequenceResult(NamedTuple):
  """Fitted windows (numpy, leading [W]).

  Attributes:
    variables: the optimised variables (module docstring).
    pose_dofs: [W, T, 50]. rotmats: [W, T, J, 3, 3] local rotations (root = camera frame).
    joints: [W, T, J, 3] camera-frame joints. keypoints_2d: [W, T, K, 2] projected model keypoints.
    betas: [W, S]. transl: [W, T, 3]. loss: [W]. terms: name -> [W]. restart: [W].
  """
  variables: dict
  pose_dofs: np.ndarray
  rotmats: np.ndarray
  joints: np.ndarray
  keypoints_2d: np.ndarray
  betas: np.ndarray
  transl: np.ndarray
  loss: np.ndarray
  terms: dict
  restart: np.ndarray


def _batch_loss(variables, aux, weights, free, body, space, prior_params, dynamics,
                dynamics_params, sigma, chart, chart_arrays, skip):
  variables = {k: v if k in free else jax.lax.stop_gradient(v) for k, v in variables.items()}
  residual = None if chart is None else chart_residual_lib.ChartResidual(chart, *chart_arrays)
  loss = lambda v, a: window_loss(v, a, weights, body, space, prior_params, dynamics,
                                 dynamics_params, sigma, residual, skip)
  total, terms = jax.vmap(loss)(variables, aux)
  return jnp.sum(total), (total, terms)


def run_sequence_stage(variables, aux, weights, lr, steps, body, prior_params, dynamics_params,
                       chart_arrays=None, *, free: tuple, space, dynamics, sigma: float,
                       final_lr_fraction: float = 0.05, chart: Optional[str] = None,
                       skip: tuple = ()):
  """`steps` Adam steps on a batch of windows; returns (variables, totals [W], terms).

  `chart`, `chart_arrays`: the chart residual's chart name and (mean, precision), or None.
  `skip`: loss terms not computed (`sequence_loss.window_loss`).
  """
  args = (aux, weights, free, body, space, prior_params, dynamics, dynamics_params, sigma,
          chart, chart_arrays, skip)
  optimizer = stage_lib.adam_optimizer(
      variables, free, stage_lib.stage_schedule(lr, steps, final_lr_fraction))
  grad_fn = jax.grad(_batch_loss, has_aux=True)

  def step(_, carry):
    params, state = carry
    grads, _ = grad_fn(params, *args)
    updates, state = optimizer.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  variables, _ = jax.lax.fori_loop(0, steps, step, (variables, optimizer.init(variables)))
  _, (total, terms) = _batch_loss(variables, *args)
  return variables, total, terms


# XLA:CPU YNNPACK fusions off: the step is hundreds of small ops (fitting/xla_options.py).
run_sequence_stage = xla_options.jit(
    run_sequence_stage,
    static_argnames=("free", "space", "dynamics", "sigma", "final_lr_fraction", "chart", "skip"))


@jax.jit(static_argnames=("space",))
def _decode_result(body, prior_params, variables, focal, principal_point, *, space):
  """dofs [W, T, 50], rotmats [W, T, J, 3, 3], points, keypoints_2d [W, T, K, 2] of the kept
  fits (one compiled program: op by op, the flow decode of every frame costs seconds)."""
  dofs, roots, points = jax.vmap(
      lambda v: sequence_loss.decode_window(body, space, prior_params, v))(variables)
  rotmats = jax.vmap(jax.vmap(body.pose_to_rotmats))(dofs, roots)
  kp2d = camera.perspective_project(points.keypoints, focal[:, None], principal_point[:, None])
  return dofs, rotmats, points, kp2d


def open_gap_frames(frame_valid: np.ndarray, support: int = 1) -> np.ndarray:
  """[..., T] bool: frames without evidence that have fewer than `support` frames with
  evidence before them or after them (`frame_valid [..., T]`). `support` 1: the gaps open at
  the window's start or end; 3: also those with one or two frames of evidence beyond them
  (too few for the second-order motion model to read a velocity from that side)."""
  valid = np.asarray(frame_valid, bool)
  before = np.cumsum(valid, -1) >= support
  after = np.flip(np.cumsum(np.flip(valid, -1), -1), -1) >= support
  return ~valid & ~(before & after)


def _fill_missing(values: np.ndarray, valid: np.ndarray) -> np.ndarray:
  """[T, C] with rows where `valid` is False linearly interpolated (held at the ends)."""
  if not valid.any():
    return values
  t = np.arange(len(values))
  return np.stack([np.interp(t, t[valid], values[valid, c]) for c in range(values.shape[1])], 1)


def _initial(body, prior, evidence, yaw_deg, frame_valid):
  """Initial variables and aux entries of every window for one yaw."""
  kp = np.asarray(evidence.keypoints, np.float64)
  conf = np.asarray(evidence.confidence, np.float64)
  num, frames = kp.shape[:2]
  root = facing_camera_rotation(yaw_deg)
  focal = np.repeat(np.asarray(evidence.focal, np.float64), frames, 0)
  pp = np.repeat(np.asarray(evidence.principal_point, np.float64), frames, 0)
  transl, _ = initial_translation(kp.reshape(num * frames, -1, 2),
                                  conf.reshape(num * frames, -1), focal, pp,
                                  *rest_points(body, prior),
                                  np.broadcast_to(root, (num * frames, 3, 3)))
  transl = transl.reshape(num, frames, 3)
  transl = np.stack([_fill_missing(transl[w], frame_valid[w]) for w in range(num)])
  variables = {
      "pose": jnp.broadcast_to(prior.init, (num, frames, prior.space.dim)),
      "betas": jnp.zeros((num, body.j_shapedirs.shape[-1])),
      "orient": jnp.broadcast_to(geometry.matrix_to_rot6d(jnp.asarray(root, jnp.float32)),
                                 (num, frames, 6)),
      "transl": jnp.asarray(transl),
  }
  return (jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), variables),
          jnp.asarray(transl[..., 2], jnp.float32))


def _warm(initial: list, num: int, frames: int, body: FitBody, prior: PosePrior):
  """Checked warm-start hypotheses -> [(variables, depth_init)] (module docstring)."""
  shapes = {"pose": (num, frames, prior.space.dim), "betas": (num, body.j_shapedirs.shape[-1]),
            "orient": (num, frames, 6), "transl": (num, frames, 3)}
  out = []
  for h, start in enumerate(initial):
    variables = {}
    for key, shape in shapes.items():
      value = np.asarray(start.get(key) if isinstance(start, dict) else None, np.float32)
      if value.shape != shape or not np.all(np.isfinite(value)):
        raise FitInputError(f"sequence initial[{h}].{key}: expected finite {list(shape)}, got "
                            f"{value.shape}")
      variables[key] = jnp.asarray(value)
    depth = np.maximum(np.asarray(start["transl"])[..., 2], camera.MIN_DEPTH)
    out.append((variables, jnp.asarray(depth, jnp.float32)))
  return out


def fit_sequence(config: ml_collections.ConfigDict, body: FitBody, prior: PosePrior,
                 evidence: SequenceEvidence, dynamics: Optional[dynamics_lib.Dynamics] = None,
                 dynamics_params: Any = None, initial: Optional[list] = None,
                 chart_residual: Optional[chart_residual_lib.ChartResidual] = None
                 ) -> SequenceResult:
  """Fits W windows of T frames jointly (see the module docstring).

  Args:
    config: `default_sequence_config()` fields.
    body: `reduced_body.make_fit_body(...)`.
    prior: a `flowpose.prior.registry.PosePrior` (the flow: `registry.load("flow", W)`).
    evidence: `SequenceEvidence` [W, T, ...].
    dynamics, dynamics_params: the motion model (`dynamics_io.load_dynamics`); None: constant
      velocity in the latent space.
    initial: optional warm-start hypotheses (module docstring; `sequence_init.hypotheses`).
    chart_residual: the `chart_dynamics` term's model (`models.chart_residual.load`); None:
      that term is 0.

  Raises:
    FitInputError: bad config or shapes, T < 3, or a window without any frame with evidence.
  """
  validate_sequence_config(config)
  kp = np.asarray(evidence.keypoints, np.float32)
  conf = np.asarray(evidence.confidence, np.float32)
  if kp.ndim != 4 or kp.shape[-1] != 2 or conf.shape != kp.shape[:3]:
    raise FitInputError(f"sequence evidence: expected keypoints [W, T, K, 2] and confidence "
                        f"[W, T, K], got {kp.shape} and {conf.shape}")
  num, frames, num_kp = kp.shape[:3]
  if frames < dynamics_lib.ORDER + 1:
    raise FitInputError(f"sequence evidence: T = {frames} frames, expected >= 3")
  labelled = (conf > 0) & np.all(np.isfinite(kp), -1)
  frame_valid = labelled.sum(-1) >= MIN_KEYPOINTS
  empty = np.flatnonzero(~frame_valid.any(1))
  if len(empty):
    raise FitInputError(f"sequence evidence: window(s) {empty.tolist()} have no frame with "
                        f">= {MIN_KEYPOINTS} labelled keypoints (no person to fit)")
  if initial:
    inits, stages = _warm(initial, num, frames, body, prior), config.warm_stages
  else:
    inits = [_initial(body, prior, evidence, yaw, frame_valid)
             for yaw in config.restart_yaws_deg]
    stages = config.stages
  yaws = range(len(inits))  # Restarts.
  variables = jax.tree.map(lambda *x: jnp.concatenate(x), *[v for v, _ in inits])
  reps = lambda x: jnp.concatenate([jnp.asarray(x, jnp.float32)] * len(yaws))
  chord_index, chord_weight = sequence_loss.chord_ends(frame_valid)
  aux = {"keypoints": reps(np.where(labelled[..., None], kp, 0.0)),
         "confidence": reps(np.where(labelled, conf, 0.0)),
         "focal": reps(evidence.focal), "principal_point": reps(evidence.principal_point),
         "frame_valid": reps(frame_valid),
         "prior_frames": reps(frame_valid if config.pose_prior_frames == "evidence" else
                              np.ones_like(frame_valid)),
         "open_gap": reps(open_gap_frames(frame_valid, int(config.get("open_gap_support", 1)))),
         "chord_weight": reps(chord_weight),
         "chord_index": jnp.concatenate([jnp.asarray(chord_index)] * len(yaws)),
         "depth_init": jnp.concatenate([d for _, d in inits])}
  torso = np.zeros(num_kp, np.float32)
  torso[list(TORSO_KEYPOINTS)] = 1.0
  chart, chart_arrays = None, None
  if chart_residual is not None:
    chart = chart_residual.chart
    chart_arrays = (jnp.asarray(chart_residual.mean), jnp.asarray(chart_residual.precision))
  total = terms = None
  stage_weights = [{**dict(config.loss_weights), **dict(s["loss_weights"])} for s in stages]
  # Terms weighted 0 in every stage are not computed (the motion model's MLP is a large part
  # of a step); the weights stay traced, so a variant's nonzero weights share one compile.
  skip = tuple(k for k in ("dynamics", "dynamics_backward")
               if all(float(w[k]) == 0.0 for w in stage_weights))
  for stage, weights in zip((dict(s) for s in stages), stage_weights):
    mask = torso if stage["keypoints"] == "torso" else np.ones(num_kp, np.float32)
    aux["keypoint_mask"] = jnp.broadcast_to(jnp.asarray(mask), (len(yaws) * num, num_kp))
    weights = {k: jnp.float32(v) for k, v in weights.items()}
    variables, total, terms = run_sequence_stage(
        variables, aux, weights, jnp.float32(stage["lr"]), jnp.int32(stage["steps"]), body,
        prior.params, dynamics_params, chart_arrays,
        free=tuple(k for k in VARIABLES if k in stage["free"]),
        space=prior.space, dynamics=dynamics, sigma=float(config.keypoint_sigma),
        final_lr_fraction=float(config.final_lr_fraction), chart=chart, skip=skip)
  per_restart = np.asarray(total).reshape(len(yaws), num)
  kept = np.argmin(np.where(np.isfinite(per_restart), per_restart, np.inf), 0)
  index = kept * num + np.arange(num)
  variables = jax.tree.map(lambda x: x[index], variables)
  aux = jax.tree.map(lambda x: x[index], aux)
  dofs, rotmats, points, kp2d = _decode_result(body, prior.params, variables, aux["focal"],
                                                aux["principal_point"], space=prior.space)
  variables = jax.tree.map(np.asarray, variables)
  return SequenceResult(variables, np.asarray(dofs), np.asarray(rotmats),
                        np.asarray(points.joints), np.asarray(kp2d), variables["betas"],
                        variables["transl"], np.asarray(total)[index],
                        {k: np.asarray(v)[index] for k, v in terms.items()}, kept)
