"""What the fitter needs from the body model and the pose prior, precomputed.

`FitBody` is a reduced body model for the optimisation loop: 2D keypoints and
a fixed vertex subset (for the part term) without skinning 13k vertices per
step. It is exact, because with linear blend skinning and no pose correctives
(the CC0 model has none) a keypoint, a fixed linear combination of vertices
`kp_k = sum_v r_kv v_v`, is

  kp_k = sum_j A_j (sum_v r_kv w_vj [v_v; 1]),   A_j = [R_j | t_j]  [3, 4],

and `sum_v r_kv w_vj v_v` is linear in betas. So the keypoints need a
`[K, J, 3, S]` basis and the joint transforms only.

The pose variable and its prior term come from `flowpose.prior.registry` (`PosePrior`).
"""

import functools
from typing import Callable, NamedTuple, Optional, Tuple

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from flowpose import geometry
from flowpose.body import lbs
from flowpose.body import model as body_lib
from flowpose.losses import part_groups
from flowpose.prior import registry

# Depths the similar-triangles initialisation may return (metres); `initial_translation` reports
# when an estimate falls outside and is clamped (a clamped start distorts the fitted body).
INIT_DEPTH_RANGE = (0.5, 100.0)
# COCO-17 indices of the torso keypoints (shoulders, hips).
TORSO_KEYPOINTS = (5, 6, 11, 12)
LEFT_HIP, RIGHT_HIP = 11, 12


@flax.struct.dataclass
class FitBody:
  """Reduced body model for fitting (see the module docstring).

  Attributes:
    j_template: [J, 3] rest joints at the mean shape.
    j_shapedirs: [J, 3, S] rest joints per unit beta.
    kp_weights: [K, J] `sum_v r_kv w_vj`.
    kp_rest: [K, J, 3] `sum_v r_kv w_vj v_template_v`.
    kp_shapedirs: [K, J, 3, S] the same per unit beta.
    sub_template, sub_shapedirs: [Vs, 3], [Vs, 3, S] of the vertex subset.
    sub_skin_indices, sub_skin_weights: [Vs, Ks] skinning of the subset.
    sub_labels: [Vs] part label of each subset vertex.
    sub_index: [Vs] the subset's vertex indices in the full mesh.
    sub_groups, sub_group_valid: [P, Mv] the subset grouped by part
      (`losses.part_groups.group_by_label`), for the part term.
    sub_grouped: static; the subset comes in group order, every slot filled
      (`sub_groups` = `arange(Vs).reshape(P, Mv)`): the part term reshapes, no gathers.
    sub_dense_weights: [Vs, J] dense skinning weights of the subset (None: the sparse
      `lbs.skin`); a few hundred vertices skin faster as one `[Vs, J] x [J, 12]` product.
    parents: static kinematic tree.
    num_parts: static number of part labels.
    pose_to_rotmats: static `(dofs [D], root_rotmat [3, 3]) -> [J, 3, 3]`
      local rotations (e.g. `retarget.pose_dofs_to_body_rotmats`).
  """
  j_template: jax.Array
  j_shapedirs: jax.Array
  kp_weights: jax.Array
  kp_rest: jax.Array
  kp_shapedirs: jax.Array
  sub_template: jax.Array
  sub_shapedirs: jax.Array
  sub_skin_indices: jax.Array
  sub_skin_weights: jax.Array
  sub_labels: jax.Array
  sub_index: jax.Array
  sub_groups: jax.Array
  sub_group_valid: jax.Array
  parents: Tuple[int, ...] = flax.struct.field(pytree_node=False)
  num_parts: int = flax.struct.field(pytree_node=False)
  pose_to_rotmats: Callable[..., jax.Array] = flax.struct.field(
      pytree_node=False)
  sub_grouped: bool = flax.struct.field(pytree_node=False, default=False)
  sub_dense_weights: Optional[jax.Array] = None


def part_vertex_subset(part_labels: np.ndarray, per_part: int,
                       seed: int = 0) -> np.ndarray:
  """[<= P * per_part] sorted vertex indices, `per_part` drawn from each part."""
  rng = np.random.default_rng(seed)
  chosen = []
  for part in np.unique(part_labels[part_labels >= 0]):
    members = np.flatnonzero(part_labels == part)
    chosen.append(rng.choice(members, min(per_part, len(members)),
                             replace=False))
  return np.sort(np.concatenate(chosen))


def make_fit_body(model: body_lib.BodyModel,
                  pose_to_rotmats: Callable[..., jax.Array],
                  vertices_per_part: int = 32) -> FitBody:
  """Precomputes a `FitBody` from a full body model (float64 on the host).

  Args:
    model: the body model (no pose correctives: the keypoint basis would
      otherwise not be exact).
    pose_to_rotmats: `(dofs [D], root_rotmat [3, 3]) -> [J, 3, 3]`.
    vertices_per_part: vertices per part in the part-term subset.
  """
  if model.has_posedirs:
    raise ValueError("make_fit_body: models with pose correctives (posedirs) "
                     "are not supported by the keypoint basis")
  j_template, j_shapedirs = body_lib.joint_shape_basis(model)
  dense = body_lib.dense_skin_weights(model).astype(np.float64)  # [V, J]
  reg = np.asarray(model.keypoint_regressor, np.float64)  # [K, V]
  rest = np.asarray(model.v_template, np.float64)
  shapedirs = np.asarray(model.shapedirs, np.float64)
  support = np.flatnonzero(np.any(reg != 0, axis=0))  # Sparse regressor.
  r, w = reg[:, support], dense[support]
  kp_weights = r @ w
  kp_rest = np.einsum("kv,vj,vc->kjc", r, w, rest[support], optimize=True)
  kp_shapedirs = np.einsum("kv,vj,vcs->kjcs", r, w, shapedirs[support],
                           optimize=True)
  labels = np.asarray(model.part_labels)
  sub = part_vertex_subset(labels, vertices_per_part)
  sub = sub[np.argsort(labels[sub], kind="stable")]  # Group order (by part, then index).
  groups = part_groups.group_by_label(labels[sub], None, len(model.part_names))
  grouped = bool(groups.valid.all() and np.array_equal(groups.index.ravel(),
                                                       np.arange(len(sub))))
  f32 = lambda x: jnp.asarray(x, jnp.float32)
  return FitBody(
      j_template=f32(j_template), j_shapedirs=f32(j_shapedirs),
      kp_weights=f32(kp_weights), kp_rest=f32(kp_rest),
      kp_shapedirs=f32(kp_shapedirs), sub_template=f32(rest[sub]),
      sub_shapedirs=f32(shapedirs[sub]),
      sub_skin_indices=jnp.asarray(np.asarray(model.skin_indices)[sub]),
      sub_skin_weights=f32(np.asarray(model.skin_weights)[sub]),
      sub_labels=jnp.asarray(labels[sub], jnp.int32),
      sub_index=jnp.asarray(sub, jnp.int32),
      sub_groups=jnp.asarray(groups.index),
      sub_group_valid=jnp.asarray(groups.valid), parents=tuple(model.parents),
      num_parts=len(model.part_names), pose_to_rotmats=pose_to_rotmats,
      sub_grouped=grouped, sub_dense_weights=f32(dense[sub]))


class PosedPoints(NamedTuple):
  """Posed points of one person in the camera frame (metres).

  Attributes:
    keypoints: [K, 3]. joints: [J, 3]. vertices: [Vs, 3] the subset.
  """
  keypoints: jax.Array
  joints: jax.Array
  vertices: jax.Array


def pose_points(body: FitBody, pose_dofs: jax.Array, root_rotmat: jax.Array,
                betas: jax.Array, transl: jax.Array,
                with_vertices: bool = True) -> PosedPoints:
  """Keypoints, joints and subset vertices of one person.

  Args:
    body: the `FitBody`.
    pose_dofs: [D] pose DOFs. root_rotmat: [3, 3] global orientation.
    betas: [S]. transl: [3].
    with_vertices: also skin the vertex subset (else `vertices` is empty).
  """
  rotmats = body.pose_to_rotmats(pose_dofs, root_rotmat)
  rest_joints = body.j_template + body.j_shapedirs @ betas
  global_rot, global_pos = lbs.forward_kinematics(body.parents, rotmats, rest_joints)
  keypoints = _keypoints(body, global_rot, global_pos, betas, transl)
  if with_vertices:
    transforms = lbs.skinning_transforms(global_rot, global_pos, rest_joints)
    transforms = transforms.at[:, :, 3].add(transl)
    verts = body.sub_template + body.sub_shapedirs @ betas
    vertices = skin_subset(body, verts, transforms)
  else:
    vertices = jnp.zeros((0, 3), keypoints.dtype)
  return PosedPoints(keypoints, global_pos + transl, vertices)


def hip_centred(keypoints: jax.Array) -> jax.Array:
  """`[..., 17, 3]` COCO-17 points minus their hips' midpoint."""
  centre = 0.5 * (keypoints[..., LEFT_HIP, :] + keypoints[..., RIGHT_HIP, :])
  return keypoints - centre[..., None, :]


def body_frame_keypoints(keypoints: jax.Array, root_rotmat: jax.Array) -> jax.Array:
  """`[..., K, 3]` COCO-17 keypoints (camera frame) -> hip-centred, in the body's frame
  (`root_rotmat [..., 3, 3]` body -> camera undone): the articulation alone, for anchors."""
  return jnp.einsum("...ki,...ij->...kj", hip_centred(keypoints), root_rotmat)


class RootedSubset(NamedTuple):
  """The vertex subset of a fixed pose and shape, up to the root's rotation (`rooted_subset`).

  Attributes:
    offsets: [Vs, 3] subset vertices minus the root joint, posed with root rotation `I`.
    root_joint: [3] the root joint (rest = posed: the root only rotates about it).
    root_rotmat: [3, 3] the root's local rotation for root rotation `I`.
  """
  offsets: jax.Array
  root_joint: jax.Array
  root_rotmat: jax.Array


def rooted_subset(body: FitBody, pose_dofs: jax.Array, betas: jax.Array) -> RootedSubset:
  """What a stage with the pose and shape frozen needs to pose the subset (unbatched).

  Every global transform is the root's `x -> M (x - root_joint) + root_joint` after the one of
  root rotation `I`, with `M = R_0(root) R_0(I)^T` (`R_0` the root's local rotation: the other
  joints' do not depend on the root), and skinning weights sum to 1, so the posed subset is
  `offsets @ M^T + root_joint + transl` (`subset_from_rooted`): one `[Vs, 3] x [3, 3]` product per
  step instead of the skinning (and its backward) of a camera-only stage.
  """
  eye = jnp.eye(3, dtype=betas.dtype)
  points = pose_points(body, pose_dofs, eye, betas, jnp.zeros(3, betas.dtype))
  root_joint = body.j_template[0] + body.j_shapedirs[0] @ betas
  return RootedSubset(points.vertices - root_joint, root_joint,
                      body.pose_to_rotmats(pose_dofs, eye)[0])


def subset_from_rooted(body: FitBody, rooted: RootedSubset, pose_dofs: jax.Array,
                       root_rotmat: jax.Array, transl: jax.Array) -> jax.Array:
  """`[Vs, 3]` = `pose_points(...).vertices` of the pose and shape `rooted` was made with
  (same value up to float rounding; tested)."""
  rotation = body.pose_to_rotmats(pose_dofs, root_rotmat)[0] @ rooted.root_rotmat.T
  return rooted.offsets @ rotation.T + rooted.root_joint + transl


def skin_subset(body: FitBody, verts: jax.Array, transforms: jax.Array) -> jax.Array:
  """`[Vs, 3]` skinned subset vertices (`verts [Vs, 3]` shaped rest, `transforms [J, 3, 4]`)."""
  if body.sub_dense_weights is None:
    return lbs.skin(verts, transforms, body.sub_skin_indices, body.sub_skin_weights)
  # Dots both ways (the sparse form's backward was ~1/3 of a parts step's extra; profile).
  blended = (body.sub_dense_weights @ transforms.reshape(-1, 12)).reshape(-1, 3, 4)
  return jnp.einsum("vab,vb->va", blended[..., :3], verts) + blended[..., 3]


def _keypoints(body: FitBody, global_rot: jax.Array, global_pos: jax.Array, betas: jax.Array,
               transl: jax.Array) -> jax.Array:
  """[K, 3] keypoints from the global joint frames (`R_j [J, 3, 3]`, `p_j [J, 3]`).

  With `A_j = [R_j | p_j - R_j rest_j + transl]` (module docstring),
  `kp_k = sum_j R_j o_kj + sum_j w_kj p_j + (sum_j w_kj) transl`, the offsets
  `o_kj = c_kj - w_kj rest_j` (`c_kj = kp_rest + kp_shapedirs @ betas`) linear in betas:
  `o_kj = sum_s c_s M[s, k, j]` with `c = [1, betas]` and a constant basis `M [S+1, K, J, 3]`.
  So `R` meets `M` first (one product over the batch, `[B * 3, J * 3] x [J * 3, (S+1) K]`) and
  the betas combine the `[S+1, K, 3]` result: no per-person `[K, J, 3]` offsets (their layout
  copies and the betas' `[B, K J 3] x [K J 3, S]` transpose were ~15% of a fit step; profile,
  WORKSPACE.md issue 15). Same value up to float rounding.
  """
  w = body.kp_weights  # [K, J]
  offset_rest = body.kp_rest - w[..., None] * body.j_template  # [K, J, 3]
  offset_dirs = body.kp_shapedirs - w[..., None, None] * body.j_shapedirs  # [K, J, 3, S]
  basis = jnp.concatenate([offset_rest[None], jnp.moveaxis(offset_dirs, -1, 0)])  # [S+1,K,J,3]
  rotated = jnp.einsum("jab,skjb->ska", global_rot, basis)  # [S+1, K, 3]
  coeffs = jnp.concatenate([jnp.ones((1,), betas.dtype), betas])
  return (jnp.einsum("s,ska->ka", coeffs, rotated) + w @ global_pos +
          jnp.sum(w, axis=1)[:, None] * transl)


# The pose prior (`PosePrior`: decode + penalty of the pose variable) comes from the prior
# registry; `make_pose_prior(kind, ...)` is `flowpose.prior.registry.make`, kept for callers.
make_pose_prior = registry.make
PosePrior = registry.PosePrior
PoseSpace = registry.PoseSpace


# ---------------------------------------------------------------------------
# Initialisation.
# ---------------------------------------------------------------------------


@functools.partial(jax.jit, static_argnames=("space",))
def _rest_points(body: FitBody, space, params, init):
  rest = pose_points(body, space.decode(params, init), jnp.eye(3),
                     jnp.zeros((body.j_shapedirs.shape[-1],)), jnp.zeros(3), with_vertices=False)
  return rest.keypoints, rest.joints[0]


def rest_points(body: FitBody, prior) -> tuple[np.ndarray, np.ndarray]:
  """(keypoints [K, 3], root joint [3]) of the prior's mean pose, zero shape, unrotated at the
  origin: what `initial_translation` measures. Jitted (op by op, the flow's decode dispatched
  ~0.1 s of small ops per call: a tenth of a video's keyframe stage)."""
  keypoints, root = _rest_points(body, prior.space, prior.params, prior.init)
  return np.asarray(keypoints), np.asarray(root)


def facing_camera_rotation(yaw_deg: float) -> np.ndarray:
  """[3, 3] body-to-camera rotation: upright, facing the camera, then yawed.

  The body is Y up, facing +Z; an OpenCV camera has y down, z forward. A
  180-degree turn about X makes the body face the camera (-z) head up (-y);
  `yaw_deg` first turns the body about its own up axis (180 = back view).
  """
  flip = np.diag([1.0, -1.0, -1.0])
  yaw = np.asarray(geometry.rotation_about_axis(np.deg2rad(yaw_deg), "Y"))
  return flip @ yaw


def initial_translation(keypoints_2d: np.ndarray, confidence: np.ndarray,
                        focal: np.ndarray, principal_point: np.ndarray,
                        rest_keypoints: np.ndarray, rest_root: np.ndarray,
                        root_rotmat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Camera-frame translation from keypoint scale (similar triangles).

  Depth: `z = f * d3 / d2` over the pairs of visible keypoints (torso pairs
  when >= 1 is visible, else all pairs), taking the smallest estimate (a
  foreshortened pair overestimates the depth; the longest-looking one is the
  least foreshortened). x, y: the visible keypoints' centroid back-projected
  to that depth, minus the rest body's centroid of the same keypoints.

  Args:
    keypoints_2d: [B, K, 2]; confidence: [B, K] (0 = missing).
    focal: [B, 2]; principal_point: [B, 2].
    rest_keypoints: [K, 3] keypoints of the rest body (body frame).
    rest_root: [3] its root joint: the body model rotates about it,
      `x = R (x_rest - rest_root) + rest_root + transl`.
    root_rotmat: [B, 3, 3] initial orientations.

  Returns:
    (translations [B, 3], depth_clamped [B] bool): the depth is 5 m when fewer than 2
    keypoints are visible, and clamped to `INIT_DEPTH_RANGE`; `depth_clamped` says where the
    clamp bound (the person looks far larger or smaller than a human at 0.5-100 m).
  """
  out = np.zeros((keypoints_2d.shape[0], 3))
  clamped = np.zeros(keypoints_2d.shape[0], bool)
  for b in range(keypoints_2d.shape[0]):
    valid = (confidence[b] > 0) & np.all(np.isfinite(keypoints_2d[b]), -1)
    idx = np.flatnonzero(valid)
    f = float(np.mean(focal[b]))
    depth = 5.0
    if len(idx) >= 2:
      torso = [i for i in idx if i in TORSO_KEYPOINTS]
      pairs = [(i, j) for n, i in enumerate(idx) for j in idx[n + 1:]]
      torso_pairs = [(i, j) for n, i in enumerate(torso) for j in torso[n + 1:]]
      pairs = torso_pairs or pairs
      est = [f * np.linalg.norm(rest_keypoints[i] - rest_keypoints[j]) /
             max(np.linalg.norm(keypoints_2d[b, i] - keypoints_2d[b, j]), 1.0)
             for i, j in pairs
             if np.linalg.norm(rest_keypoints[i] - rest_keypoints[j]) > 0.1]
      if est:
        depth = float(np.clip(min(est), *INIT_DEPTH_RANGE))
        clamped[b] = depth != min(est)
    if len(idx):
      centre_2d = keypoints_2d[b, idx].mean(0)
      centre_3d = (root_rotmat[b] @ (rest_keypoints[idx].mean(0) - rest_root)
                   + rest_root)
    else:
      centre_2d, centre_3d = principal_point[b], rest_root
    ray = np.append((centre_2d - principal_point[b]) / focal[b], 1.0)
    out[b] = ray * depth - centre_3d
  return out, clamped
