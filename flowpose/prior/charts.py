"""Coordinate charts of the CMU pose for the flow prior.

A chart is the vector space the prior's density lives on (`config.flow.chart`):

* `"euler_dofs"` (default, D = 50): the per-joint DOF angles of
  `cmu_skeleton.POSE_DOF_NAMES` (radians), like GHUM's Euler-angle pose vector. Angles are
  periodic; the prior cuts each one opposite its data (`prior.wrap_angle`).
* `"euler_free"` (D = 46): the Euler DOFs without `cmu_skeleton.FIXED_POSE_DOFS`, the four
  clavicle angles CMU never moves (0 in every clip). They are modelled as fixed at 0: the density
  is that of the 46 free angles times a point mass, `to_dofs` puts 0 there, and `from_dofs`
  ignores them. No input jitter is then needed to keep actnorm finite (`tasks/prior.py` checks
  that the training data really hold them at 0).
* `"axis_angle"` (D = 3 x 24 = 72): the axis-angle vector of each bone that has DOFs
  (`CHART_BONES`, in `POSE_DOFS` order), of the bone's local rotation in its ASF axis frame
  `M = Rx(rx) Ry(ry) Rz(rz)` applied extrinsically (the rotation `retarget` poses the body with;
  absent DOFs are 0). A chart of SO(3) per bone up to the angle-pi boundary; no wrapping. Bones
  with 1 or 2 DOFs only fill a curve or surface of their 3 coordinates, which the training
  jitter (`config.input_noise`) thickens, exactly as it does for constant Euler DOFs.

NLLs in different charts are densities w.r.t. different coordinates and are not comparable
with each other; within one chart the flow and the baselines are (prior_eval fits the
baselines in the flow's chart).

All conversions are jnp (differentiable, any leading dims) and accept NumPy arrays.
"""

import functools
from typing import Tuple

import jax
import jax.numpy as jnp
import numpy as np

from flowpose import geometry
from flowpose.data import cmu_skeleton

CHARTS = ("euler_dofs", "euler_free", "axis_angle")
# [46] columns of the free DOFs in the 50-DOF vector; [4] the fixed ones (held at 0).
FREE_COLUMNS = np.asarray([i for i, n in enumerate(cmu_skeleton.POSE_DOF_NAMES)
                           if n not in cmu_skeleton.FIXED_POSE_DOFS], np.int32)
FIXED_COLUMNS = np.asarray([cmu_skeleton.POSE_DOF_NAMES.index(n)
                            for n in cmu_skeleton.FIXED_POSE_DOFS], np.int32)

# Bones with at least one pose DOF, in POSE_DOFS order (24 bones).
CHART_BONES: Tuple[str, ...] = tuple(dict.fromkeys(b for b, _ in cmu_skeleton.POSE_DOFS))
# [24, 3] column of each bone's (rx, ry, rz) in the 50-DOF vector; 50 = absent (angle 0).
_COLUMNS = np.full((len(CHART_BONES), 3), cmu_skeleton.NUM_POSE_DOFS, np.int32)
for _col, (_bone, _dof) in enumerate(cmu_skeleton.POSE_DOFS):
  _COLUMNS[CHART_BONES.index(_bone), "xyz".index(_dof[1])] = _col
# [24] bones with a single DOF (radius, wrist, fingers, tibia, toes).
_SINGLE_DOF = np.asarray([len(cmu_skeleton.BONE_DOFS[b]) == 1 for b in CHART_BONES])
# For each of the 50 DOFs: its (bone, axis) slot in the [24, 3] angle table.
_SLOTS = np.asarray([(CHART_BONES.index(b), "xyz".index(d[1]))
                     for b, d in cmu_skeleton.POSE_DOFS], np.int32)


def _check_chart(chart: str) -> None:
  if chart not in CHARTS:
    raise ValueError(f"unknown pose chart {chart!r}; expected one of {CHARTS}")


def chart_dim(chart: str) -> int:
  """D of the chart on the CMU skeleton."""
  _check_chart(chart)
  return {"euler_dofs": cmu_skeleton.NUM_POSE_DOFS, "euler_free": len(FREE_COLUMNS)}.get(
      chart, 3 * len(CHART_BONES))


def is_periodic(chart: str) -> bool:
  """Whether the coordinates are angles the prior must wrap (Euler DOFs) or not."""
  _check_chart(chart)
  return chart in ("euler_dofs", "euler_free")


def dim_bones(chart: str) -> Tuple[str, ...]:
  """`[D]` the ASF bone each chart coordinate belongs to (kinematic masks use it)."""
  if chart == "euler_dofs":
    return tuple(b for b, _ in cmu_skeleton.POSE_DOFS)
  if chart == "euler_free":
    return tuple(cmu_skeleton.POSE_DOFS[i][0] for i in FREE_COLUMNS)
  _check_chart(chart)
  return tuple(b for b in CHART_BONES for _ in range(3))


def _check_width(x, width: int, what: str) -> jax.Array:
  x = jnp.asarray(x, jnp.float32)
  if x.ndim < 1 or x.shape[-1] != width:
    raise ValueError(f"{what}: expected [..., {width}], got {tuple(x.shape)}")
  return x


def dofs_to_bone_rotmats(dofs) -> jax.Array:
  """`[..., 50]` DOF angles -> `[..., 24, 3, 3]` local rotations of `CHART_BONES`."""
  dofs = _check_width(dofs, cmu_skeleton.NUM_POSE_DOFS, "dofs_to_bone_rotmats")
  padded = jnp.concatenate([dofs, jnp.zeros(dofs.shape[:-1] + (1,), dofs.dtype)], -1)
  return geometry.euler_to_matrix(padded[..., _COLUMNS], "XYZ", extrinsic=True)


def bone_rotmats_to_dofs(rotmats) -> jax.Array:
  """`[..., 24, 3, 3]` -> `[..., 50]` DOF angles in (-pi, pi].

  Bones with one DOF take the twist angle about that axis (swing-twist decomposition, exact for
  any angle, e.g. a wrist twist beyond 90 degrees); other bones take the extrinsic XYZ Euler
  angles of their DOFs (exact while the middle angle `ry` stays within +-90 degrees). A rotation
  a bone cannot make is projected onto its DOFs (the other angles are dropped).
  """
  rotmats = jnp.asarray(rotmats, jnp.float32)
  euler = geometry.matrix_to_euler(rotmats, "XYZ", extrinsic=True)
  quat = geometry.matrix_to_quaternion(rotmats)  # wxyz, w >= 0.
  twist = 2.0 * jnp.arctan2(quat[..., 1:], quat[..., :1])
  twist = jnp.arctan2(jnp.sin(twist), jnp.cos(twist))
  angles = jnp.where(_SINGLE_DOF[:, None], twist, euler)
  return angles[..., _SLOTS[:, 0], _SLOTS[:, 1]]


def from_dofs(chart: str, dofs) -> jax.Array:
  """`[..., 50]` DOF angles -> `[..., D]` chart coordinates."""
  if chart == "euler_dofs":
    return _check_width(dofs, cmu_skeleton.NUM_POSE_DOFS, "from_dofs")
  if chart == "euler_free":
    return _check_width(dofs, cmu_skeleton.NUM_POSE_DOFS, "from_dofs")[..., FREE_COLUMNS]
  _check_chart(chart)
  aa = geometry.matrix_to_axis_angle(dofs_to_bone_rotmats(dofs))
  return aa.reshape(aa.shape[:-2] + (-1,))


def to_dofs(chart: str, x) -> jax.Array:
  """`[..., D]` chart coordinates -> `[..., 50]` DOF angles (see `bone_rotmats_to_dofs`)."""
  x = _check_width(x, chart_dim(chart), f"to_dofs({chart!r})")
  if chart == "euler_dofs":
    return x
  if chart == "euler_free":  # The fixed DOFs at 0.
    out = jnp.zeros(x.shape[:-1] + (cmu_skeleton.NUM_POSE_DOFS,), x.dtype)
    return out.at[..., FREE_COLUMNS].set(x)
  aa = x.reshape(x.shape[:-1] + (len(CHART_BONES), 3))
  return bone_rotmats_to_dofs(geometry.axis_angle_to_matrix(aa))


@functools.lru_cache(maxsize=None)
def _jitted_from_dofs(chart: str):
  return jax.jit(functools.partial(from_dofs, chart))


def from_dofs_np(chart: str, dofs: np.ndarray, batch: int = 65536) -> np.ndarray:
  """`from_dofs` for large NumPy arrays `[N, 50]` (float32, in chunks)."""
  dofs = np.asarray(dofs, np.float32)
  if chart == "euler_dofs":
    return dofs
  if chart == "euler_free":
    return np.ascontiguousarray(dofs[..., FREE_COLUMNS])
  fn = _jitted_from_dofs(chart)
  return np.concatenate([np.asarray(fn(dofs[i:i + batch]))
                         for i in range(0, max(len(dofs), 1), batch)]).astype(np.float32)
