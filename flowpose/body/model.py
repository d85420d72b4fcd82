"""The body model: a frozen pytree of arrays plus pure posing functions.

`BodyModel` holds the data (rest mesh, shape and pose blend shapes, joint and
keypoint regressors, sparse skinning weights); the kinematic tree and the names
are static metadata. Every posing function takes *unbatched* inputs and is meant
to be `jax.vmap`ped. On CPU with the kernels of `flowpose.body.cpu_kernel.ffi`, a
vmapped `forward` is two custom calls over the whole batch (rest joints + FK +
skinning transforms; shape and pose blends + sparse skinning + keypoints), with
XLA backwards. Otherwise (GPU/TPU, no kernel) the blends are GEMMs, FK runs level
by level of the tree, and skinning is one fused loop with a custom VJP whose
transform cotangent is a GEMM. Everything that depends on the model alone (e.g.
the joint shape basis) is computed once per call, not per body.

    model = load_model(path)
    out = jax.jit(jax.vmap(forward, (None, 0, 0)))(model, rotmats, betas)
    out.vertices  # [B, V, 3]

Conventions (WORKSPACE.md): metres, Y up, column vectors (`x = R @ x_local`),
`rotmats` are *local* joint rotations, the root's is the global orientation;
joint frames are world-aligned at rest. Loading and saving `.npz` files lives in
`flowpose.body.model_io` and is re-exported here.
"""

import functools
from typing import Optional, Tuple

import chex
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from flowpose import geometry
from flowpose.body.cpu_kernel import ffi as lbs_kernel
# Skinning lives in lbs_kernel (XLA path + fused CPU kernel); re-exported.
from flowpose.body.cpu_kernel.ffi import _skin_impl, skin  # pylint: disable=unused-import


@flax.struct.dataclass
class BodyModel:
  """A linear-blend-skinned body model (SMPL-style), as a pytree.

  Attributes:
    v_template: `[V, 3]` rest-pose vertices at the mean shape (metres).
    shapedirs: `[V, 3, S]` shape blend shapes (displacement per unit beta).
    posedirs: `[P, V * 3]` pose-corrective blend shapes, `P = 9 * (J - 1)`, or
      `P = 0` when the model has none. Row layout follows SMPL: the feature is
      `(R_local[1:] - I).ravel()`, the vertex offsets are `(feature @
      posedirs).reshape(V, 3)`.
    j_regressor: `[J, V]` rest joints = `j_regressor @ shaped vertices`.
    skin_indices: `[V, K]` int32 joint of each of the K largest weights.
    skin_weights: `[V, K]` the weights; rows sum to 1 (zero-padded).
    keypoint_regressor: `[Kp, V]` keypoints = `keypoint_regressor @ vertices`.
    faces: `[F, 3]` int32 triangles.
    part_labels: `[V]` int32 index into `part_names`.
    parents: static `[J]` parent index per joint; `parents[0] = -1` and
      `parents[i] < i`.
    joint_names, part_names, keypoint_names: static tuples of str.
  """
  v_template: jax.Array
  shapedirs: jax.Array
  posedirs: jax.Array
  j_regressor: jax.Array
  skin_indices: jax.Array
  skin_weights: jax.Array
  keypoint_regressor: jax.Array
  faces: jax.Array
  part_labels: jax.Array
  parents: Tuple[int, ...] = flax.struct.field(pytree_node=False)
  joint_names: Tuple[str, ...] = flax.struct.field(pytree_node=False)
  part_names: Tuple[str, ...] = flax.struct.field(pytree_node=False)
  keypoint_names: Tuple[str, ...] = flax.struct.field(pytree_node=False)

  @property
  def num_vertices(self) -> int:
    return self.v_template.shape[0]

  @property
  def num_joints(self) -> int:
    return len(self.parents)

  @property
  def num_betas(self) -> int:
    return self.shapedirs.shape[-1]

  @property
  def num_keypoints(self) -> int:
    return self.keypoint_regressor.shape[0]

  @property
  def has_posedirs(self) -> bool:
    return self.posedirs.shape[0] > 0


@flax.struct.dataclass
class BodyOutput:
  """Posed body (unbatched shapes; `vmap` adds a leading `[B]`).

  Attributes:
    vertices: `[V, 3]` posed, skinned vertices (metres, world frame).
    joints: `[J, 3]` posed joint positions (the forward-kinematics origins).
    keypoints: `[Kp, 3]` `keypoint_regressor @ vertices`.
    joint_rotmats: `[J, 3, 3]` global joint rotations; with `joints` they are
      the global joint transforms.
  """
  vertices: jax.Array
  joints: jax.Array
  keypoints: jax.Array
  joint_rotmats: jax.Array


# ---------------------------------------------------------------------------
# Shape
# ---------------------------------------------------------------------------


def shape_blend(model: BodyModel, betas: jax.Array) -> jax.Array:
  """Rest-pose vertices of a shape: `v_template + shapedirs @ betas`.

  Args:
    model: the body model.
    betas: `[S]` shape coefficients.

  Returns:
    `[V, 3]` shaped vertices. One matrix-vector product; under `vmap` it is a
    single `[B, S] @ [S, V * 3]` GEMM.
  """
  betas = jnp.asarray(betas, jnp.float32)
  chex.assert_shape(betas, (model.num_betas,))
  num_vertices = model.num_vertices
  # betas on the left: under vmap the GEMM writes [B, V * 3] directly, with
  # no transpose of a [V * 3, B] result.
  offsets = betas @ model.shapedirs.reshape(num_vertices * 3, -1).T
  return model.v_template + offsets.reshape(num_vertices, 3)


def joint_shape_basis(model: BodyModel) -> Tuple[jax.Array, jax.Array]:
  """The rest joints as a linear function of betas.

  Joints are regressed from shaped vertices, which are linear in betas, so
  `rest_joints = j_template + j_shapedirs @ betas` exactly; precomputing the
  `[J, 3, S]` basis means posing needs no `[J, V]`-sized work per body.

  Returns:
    `(j_template [J, 3], j_shapedirs [J, 3, S])`.
  """
  return _joint_basis(model.j_regressor, model.v_template, model.shapedirs)


def _joint_basis(j_regressor, v_template, shapedirs):
  return (j_regressor @ v_template,
          jnp.einsum("jv,vcs->jcs", j_regressor, shapedirs))


def regress_joints(model: BodyModel, betas: jax.Array) -> jax.Array:
  """Rest-pose joints `[J, 3]` of the shape `betas [S]`."""
  betas = jnp.asarray(betas, jnp.float32)
  chex.assert_shape(betas, (model.num_betas,))
  j_template, j_shapedirs = joint_shape_basis(model)
  return j_template + j_shapedirs @ betas


# ---------------------------------------------------------------------------
# Forward kinematics
# ---------------------------------------------------------------------------


def _matmul33(a: jax.Array, b: jax.Array) -> jax.Array:
  """`a @ b` for stacks of 3x3 (or 3x3 @ 3x1) matrices, as multiply-and-sum.

  XLA on CPU turns a batched dot of 3x3 matrices into many tiny GEMM calls; the
  broadcast form fuses into one elementwise loop.
  """
  return jnp.sum(a[..., :, :, None] * b[..., None, :, :], axis=-2)


@functools.lru_cache(maxsize=64)
def _tree_levels(parents: Tuple[int, ...]):
  """Groups joints by depth for level-by-level FK (computed at trace time).

  Returns:
    `(levels, order)`: `levels[d] = (joint_ids, parent_slots)` where
    `parent_slots` index the joints of level `d - 1` (in that level's order),
    and `order` is the permutation that puts the concatenated levels back in
    joint order.
  """
  parents = tuple(int(p) for p in parents)
  depth = [0] * len(parents)
  for j, p in enumerate(parents):
    depth[j] = 0 if p < 0 else depth[p] + 1
  levels = []
  slot = {}
  for d in range(max(depth) + 1):
    ids = [j for j in range(len(parents)) if depth[j] == d]
    parent_slots = [slot[parents[j]] for j in ids] if d else []
    slot.update({j: i for i, j in enumerate(ids)})
    levels.append((np.asarray(ids), np.asarray(parent_slots, np.int32)))
  concat = np.concatenate([ids for ids, _ in levels])
  order = np.argsort(concat)
  return tuple(levels), order


@functools.lru_cache(maxsize=64)
def _ancestor_jumps(parents: Tuple[int, ...]):
  """Ancestor tables for pointer-jumping FK: `anc[s][j]` = 2**s-th ancestor.

  Index `J` stands for "no such ancestor" (an identity transform).
  """
  num_joints = len(parents)
  anc = np.asarray([p if p >= 0 else num_joints for p in parents] +
                   [num_joints])
  tables = []
  while np.any(anc[:num_joints] < num_joints):
    tables.append(anc[:num_joints].copy())
    anc = anc[anc]
  return tuple(tables)


def _static_take(x: jax.Array, idx: np.ndarray) -> jax.Array:
  """`x[idx]` along axis 0, as a slice when `idx` is a contiguous range."""
  if idx.size and np.array_equal(idx, np.arange(idx[0], idx[0] + idx.size)):
    return x[int(idx[0]):int(idx[0]) + idx.size]
  return x[idx]


def forward_kinematics(parents: Tuple[int, ...], rotmats: jax.Array,
                       rest_joints: jax.Array,
                       method: str = "levels") -> Tuple[jax.Array, jax.Array]:
  """Composes local joint rotations down the kinematic tree.

  Joint `j` sits at `rest_joints[j]`; its frame rotates by `rotmats[j]` about
  itself relative to its parent, so globally
  `G_j = G_parent @ [R_j, rest_j - rest_parent]` (frames world-aligned at rest).

  Args:
    parents: static parent indices, `parents[0] = -1`, `parents[i] < i`.
    rotmats: `[J, 3, 3]` local rotations (root = global orientation).
    rest_joints: `[J, 3]` rest-pose joint positions.
    method: `"levels"` composes one tree level at a time (one fused batched
      3x3 product per level, ~10 levels for a CMU skeleton); `"doubling"`
      composes by pointer jumping (each joint with its 2**s-th ancestor,
      ceil(log2(depth)) steps over all joints).

  Returns:
    `(global_rotmats [J, 3, 3], global_positions [J, 3])`.
  """
  num_joints = len(parents)
  chex.assert_shape(rotmats, (num_joints, 3, 3))
  chex.assert_shape(rest_joints, (num_joints, 3))
  parents_np = np.asarray(parents)
  offsets = rest_joints - jnp.where(
      (parents_np >= 0)[:, None], rest_joints[np.maximum(parents_np, 0)], 0.0)
  if method == "doubling":
    rot, pos = rotmats, offsets
    for anc in _ancestor_jumps(tuple(parents)):
      eye = jnp.eye(3, dtype=rot.dtype)[None]
      rot_pad = jnp.concatenate([rot, eye])[anc]
      pos_pad = jnp.concatenate([pos, jnp.zeros_like(pos[:1])])[anc]
      pos = _matmul33(rot_pad, pos[..., None])[..., 0] + pos_pad
      rot = _matmul33(rot_pad, rot)
    return rot, pos
  if method != "levels":
    raise ValueError(f"unknown FK method {method!r}")
  levels, order = _tree_levels(tuple(parents))
  rots = [_static_take(rotmats, levels[0][0])]
  poss = [_static_take(offsets, levels[0][0])]
  for ids, parent_slots in levels[1:]:
    parent_rot = _static_take(rots[-1], parent_slots)
    parent_pos = _static_take(poss[-1], parent_slots)
    local_rot = _static_take(rotmats, ids)
    local_pos = _static_take(offsets, ids)
    rots.append(_matmul33(parent_rot, local_rot))
    poss.append(_matmul33(parent_rot, local_pos[..., None])[..., 0] +
                parent_pos)
  rot, pos = jnp.concatenate(rots), jnp.concatenate(poss)
  if not np.array_equal(order, np.arange(num_joints)):
    rot, pos = rot[order], pos[order]
  return rot, pos


def skinning_transforms(global_rotmats: jax.Array, global_positions: jax.Array,
                        rest_joints: jax.Array) -> jax.Array:
  """Rest-to-posed transforms `[J, 3, 4]`: `x -> R_j x + (t_j - R_j rest_j)`."""
  trans = global_positions - _matmul33(global_rotmats,
                                       rest_joints[..., None])[..., 0]
  return jnp.concatenate([global_rotmats, trans[..., None]], axis=-1)


def _posed_transforms(parents, fk_method, rotmats, betas, transl, j_regressor,
                      v_template, shapedirs):
  """`(transforms [J, 3, 4], joints [J, 3], joint_rotmats [J, 3, 3])`, XLA.

  The translation `transl [3]` is folded into the transforms, which keeps it
  out of the V-sized skinning loop (weights sum to 1).
  """
  j_template, j_shapedirs = _joint_basis(j_regressor, v_template, shapedirs)
  rest_joints = j_template + j_shapedirs @ betas
  global_rot, global_pos = forward_kinematics(parents, rotmats, rest_joints,
                                              fk_method)
  transforms = skinning_transforms(global_rot, global_pos, rest_joints)
  return transforms.at[:, :, 3].add(transl), global_pos + transl, global_rot


# ---------------------------------------------------------------------------
# Skinning
# ---------------------------------------------------------------------------


def regress_keypoints(regressor: jax.Array, vertices: jax.Array) -> jax.Array:
  """`regressor [Kp, V] @ vertices [V, 3]` -> `[Kp, 3]`.

  Computed as `(vertices.T @ regressor.T).T`: under `vmap` XLA then contracts
  over the vertex axis with a `[B * 3, V] @ [V, Kp]` GEMM; the plain form
  contracts the middle axis of `[B, V, 3]`, which XLA on CPU does ~3x slower.
  """
  return (vertices.T @ regressor.T).T


def pose_feature(rotmats: jax.Array) -> jax.Array:
  """SMPL's pose-corrective feature `(R_local[1:] - I).ravel()`, `[9 (J-1)]`."""
  return (rotmats[1:] - jnp.eye(3, dtype=rotmats.dtype)).reshape(-1)


# ---------------------------------------------------------------------------
# Forward
# ---------------------------------------------------------------------------


@functools.partial(jax.jit, static_argnames=("fk_method", "skinning"))
def forward(model: BodyModel, rotmats: jax.Array, betas: jax.Array,
            transl: Optional[jax.Array] = None, fk_method: str = "levels",
            skinning: str = "auto") -> BodyOutput:
  """Poses the body.

  Jitted (so eager calls run one compiled program); inside a caller's
  `jit`/`vmap`/`grad` it is inlined like any other function.

  Args:
    model: the body model.
    rotmats: `[J, 3, 3]` local joint rotations (root = global orientation).
    betas: `[S]` shape coefficients.
    transl: optional `[3]` global translation.
    fk_method: see `forward_kinematics` (XLA path; the CPU kernel composes
      the tree joint by joint).
    skinning: `"auto"` (the CPU kernels of `lbs_kernel` for FK and skinning
      on CPU when built, else XLA), `"kernel"` or `"xla"`.

  Returns:
    `BodyOutput` with `vertices [V, 3]`, `joints [J, 3]`, `keypoints [Kp, 3]`,
    `joint_rotmats [J, 3, 3]`.
  """
  rotmats = jnp.asarray(rotmats, jnp.float32)
  betas = jnp.asarray(betas, jnp.float32)
  chex.assert_shape(rotmats, (model.num_joints, 3, 3))
  chex.assert_shape(betas, (model.num_betas,))
  transl = jnp.zeros(3) if transl is None else jnp.asarray(transl, jnp.float32)
  chex.assert_shape(transl, (3,))
  transforms, global_pos, global_rot = lbs_kernel.fk_transforms(
      model.parents, rotmats, betas, transl, model.j_regressor,
      model.v_template, model.shapedirs,
      functools.partial(_posed_transforms, model.parents, fk_method),
      impl=skinning)
  # The pose blend (if any) is applied with the shape blend: in the CPU
  # kernel, or as a second GEMM under vmap on the XLA path. (Concatenating
  # the two bases into one GEMM is ~20% faster at batch 512 but costs a
  # per-call copy of posedirs that makes batch 1 ~10x slower.)
  features, posedirs = ((pose_feature(rotmats), model.posedirs)
                        if model.has_posedirs else (None, None))
  vertices, keypoints = lbs_kernel.pose_vertices(
      betas, transforms, features, posedirs, model.v_template,
      model.shapedirs, model.skin_indices, model.skin_weights,
      model.keypoint_regressor, impl=skinning)
  return BodyOutput(vertices=vertices, joints=global_pos, keypoints=keypoints,
                    joint_rotmats=global_rot)


@jax.jit
def forward_axis_angle(model: BodyModel, pose: jax.Array, betas: jax.Array,
                       transl: Optional[jax.Array] = None) -> BodyOutput:
  """`forward` with `pose [J, 3]` axis-angle local rotations (radians)."""
  return forward(model, geometry.axis_angle_to_matrix(pose), betas, transl)


@jax.jit
def forward_rot6d(model: BodyModel, pose: jax.Array, betas: jax.Array,
                  transl: Optional[jax.Array] = None) -> BodyOutput:
  """`forward` with `pose [J, 6]` 6D rotations (first two columns of R)."""
  return forward(model, geometry.rot6d_to_matrix(pose), betas, transl)


@functools.partial(jax.jit, static_argnames=("order", "degrees", "extrinsic"))
def forward_euler(model: BodyModel, angles: jax.Array, betas: jax.Array,
                  transl: Optional[jax.Array] = None, order: str = "ZYX",
                  degrees: bool = False, extrinsic: bool = False) -> BodyOutput:
  """`forward` with `angles [J, 3]` Euler angles (see geometry.euler_to_matrix)."""
  rotmats = geometry.euler_to_matrix(angles, order, degrees=degrees,
                                     extrinsic=extrinsic)
  return forward(model, rotmats, betas, transl)


# I/O and weight conversions live in their own module to keep this one about
# posing; re-exported so the contract's `flowpose.body.model.load_model` works.
from flowpose.body.model_io import (  # pylint: disable=g-import-not-at-top,g-bad-import-order
    BodyModelError, FORMAT_VERSION, dense_skin_weights, load_extras, load_model,
    model_from_arrays, model_to_arrays, save_model, sparsify_skin_weights,
    validate_arrays)
