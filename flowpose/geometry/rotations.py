"""Rotation conversions and Euler angles (pure jnp).

Every function accepts any number of leading batch dimensions `[...]` and is
safe to `jit`, `vmap` and differentiate. Conventions:

* Rotation matrices act on column vectors: `x_world = R @ x_local`.
* Axis-angle vectors are `angle * unit_axis` with the angle in radians;
  `matrix_to_axis_angle` returns angles in `[0, pi]`.
* Quaternions are `(w, x, y, z)` (scalar first); `matrix_to_quaternion` and
  `axis_angle_to_quaternion` return unit quaternions with `w >= 0`.
* The 6D representation (Zhou et al. 2019) is the first two *columns* of R,
  concatenated: `x = [R[:, 0], R[:, 1]]`.
* Euler angles: see `euler_to_matrix` (intrinsic BVH order by default).

Singular points are handled with Taylor expansions behind `jnp.where`, with the
unselected branch fed a harmless input so that its gradient is finite too.
"""

from typing import Optional, Sequence, Tuple

import chex
import jax
import jax.numpy as jnp

_AXES = {"X": 0, "Y": 1, "Z": 2}
# Below this squared angle (rad^2) the closed forms lose precision in float32
# and the truncated Taylor series is exact to float precision.
_SMALL_ANGLE_SQ = 1e-6
# Euler decompositions treat |cos(middle)| (or |sin|) below this as gimbal lock.
_GIMBAL_EPS = 1e-6


def _as_float(x) -> jax.Array:
  x = jnp.asarray(x)
  return x if jnp.issubdtype(x.dtype, jnp.floating) else x.astype(jnp.float32)


def _safe_normalize(v: jax.Array, eps: float = 1e-12) -> jax.Array:
  """v / |v| along the last axis; a zero vector stays finite (and zero)."""
  sq = jnp.sum(v * v, axis=-1, keepdims=True)
  return v * jax.lax.rsqrt(jnp.maximum(sq, eps))


def skew(v: jax.Array) -> jax.Array:
  """Cross-product matrix `[v]_x` with `[v]_x @ u = cross(v, u)`.

  Args:
    v: `[..., 3]`.

  Returns:
    `[..., 3, 3]` skew-symmetric matrices.
  """
  v = _as_float(v)
  x, y, z = v[..., 0], v[..., 1], v[..., 2]
  zero = jnp.zeros_like(x)
  return jnp.stack([
      jnp.stack([zero, -z, y], axis=-1),
      jnp.stack([z, zero, -x], axis=-1),
      jnp.stack([-y, x, zero], axis=-1),
  ], axis=-2)


def _angle_terms(aa: jax.Array):
  """`(aa, theta^2, small, theta)` of axis-angle vectors `[..., 3]` for the Taylor/closed-form split.

  The closed form sees theta = 1 on the small branch, so sqrt and the divisions by theta have
  finite derivatives there (where() would leak NaNs otherwise).
  """
  aa = _as_float(aa)
  chex.assert_axis_dimension(aa, -1, 3)
  theta_sq = jnp.sum(aa * aa, axis=-1)
  small = theta_sq < _SMALL_ANGLE_SQ
  return aa, theta_sq, small, jnp.sqrt(jnp.where(small, 1.0, theta_sq))


def axis_angle_to_matrix(aa: jax.Array) -> jax.Array:
  """Rodrigues' formula `R = I + A [aa]_x + B [aa]_x^2`.

  Args:
    aa: `[..., 3]` axis-angle vectors (radians).

  Returns:
    `[..., 3, 3]` rotation matrices. Gradients are finite at `aa = 0`.
  """
  aa, theta_sq, small, theta = _angle_terms(aa)
  # B = (1 - cos t) / t^2 written as 2 sin^2(t/2) / t^2 to avoid cancellation.
  a = jnp.where(small, 1.0 - theta_sq / 6.0 + theta_sq**2 / 120.0,
                jnp.sin(theta) / theta)
  b = jnp.where(small, 0.5 - theta_sq / 24.0 + theta_sq**2 / 720.0,
                2.0 * jnp.square(jnp.sin(0.5 * theta) / theta))
  k = skew(aa)
  eye = jnp.eye(3, dtype=aa.dtype)
  return eye + a[..., None, None] * k + b[..., None, None] * (k @ k)


def axis_angle_to_quaternion(aa: jax.Array) -> jax.Array:
  """Axis-angle `[..., 3]` -> unit quaternion `[..., 4]` (wxyz).

  `w >= 0` whenever the angle `|aa|` is at most pi.
  """
  aa, theta_sq, small, theta = _angle_terms(aa)
  w = jnp.where(small, 1.0 - theta_sq / 8.0 + theta_sq**2 / 384.0,
                jnp.cos(0.5 * theta))
  # sin(t/2) / t, the factor applied to the (unnormalised) axis-angle vector.
  f = jnp.where(small, 0.5 - theta_sq / 48.0 + theta_sq**2 / 3840.0,
                jnp.sin(0.5 * theta) / theta)
  return jnp.concatenate([w[..., None], f[..., None] * aa], axis=-1)


def quaternion_to_axis_angle(q: jax.Array) -> jax.Array:
  """Quaternion `[..., 4]` (wxyz, any non-zero norm) -> axis-angle `[..., 3]`.

  `q` and `-q` are the same rotation; the result has its angle in `[0, pi]`.
  """
  q = _safe_normalize(_as_float(q))
  chex.assert_axis_dimension(q, -1, 4)
  q = jnp.where(q[..., :1] < 0, -q, q)
  w, v = q[..., 0], q[..., 1:]
  n_sq = jnp.sum(v * v, axis=-1)
  small = n_sq < 1e-8
  n = jnp.sqrt(jnp.where(small, 1.0, n_sq))
  # angle / |v| = 2 atan2(n, w) / n; series in n for n -> 0 (w ~ 1 there).
  w_safe = jnp.where(small, w, 1.0)
  f = jnp.where(small, 2.0 / w_safe - 2.0 * n_sq / (3.0 * w_safe**3),
                2.0 * jnp.arctan2(n, w) / n)
  return f[..., None] * v


def quaternion_to_matrix(q: jax.Array) -> jax.Array:
  """Quaternion `[..., 4]` (wxyz, normalised here) -> `[..., 3, 3]` rotation."""
  q = _as_float(q)
  chex.assert_axis_dimension(q, -1, 4)
  w, x, y, z = q[..., 0], q[..., 1], q[..., 2], q[..., 3]
  # Dividing by |q|^2 normalises without a square root.
  s = 2.0 / jnp.maximum(jnp.sum(q * q, axis=-1), 1e-12)
  rows = [
      [1 - s * (y * y + z * z), s * (x * y - w * z), s * (x * z + w * y)],
      [s * (x * y + w * z), 1 - s * (x * x + z * z), s * (y * z - w * x)],
      [s * (x * z - w * y), s * (y * z + w * x), 1 - s * (x * x + y * y)],
  ]
  return jnp.stack([jnp.stack(r, axis=-1) for r in rows], axis=-2)


def matrix_to_quaternion(r: jax.Array) -> jax.Array:
  """Rotation `[..., 3, 3]` -> unit quaternion `[..., 4]` (wxyz, w >= 0).

  Shepperd's method: of the four ways to read q off R, use the one whose
  pivot `|q_i|` is largest (>= 1/2), so no division is ill-conditioned. Near
  angle pi the pivot is a vector component and the axis comes from the
  symmetric part of R.
  """
  r = _as_float(r)
  chex.assert_shape(r, (..., 3, 3))
  m00, m01, m02 = r[..., 0, 0], r[..., 0, 1], r[..., 0, 2]
  m10, m11, m12 = r[..., 1, 0], r[..., 1, 1], r[..., 1, 2]
  m20, m21, m22 = r[..., 2, 0], r[..., 2, 1], r[..., 2, 2]
  # 4 w^2, 4 x^2, 4 y^2, 4 z^2.
  pivots = jnp.stack([1 + m00 + m11 + m22, 1 + m00 - m11 - m22,
                      1 - m00 + m11 - m22, 1 - m00 - m11 + m22], axis=-1)
  # Row i is 4 q_i * q: every row is proportional to q, so normalising the
  # selected row yields +-q with no square root of a possibly negative pivot.
  candidates = jnp.stack([
      jnp.stack([pivots[..., 0], m21 - m12, m02 - m20, m10 - m01], axis=-1),
      jnp.stack([m21 - m12, pivots[..., 1], m10 + m01, m02 + m20], axis=-1),
      jnp.stack([m02 - m20, m10 + m01, pivots[..., 2], m12 + m21], axis=-1),
      jnp.stack([m10 - m01, m20 + m02, m21 + m12, pivots[..., 3]], axis=-1),
  ], axis=-2)
  best = jnp.argmax(pivots, axis=-1)
  q = jnp.take_along_axis(candidates, best[..., None, None], axis=-2)[..., 0, :]
  q = _safe_normalize(q)
  return jnp.where(q[..., :1] < 0, -q, q)


def matrix_to_axis_angle(r: jax.Array) -> jax.Array:
  """Rotation `[..., 3, 3]` -> axis-angle `[..., 3]` with angle in `[0, pi]`.

  Goes through `matrix_to_quaternion`, which stays accurate near angle 0 and
  pi (where `acos((tr R - 1) / 2)` and the skew part both lose the axis).
  """
  return quaternion_to_axis_angle(matrix_to_quaternion(r))


def rot6d_to_matrix(x: jax.Array) -> jax.Array:
  """6D representation `[..., 6]` -> `[..., 3, 3]` (Gram-Schmidt, Zhou et al.).

  Args:
    x: `[..., 6]`, two 3-vectors `(c0, c1)` approximating the first two
      columns of R. They need not be orthonormal (network outputs).

  Returns:
    `[..., 3, 3]` proper rotations with columns `(b0, b1, b0 x b1)`, where
    `b0 = c0 / |c0|` and `b1` is `c1` orthogonalised against `b0`.
  """
  x = _as_float(x)
  chex.assert_axis_dimension(x, -1, 6)
  b0 = _safe_normalize(x[..., :3])
  c1 = x[..., 3:]
  b1 = _safe_normalize(c1 - jnp.sum(b0 * c1, axis=-1, keepdims=True) * b0)
  b2 = jnp.cross(b0, b1)
  return jnp.stack([b0, b1, b2], axis=-1)


def matrix_to_rot6d(r: jax.Array) -> jax.Array:
  """`[..., 3, 3]` -> `[..., 6]`: the first two columns of R, concatenated."""
  r = _as_float(r)
  chex.assert_shape(r, (..., 3, 3))
  return jnp.concatenate([r[..., :, 0], r[..., :, 1]], axis=-1)


def rotation_about_axis(angle: jax.Array, axis: str) -> jax.Array:
  """Elementary rotation about a coordinate axis.

  Args:
    angle: `[...]` angles in radians (right-hand rule).
    axis: "X", "Y" or "Z".

  Returns:
    `[..., 3, 3]` rotation matrices.
  """
  if axis not in _AXES:
    raise ValueError(f"geometry: axis must be 'X', 'Y' or 'Z', got {axis!r}")
  angle = _as_float(angle)
  i = _AXES[axis]
  j, k = (i + 1) % 3, (i + 2) % 3
  c, s = jnp.cos(angle), jnp.sin(angle)
  one, zero = jnp.ones_like(c), jnp.zeros_like(c)
  # Fill a 3x3 grid: R[i,i] = 1, and the (j, k) plane rotates by `angle`
  # (cyclic j, k keeps the sign pattern the same for all three axes).
  grid = [[zero] * 3 for _ in range(3)]
  grid[i][i] = one
  grid[j][j], grid[j][k] = c, -s
  grid[k][j], grid[k][k] = s, c
  return jnp.stack([jnp.stack(row, axis=-1) for row in grid], axis=-2)


def _parse_order(order: str) -> Tuple[int, int, int]:
  if (not isinstance(order, str) or len(order) != 3
      or any(a not in _AXES for a in order)
      or order[0] == order[1] or order[1] == order[2]):
    raise ValueError(
        f"geometry: Euler order must be 3 upper-case letters from 'XYZ' with no"
        f" two consecutive equal (e.g. 'ZYX', 'ZXZ'), got {order!r}; choose"
        f" intrinsic/extrinsic with the `extrinsic` flag, not letter case")
  return tuple(_AXES[a] for a in order)


def euler_to_matrix(angles: jax.Array, order: str, degrees: bool = False,
                    extrinsic: bool = False) -> jax.Array:
  """Euler angles -> rotation matrix, for all 12 axis orders.

  `order[n]` names the axis of `angles[..., n]`.

  * Intrinsic (default; BVH channel order):
    `R = R_{order[0]}(a0) @ R_{order[1]}(a1) @ R_{order[2]}(a2)`.
  * `extrinsic=True` (rotations about fixed axes, applied in listed order;
    ASF `axis XYZ` and AMC `rx ry rz`):
    `R = R_{order[2]}(a2) @ R_{order[1]}(a1) @ R_{order[0]}(a0)`.

  Args:
    angles: `[..., 3]`.
    order: e.g. "XYZ", "ZYX" (Tait-Bryan) or "ZXZ" (proper Euler).
    degrees: angles are in degrees.
    extrinsic: see above.

  Returns:
    `[..., 3, 3]` rotation matrices.
  """
  _parse_order(order)
  angles = _as_float(angles)
  chex.assert_axis_dimension(angles, -1, 3)
  if degrees:
    angles = jnp.deg2rad(angles)
  mats = [rotation_about_axis(angles[..., n], order[n]) for n in range(3)]
  if extrinsic:
    mats = mats[::-1]
  return mats[0] @ mats[1] @ mats[2]


def _atan2_guarded(y, x, degenerate):
  """atan2 that returns 0 (with zero gradient) where `degenerate`."""
  return jnp.where(degenerate, 0.0,
                   jnp.arctan2(jnp.where(degenerate, 0.0, y),
                               jnp.where(degenerate, 1.0, x)))


def _matrix_to_intrinsic_euler(r, axes):
  """Intrinsic decomposition R = R_i(a) R_j(b) R_k(c) (k == i for proper)."""
  i, j, k = axes
  proper = i == k
  if proper:
    k = 3 - i - j
  sign = 1.0 if (j - i) % 3 == 1 else -1.0  # Parity of the permutation (i,j,k).
  # First angle from the column (Tait-Bryan: k, proper: i) that R_{last}
  # leaves unchanged. Its entries scale with cos(b) (TB) or sin(b) (proper),
  # so at gimbal lock `a` is arbitrary: we set it to 0.
  if proper:
    y, x = r[..., j, i], -sign * r[..., k, i]
  else:
    y, x = -sign * r[..., j, k], r[..., k, k]
  lock = jnp.hypot(y, x) < _GIMBAL_EPS
  a = _atan2_guarded(y, x, lock)
  # Peel off R_i(a); the remainder M = R_j(b) R_(last)(c) has O(1) entries
  # for b and c, so R is reconstructed accurately even close to gimbal lock
  # where `a` itself is poorly determined.
  m = jnp.swapaxes(rotation_about_axis(a, "XYZ"[i]), -1, -2) @ r
  if proper:
    b = jnp.arctan2(-sign * m[..., k, i], m[..., i, i])
    c = jnp.arctan2(-sign * m[..., j, k], m[..., j, j])
  else:
    b = jnp.arctan2(sign * m[..., i, k], m[..., k, k])
    c = jnp.arctan2(sign * m[..., j, i], m[..., j, j])
  return jnp.stack([a, b, c], axis=-1)


def matrix_to_euler(r: jax.Array, order: str, degrees: bool = False,
                    extrinsic: bool = False) -> jax.Array:
  """Inverse of `euler_to_matrix` (same `order` / `extrinsic` meaning).

  Ranges (intrinsic; reversed for extrinsic): the first and last angles are in
  `(-pi, pi]`, the middle one in `[-pi/2, pi/2]` for Tait-Bryan orders and in
  `[0, pi]` for proper Euler orders. At gimbal lock the first angle
  (intrinsic; the last for extrinsic) is set to 0 and the other absorbs the
  rotation, so the result always reconstructs R.

  Args:
    r: `[..., 3, 3]` rotation matrices.
    order: e.g. "XYZ", "ZYX", "ZXZ".
    degrees: return degrees.
    extrinsic: see `euler_to_matrix`.

  Returns:
    `[..., 3]` angles, `angles[..., n]` about axis `order[n]`.
  """
  axes = _parse_order(order)
  r = _as_float(r)
  chex.assert_shape(r, (..., 3, 3))
  if extrinsic:
    # Extrinsic (o0, o1, o2) with angles (a0, a1, a2) is the same product as
    # intrinsic (o2, o1, o0) with angles (a2, a1, a0).
    angles = _matrix_to_intrinsic_euler(r, axes[::-1])[..., ::-1]
  else:
    angles = _matrix_to_intrinsic_euler(r, axes)
  return jnp.rad2deg(angles) if degrees else angles


def geodesic_angle(r1: jax.Array, r2: jax.Array) -> jax.Array:
  """Angle (radians, `[0, pi]`) of the relative rotation `r1^T r2`.

  Uses `atan2(sin, cos)` from the skew and trace parts, which is accurate at
  both 0 and pi (unlike `acos`), with a finite gradient at 0.

  Args:
    r1: `[..., 3, 3]`.
    r2: `[..., 3, 3]`.

  Returns:
    `[...]` angles.
  """
  r1, r2 = _as_float(r1), _as_float(r2)
  rel = jnp.swapaxes(r1, -1, -2) @ r2
  cos = 0.5 * (jnp.trace(rel, axis1=-2, axis2=-1) - 1.0)
  vee = jnp.stack([rel[..., 2, 1] - rel[..., 1, 2],
                   rel[..., 0, 2] - rel[..., 2, 0],
                   rel[..., 1, 0] - rel[..., 0, 1]], axis=-1)
  sin_sq = 0.25 * jnp.sum(vee * vee, axis=-1)
  zero = sin_sq < 1e-30
  sin = jnp.where(zero, 0.0, jnp.sqrt(jnp.where(zero, 1.0, sin_sq)))
  return jnp.arctan2(sin, cos)


def random_rotation(key: jax.Array, shape: Sequence[int] = (),
                    dtype=jnp.float32) -> jax.Array:
  """Uniformly distributed (Haar) rotations `[*shape, 3, 3]`.

  A standard normal 4-vector normalised is uniform on S^3, and the
  double cover S^3 -> SO(3) maps that to the uniform measure.
  """
  q = jax.random.normal(key, tuple(shape) + (4,), dtype=dtype)
  return quaternion_to_matrix(q)
