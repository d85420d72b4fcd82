"""One fitting stage: the per-person objective and its optax optimisers, jitted over a batch.

The objective (`person_loss`, one person, unbatched) is `losses.weighted_sum` of the terms listed
in `flowpose.fitting.fit`'s docstring. A stage runs `steps` optimiser steps on the batch's summed
loss (persons are independent: the sum separates and Adam is elementwise) inside one
`lax.fori_loop`:

  adam   `optax.chain(scale_by_adam(b2=0.99), scale_by_schedule(schedule), scale(-1))`, the
         schedule `optax.warmup_cosine_decay_schedule` (peak `lr`, end `lr * final_lr_fraction`,
         warmup `warmup_fraction` of the stage) run on the stage clock `t = step / (steps - 1)`,
         so `lr` and `steps` stay traced and stages of equal variables share one compilation;
         frozen variables go through `optax.multi_transform(..., set_to_zero())` (and their
         gradient is stopped, so nothing is back-propagated through them).
  lbfgs  `optax.lbfgs` with a zoom line search, `vmap`ped per person; frozen variables' gradients
         are stopped (the line search needs one update rule for the whole pytree).
"""

import jax
import jax.numpy as jnp
import optax

from flowpose import geometry
from flowpose import losses
from flowpose.fitting import reduced_body
from flowpose.fitting import xla_options
from flowpose.fitting.reduced_body import FitBody, pose_points
from flowpose.geometry import camera
from flowpose.losses import part_groups


def person_loss(variables, aux, weights, body: FitBody, space, prior_params, has_parts: bool,
                sigmas):
  """(total, unweighted terms) of one person (unbatched; see `flowpose.fitting.fit`).

  `sigmas` = (keypoint, part[, silhouette]); the silhouette term runs when `aux` holds
  `mask_pixels` (a static pytree key, so it costs nothing when absent).
  """
  kp_sigma, part_sigma = sigmas[:2]
  has_mask = "mask_pixels" in aux
  # A stage with the pose frozen decodes it once (`run_stage`), not once per step.
  dofs = aux["pose_dofs"] if "pose_dofs" in aux else space.decode(prior_params, variables["pose"])
  root = geometry.rot6d_to_matrix(variables["orient"])
  rooted = "rooted_subset" in aux  # Pose and shape frozen (`run_stage`): the subset is rigid.
  points = pose_points(body, dofs, root, variables["betas"], variables["transl"],
                       with_vertices=(has_parts or has_mask) and not rooted)
  if rooted:
    points = points._replace(vertices=reduced_body.subset_from_rooted(
        body, reduced_body.RootedSubset(*aux["rooted_subset"]), dofs, root,
        variables["transl"]))
  focal = jnp.exp(variables["log_focal"]) * aux["focal_aspect"]
  pp = aux["principal_point"]
  scale = losses.person_scale_from_keypoints(aux["keypoints"], aux["confidence"])
  terms = {
      "keypoints": losses.keypoint_reprojection_loss(
          camera.perspective_project(points.keypoints, focal, pp), aux["keypoints"],
          aux["confidence"] * aux["keypoint_mask"], sigma=kp_sigma, scale=scale),
      "pose_prior": space.penalty(prior_params, variables["pose"]),
      "shape_prior": losses.shape_prior(variables["betas"]),
      # The log keeps the pull scale-free; the clamp is the projection's (camera.MIN_DEPTH).
      "depth": jnp.square(jnp.log(jnp.maximum(variables["transl"][2], camera.MIN_DEPTH)) -
                          jnp.log(aux["depth_init"])),
      "focal": jnp.square(variables["log_focal"] - aux["log_focal_init"]),
  }
  if "pose_init" in aux:  # Set by `fit` for every restart (its start).
    terms["pose_anchor"] = jnp.sum(jnp.square(variables["pose"] - aux["pose_init"]))
  if "keypoints_init" in aux:  # Set by `fit` when `keypoints_anchor` is weighted.
    terms["keypoints_anchor"] = jnp.mean(jnp.sum(jnp.square(
        reduced_body.body_frame_keypoints(points.keypoints, root) - aux["keypoints_init"]), -1))
  else:
    terms["keypoints_anchor"] = jnp.zeros(())
  if has_parts:
    # = losses.part_alignment_loss on the same points, with both sets grouped by part.
    terms["parts"], _ = part_groups.grouped_part_alignment_loss(
        camera.perspective_project(points.vertices, focal, pp), body.sub_groups,
        body.sub_group_valid, aux["visibility"], aux["part_pixels"], aux["part_groups"],
        aux["part_group_valid"], sigma=part_sigma, scale=scale,
        vertices_grouped=body.sub_grouped)
  else:
    terms["parts"] = jnp.zeros(())
  if has_mask:
    # Every vertex projects inside a silhouette, occluded or not: no visibility weights.
    terms["silhouette"], _ = losses.silhouette_loss(
        camera.perspective_project(points.vertices, focal, pp), aux["mask_pixels"],
        aux["mask_valid"], sigma=sigmas[2] if len(sigmas) > 2 else part_sigma, scale=scale)
  else:
    terms["silhouette"] = jnp.zeros(())
  return losses.weighted_sum(terms, weights)


def _stop_frozen(variables, free: tuple):
  """Variables not in `free` with their gradient stopped (values unchanged)."""
  return {k: v if k in free else jax.lax.stop_gradient(v) for k, v in variables.items()}


def batch_loss(variables, aux, weights, free, body, space, prior_params, has_parts, sigmas):
  """(sum of the persons' totals, (totals [B], terms {name: [B]}))."""
  total, terms = jax.vmap(person_loss, (0, 0, None, None, None, None, None, None))(
      _stop_frozen(variables, free), aux, weights, body, space, prior_params, has_parts,
      sigmas)
  return jnp.sum(total), (total, terms)


def stage_schedule(lr, steps, final_lr_fraction: float, warmup_fraction: float = 0.0):
  """The stage's learning-rate schedule `count -> lr(count)` (see the module docstring).

  Args:
    lr: peak learning rate (may be traced).
    steps: the stage's step count (may be traced).
    final_lr_fraction: static, `lr` at the last step / peak.
    warmup_fraction: static, fraction of the stage spent in the linear warmup from 0.
  """
  if warmup_fraction > 0:
    unit = optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=1.0, warmup_steps=float(warmup_fraction), decay_steps=1.0,
        end_value=float(final_lr_fraction))
  else:  # The same values without a zero-length warmup piece.
    unit = optax.cosine_decay_schedule(1.0, decay_steps=1.0, alpha=float(final_lr_fraction))
  return lambda count: lr * unit(count / jnp.maximum(steps - 1, 1))


def adam_optimizer(variables, free: tuple, schedule) -> optax.GradientTransformation:
  """Adam on the `free` variables, `set_to_zero` on the others."""
  # b2 = 0.99, not 0.999: the gradients shrink by orders of magnitude as the fit converges and
  # a long second-moment memory then stalls the steps (noiseless 8-DOF test: 2-3 mm instead of
  # 5-12 mm PA-MPJPE in 200 steps).
  adam = optax.chain(optax.scale_by_adam(b2=0.99), optax.scale_by_schedule(schedule),
                     optax.scale(-1.0))
  labels = {k: "free" if k in free else "frozen" for k in variables}
  return optax.multi_transform({"free": adam, "frozen": optax.set_to_zero()}, labels)


def _adam_loop(variables, args, optimizer, start, stop, max_steps, opt_state):
  """Steps `start .. stop - 1` of a stage from `opt_state` (None: a fresh Adam state at step
  0); returns (variables, history [max_steps, B], the state to go on from `stop`)."""
  loss_fn = jax.value_and_grad(batch_loss, has_aux=True)
  num = variables["pose"].shape[0]

  def step(i, carry):
    params, opt_state, history = carry
    (_, (per_person, _)), grads = loss_fn(params, *args)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)
    history = jax.lax.dynamic_update_slice(history, per_person[None], (i, 0))
    return params, opt_state, history

  history = jnp.zeros((max_steps, num), jnp.float32)
  state = optimizer.init(variables) if opt_state is None else opt_state
  return jax.lax.fori_loop(start, stop, step, (variables, state, history))


def _lbfgs_loop(variables, args, steps, max_steps):
  """L-BFGS (zoom line search) per person, `vmap`ped: persons independent."""
  aux, weights, free, body, space, prior_params, has_parts, sigmas = args
  opt = optax.lbfgs(memory_size=10, linesearch=optax.scale_by_zoom_linesearch(
      max_linesearch_steps=20, initial_guess_strategy="one"))

  def person_step(params, opt_state, person_aux):
    def value_fn(p):
      return person_loss(_stop_frozen(p, free), person_aux, weights, body, space, prior_params,
                         has_parts, sigmas)[0]
    value, grad = optax.value_and_grad_from_state(value_fn)(params, state=opt_state)
    updates, opt_state = opt.update(grad, opt_state, params, value=value, grad=grad,
                                    value_fn=value_fn)
    params = optax.apply_updates(params, updates)
    # A failed line search can produce NaN; keep the last finite iterate.
    ok = jnp.all(jnp.asarray([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(params)]))
    return params, opt_state, value, ok

  def step(i, carry):
    params, opt_state, history = carry
    new_params, new_state, value, ok = jax.vmap(person_step)(params, opt_state, aux)
    keep = lambda new, old: jnp.where(ok.reshape((-1,) + (1,) * (new.ndim - 1)), new, old)
    params = jax.tree.map(keep, new_params, params)
    history = jax.lax.dynamic_update_slice(history, value[None], (i, 0))
    return params, new_state, history

  num = variables["pose"].shape[0]
  history = jnp.zeros((max_steps, num), jnp.float32)
  state = jax.vmap(opt.init)(variables)
  variables, _, history = jax.lax.fori_loop(0, steps, step, (variables, state, history))
  return variables, history


def run_stage(variables, aux, weights, lr, steps, body, prior_params, start=0, stop=None,
              opt_state=None, *, free: tuple, space, has_parts: bool, max_steps: int,
              sigmas: tuple, final_lr_fraction: float = 0.05, warmup_fraction: float = 0.0,
              optimizer: str = "adam") -> tuple:
  """`steps` optimiser steps on a batch; only the variables named in `free` move.

  Weights, lr, steps and the keypoint mask are traced, so stages that free the same variables
  share one compilation. An Adam stage can run in segments (`fit`'s restart pruning): steps
  `start .. stop - 1` of its schedule from the `opt_state` the previous segment returned.

  Args:
    variables: dict of [B, ...] arrays (see `flowpose.fitting.fit`).
    aux: dict of per-person evidence [B, ...] (keypoints, confidence, keypoint_mask,
      focal_aspect, principal_point, depth_init, log_focal_init, and with parts
      part_pixels/labels/valid, visibility).
    weights: loss weights dict of scalars.
    lr: scalar peak learning rate (unused by L-BFGS).
    steps: scalar int32 <= max_steps (the schedule's length).
    start, stop: the segment, scalars (default: 0, `steps`); Adam only.
    opt_state: the Adam state at `start` (None: a fresh one; `start` must then be 0).
    body: `FitBody`. prior_params: the pose prior's params.
    free: static tuple of the optimised variable names.
    space: static `PoseSpace`. has_parts: static.
    max_steps: static length of the loss history.
    sigmas: static (keypoint_sigma, part_sigma).
    final_lr_fraction, warmup_fraction: static, see `stage_schedule`.
    optimizer: static "adam" | "lbfgs".

  Returns:
    (variables, final per-person loss [B], final terms {name: [B]}, loss history
    [max_steps, B] with rows outside the segment zero, the optimiser state at `stop` (L-BFGS:
    None)).
  """
  if "pose" not in free:  # Loop-invariant: the flow's forward pass runs once per stage.
    aux = {**aux, "pose_dofs": jax.vmap(space.decode, (None, 0))(prior_params,
                                                                 variables["pose"])}
    if "betas" not in free and (has_parts or "mask_pixels" in aux):
      # The subset moves rigidly: skinned once per stage, not per step (`rooted_subset`).
      aux["rooted_subset"] = tuple(jax.vmap(reduced_body.rooted_subset, (None, 0, 0))(
          body, aux["pose_dofs"], variables["betas"]))
  args = (aux, weights, free, body, space, prior_params, has_parts, sigmas)
  if optimizer == "adam":
    schedule = stage_schedule(lr, steps, final_lr_fraction, warmup_fraction)
    variables, opt_state, history = _adam_loop(
        variables, args, adam_optimizer(variables, free, schedule), start,
        steps if stop is None else stop, max_steps, opt_state)
  else:
    variables, history = _lbfgs_loop(variables, args, steps, max_steps)
  _, (final, terms) = batch_loss(variables, *args)
  return variables, final, terms, history, opt_state


# Small batched ops: compiled without XLA:CPU's YNNPACK fusions (`xla_options`).
run_stage = xla_options.jit(run_stage, static_argnames=(
    "space", "has_parts", "max_steps", "sigmas", "free", "final_lr_fraction", "warmup_fraction",
    "optimizer"))
# The objective alone, `batch_loss` jitted (`fit` scores the restarts' mean where it lands).
evaluate = xla_options.jit(batch_loss, static_argnums=(3, 5, 7, 8))
