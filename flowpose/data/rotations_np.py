"""NumPy float64 rotations for the mocap readers: Euler angles (all 12 orders, intrinsic or
extrinsic) <-> matrices, and matrices -> axis-angle.

The readers avoid JAX so that parsing stays fast and float64; `flowpose.geometry` holds the JAX
twins (same conventions, checked against each other in tests/test_mocap_io.py). Rotation
matrices act on column vectors. Intrinsic order "ZYX" is `R = Rz @ Ry @ Rx`, which is also the
extrinsic XYZ rule.
"""

import numpy as np

AXIS_INDEX = {"X": 0, "Y": 1, "Z": 2}


def elementary_rotation(angle: np.ndarray, axis: str) -> np.ndarray:
  """Rotation by `angle` [...] radians about the X, Y or Z axis -> [..., 3, 3]."""
  angle = np.asarray(angle, np.float64)
  c, s = np.cos(angle), np.sin(angle)
  i = AXIS_INDEX[axis]
  j, k = (i + 1) % 3, (i + 2) % 3  # (i, j, k) cyclic, so R[k, j] = +sin.
  out = np.zeros(angle.shape + (3, 3))
  out[..., i, i] = 1.0
  out[..., j, j], out[..., k, k], out[..., k, j], out[..., j, k] = c, c, s, -s
  return out


def _xyz_and_xyx(a, b, c, proper: bool, perm) -> np.ndarray:
  """Closed-form `Rx(a) Ry(b) Rz(c)` (`Rx Ry Rx` if proper), rows/cols relabelled by `perm`.

  Entry (p, q) of the XYZ/XYX matrix is written to (perm[p], perm[q]). Returns [..., 3, 3].
  """
  ca, sa, cb, sb, cc, sc = np.cos(a), np.sin(a), np.cos(b), np.sin(b), np.cos(c), np.sin(c)
  if proper:
    rows = ((cb, sb * sc, sb * cc),
            (sa * sb, ca * cc - sa * cb * sc, -ca * sc - sa * cb * cc),
            (-ca * sb, sa * cc + ca * cb * sc, -sa * sc + ca * cb * cc))
  else:
    rows = ((cb * cc, -cb * sc, sb),
            (ca * sc + sa * sb * cc, ca * cc - sa * sb * sc, -sa * cb),
            (sa * sc - ca * sb * cc, sa * cc + ca * sb * sc, ca * cb))
  out = np.empty((3, 3) + np.shape(a))  # Entry-major: contiguous writes, one final transpose.
  for p in range(3):
    for q in range(3):
      out[perm[p], perm[q]] = rows[p][q]
  return np.moveaxis(out, (0, 1), (-2, -1))


def euler_to_matrix_np(angles: np.ndarray, order: str, degrees: bool = False,
                       extrinsic: bool = False) -> np.ndarray:
  """Euler angles [..., n] -> [..., 3, 3] (same meaning as `flowpose.geometry`).

  Intrinsic: `R = R_{order[0]}(a0) @ R_{order[1]}(a1) @ ...`; extrinsic: the reverse product.
  `order` may have 0 to 3 letters (BVH joints with fewer rotation channels).
  """
  angles = np.asarray(angles, np.float64)
  if angles.shape[-1:] != (len(order),):
    raise ValueError(f"angles {angles.shape} do not match order {order!r}")
  if degrees:
    angles = np.deg2rad(angles)
  if extrinsic:
    order, angles = order[::-1], angles[..., ::-1]
  if len(order) == 3 and order[0] != order[1] and order[1] != order[2]:
    # Relabel the axes of the closed-form XYZ / XYX matrix (much faster than three matmuls on
    # [T, J, 3, 3] stacks). An odd axis permutation mirrors space, which negates the angles.
    i, j = AXIS_INDEX[order[0]], AXIS_INDEX[order[1]]
    sign = 1.0 if (j - i) % 3 == 1 else -1.0
    return _xyz_and_xyx(*(sign * angles[..., n] for n in range(3)), proper=order[0] == order[2],
                        perm=(i, j, 3 - i - j))
  out = np.broadcast_to(np.eye(3), angles.shape[:-1] + (3, 3)).copy()
  for n, axis in enumerate(order):
    out = out @ elementary_rotation(angles[..., n], axis)
  return out


def matrix_to_euler_np(rotations: np.ndarray, order: str, degrees: bool = False,
                       extrinsic: bool = False) -> np.ndarray:
  """Inverse of `euler_to_matrix_np` for 3-letter orders (Tait-Bryan or proper Euler).

  At gimbal lock (middle angle +-90 deg Tait-Bryan, 0/180 deg proper) the last intrinsic angle
  is set to 0 and the first absorbs the rotation, so the returned angles still reproduce R.

  Args:
    rotations: [..., 3, 3] rotation matrices.
    order: e.g. "ZYX" or "ZXZ".
    degrees: return degrees instead of radians.
    extrinsic: see `euler_to_matrix_np`.

  Returns:
    [..., 3] angles.
  """
  if len(order) != 3 or any(a not in AXIS_INDEX for a in order) or order[0] == order[1] or (
      order[1] == order[2]):
    raise ValueError(f"unsupported Euler order {order!r}")
  if extrinsic:
    return matrix_to_euler_np(rotations, order[::-1], degrees)[..., ::-1]
  r = np.asarray(rotations, np.float64)
  i, j = AXIS_INDEX[order[0]], AXIS_INDEX[order[1]]
  k = 3 - i - j
  sign = 1.0 if (j - i) % 3 == 1 else -1.0  # +1 when (i, j, k) is a cyclic permutation.
  proper = order[0] == order[2]
  if proper:
    sin_b = np.hypot(r[..., i, j], r[..., i, k])
    b = np.arctan2(sin_b, r[..., i, i])
    a = np.arctan2(r[..., j, i], -sign * r[..., k, i])
    c = np.arctan2(r[..., i, j], sign * r[..., i, k])
    degenerate = sin_b < 1e-9
  else:
    cos_b = np.hypot(r[..., i, i], r[..., i, j])
    b = np.arctan2(sign * r[..., i, k], cos_b)
    a = np.arctan2(-sign * r[..., j, k], r[..., k, k])
    c = np.arctan2(-sign * r[..., i, j], r[..., i, i])
    degenerate = cos_b < 1e-9
  if np.any(degenerate):
    # With c = 0, R @ R_j(b)^T = R_i(a); read a off that rotation's (k', j') block.
    rest = r @ np.swapaxes(elementary_rotation(b, order[1]), -1, -2)
    jj, kk = (i + 1) % 3, (i + 2) % 3
    a = np.where(degenerate, np.arctan2(rest[..., kk, jj], rest[..., jj, jj]), a)
    c = np.where(degenerate, 0.0, c)
  out = np.stack([a, b, c], axis=-1)
  return np.rad2deg(out) if degrees else out


def matrix_to_axis_angle_np(rot: np.ndarray) -> np.ndarray:
  """[..., 3, 3] rotations -> [..., 3] axis-angle, angle in [0, pi] (NumPy float64).

  Via the quaternion (largest-pivot extraction), accurate near 0 and pi; the same convention as
  `flowpose.geometry.matrix_to_axis_angle`, without per-shape JAX compilation.
  """
  rot = np.asarray(rot, np.float64)
  m = lambda i, k: rot[..., i, k]
  trace = m(0, 0) + m(1, 1) + m(2, 2)
  pivots = np.stack([1 + trace, 1 + 2 * m(0, 0) - trace, 1 + 2 * m(1, 1) - trace,
                     1 + 2 * m(2, 2) - trace], -1)
  candidates = np.stack([
      np.stack([pivots[..., 0], m(2, 1) - m(1, 2), m(0, 2) - m(2, 0), m(1, 0) - m(0, 1)], -1),
      np.stack([m(2, 1) - m(1, 2), pivots[..., 1], m(1, 0) + m(0, 1), m(0, 2) + m(2, 0)], -1),
      np.stack([m(0, 2) - m(2, 0), m(1, 0) + m(0, 1), pivots[..., 2], m(1, 2) + m(2, 1)], -1),
      np.stack([m(1, 0) - m(0, 1), m(2, 0) + m(0, 2), m(2, 1) + m(1, 2), pivots[..., 3]], -1),
  ], -2)
  best = np.argmax(pivots, -1)
  quat = np.take_along_axis(candidates, best[..., None, None], -2)[..., 0, :]
  quat /= np.linalg.norm(quat, axis=-1, keepdims=True)
  quat = np.where(quat[..., :1] < 0, -quat, quat)  # w >= 0: angle in [0, pi].
  sin_half = np.linalg.norm(quat[..., 1:], axis=-1, keepdims=True)
  angle = 2 * np.arctan2(sin_half, quat[..., :1])
  # angle / sin(angle / 2) -> 2 as the angle -> 0.
  scale = np.where(sin_half > 1e-12, angle / np.maximum(sin_half, 1e-300), 2.0)
  return quat[..., 1:] * scale
