"""Linear blend skinning as pure array math: the XLA reference.

smplx's `lbs.py` split (blend shapes, joint regression, FK, skinning), with
unbatched functions meant to be `vmap`ped, FK level by level of the tree and
skinning on the K non-zero weights per vertex. This is the path posing takes
off CPU (GPU/TPU) or without the CPU kernel, and what the kernel of
`flowpose.body.cpu_kernel.ffi` is checked against (`posed_transforms`,
`pose_vertices`, `pose_vertices_batched`). Functions take the model's arrays,
not a `BodyModel` (`flowpose.body.model` binds them).

Conventions: column vectors (`x = R @ x_local`), local joint rotations with
the root's the global orientation, joint frames world-aligned at rest.
"""

import functools
from typing import Optional, Tuple

import chex
import jax
import jax.numpy as jnp
import numpy as np


# ---------------------------------------------------------------------------
# Blend shapes and joint regression
# ---------------------------------------------------------------------------


def blend_shapes(betas: jax.Array, pose_features: Optional[jax.Array],
                 posedirs: Optional[jax.Array], v_template: jax.Array,
                 shapedirs: jax.Array) -> jax.Array:
  """`v_template + shapedirs @ betas (+ pose_features @ posedirs)`, `[V, 3]`.

  Args:
    betas: `[S]`; pose_features: `[P]` or None; posedirs: `[P, V * 3]` or
      None; v_template: `[V, 3]`; shapedirs: `[V, 3, S]`.
  """
  num_vertices = v_template.shape[0]
  # Coefficients on the left: under vmap the GEMM writes [B, V * 3] directly,
  # with no transpose of a [V * 3, B] result.
  offsets = betas @ shapedirs.reshape(num_vertices * 3, -1).T
  if pose_features is not None:
    offsets = offsets + pose_features @ posedirs
  return v_template + offsets.reshape(num_vertices, 3)


def joint_basis(j_regressor: jax.Array, v_template: jax.Array,
                shapedirs: jax.Array) -> Tuple[jax.Array, jax.Array]:
  """Rest joints as a linear function of betas: `(j_template, j_shapedirs)`.

  Joints are regressed from shaped vertices, which are linear in betas, so
  `rest_joints = j_template [J, 3] + j_shapedirs [J, 3, S] @ betas` exactly;
  posing then needs no `[J, V]`-sized work per body.
  """
  return (j_regressor @ v_template,
          jnp.einsum("jv,vcs->jcs", j_regressor, shapedirs))


def pose_feature(rotmats: jax.Array) -> jax.Array:
  """SMPL's pose-corrective feature `(R_local[1:] - I).ravel()`, `[9 (J-1)]`."""
  return (rotmats[1:] - jnp.eye(3, dtype=rotmats.dtype)).reshape(-1)


def regress_keypoints(regressor: jax.Array, vertices: jax.Array) -> jax.Array:
  """`regressor [Kp, V] @ vertices [V, 3]` -> `[Kp, 3]`.

  Computed as `(vertices.T @ regressor.T).T`: under `vmap` XLA then contracts
  over the vertex axis with a `[B * 3, V] @ [V, Kp]` GEMM; the plain form
  contracts the middle axis of `[B, V, 3]`, which XLA on CPU does ~3x slower.
  """
  return (vertices.T @ regressor.T).T


# ---------------------------------------------------------------------------
# Forward kinematics
# ---------------------------------------------------------------------------


def matmul33(a: jax.Array, b: jax.Array) -> jax.Array:
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
  order = np.argsort(np.concatenate([ids for ids, _ in levels]))
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
      pos = matmul33(rot_pad, pos[..., None])[..., 0] + pos_pad
      rot = matmul33(rot_pad, rot)
    return rot, pos
  if method != "levels":
    raise ValueError(f"unknown FK method {method!r}")
  levels, order = _tree_levels(tuple(parents))
  rots = [_static_take(rotmats, levels[0][0])]
  poss = [_static_take(offsets, levels[0][0])]
  for ids, parent_slots in levels[1:]:
    parent_rot = _static_take(rots[-1], parent_slots)
    parent_pos = _static_take(poss[-1], parent_slots)
    rots.append(matmul33(parent_rot, _static_take(rotmats, ids)))
    poss.append(matmul33(parent_rot, _static_take(offsets, ids)[..., None])
                [..., 0] + parent_pos)
  rot, pos = jnp.concatenate(rots), jnp.concatenate(poss)
  if not np.array_equal(order, np.arange(num_joints)):
    rot, pos = rot[order], pos[order]
  return rot, pos


def skinning_transforms(global_rotmats: jax.Array, global_positions: jax.Array,
                        rest_joints: jax.Array) -> jax.Array:
  """Rest-to-posed transforms `[J, 3, 4]`: `x -> R_j x + (t_j - R_j rest_j)`."""
  trans = global_positions - matmul33(global_rotmats,
                                      rest_joints[..., None])[..., 0]
  return jnp.concatenate([global_rotmats, trans[..., None]], axis=-1)


def posed_transforms(parents: Tuple[int, ...], fk_method: str,
                     rotmats: jax.Array, betas: jax.Array, transl: jax.Array,
                     j_regressor: jax.Array, v_template: jax.Array,
                     shapedirs: jax.Array):
  """Rest joints, FK and skinning transforms of one body (the FK reference).

  Args:
    parents, fk_method: as in `forward_kinematics` (static).
    rotmats: `[J, 3, 3]`; betas: `[S]`; transl: `[3]`; j_regressor: `[J, V]`;
      v_template: `[V, 3]`; shapedirs: `[V, 3, S]`.

  Returns:
    `(transforms [J, 3, 4], joints [J, 3], joint_rotmats [J, 3, 3])`. The
    translation is folded into the transforms, which keeps it out of the
    V-sized skinning loop (weights sum to 1).
  """
  j_template, j_shapedirs = joint_basis(j_regressor, v_template, shapedirs)
  rest_joints = j_template + j_shapedirs @ betas
  global_rot, global_pos = forward_kinematics(parents, rotmats, rest_joints,
                                              fk_method)
  transforms = skinning_transforms(global_rot, global_pos, rest_joints)
  return transforms.at[:, :, 3].add(transl), global_pos + transl, global_rot


# ---------------------------------------------------------------------------
# Skinning
# ---------------------------------------------------------------------------


def _gather_rows(table: jax.Array, idx: jax.Array) -> jax.Array:
  """`table[idx]`; indices are validated at load time, so skip the wrapping."""
  dnums = jax.lax.GatherDimensionNumbers(
      offset_dims=tuple(range(1, table.ndim)), collapsed_slice_dims=(0,),
      start_index_map=(0,))
  return jax.lax.gather(table, idx[:, None], dnums,
                        slice_sizes=(1,) + table.shape[1:],
                        mode=jax.lax.GatherScatterMode.PROMISE_IN_BOUNDS)


def _apply_transform(transform: jax.Array, points: jax.Array) -> jax.Array:
  """`transform [V, 3, 4]` applied to `points [V, 3]`, as multiply-adds."""
  return (transform[:, :, 0] * points[:, 0:1] +
          transform[:, :, 1] * points[:, 1:2] +
          transform[:, :, 2] * points[:, 2:3] + transform[:, :, 3])


def skin_autodiff(vertices: jax.Array, transforms: jax.Array,
                  skin_indices: jax.Array,
                  skin_weights: jax.Array) -> jax.Array:
  """`skin` without its custom VJP (what that VJP is tested against)."""
  blended = 0.0
  for k in range(skin_indices.shape[1]):
    blended = blended + skin_weights[:, k, None, None] * _gather_rows(
        transforms, skin_indices[:, k])
  return _apply_transform(blended, vertices)


@jax.custom_vjp
def skin(vertices: jax.Array, transforms: jax.Array, skin_indices: jax.Array,
         skin_weights: jax.Array) -> jax.Array:
  """Linear blend skinning with K sparse weights per vertex.

  `out_v = (sum_k w_vk [R | t]_{j_vk}) [v; 1]`. Written as K gathers of the
  tiny `[J, 3, 4]` table and plain multiply-adds (no dots, reductions or
  concatenations), so XLA fuses the gathers, the blend and the transform into
  a single loop over the `[V, 3]` outputs: ~12 (K + 1) multiply-adds per
  vertex instead of the dense `[V, J] @ [J, 12]` product (J = 31: 372), and
  no `[V, 12]` intermediate. (A dense-weight GEMM was ~5x slower on CPU: it
  writes and re-reads a `[B, V, 12]` blended-transform tensor.)

  The VJP is custom (`skin_backward`): autodiff would transpose the gathers
  into a scatter-add of `[V, K, 3, 4]` updates (slow and serial on CPU).

  Args:
    vertices: `[V, 3]` rest-pose (shaped, pose-corrected) vertices.
    transforms: `[J, 3, 4]` from `skinning_transforms`.
    skin_indices: `[V, K]` int joint indices, in `[0, J)`.
    skin_weights: `[V, K]` weights (rows sum to 1).

  Returns:
    `[V, 3]` posed vertices.
  """
  chex.assert_rank(vertices, 2)
  chex.assert_equal_shape([skin_indices, skin_weights])
  return skin_autodiff(vertices, transforms, skin_indices, skin_weights)


def _skin_fwd(vertices, transforms, skin_indices, skin_weights):
  out = skin(vertices, transforms, skin_indices, skin_weights)
  if jax.default_backend() == "cpu":
    # Under differentiation the output feeds the loss and (through it) the
    # cotangent; XLA on CPU inlines the skinning into every consumer and
    # recomputes the gathers there (3-7x slower backward). Fusion does not
    # cross a conditional (optimization_barrier is dropped before fusion on
    # CPU), so routing the output through one (both branches are identity;
    # the predicate is data so XLA cannot fold it) writes it once.
    out = jax.lax.cond(skin_weights[0, 0] <= 1.0, lambda x: x,
                       lambda x: x + 0.0, out)
  return out, (vertices, transforms, skin_indices, skin_weights)


def skin_backward(vertices: jax.Array, transforms: jax.Array,
                  skin_indices: jax.Array, skin_weights: jax.Array,
                  cotangent: jax.Array):
  """`skin`'s VJP: `(d_vertices [V, 3], d_transforms [J, 3, 4], d_weights)`.

  The transform cotangent is one dense `[12, V] @ [V, J]` product (a GEMM
  under `vmap`) instead of a scatter-add. `cotangent`: `[V, 3]`.
  """
  num_joints = transforms.shape[0]
  # Gathered from its own table (R^T, not the forward's [R | t]) so that XLA
  # does not merge it with the forward gathers: a gather with several
  # consumers gets materialised as [V, 3, 4] per weight instead of fused.
  rot_t = jnp.swapaxes(transforms[:, :, :3], 1, 2)  # [J, 3, 3]
  d_vertices = 0.0
  d_weights = []
  for k in range(skin_indices.shape[1]):
    g_t = _gather_rows(rot_t, skin_indices[:, k])  # [V, 3, 3]
    d_vertices = d_vertices + skin_weights[:, k, None] * (
        g_t[:, :, 0] * cotangent[:, 0:1] + g_t[:, :, 1] * cotangent[:, 1:2] +
        g_t[:, :, 2] * cotangent[:, 2:3])
    moved = _apply_transform(_gather_rows(transforms, skin_indices[:, k]),
                             vertices)
    d_weights.append(jnp.sum(moved * cotangent, axis=-1))
  dense = 0.0  # [V, J] weights; per call (not per body) under vmap.
  for k in range(skin_indices.shape[1]):
    dense = dense + skin_weights[:, k, None] * (
        skin_indices[:, k, None] == jnp.arange(num_joints)[None, :])
  # [12, V] with V minor, so that under vmap this is one [B * 12, V] @ [V, J]
  # GEMM with no transposed operand.
  homog_t = jnp.concatenate([vertices.T, jnp.ones_like(vertices.T[:1])])
  outer_t = (cotangent.T[:, None, :] * homog_t[None, :, :]).reshape(12, -1)
  d_transforms = (outer_t @ dense).reshape(3, 4, num_joints).transpose(2, 0, 1)
  return d_vertices, d_transforms, jnp.stack(d_weights, axis=-1)


def _skin_bwd(residuals, cotangent):
  d_vertices, d_transforms, d_weights = skin_backward(*residuals, cotangent)
  return d_vertices, d_transforms, None, d_weights


skin.defvjp(_skin_fwd, _skin_bwd)


# ---------------------------------------------------------------------------
# The reference forward (blend + skin + keypoints)
# ---------------------------------------------------------------------------


def pose_vertices(betas, transforms, pose_features, posedirs, v_template,
                  shapedirs, skin_indices, skin_weights, kp_regressor):
  """Shaped (and pose-corrected) skinned vertices and keypoints of one body.

  Args:
    betas: `[S]`; transforms: `[J, 3, 4]`; pose_features: `[P]` or None;
      posedirs: `[P, V * 3]` or None; v_template: `[V, 3]`; shapedirs:
      `[V, 3, S]`; skin_indices, skin_weights: `[V, K]`; kp_regressor:
      `[Kp, V]`.

  Returns:
    `(vertices [V, 3], keypoints [Kp, 3])`.
  """
  vertices = skin(blend_shapes(betas, pose_features, posedirs, v_template,
                               shapedirs),
                  transforms, skin_indices, skin_weights)
  return vertices, regress_keypoints(kp_regressor, vertices)


def pose_vertices_batched(betas, transforms, pose_features, *model_arrays):
  """`pose_vertices` on `[N]` bodies (leading axis of the first three args).

  Same I/O as the CPU kernel's custom call, which is checked against it.
  """
  in_axes = (0, 0, None if pose_features is None else 0) + (None,) * 6
  return jax.vmap(pose_vertices, in_axes)(betas, transforms, pose_features,
                                          *model_arrays)
