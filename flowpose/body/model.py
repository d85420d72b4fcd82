"""The body model: a frozen pytree of arrays plus pure posing functions.

`BodyModel` holds the data (rest mesh, shape and pose blend shapes, joint and
keypoint regressors, sparse skinning weights); the kinematic tree and the names
are static metadata. Every posing function takes *unbatched* inputs and is meant
to be `jax.vmap`ped. The array math is `flowpose.body.lbs` (the XLA reference:
blends as GEMMs, FK level by level of the tree, skinning one fused loop with a
custom VJP); on CPU with the kernels of `flowpose.body.cpu_kernel`, a vmapped
`forward` is two custom calls over the whole batch (rest joints + FK + skinning
transforms; shape and pose blends + sparse skinning + keypoints), and its
gradient two more (the skinning's and the FK's backward; `cpu_kernel.ffi`
dispatches). Everything that depends on the model
alone (e.g. the joint shape basis) is computed once per call, not per body.

    model = model_io.load_model(path)  # flowpose.body.model_io: .npz files
    out = jax.jit(jax.vmap(forward, (None, 0, 0)))(model, rotmats, betas)
    out.vertices  # [B, V, 3]

Conventions (WORKSPACE.md): metres, Y up, column vectors (`x = R @ x_local`),
`rotmats` are *local* joint rotations, the root's is the global orientation;
joint frames are world-aligned at rest.
"""

import functools
from typing import Optional, Tuple

import chex
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from flowpose import geometry
from flowpose.body import lbs
from flowpose.body.cpu_kernel import ffi


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
# Shape and joints
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
  return lbs.blend_shapes(betas, None, None, model.v_template, model.shapedirs)


def joint_shape_basis(model: BodyModel) -> Tuple[jax.Array, jax.Array]:
  """`(j_template [J, 3], j_shapedirs [J, 3, S])`: rest joints linear in betas.

  See `lbs.joint_basis`.
  """
  return lbs.joint_basis(model.j_regressor, model.v_template, model.shapedirs)


def regress_joints(model: BodyModel, betas: jax.Array) -> jax.Array:
  """Rest-pose joints `[J, 3]` of the shape `betas [S]`."""
  betas = jnp.asarray(betas, jnp.float32)
  chex.assert_shape(betas, (model.num_betas,))
  j_template, j_shapedirs = joint_shape_basis(model)
  return j_template + j_shapedirs @ betas


def dense_skin_weights(model: BodyModel) -> np.ndarray:
  """`[V, J]` dense skinning weights from the sparse ones (numpy float32)."""
  idx = np.asarray(model.skin_indices)
  dense = np.zeros((idx.shape[0], model.num_joints), np.float32)
  np.add.at(dense, (np.arange(idx.shape[0])[:, None], idx),
            np.asarray(model.skin_weights))
  return dense


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
    fk_method: see `lbs.forward_kinematics` (XLA path; the CPU kernel
      composes the tree joint by joint).
    skinning: `"auto"` (the CPU kernels of `cpu_kernel` for FK and skinning
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
  transforms, global_pos, global_rot = ffi.fk_transforms(
      model.parents, rotmats, betas, transl, model.j_regressor,
      model.v_template, model.shapedirs, fk_method=fk_method, impl=skinning)
  # The pose blend (if any) is applied with the shape blend: in the CPU
  # kernel, or as a second GEMM under vmap on the XLA path. (Concatenating
  # the two bases into one GEMM is ~20% faster at batch 512 but costs a
  # per-call copy of posedirs that makes batch 1 ~10x slower.)
  features, posedirs = ((lbs.pose_feature(rotmats), model.posedirs)
                        if model.has_posedirs else (None, None))
  vertices, keypoints = ffi.pose_vertices(
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
