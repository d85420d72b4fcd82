"""Task "regressor": the weakly supervised reconstruction network (issue 12; Zanfir et al. 2020).

Data: `flowpose.data.evidence` (the `cmu_evidence` contract: corrupted 2D evidence in an R px
crop + clean 3D labels + `has_3d`). The network (`flowpose.models.regressor`) reads evidence
maps built on device from the batch and predicts the flow latent `z`, betas, the orientation
(6D) and a weak-perspective camera (turned into the fitter's translation with the crop's focal,
`models.regressor.camera_to_root`). The pose is the frozen trained prior's bijector applied to
z (head "flow"), or regressed directly as DOFs (head "dofs", the ablation: the prior is then
only a penalty). Body model (the fitter's reduced body), prior and losses run inside the one
jitted step.

Loss: `losses.weighted_sum` of (per example, then the batch mean):
  keypoints    robust reprojection of the 17 keypoints onto the corrupted detections,
               confidence-weighted, residuals in units of the keypoint box (`model.keypoint_sigma`)
  parts        semantic part alignment of the fitter's part vertex subset against the sampled
               part pixels (`losses.part_alignment_loss`; soft visibility from skinned normals)
  pose_prior   ||z||^2 (flow head), -2 log p_flow(DOFs) (dofs head): one scale, as the fitter's
  shape_prior  ||betas||^2
  joints3d     mean hip-centred 3D keypoint distance (metres)       } only where `has_3d`:
  joints3d_body  the same in each body's root frame (orientation removed) }
  dofs         mean squared Frobenius distance of the joint rotations } mean over the labelled
  betas        mean squared beta error                              } examples of the batch
  flip_consistency  left-right equivariance, on every example (labels not needed): the network
               also reads the mirrored evidence (`regressor_body.flip_evidence`), and its
               mirrored hip-centred 3D keypoints must equal the unmirrored prediction's
               (metres; both branches get the gradient). Skipped (0, no second branch) at
               weight 0.
Evaluation: mpjpe_mm (hip-centred COCO-17 keypoints), pa_mpjpe_mm, pve_mm (full CC0 mesh, root
joint aligned), keypoint_px (vs the clean keypoints, visible ones).
Export: `regressor_params.msgpack` (+ sha256) and a copy of the prior under `prior/`, read by
`flowpose.models.predictor.load_predictor`.

Config (`experiments/regressor_*.py`): the trainer's fields, `data` (`flowpose.data.evidence.
default_config()`), and `model`:
  prior_workdir   a trained flow prior workdir (any chart; default euler_free, D = 46)
  pose_head       "flow" | "dofs"
  inputs          evidence channels, among ("keypoints", "parts", "mask")
  heatmap_sigma   keypoint heatmap std (pixels of the crop)
  map_dropout     per-example probability that the part and mask channels are zeroed in
                  training (so keypoint-only evidence at test time is in the training data)
  widths, stem_patch, features, head_hidden, num_iterations   the network
                  (`models.regressor.Regressor`; stem_patch 0 = a conv stem, p = p x p patches)
  keypoint_sigma, part_sigma   Geman-McClure scales (person-box units)
  vertices_per_part, pixels_per_part, normals_sharpness   part term (grouped by part:
                  `losses.grouped_part_alignment_loss`, Mv vertices and Mp pixels per part)
  init_from       "" (random initialisation) or a finished regressor run whose exported network
                  (same architecture, same prior) is the starting point, e.g. `semi` fine-tuned
                  from the `weak` run on the same data
"""

import functools
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from flowpose import losses
from flowpose import metrics
from flowpose.body import model as body_lib
from flowpose.fitting import photo
from flowpose.fitting import reduced_body
from flowpose.geometry import camera
from flowpose.models import predictor
from flowpose.models import regressor as net_lib
from flowpose.models import regressor_body
from flowpose.prior import registry
from flowpose.train import config_lib

LOSS_TERMS = ("keypoints", "parts", "pose_prior", "shape_prior", "joints3d", "joints3d_body",
              "dofs", "betas", "flip_consistency")
CONFIG_FIELDS = ("model",)
MODEL_FIELDS = ("prior_workdir", "pose_head", "inputs", "heatmap_sigma", "map_dropout", "widths",
                "stem_patch", "features", "head_hidden", "num_iterations", "keypoint_sigma",
                "part_sigma", "vertices_per_part", "pixels_per_part", "normals_sharpness",
                "init_from")
# What the network reads from a batch (strings such as subject/clip stay on the host).
BATCH_FIELDS = ("keypoints", "confidence", "part_map", "mask", "part_pixels", "part_labels",
                "part_valid", "focal", "has_3d", "weight", "pose_dofs", "root_rotmat", "betas",
                "transl", "joints3d", "keypoints_clean", "visible")

load_predictor = predictor.load_predictor  # Re-exported: the task's export is read there.


def default_model_config() -> ml_collections.ConfigDict:
  """The `model` section's defaults (experiments derive from these)."""
  return ml_collections.ConfigDict(dict(
      prior_workdir="", pose_head="flow", inputs=("keypoints", "parts", "mask"),
      heatmap_sigma=1.5, map_dropout=0.1, widths=(32, 64, 128), stem_patch=4, features=512,
      head_hidden=(512, 512), num_iterations=3, keypoint_sigma=0.3, part_sigma=0.3,
      vertices_per_part=16, pixels_per_part=32, normals_sharpness=10.0, init_from=""))


@functools.lru_cache(maxsize=8)
def _context_for(model: ml_collections.FrozenConfigDict, resolution: int):
  # The first call may come from inside a trace (the trainer's jitted init): the body model
  # and the prior are host data, built eagerly, never traced.
  with jax.ensure_compile_time_eval():
    return regressor_body.make_context(model, resolution, model.prior_workdir)


def context(config: ml_collections.ConfigDict) -> regressor_body.RegressorContext:
  """The frozen `RegressorContext` of a config (memoised)."""
  return _context_for(ml_collections.FrozenConfigDict(config.model), int(config.data.resolution))


def validate_config(config: ml_collections.ConfigDict) -> None:
  """Raises ConfigError naming the first bad `model` / `data` field."""
  if "model" not in config:
    raise config_lib.ConfigError("config model: missing section")
  model = config.model
  config_lib.check_keys(model, "model", MODEL_FIELDS)
  for field in MODEL_FIELDS:
    if field not in model:
      raise config_lib.ConfigError(f"config model.{field}: missing")
  if not isinstance(model.prior_workdir, str) or not model.prior_workdir:
    config_lib.fail("model.prior_workdir", "a trained flow prior workdir "
                    "(python -m launch.main --config=experiments/prior_cmu.py)",
                    model.prior_workdir)
  if model.pose_head not in net_lib.POSE_HEADS:
    config_lib.fail("model.pose_head", f"one of {net_lib.POSE_HEADS}", model.pose_head)
  inputs = tuple(model.inputs)
  if not inputs or not set(inputs) <= set(net_lib.INPUTS) or len(set(inputs)) != len(inputs):
    config_lib.fail("model.inputs", f"distinct names among {net_lib.INPUTS}", inputs)
  for field in ("heatmap_sigma", "keypoint_sigma", "part_sigma", "normals_sharpness"):
    if not config_lib.number(model[field]) or model[field] <= 0:
      config_lib.fail(f"model.{field}", "a positive float", model[field])
  if not config_lib.number(model.map_dropout) or not 0 <= model.map_dropout < 1:
    config_lib.fail("model.map_dropout", "a probability in [0, 1)", model.map_dropout)
  for field in ("features", "num_iterations", "vertices_per_part", "pixels_per_part"):
    config_lib.positive_int(model, field, "model.")
  if not isinstance(model.init_from, str):
    config_lib.fail("model.init_from", "a regressor workdir or \"\"", model.init_from)
  if (not isinstance(model.stem_patch, int) or isinstance(model.stem_patch, bool)
      or model.stem_patch < 0 or model.stem_patch == 1):
    config_lib.fail("model.stem_patch", "0 (3x3 stride-2 conv stem) or a patch size >= 2",
                    model.stem_patch)
  for field in ("widths", "head_hidden"):
    sizes = tuple(model[field])
    if not sizes or not all(isinstance(s, int) and s > 0 for s in sizes):
      config_lib.fail(f"model.{field}", "a non-empty tuple of positive ints", sizes)
  from flowpose.data import evidence  # pylint: disable=g-import-not-at-top
  if hasattr(evidence, "validate"):  # The data section is the evidence pipeline's.
    evidence.validate(config.data)
  resolution = config_lib.positive_int(config.data, "resolution", "data.", minimum=8)
  factor = net_lib.downsampling(tuple(model.widths), model.stem_patch)
  if resolution % factor:
    config_lib.fail("data.resolution", f"a multiple of {factor} (model.stem_patch, or 2, times "
                    "one halving per further model.widths entry)", resolution)
  try:  # Loads the body and the prior now: a bad prior is named before any work.
    context(config)
  except registry.PriorRegistryError as e:
    raise config_lib.ConfigError(str(e)) from e


# ---------------------------------------------------------------------------
# The forward model and the loss.
# ---------------------------------------------------------------------------


def predict_batch(params: Any, batch: dict, config: ml_collections.ConfigDict,
                  rng: Any = None, flip_average: bool = False) -> dict:
  """Network + body for a batch: `regressor_body.decode` fields + `regressor_body.posed` fields
  (`keypoints` renamed `keypoints3d`) + `keypoints2d [B, K, 2]`, `vertices2d [B, Vs, 2]`.

  `rng` (training only) drives `model.map_dropout`. `flip_average` (inference): the network
  also reads the mirrored evidence and the two predictions are averaged
  (`regressor_body.mean_with_mirror_image`; twice the network's work).
  """
  if rng is not None and flip_average:
    raise ValueError("predict_batch: flip_average is for inference (rng must be None)")
  ctx = context(config)
  focal = jnp.asarray(batch["focal"], jnp.float32)
  if rng is None or config.model.map_dropout <= 0:
    out = regressor_body.network_decode(ctx, params, batch, flip_average)
    return _posed_prediction(ctx, out, focal)
  maps = regressor_body.input_maps(ctx, batch)
  keep_maps = jax.random.bernoulli(rng, 1.0 - config.model.map_dropout, (maps.shape[0],))
  channel = np.concatenate([np.full(net_lib.num_channels((name,), 17, ctx.body.num_parts),
                                    name == "keypoints") for name in config.model.inputs])
  maps = maps * jnp.where(channel | keep_maps[:, None, None, None], 1.0, 0.0)
  theta = ctx.net.apply({"params": params["net"]}, maps, ctx.theta_init)[-1]
  return _posed_prediction(ctx, regressor_body.decode(ctx, theta, focal), focal)


def _posed_prediction(ctx: regressor_body.RegressorContext, out: dict, focal: jax.Array) -> dict:
  """`decode` fields `out` + the posed body's points and their projections (`predict_batch`)."""
  points = regressor_body.posed(ctx, out["dofs"], out["root_rotmat"], out["betas"], out["transl"])
  centre = jnp.full((focal.shape[0], 2), ctx.resolution / 2.0)
  focal2 = jnp.stack([focal, focal], -1)
  out.update(keypoints3d=points["keypoints"], joints=points["joints"],
             vertices=points["vertices"], visibility=points["visibility"],
             keypoints2d=camera.perspective_project(points["keypoints"], focal2, centre),
             vertices2d=camera.perspective_project(points["vertices"], focal2, centre))
  return out


def part_term(ctx: regressor_body.RegressorContext, vertices2d: jax.Array,
              visibility: jax.Array, batch: dict, scale: jax.Array) -> jax.Array:
  """`[B]` part alignment of the subset vertices `vertices2d [B, Vs, 2]` (soft `visibility
  [B, Vs]`) against the batch's sampled part pixels, in units of `scale [B]`.

  Grouped by part (`losses.grouped_part_alignment_loss`: one `[P, Mp, Mv]` distance tensor
  per example, ~1/P of the dense `[N, Vs]` work of `losses.part_alignment_loss`); pixels
  beyond `model.pixels_per_part` in a part are left out.
  """
  model = ctx.model_config

  def one(v, vis, pix, lab, valid, s):
    groups, ok = regressor_body.group_pixels(lab, valid, ctx.body.num_parts,
                                             model.pixels_per_part)
    return losses.grouped_part_alignment_loss(
        v, ctx.body.sub_groups, ctx.body.sub_group_valid, vis, pix, groups, ok,
        sigma=model.part_sigma, scale=s, vertices_grouped=ctx.body.sub_grouped)[0]
  return jax.vmap(one)(vertices2d, visibility, batch["part_pixels"],
                       jnp.asarray(batch["part_labels"], jnp.int32),
                       jnp.asarray(batch["part_valid"], bool), scale)


def _masked_mean(values: jax.Array, mask: jax.Array) -> jax.Array:
  """Mean of `values [B]` over `mask [B]`; 0 without any, and no gradient from masked rows."""
  mask = jnp.asarray(mask, bool)
  return jnp.sum(jnp.where(mask, values, 0.0)) / jnp.maximum(jnp.sum(mask), 1)


def loss_terms(params: Any, batch: dict, config: ml_collections.ConfigDict,
               rng: Any = None) -> dict:
  """The unweighted terms of `LOSS_TERMS` (scalars) for a batch."""
  ctx = context(config)
  model = config.model
  flip_weight = float(config.loss_weights.get("flip_consistency", 0.0))
  if flip_weight > 0:  # One pass over [evidence; its mirror image].
    size = jnp.shape(batch["keypoints"])[0]
    mirrored = regressor_body.flip_evidence(batch, ctx.resolution)
    both = {k: jnp.concatenate([jnp.asarray(batch[k]), mirrored[k]]) for k in mirrored}
    out_both = predict_batch(params, both, config, rng)
    out = jax.tree.map(lambda x: x[:size], out_both)
    flipped = jax.tree.map(lambda x: x[size:], out_both)
  else:
    out = predict_batch(params, batch, config, rng)
  kp, conf = jnp.asarray(batch["keypoints"], jnp.float32), batch["confidence"]
  scale = jax.vmap(losses.person_scale_from_keypoints)(kp, conf)
  keypoint_loss = jax.vmap(functools.partial(
      losses.keypoint_reprojection_loss, sigma=model.keypoint_sigma))(
          out["keypoints2d"], kp, conf, scale=scale)
  parts = part_term(ctx, out["vertices2d"], out["visibility"], batch, scale)
  if model.pose_head == "flow":
    pose_prior = losses.latent_prior(out["pose"])
  else:  # -2 log p: ||z||^2 + const for a Gaussian, the scale of the flow head's term.
    pose_prior = -2.0 * ctx.prior.space.density(ctx.prior.params, out["dofs"])
  weight = jnp.asarray(batch["weight"], jnp.float32)
  mean = lambda x: jnp.sum(weight * x) / jnp.maximum(jnp.sum(weight), 1.0)
  # 3D terms: labelled (and real) examples only.
  labelled = jnp.asarray(batch["has_3d"], bool) & (weight > 0)
  # Labels of unlabelled examples are replaced before any arithmetic: whatever they hold
  # (NaN, garbage) must not reach the gradient through the masked rows.
  label = lambda key: jnp.where(labelled.reshape((-1,) + (1,) * (batch[key].ndim - 1)),
                                jnp.asarray(batch[key], jnp.float32), 0.0)
  true_rotmats = jax.vmap(ctx.body.pose_to_rotmats)(label("pose_dofs"), label("root_rotmat"))
  pred_centred = reduced_body.hip_centred(out["keypoints3d"])
  true_centred = reduced_body.hip_centred(label("joints3d"))
  distance = lambda a, b: jnp.sqrt(jnp.sum(jnp.square(a - b), -1) + 1e-10)
  joint_error = distance(pred_centred, true_centred)
  # The same in each body's own root frame (R_root^T x): the articulated pose's error apart
  # from the global orientation's (a 180-degree yaw doubt from 2D must not blur the pose).
  in_body = lambda x, rot: jnp.einsum("bij,bki->bkj", rot, x)
  body_error = distance(in_body(pred_centred, out["root_rotmat"]),
                        in_body(true_centred, label("root_rotmat")))
  return {
      "keypoints": mean(keypoint_loss),
      "parts": mean(parts),
      "pose_prior": mean(pose_prior),
      "shape_prior": mean(losses.shape_prior(out["betas"])),
      "joints3d": _masked_mean(jnp.mean(joint_error, -1), labelled),
      "joints3d_body": _masked_mean(jnp.mean(body_error, -1), labelled),
      "dofs": _masked_mean(jnp.mean(jnp.sum(jnp.square(out["rotmats"] - true_rotmats),
                                            (-1, -2)), -1), labelled),
      "betas": _masked_mean(jnp.mean(jnp.square(out["betas"] - label("betas")), -1), labelled),
      "flip_consistency": (mean(jnp.mean(distance(
          pred_centred, reduced_body.hip_centred(
              regressor_body.mirror_keypoints3d(flipped["keypoints3d"]))),
          -1)) if flip_weight > 0 else jnp.zeros((), jnp.float32)),
  }


def loss(params: Any, batch: dict, rng: jax.Array, config: ml_collections.ConfigDict):
  """`(weighted total, unweighted terms)` (module docstring)."""
  terms = loss_terms(params, batch, config, rng)
  total, terms = losses.weighted_sum(terms, dict(config.loss_weights))
  return total, dict(terms)


def init(config: ml_collections.ConfigDict, rng: jax.Array, example_batch) -> Any:
  """`{"net": Flax params}` (the prior and the body are frozen constants, not params): random,
  or those of the run `model.init_from` (checked: same network shapes, same prior)."""
  ctx = context(config)
  maps = regressor_body.input_maps(ctx, jax.tree.map(lambda x: x[:2], example_batch))
  params = {"net": ctx.net.init(rng, maps, ctx.theta_init)["params"]}
  init_from = config.model.get("init_from", "")  # Runs before session 9 have no such field.
  if init_from:
    try:
      with jax.ensure_compile_time_eval():
        params = predictor.load_params_like(init_from, ctx, params)
    except predictor.RegressorLoadError as e:
      raise config_lib.ConfigError(f"config model.init_from: {e}") from None
  return params


# ---------------------------------------------------------------------------
# Evaluation.
# ---------------------------------------------------------------------------


def batch_errors(out: dict, batch: dict, model: body_lib.BodyModel) -> dict:
  """Per-example errors `[B]` of predictions `out` (`predict_batch` fields) against the batch's
  clean labels: mpjpe_mm, pa_mpjpe_mm (COCO-17, hip-centred), pve_mm (full mesh, root joint
  aligned), keypoint_px (visible clean keypoints)."""
  true_rotmats = jax.vmap(photo.body_rotmats_fn)(batch["pose_dofs"], batch["root_rotmat"])
  fwd = jax.vmap(body_lib.forward, (None, 0, 0, 0))
  pred_mesh = fwd(model, out["rotmats"], out["betas"], out["transl"])
  true_mesh = fwd(model, true_rotmats, batch["betas"], batch["transl"])
  truth = jnp.asarray(batch["joints3d"], jnp.float32)
  visible = jnp.asarray(batch["visible"], jnp.float32)
  px = jnp.linalg.norm(out["keypoints2d"] - batch["keypoints_clean"], axis=-1)
  return {
      "mpjpe_mm": metrics.mpjpe(reduced_body.hip_centred(out["keypoints3d"]),
                                reduced_body.hip_centred(truth), root_index=None),
      "pa_mpjpe_mm": metrics.pa_mpjpe(out["keypoints3d"], truth),
      "pve_mm": metrics.pve(pred_mesh.vertices, true_mesh.vertices, pred_mesh.joints[:, 0],
                            true_mesh.joints[:, 0]),
      "keypoint_px": jnp.sum(px * visible, -1) / jnp.maximum(jnp.sum(visible, -1), 1.0),
  }


@functools.lru_cache(maxsize=8)
def _eval_fn(model_config: ml_collections.FrozenConfigDict, resolution: int):
  config = ml_collections.ConfigDict({"model": model_config, "data": {"resolution": resolution}})

  @jax.jit
  def sums(params, batch, model):
    errors = batch_errors(predict_batch(params, batch, config), batch, model)
    weight = jnp.asarray(batch["weight"], jnp.float32)
    return {k: jnp.sum(weight * v) for k, v in errors.items()}, jnp.sum(weight)
  return sums


def evaluate(params: Any, dataset, config: ml_collections.ConfigDict) -> dict:
  """Mean `batch_errors` over the (padded, weighted) eval batches."""
  fn = _eval_fn(ml_collections.FrozenConfigDict(config.model), int(config.data.resolution))
  model = context(config).model
  totals, count = {}, 0.0
  for batch in dataset:
    sums, n = jax.device_get(fn(params, batch, model))
    for key, value in sums.items():
      totals[key] = totals.get(key, 0.0) + float(value)
    count += float(n)
  return {key: value / max(count, 1.0) for key, value in totals.items()}


# ---------------------------------------------------------------------------
# Data and export.
# ---------------------------------------------------------------------------


def select_fields(ds):
  """The `BATCH_FIELDS` of a tf.data stream of dict batches (drops the string fields)."""
  return ds.map(lambda batch: {k: batch[k] for k in BATCH_FIELDS if k in batch})


def input_pipeline(config: ml_collections.ConfigDict, split: str, process_index: int,
                   process_count: int, start_step: int = 0):
  """"train": `flowpose.data.evidence.train_dataset` (infinite, this process's share of each
  step's batch); "eval": `eval_dataset` of `config.data.eval_split` (default "validation")."""
  from flowpose.data import evidence  # pylint: disable=g-import-not-at-top
  if split == "train":
    return select_fields(evidence.train_dataset(
        config.data, process_index, process_count, config.batch_size // process_count,
        config.seed, start_step))
  if split == "eval":
    return select_fields(evidence.eval_dataset(
        config.data, config.data.get("eval_split", "validation"), config.eval_batch_size))
  raise ValueError(f"regressor input_pipeline: split {split!r}, expected 'train' or 'eval'")


def export(workdir: str, params: Any, config: ml_collections.ConfigDict) -> str:
  """Writes what `load_predictor` reads (params + the prior); returns the params path."""
  return predictor.export(workdir, params, config)
