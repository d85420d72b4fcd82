"""What the reconstruction network's output means on the body, and the frozen pieces it needs.

`RegressorContext` holds everything frozen that the network's loss, evaluation and inference
share: the full CC0 body model (PVE), the fitter's reduced body (`fitting.reduced_body.FitBody`:
keypoints + a per-part vertex subset, exact and cheap), the trained flow prior (frozen; its
bijector turns the latent into the pose), the network module and the start of its iterations.
`make_context(model_config, resolution, prior_workdir)` builds it (memoised by callers).

`decode(context, theta, focal)` turns the head's output into the fitter's variables
(`flowpose.fitting.config.VARIABLES`: pose = the flow latent, betas, orient 6D, transl) plus the
DOFs and joint rotations; `posed(context, decoded)` gives camera-frame keypoints, joints, subset
vertices and their soft visibility (vertex normals skinned with the joint rotations; a
sigmoid of the normal's cosine to the camera ray; self-occlusion ignored, gradient stopped).
"""

from typing import Any, NamedTuple, Tuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from flowpose import geometry
from flowpose.data import cmu_skeleton
from flowpose.data import evidence_augment
from flowpose.data import retarget
from flowpose.body import lbs
from flowpose.evidence import shading
from flowpose.fitting import photo
from flowpose.fitting import reduced_body
from flowpose.models import regressor as net_lib
from flowpose.prior import charts
from flowpose.prior import io as prior_io
from flowpose.prior import registry


class RegressorContext(NamedTuple):
  """Frozen pieces of the network's forward model (see the module docstring).

  Attributes:
    model: the full `BodyModel`. body: the `FitBody` (decoder `photo.body_rotmats_fn`).
    prior: the flow `PosePrior` (`registry.make_flow`). flow: its `FlowPrior`.
    net: the `Regressor` module. layout: its `ThetaLayout`. theta_init: `[T]`.
    rest_normals: `[Vs, 3]` unit outward normals of the subset vertices at rest.
    model_config: the `config.model` section (frozen). resolution: crop size R.
  """
  model: Any
  body: Any
  prior: Any
  flow: Any
  net: Any
  layout: Any
  theta_init: Any
  rest_normals: Any
  model_config: Any
  resolution: int


def make_context(model_config: ml_collections.ConfigDict, resolution: int,
                 prior_workdir: str, model: Any = None) -> RegressorContext:
  """Builds the context (loads the body model and the trained flow prior).

  Args:
    model_config: `config.model` (see `flowpose.tasks.regressor`).
    resolution: R, the evidence crop size.
    prior_workdir: a trained flow prior (`prior_params.msgpack` + `config.json`).
    model: the body model; None = the CC0 model (`assets.load_cc0_model`).

  Raises:
    flowpose.prior.registry.PriorRegistryError: the prior cannot be loaded (names the file).
  """
  if model is None:
    from flowpose.body.build import assets  # pylint: disable=g-import-not-at-top
    model = assets.load_cc0_model()
  body = reduced_body.make_fit_body(model, photo.body_rotmats_fn,
                                    model_config.vertices_per_part)
  # The DOF -> rotation decoder caches the model's rest alignment on first use; make that use
  # happen here, on the host, not inside the first jitted step or evaluation that decodes.
  retarget.default_alignment()
  try:
    flow, flow_params, _ = prior_io.load_trained_prior(prior_workdir)
  except (OSError, ValueError, KeyError, TypeError) as e:
    raise registry.PriorRegistryError(
        f"config model.prior_workdir: cannot load the flow prior from {prior_workdir} ({e})"
    ) from e
  prior = registry.make_flow(flow=flow, flow_params=flow_params)
  # Both heads predict D = the prior's chart dimension (46 for the default `euler_free`: the
  # four clavicle DOFs CMU never moves stay at 0 through `charts.to_dofs`).
  layout = net_lib.ThetaLayout(prior.space.dim, int(body.j_shapedirs.shape[-1]))
  if model_config.pose_head == "flow":
    pose_init = np.zeros(layout.pose_dim, np.float32)
  else:  # The chart coordinates of the flow's z = 0: its typical pose.
    pose_init = np.asarray(flow.latent_to_pose(flow_params, prior.init))
  net = net_lib.Regressor(
      widths=tuple(model_config.widths), features=model_config.features,
      head_hidden=tuple(model_config.head_hidden),
      num_iterations=model_config.num_iterations, theta_dim=layout.dim,
      stem_patch=int(model_config.get("stem_patch", 0)))
  rest = np.asarray(model.v_template, np.float64)
  normals = shading.vertex_normals(rest, np.asarray(model.faces))[np.asarray(body.sub_index)]
  return RegressorContext(model, body, prior, flow, net, layout,
                          jnp.asarray(net_lib.initial_theta(layout, pose_init), jnp.float32),
                          jnp.asarray(normals, jnp.float32),
                          ml_collections.FrozenConfigDict(model_config), int(resolution))


def input_maps(context: RegressorContext, batch: dict) -> jax.Array:
  """`[B, R, R, C]` encoder input of a batch (`net_lib.evidence_maps`)."""
  config = context.model_config
  return net_lib.evidence_maps(batch, resolution=context.resolution,
                               num_parts=context.body.num_parts, inputs=tuple(config.inputs),
                               heatmap_sigma=config.heatmap_sigma)


def rest_root(context: RegressorContext, betas: jax.Array) -> jax.Array:
  """`[..., 3]` the root joint at rest for `betas [..., S]` (the body rotates about it)."""
  body = context.body
  return body.j_template[0] + betas @ body.j_shapedirs[0].T


def decode(context: RegressorContext, theta: jax.Array, focal: jax.Array) -> dict:
  """The head's `theta [B, T]` -> variables and pose (jnp).

  Args:
    context: the `RegressorContext`.
    theta: `[B, T]` the network's output.
    focal: `[B]` the crop's focal length (pixels).

  Returns:
    `{pose [B, D] (flow latent, or chart coordinates for the "dofs" head), dofs [B, 50], betas [B, S],
    orient [B, 6], root_rotmat [B, 3, 3], rotmats [B, J, 3, 3] (local), transl [B, 3],
    root [B, 3] (root joint, camera frame)}`.
  """
  parts = context.layout.split(theta)
  if context.model_config.pose_head == "flow":
    dofs = jax.vmap(context.prior.space.decode, (None, 0))(context.prior.params, parts["pose"])
  else:  # Chart coordinates -> the 50 DOFs (fixed DOFs of `euler_free` at 0).
    dofs = charts.to_dofs(context.flow.chart, parts["pose"])
  root_rotmat = geometry.rot6d_to_matrix(parts["orient"])
  root = net_lib.camera_to_root(parts["camera"], focal, context.resolution)
  return {
      "pose": parts["pose"], "dofs": dofs, "betas": parts["betas"], "orient": parts["orient"],
      "root_rotmat": root_rotmat,
      "rotmats": jax.vmap(context.body.pose_to_rotmats)(dofs, root_rotmat),
      "transl": root - rest_root(context, parts["betas"]), "root": root,
  }


def network_decode(context: RegressorContext, params: Any, batch: dict,
                   flip_average: bool = False) -> dict:
  """`decode` fields `[B, ...]` of the network's prediction for the evidence of `batch`
  (`EVIDENCE_FIELDS`; `params["net"]` the network's parameters). `flip_average`: the network
  also reads the mirrored evidence (`flip_evidence`, one pass over twice the batch) and the
  two predictions are averaged (`mean_with_mirror_image`)."""
  if not flip_average:
    theta = context.net.apply({"params": params["net"]}, input_maps(context, batch),
                              context.theta_init)[-1]
    return decode(context, theta, jnp.asarray(batch["focal"], jnp.float32))
  return mean_with_mirror_image(context, *_both_reads(context, params, batch))


# The reads `network_reads` returns, by name.
NETWORK_READS = ("mean", "read", "mirrored")


def network_reads(context: RegressorContext, params: Any, batch: dict) -> dict:
  """The network's reads of the evidence of `batch` from one pass over it and its mirror image,
  `{name: decode fields [B, ...]}` by `NETWORK_READS`: "read" of the evidence itself, "mirrored"
  of its mirror image mapped back (`mirror_back`), "mean" their `mean_with_mirror_image` (=
  `network_decode(..., flip_average=True)`)."""
  out, flipped = _both_reads(context, params, batch)
  return {"mean": mean_with_mirror_image(context, out, flipped), "read": out,
          "mirrored": mirror_back(context, flipped)}


def _both_reads(context: RegressorContext, params: Any, batch: dict) -> tuple[dict, dict]:
  """`decode` fields of the network on the evidence and on its mirror image (one pass over
  twice the batch; the mirrored prediction as read, in the mirrored scene)."""
  size = np.shape(batch["focal"])[0]
  mirrored = flip_evidence(batch, context.resolution)
  both = {k: jnp.concatenate([jnp.asarray(batch[k]), jnp.asarray(v)]) for k, v in mirrored.items()}
  theta = context.net.apply({"params": params["net"]}, input_maps(context, both),
                            context.theta_init)[-1]
  decoded = decode(context, theta, jnp.asarray(both["focal"], jnp.float32))
  return (jax.tree.map(lambda x: x[:size], decoded), jax.tree.map(lambda x: x[size:], decoded))


def _posed_one(body, rest_normals, sharpness, dofs, root_rotmat, betas, transl):
  points = reduced_body.pose_points(body, dofs, root_rotmat, betas, transl)
  rotmats = body.pose_to_rotmats(dofs, root_rotmat)
  rest_joints = body.j_template + body.j_shapedirs @ betas
  global_rot, _ = lbs.forward_kinematics(body.parents, rotmats, rest_joints)
  # Normals follow the rotation part of linear blend skinning (no shape/scale change).
  normals = jnp.einsum("vk,vkab,vb->va", body.sub_skin_weights,
                       global_rot[body.sub_skin_indices], rest_normals)
  to_camera = -points.vertices
  cos = jnp.sum(normals * to_camera, -1) * jax.lax.rsqrt(
      jnp.sum(jnp.square(normals), -1) * jnp.sum(jnp.square(to_camera), -1) + 1e-12)
  visibility = jax.lax.stop_gradient(jax.nn.sigmoid(sharpness * cos))
  return points.keypoints, points.joints, points.vertices, visibility


def posed(context: RegressorContext, dofs, root_rotmat, betas, transl) -> dict:
  """Camera-frame points of B bodies.

  Args:
    dofs: `[B, D]`; root_rotmat: `[B, 3, 3]`; betas: `[B, S]`; transl: `[B, 3]`.

  Returns:
    `{keypoints [B, K, 3], joints [B, J, 3], vertices [B, Vs, 3] (the part subset),
    visibility [B, Vs] (soft, from normals, gradient stopped)}`.
  """
  fn = jax.vmap(_posed_one, (None, None, None, 0, 0, 0, 0))
  keypoints, joints, vertices, visibility = fn(
      context.body, context.rest_normals, float(context.model_config.normals_sharpness),
      dofs, root_rotmat, betas, transl)
  return {"keypoints": keypoints, "joints": joints, "vertices": vertices,
          "visibility": visibility}


def group_pixels(labels: jax.Array, valid: jax.Array, num_parts: int,
                 size: int) -> Tuple[jax.Array, jax.Array]:
  """Sampled part pixels grouped by part, in the graph (`part_groups.group_by_label`'s layout).

  The first `size` valid pixels of each part (in sample order) fill its slots; a part's
  further pixels are left out (the sampler draws ~N / parts per part, evenly, so a `size` of
  about 2 N / P keeps nearly all).

  Args:
    labels: `[N]` int part labels (0..P-1). valid: `[N]` bool.
    num_parts: P. size: slots per part M.

  Returns:
    `(index [P, M] int32 into the N pixels, ok [P, M] bool)`.
  """
  num = labels.shape[-1]
  member = (labels[None, :] == jnp.arange(num_parts)[:, None]) & valid[None, :]  # [P, N]
  rank = jnp.cumsum(member, axis=1) - 1
  kept = member & (rank < size)
  slot = jnp.where(kept, rank, size)  # Overflow and non-members go to a dropped slot.
  rows = jnp.broadcast_to(jnp.arange(num_parts)[:, None], slot.shape)
  index = jnp.zeros((num_parts, size + 1), jnp.int32).at[rows, slot].max(
      jnp.where(kept, jnp.arange(num, dtype=jnp.int32)[None, :], 0))
  ok = jnp.zeros((num_parts, size + 1), bool).at[rows, slot].max(kept)
  return index[:, :size], ok[:, :size]


# The network's input fields, and what the mirrored image makes of them (`flip_evidence`).
EVIDENCE_FIELDS = ("keypoints", "confidence", "part_map", "mask", "focal")


def flip_evidence(batch: dict, resolution: int) -> dict:
  """The evidence of `batch` mirrored left-right about the crop's centre column (the principal
  point), as the image of the mirrored scene: keypoints `[B, K, 2]` (u -> R - u, left and right
  exchanged), `confidence [B, K]` with them, `part_map [B, R, R]` mirrored with left and right
  part labels exchanged, `mask [B, R, R]` mirrored; `focal [B]` as is. Only the fields of
  `EVIDENCE_FIELDS` that `batch` has are returned.
  """
  perm = jnp.asarray(evidence_augment.keypoint_permutation())
  out = {}
  if "keypoints" in batch:
    kp = jnp.asarray(batch["keypoints"], jnp.float32)[:, perm]
    out["keypoints"] = kp.at[..., 0].set(resolution - kp[..., 0])
  if "confidence" in batch:
    out["confidence"] = jnp.asarray(batch["confidence"])[:, perm]
  if "part_map" in batch:
    table = jnp.asarray(evidence_augment.part_label_table())
    out["part_map"] = table[jnp.asarray(batch["part_map"], jnp.int32)[:, :, ::-1]]
  if "mask" in batch:
    out["mask"] = jnp.asarray(batch["mask"])[:, :, ::-1]
  if "focal" in batch:
    out["focal"] = batch["focal"]
  return out


def mirror_keypoints3d(points: jax.Array) -> jax.Array:
  """`[B, K, 3]` camera-frame COCO keypoints of the mirrored scene (x -> -x, left and right
  exchanged): what the prediction for `flip_evidence(batch)` should be mapped back with."""
  perm = jnp.asarray(evidence_augment.keypoint_permutation())
  return points[:, perm] * jnp.asarray([-1.0, 1.0, 1.0], points.dtype)


def mean_with_mirror_image(context: RegressorContext, out: dict, flipped: dict) -> dict:
  """Test-time flip averaging: the mean of a prediction and the mirror image of the prediction
  for the mirrored evidence (`flip_evidence`), as `decode` fields.

  `flipped` is mapped back to the original scene as `evidence_augment` maps a flipped example's
  labels (pose DOFs by `cmu_skeleton.mirror_permutation_and_signs`, `root_rotmat -> F R F`,
  root joint -> F root, F = diag(-1, 1, 1); betas kept). Then per example: DOFs by their
  circular mean, the root orientation by the geodesic midpoint (quaternions), root joint and
  betas by the mean; the pose variable is the mean DOFs' chart coordinates (through the flow's
  inverse for the "flow" head). Every example is averaged, also where the two orientations
  disagree (a front / back doubt from 2D): keeping `out` beyond 60 degrees lost on both
  validation sets (session 17, WORKSPACE.md), the refinement's yaw restarts settle the view.

  Args:
    context: the `RegressorContext`.
    out, flipped: `decode` fields `[B, ...]` of the evidence and of its mirror image.

  Returns:
    `decode` fields `[B, ...]`.
  """
  dofs_back, rot_back, root_back = _mirrored_back(flipped)
  q0 = geometry.matrix_to_quaternion(out["root_rotmat"])
  q1 = geometry.matrix_to_quaternion(rot_back)
  q1 = jnp.where(jnp.sum(q0 * q1, -1, keepdims=True) < 0, -q1, q1)
  root_rotmat = geometry.quaternion_to_matrix(q0 + q1)
  dofs = jnp.arctan2(jnp.sin(out["dofs"]) + jnp.sin(dofs_back),
                     jnp.cos(out["dofs"]) + jnp.cos(dofs_back))
  return _decode_fields(context, dofs, root_rotmat, 0.5 * (out["betas"] + flipped["betas"]),
                        0.5 * (out["root"] + root_back))


def _mirrored_back(flipped: dict) -> tuple:
  """(DOFs `[B, D]`, root rotation `[B, 3, 3]`, root joint `[B, 3]`) of a prediction for the
  mirrored evidence, in the original scene (`mirror_back`)."""
  perm, signs = cmu_skeleton.mirror_permutation_and_signs()
  mirror = jnp.asarray([-1.0, 1.0, 1.0], jnp.float32)
  return (flipped["dofs"][:, perm] * signs,
          flipped["root_rotmat"] * mirror[:, None] * mirror[None, :],  # F R F.
          flipped["root"] * mirror)


def mirror_back(context: RegressorContext, flipped: dict) -> dict:
  """`decode` fields `[B, ...]` of a prediction for the mirrored evidence (`flip_evidence`)
  mapped back to the original scene, as `evidence_augment` maps a flipped example's labels (pose
  DOFs by `cmu_skeleton.mirror_permutation_and_signs`, `root_rotmat -> F R F`, root joint ->
  F root, F = diag(-1, 1, 1); betas kept): the network's second read of the evidence."""
  dofs, root_rotmat, root = _mirrored_back(flipped)
  return _decode_fields(context, dofs, root_rotmat, flipped["betas"], root)


def _decode_fields(context: RegressorContext, dofs, root_rotmat, betas, root) -> dict:
  """`decode` fields from DOFs `[B, D]` (wrapped through the flow's chart), the root rotation
  `[B, 3, 3]`, betas and the root joint `[B, 3]` (the pose variable: the chart coordinates,
  through the flow's inverse for the "flow" head)."""
  chart = context.flow.chart
  x = charts.from_dofs(chart, dofs)
  dofs = charts.to_dofs(chart, x)
  pose = (context.flow.pose_to_latent(context.prior.params, x)
          if context.model_config.pose_head == "flow" else x)
  return {"pose": pose, "dofs": dofs, "betas": betas, "root_rotmat": root_rotmat,
          "orient": geometry.matrix_to_rot6d(root_rotmat),
          "rotmats": jax.vmap(context.body.pose_to_rotmats)(dofs, root_rotmat),
          "transl": root - rest_root(context, betas), "root": root}
