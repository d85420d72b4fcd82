"""Batched latent-space fitting of the body model to 2D evidence.

After Zanfir et al. (ECCV 2020): the pose is optimised in the Gaussian latent
space of a normalizing-flow prior (or a baseline, see `flowpose.prior.registry`)
against robust 2D keypoint reprojection and semantic body-part alignment. The
objective and the optax optimisers of one stage live in `flowpose.fitting.stage`.

Variables per person (pytree `dict`, every leaf with a leading `[B]`):
  pose [D]      pose variable (latent z for flow/gaussian, DOFs otherwise)
  betas [S]     shape coefficients
  orient [6]    global orientation, 6D (body frame -> OpenCV camera frame)
  transl [3]    translation in the camera frame (metres)
  log_focal []  log focal length (pixels); only moves when "focal" is free

Loss (`config.loss_weights`, one dict, all terms always present):
  keypoints    robust, confidence-weighted reprojection, residuals divided by
               the person's keypoint box size (`keypoint_sigma` in its units)
  parts        `losses.part_alignment_loss` on a per-part vertex subset (computed on points
               grouped by part, `losses.part_groups`: same value), the visibility (z-buffer
               of the current estimate, or normals) recomputed before every stage; 0 without
               part evidence
  silhouette   `losses.silhouette_loss` (part alignment with one part) of the same vertex
               subset against person-mask pixels, every vertex counted (a silhouette holds
               occluded vertices too); 0 without `fit(..., mask=MaskEvidence)`
  pose_prior   the registry's penalty: ||z||^2 (flow, gaussian), -2 log p (gmm8), 0 (none)
  pose_anchor, keypoints_anchor  ||pose - its restart's start's||^2 in the prior's space, and
               the same for the hip-centred body-frame 3D keypoints (mean, m^2); 0 by default
  shape_prior  ||betas||^2
  depth        (log z - log z_init)^2: the depth near its start (scale/depth ambiguity)
  focal        (log f - log f_init)^2 (the focal/depth ambiguity)

Schedule: `config.stages`, a list of dicts `{name, steps, lr, free,
keypoints, loss_weights, optimizer}` (`free` names variables, `keypoints` is
"all" or "torso", `loss_weights` overrides entries of `config.loss_weights`).
Each stage runs its optax optimizer for `steps` in one jitted
`lax.fori_loop` over the batch (`stage.run_stage`: warmup-cosine schedule,
frozen variables through `multi_transform` + `set_to_zero`); persons are
independent, so batched and one-at-a-time results agree.

Checks (`flowpose.fitting.checks`): evidence that cannot determine a body (fewer than 2
labelled keypoints, all on one pixel, a person entirely outside or far larger than the image)
raises `FitInputError` naming the person; `FitResult.warnings` lists per person what bound
silently before: the initial depth clamp, and points behind or within `camera.MIN_DEPTH` of the
camera plane at the end (where the projection's depth clamp binds).

Restarts: every person is fitted from each yaw in `config.restart_yaws_deg`
(0 = facing the camera, 180 = back to it); after stage `config.select_restart_after`
(-1 = the last) the lowest-loss restart is kept per person, and inside that stage
`config.restart_pruning` may drop the worst ones early (`flowpose.fitting.restarts`); with
`config.restart_mean_temperature` T > 0 the pose latent and betas are instead the restarts'
mean weighted by exp(-evidence loss / T), placed as the best (`restarts.mean_articulation`).

Initialisation: by default every restart starts from the prior's mean pose, zero betas, the
restart's yaw facing the camera and the similar-triangles translation. `fit(..., initial=...)`
(e.g. a regressor network's prediction) adds ONE extra restart, restart 0, whose variables named
in `initial` replace those defaults (the rest keep the yaw-0 defaults); a sequence of such
dicts adds one restart each, in order, before the yaws (e.g. a network's reads); the yaw
restarts still run and compete with it (a network can be wrong about front/back), and its depth
and focal priors pull towards its own `transl` z and `log_focal`.
`FitResult.restart_labels` names the restarts ("initial" or "initial0", "initial1", ..., then
the yaws).
"""

import functools
import time
from typing import Any, NamedTuple, Optional

from absl import logging
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from flowpose import geometry
from flowpose import losses
from flowpose.body import model as body_lib
from flowpose.body.cpu_kernel import raster as cpu_raster
from flowpose.evidence import raster
from flowpose.evidence import views
from flowpose.fitting import checks
from flowpose.geometry import camera
from flowpose.losses import part_groups
from flowpose.fitting.reduced_body import (INIT_DEPTH_RANGE, FitBody, PosePrior,  # pylint: disable=g-importing-member
                                           TORSO_KEYPOINTS, body_frame_keypoints, pose_points)
from flowpose.fitting import initial as initial_lib
from flowpose.fitting import restarts
from flowpose.fitting import stage as stage_lib
# The config lives in its own module; re-exported so `fit.X` works.
from flowpose.fitting.config import (LOSS_TERMS, OPTIMIZERS, STAGE_FIELDS,  # pylint: disable=g-importing-member,unused-import
                                     VARIABLES, VISIBILITY, FitInputError,
                                     default_fit_config, validate_fit_config)

class Evidence(NamedTuple):
  """2D evidence of B persons (one image each).

  Attributes:
    keypoints: [B, K, 2] pixels (NaN where missing).
    confidence: [B, K] (0 = missing).
    focal: [B, 2] known or initial focal lengths (pixels).
    principal_point: [B, 2].
    part_pixels: optional [B, N, 2] labelled pixels (`sample_part_pixels`).
    part_labels, part_valid: optional [B, N] int, bool.
  """
  keypoints: Any
  confidence: Any
  focal: Any
  principal_point: Any
  part_pixels: Any = None
  part_labels: Any = None
  part_valid: Any = None

  @property
  def has_parts(self) -> bool:
    return self.part_pixels is not None


class MaskEvidence(NamedTuple):
  """Person masks of B persons for the silhouette term (`fit(..., mask=)`).

  Kept out of `Evidence` so code that rebuilds an `Evidence` field by field keeps working.

  Attributes:
    pixels: [B, M, 2] pixel centres inside each person's mask (`losses.sample_mask_pixels`).
    valid: [B, M] bool (a person without a mask: all False, no term).
  """
  pixels: Any
  valid: Any


class FitResult(NamedTuple):
  """Fitted parameters (numpy, leading [B]).

  Attributes:
    variables: the optimised variables (see module docstring).
    pose_dofs: [B, D]. rotmats: [B, J, 3, 3] local rotations.
    betas: [B, S]. transl: [B, 3]. focal: [B, 2].
    loss: [B] final total loss. terms: name -> [B] unweighted final terms.
    restart: [B] index of the kept restart.
    restart_losses: [B, R] each restart's loss when the best was chosen.
    history: per stage, [steps, B'] total loss per step.
    warnings: [B] lists of messages (`checks.result_warnings`), also logged.
    restart_labels: [R] what each restart started from: "initial" (`fit(initial=)`) or a yaw.
  """
  variables: dict
  pose_dofs: np.ndarray
  rotmats: np.ndarray
  betas: np.ndarray
  transl: np.ndarray
  focal: np.ndarray
  loss: np.ndarray
  terms: dict
  restart: np.ndarray
  restart_losses: np.ndarray
  history: list
  warnings: tuple = ()
  restart_labels: tuple = ()


# ---------------------------------------------------------------------------
# Host-side helpers.
# ---------------------------------------------------------------------------


@functools.partial(jax.jit, static_argnames=("space",))
def _decode_batch(body: FitBody, space, params, pose, orient):
  dofs = jax.vmap(space.decode, (None, 0))(params, pose)
  return dofs, jax.vmap(body.pose_to_rotmats)(dofs, geometry.rot6d_to_matrix(orient))


_camera_keypoints = jax.jit(lambda body, dofs, roots, betas, transl: jax.vmap(
    pose_points, (None, 0, 0, 0, 0, None))(body, dofs, roots, betas, transl, False).keypoints)


def decode_rotmats(body: FitBody, prior: PosePrior, variables: dict):
  """(pose_dofs [B, D], local rotmats [B, J, 3, 3]) of batched variables."""
  # Jitted: eagerly, the flow's decode dispatched ~0.3 s of small ops per call (profile).
  return _decode_batch(body, prior.space, prior.params, variables["pose"], variables["orient"])


@functools.partial(jax.jit, static_argnames=("space",))
def _posed_vertices(model, body: FitBody, space, params, variables):
  """[B, V, 3] full meshes in the camera frame (the visibility renders' input)."""
  _, rotmats = _decode_batch(body, space, params, variables["pose"], variables["orient"])
  return jax.vmap(body_lib.forward, (None, 0, 0, 0))(
      model, rotmats, variables["betas"], variables["transl"]).vertices


def _visibility(model, body, prior, variables, aux, mode, image_size):
  """[B, Vs] visibility of the subset vertices for the current estimate."""
  num = variables["pose"].shape[0]
  if mode == "all":
    return np.ones((num, body.sub_index.shape[0]), np.float32)
  vertices = _posed_vertices(model, body, prior.space, prior.params, variables)
  verts = np.asarray(vertices)
  sub = np.asarray(body.sub_index)
  focal = np.exp(np.asarray(variables["log_focal"]))[:, None] * np.asarray(
      aux["focal_aspect"])
  if mode == "normals":  # One jitted call for the batch, not one eager call per person.
    return np.asarray(_normals_visibility(vertices, model.faces))[:, sub]
  faces = np.ascontiguousarray(np.asarray(model.faces), np.int64)  # Converted once, not per row.
  principal = np.asarray(aux["principal_point"])

  def row(b):
    cam = raster.PinholeCamera(np.eye(3), np.zeros(3), focal[b], principal[b])
    x_cam, uv = views.to_camera(verts[b], cam)
    # The CPU kernel (tested equal to numpy's, ~40x faster); numpy is the fallback without it.
    fast = cpu_raster.subset_visibility(x_cam, uv, faces, image_size, cam.focal,
                                        cam.principal_point, sub, near=camera.MIN_DEPTH)
    return fast if fast is not None else raster.vertex_visibility(
        verts[b], faces, cam, image_size)[sub]

  # Rows on one thread per core (the renders were ~1/3 of a parts fit's wall time, issue 15).
  rows = cpu_raster.map_rows(row, num)
  return np.stack(rows).astype(np.float32) if rows else np.zeros((0, len(sub)), np.float32)


_normals_visibility = jax.jit(jax.vmap(losses.soft_visibility_from_normals, (0, None)))


def _keypoint_mask(which: str, num_keypoints: int) -> np.ndarray:
  mask = np.ones(num_keypoints, np.float32)
  if which == "torso":
    mask[:] = 0.0
    mask[list(TORSO_KEYPOINTS)] = 1.0
  return mask


def _evidence_aux(evidence: Evidence, num_parts: int,
                  mask: Optional[MaskEvidence] = None) -> dict:
  focal = np.asarray(evidence.focal, np.float32)
  aux = {"keypoints": jnp.asarray(evidence.keypoints, jnp.float32),
         "confidence": jnp.asarray(evidence.confidence, jnp.float32),
         "principal_point": jnp.asarray(evidence.principal_point, jnp.float32),
         # f = exp(log_focal) * aspect keeps fx/fy fixed while f scales.
         "focal_aspect": jnp.asarray(focal / focal.mean(-1, keepdims=True))}
  if evidence.has_parts:
    aux["part_pixels"] = jnp.asarray(evidence.part_pixels, jnp.float32)
    aux["part_labels"] = jnp.asarray(evidence.part_labels, jnp.int32)
    aux["part_valid"] = jnp.asarray(evidence.part_valid, bool)
    # Pixels grouped by part for the part term (`losses.part_groups`).
    groups = part_groups.group_by_label(evidence.part_labels, evidence.part_valid, num_parts)
    aux["part_groups"] = jnp.asarray(groups.index)
    aux["part_group_valid"] = jnp.asarray(groups.valid)
  if mask is not None:
    aux["mask_pixels"] = jnp.asarray(mask.pixels, jnp.float32)
    aux["mask_valid"] = jnp.asarray(mask.valid, bool)
  return aux


def fit(config: ml_collections.ConfigDict, model: body_lib.BodyModel,
        body: FitBody, prior: PosePrior, evidence: Evidence,
        image_size: Optional[tuple] = None, *,
        initial=None, mask: Optional[MaskEvidence] = None) -> FitResult:
  """Fits B persons jointly (restarts, stages; see the module docstring).

  Args:
    config: fitting config (`default_fit_config()` fields).
    model: the full body model (visibility renders between stages).
    body: `make_fit_body(model, ...)`.
    prior: a `flowpose.prior.registry.PosePrior` (`registry.load(name, workdir)`).
    evidence: `Evidence` with a leading [B].
    image_size: (H, W), needed for z-buffer visibility with part evidence; enables the
      in-image checks of `checks.evidence_errors`.
    initial: optional dict, any subset of `VARIABLES` with a leading [B] (pose in the prior's
      space, e.g. latent z for flow): an extra restart 0 starting there (module docstring); or
      a sequence of such dicts: restarts 0, 1, ... starting there.
    mask: optional `MaskEvidence` with a leading [B]: enables the silhouette term.

  Returns:
    A `FitResult`.

  Raises:
    FitInputError: a bad config, evidence shape, or evidence that cannot determine a body
      (`checks.evidence_errors`, naming the person).
  """
  validate_fit_config(config)
  kp = np.asarray(evidence.keypoints)
  if kp.ndim != 3 or kp.shape[-1] != 2:
    raise FitInputError(f"evidence.keypoints: expected [B, K, 2], got "
                        f"{kp.shape}")
  num, num_kp = kp.shape[:2]
  for b, problems in enumerate(checks.evidence_errors(kp, evidence.confidence, image_size)):
    if problems:
      raise FitInputError(f"evidence of person {b}: " + "; ".join(problems))
  has_parts = evidence.has_parts
  if has_parts and config.visibility == "zbuffer" and image_size is None:
    raise FitInputError("fit: image_size is needed for z-buffer visibility")
  yaws = tuple(config.restart_yaws_deg)
  if mask is not None and np.shape(mask.pixels)[:1] != (num,):
    raise FitInputError(f"mask.pixels: expected [B={num}, M, 2], got {np.shape(mask.pixels)}")
  base_aux = _evidence_aux(evidence, body.num_parts, mask)
  # Restarts are stacked restart-major: row r * B + b.
  inits = [initial_lib.initial_variables(body, prior, evidence, yaw) for yaw in yaws]
  starts = initial_lib.initial_list(initial)
  if starts:
    default = initial_lib.initial_variables(body, prior, evidence, 0.0)
    inits[:0] = [initial_lib.initial_restart(start, default, num) for start in starts]
  num_restarts = len(inits)
  variables = jax.tree.map(lambda *x: jnp.concatenate(x),
                           *[v for v, _ in inits])
  aux = {**jax.tree.map(lambda x: jnp.concatenate([x] * num_restarts),
                        base_aux),
         **jax.tree.map(lambda *x: jnp.concatenate(x), *[a for _, a in inits])}
  stages = [dict(s) for s in config.stages]
  base_weights = dict(config.loss_weights)
  if any({**base_weights, **dict(s["loss_weights"])}["keypoints_anchor"] > 0 for s in stages):
    dofs, rotmats = decode_rotmats(body, prior, variables)  # The term's centres: each start's.
    aux["keypoints_init"] = body_frame_keypoints(_camera_keypoints(
        body, dofs, rotmats[:, 0], variables["betas"], variables["transl"]), rotmats[:, 0])
  select_after = config.select_restart_after % len(stages)
  sigmas = (float(config.keypoint_sigma), float(config.part_sigma),
            float(config.get("silhouette_sigma", config.part_sigma)))
  alive = restarts.start(num_restarts, num)
  history = []
  max_steps = max(int(s["steps"]) for s in stages)
  for i, stage in enumerate(stages):
    aux["keypoint_mask"] = jnp.broadcast_to(jnp.asarray(_keypoint_mask(
        stage["keypoints"], num_kp)), (variables["pose"].shape[0], num_kp))
    if has_parts:
      aux["visibility"] = jnp.asarray(_visibility(
          model, body, prior, variables, aux, config.visibility, image_size))
    weights = {k: jnp.float32(v) for k, v in
               {**base_weights, **dict(stage["loss_weights"])}.items()}
    start, hist, opt_state = time.time(), 0.0, None
    cuts = tuple(config.get("restart_pruning", ())) if i == select_after else ()
    for begin, stop, keep in restarts.segments(stage["steps"], cuts):
      variables, final, terms, part, opt_state = stage_lib.run_stage(
          variables, aux, weights, jnp.float32(stage["lr"]), jnp.int32(stage["steps"]), body,
          prior.params, jnp.int32(begin), jnp.int32(stop), opt_state,
          free=tuple(k for k in VARIABLES if k in stage["free"]),
          final_lr_fraction=float(config.final_lr_fraction),
          warmup_fraction=float(config.get("warmup_fraction", 0.0)), space=prior.space,
          has_parts=has_parts, max_steps=max_steps, sigmas=sigmas,
          optimizer=stage["optimizer"])
      hist = hist + part  # Segments write disjoint steps (zeros elsewhere).
      if keep is not None and keep < alive.restart.shape[0]:
        index, alive = restarts.keep_best(alive, final, keep)
        variables, aux, opt_state = restarts.take_rows(
            (variables, aux, opt_state), index, variables["pose"].shape[0])
        hist = hist[:, index]  # [max_steps, rows]: the kept restarts' losses so far.
    final.block_until_ready()
    logging.info("fit stage %s: %d steps, %.2fs, mean loss %.4g", stage["name"],
                 stage["steps"], time.time() - start, float(jnp.mean(final)))
    history.append(np.asarray(hist)[:stage["steps"]])
    if i == select_after:  # The best restart per person (NaN never wins), or the restarts'
      index, alive = restarts.keep_best(alive, final, 1)  # mean (`restart_mean_temperature`).
      mean = restarts.restart_mean(variables, terms, weights, index, num,
                                   config.get("restart_mean_temperature", 0.0))
      variables, aux, final, terms = restarts.take_rows((variables, aux, final, terms), index,
                                                        len(final))
      if mean is not None:  # The loss where the mean landed (the parts' visibility: the best's).
        variables = mean
        _, (final, terms) = stage_lib.evaluate(variables, aux, weights, (), body, prior.space,
                                                 prior.params, has_parts, sigmas)
  kept, restart_losses = alive.restart[0], alive.losses
  dofs, rotmats = decode_rotmats(body, prior, variables)
  focal = np.exp(np.asarray(variables["log_focal"]))[:, None] * np.asarray(
      aux["focal_aspect"])
  variables = jax.tree.map(np.asarray, variables)
  keypoints_cam = _camera_keypoints(body, dofs, rotmats[:, 0], variables["betas"],
                                    variables["transl"])
  warnings = checks.result_warnings(np.asarray(aux["depth_init_clamped"]),
                                    np.asarray(aux["depth_init"]), np.asarray(keypoints_cam),
                                    variables["transl"], INIT_DEPTH_RANGE)
  for b, messages in enumerate(warnings):
    for message in messages:
      logging.warning("fit, person %d: %s", b, message)
  return FitResult(
      variables=variables, pose_dofs=np.asarray(dofs),
      rotmats=np.asarray(rotmats), betas=variables["betas"],
      transl=variables["transl"], focal=focal, loss=np.asarray(final),
      terms={k: np.asarray(v) for k, v in terms.items()}, restart=kept,
      restart_losses=restart_losses, history=history, warnings=warnings,
      restart_labels=initial_lib.restart_labels(config, len(starts)))


def body_outputs(model: body_lib.BodyModel, result: FitResult,
                 chunk: int = 64) -> body_lib.BodyOutput:
  """Full posed meshes [B, V, 3], joints [B, J, 3] etc. of a fit (camera frame)."""
  fwd = jax.jit(jax.vmap(body_lib.forward, (None, 0, 0, 0)))
  outs = [fwd(model, result.rotmats[i:i + chunk], result.betas[i:i + chunk],
              result.transl[i:i + chunk])
          for i in range(0, len(result.betas), chunk)]
  return jax.tree.map(lambda *x: np.concatenate([np.asarray(a) for a in x]),
                      *outs)
