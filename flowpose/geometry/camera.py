"""Pinhole / weak-perspective cameras and image crops in pure `jax.numpy`.

Conventions (all functions batch over leading dims `[...]`):

* Camera frame: OpenCV. x right, y down, z forward (optical axis); points in
  front of the camera have z > 0. Extrinsics map world to camera:
  `x_cam = R @ x_world + t`.
* Pixels: `(u, v)` = (column, row) in continuous coordinates with the origin at
  the top-left *corner* of the top-left pixel, so pixel `(i, j)` covers
  `[j, j+1] x [i, i+1]` and its centre is `(j + 0.5, i + 0.5)`. The centre of a
  `W x H` image is `(W / 2, H / 2)`. In this convention crops and resizes are
  pure scale + offset (no half-pixel terms). Samplers that put pixel centres at
  integers (cv2.warpAffine) need `T(-0.5) @ A @ T(0.5)`.
* Intrinsics: `focal` is `[..., 2]` = (fx, fy) in pixels or a scalar,
  `principal_point` is `[..., 2]` = (cx, cy): `u = fx * x / z + cx`.
* The body model is Y up and faces +Z. A camera in front of the person looks
  along -Z with world-up +Y: `look_at(eye=(0, 1, 3), target=(0, 1, 0))`; the
  body's left (+X) then appears on the image right, its head at the top.
"""

from typing import Sequence, Tuple

import chex
import jax
import jax.numpy as jnp
import numpy as np

# The one depth clamp of every pinhole projection in flowpose (fitting, losses, rasterizer,
# benchmarks): a point nearer than MIN_DEPTH to the camera plane, or behind it, is projected as
# if it were at MIN_DEPTH. Its pixel is then finite but meaningless, and its gradient w.r.t. z is
# zero; callers mask such points with `in_front` (the rasterizer drops their triangles, the
# fitter reports them). 1 cm: nothing flowpose fits or draws is that close to a camera, and the
# clamp keeps `1 / z` (and its gradient) bounded during optimisation.
MIN_DEPTH = 1e-2


def _as_float(x) -> jax.Array:
  x = jnp.asarray(x)
  return x if jnp.issubdtype(x.dtype, jnp.floating) else x.astype(jnp.float32)


def _focal_xy(focal) -> jax.Array:
  """Scalar or `[..., 2]` focal length -> `[..., 2]`."""
  focal = _as_float(focal)
  if focal.ndim == 0:
    focal = jnp.stack([focal, focal])
  chex.assert_axis_dimension(focal, -1, 2)
  return focal


def _normalize(v: jax.Array) -> jax.Array:
  return v * jax.lax.rsqrt(jnp.maximum(jnp.sum(v * v, -1, keepdims=True),
                                       1e-24))


def look_at(eye: jax.Array, target: jax.Array,
            up: Sequence[float] = (0.0, 1.0, 0.0)
            ) -> Tuple[jax.Array, jax.Array]:
  """World-to-camera extrinsics of an OpenCV camera at `eye` facing `target`.

  The camera z axis points from `eye` to `target`, y points "down" (opposite
  to `up` projected onto the image plane) and x = y cross z points right.
  Undefined when `target - eye` is parallel to `up`.

  Args:
    eye: `[..., 3]` camera centre in world coordinates.
    target: `[..., 3]` point that lands on the optical axis.
    up: `[..., 3]` world up direction (the body model's is +Y).

  Returns:
    `(R [..., 3, 3], t [..., 3])` with `x_cam = R @ x_world + t`.
  """
  eye, target, up = _as_float(eye), _as_float(target), _as_float(up)
  z = _normalize(target - eye)
  x = _normalize(jnp.cross(z, up))
  y = jnp.cross(z, x)
  rot = jnp.stack([x, y, z], axis=-2)  # Rows are the camera axes in world.
  t = -jnp.einsum("...ij,...j->...i", rot, eye)
  return rot, t


def world_to_camera(points: jax.Array, rot: jax.Array,
                    t: jax.Array) -> jax.Array:
  """`x_cam = R @ x_world + t`.

  Args:
    points: `[..., N, 3]` world points.
    rot: `[..., 3, 3]`.
    t: `[..., 3]`.

  Returns:
    `[..., N, 3]` camera-frame points.
  """
  points = _as_float(points)
  chex.assert_axis_dimension(points, -1, 3)
  return points @ jnp.swapaxes(rot, -1, -2) + t[..., None, :]


def camera_to_world(points_cam: jax.Array, rot: jax.Array,
                    t: jax.Array) -> jax.Array:
  """Inverse of `world_to_camera`: `x_world = R^T (x_cam - t)`."""
  points_cam = _as_float(points_cam)
  return (points_cam - t[..., None, :]) @ rot


def intrinsics_matrix(focal, principal_point: jax.Array) -> jax.Array:
  """`K [..., 3, 3] = [[fx, 0, cx], [0, fy, cy], [0, 0, 1]]`."""
  f = _focal_xy(focal)
  c = _as_float(principal_point)
  f, c = jnp.broadcast_arrays(f, c)
  zero, one = jnp.zeros_like(f[..., 0]), jnp.ones_like(f[..., 0])
  return jnp.stack([
      jnp.stack([f[..., 0], zero, c[..., 0]], -1),
      jnp.stack([zero, f[..., 1], c[..., 1]], -1),
      jnp.stack([zero, zero, one], -1),
  ], axis=-2)


def _pinhole(xp, points_cam, focal_xy, principal_point):
  """`f * xy / max(z, MIN_DEPTH) + c` with the array module `xp` (jnp or numpy): the formula."""
  z = xp.maximum(points_cam[..., 2:], MIN_DEPTH)
  return focal_xy * points_cam[..., :2] / z + principal_point


def perspective_project(points_cam: jax.Array, focal,
                        principal_point: jax.Array) -> jax.Array:
  """Pinhole projection of camera-frame points to pixels (differentiable).

  Args:
    points_cam: `[..., N, 3]` points in the OpenCV camera frame.
    focal: scalar or `[..., 2]` (fx, fy) in pixels.
    principal_point: `[..., 2]` (cx, cy) in pixels.

  Returns:
    `[..., N, 2]` pixel coordinates `f * xy / max(z, MIN_DEPTH) + c`; points that are not
    `in_front` get finite but meaningless pixels (see `MIN_DEPTH`).
  """
  points_cam = _as_float(points_cam)
  chex.assert_axis_dimension(points_cam, -1, 3)
  return _pinhole(jnp, points_cam, _focal_xy(focal)[..., None, :],
                  _as_float(principal_point)[..., None, :])


def perspective_project_np(points_cam, focal, principal_point) -> np.ndarray:
  """`perspective_project` in float64 numpy (the same formula, for the numpy rasterizer).

  Args:
    points_cam: `[..., N, 3]`; focal: scalar or `[..., 2]`; principal_point: `[..., 2]`.

  Returns:
    `[..., N, 2]` float64 pixels.
  """
  points_cam = np.asarray(points_cam, np.float64)
  focal = np.asarray(focal, np.float64)
  focal = np.stack([focal, focal], -1) if focal.ndim == 0 else focal
  return _pinhole(np, points_cam, focal[..., None, :],
                  np.asarray(principal_point, np.float64)[..., None, :])


def in_front(points_cam) -> jax.Array:
  """`[..., N]` bool: the point is farther than `MIN_DEPTH` along the optical axis.

  Where False, `perspective_project` clamped the point's depth. Works on jnp and numpy arrays
  (returns the same kind).
  """
  return points_cam[..., 2] > MIN_DEPTH


def project(points_world: jax.Array, rot: jax.Array, t: jax.Array, focal,
            principal_point: jax.Array) -> jax.Array:
  """World `[..., N, 3]` -> pixels `[..., N, 2]`: extrinsics, then pinhole."""
  return perspective_project(world_to_camera(points_world, rot, t), focal,
                             principal_point)


def weak_perspective_project(points: jax.Array, scale: jax.Array,
                             trans: jax.Array) -> jax.Array:
  """Scaled orthographic projection `uv = scale * xy + trans`, in pixels.

  Args:
    points: `[..., N, 3]` points already rotated into the camera frame
      (x right, y down); z is ignored.
    scale: `[...]` pixels per metre.
    trans: `[..., 2]` pixel offset.

  Returns:
    `[..., N, 2]`.
  """
  points = _as_float(points)
  chex.assert_axis_dimension(points, -1, 3)
  scale = _as_float(scale)
  trans = _as_float(trans)
  return scale[..., None, None] * points[..., :2] + trans[..., None, :]


def weak_perspective_to_translation(scale: jax.Array, trans: jax.Array, focal,
                                    principal_point: jax.Array) -> jax.Array:
  """Camera translation whose perspective projection matches a weak camera.

  For points near the camera-frame origin (small extent and depth compared
  to the distance), `perspective_project(points + t, focal, c)` approximates
  `weak_perspective_project(points, scale, trans)` with
  `t = ((trans - c) / scale, f / scale)` (exact for `fx == fy` at depth 0).

  Args:
    scale: `[...]`; trans: `[..., 2]`; focal: scalar or `[..., 2]` (the mean
      of fx, fy sets the depth); principal_point: `[..., 2]`.

  Returns:
    `t [..., 3]`.
  """
  scale = _as_float(scale)[..., None]
  depth = jnp.mean(_focal_xy(focal), axis=-1, keepdims=True) / scale
  xy = (_as_float(trans) - _as_float(principal_point)) / scale
  batch = jnp.broadcast_shapes(xy.shape[:-1], depth.shape[:-1])
  return jnp.concatenate([jnp.broadcast_to(xy, batch + (2,)),
                          jnp.broadcast_to(depth, batch + (1,))], axis=-1)


def crop_box_to_transform(box: jax.Array,
                          out_size: Tuple[int, int]) -> jax.Array:
  """Affine map from original-image pixels to crop pixels.

  The box `(x0, y0, w, h)` (pixels, corner convention) is stretched onto an
  `out_size = (H, W)` output: `(x0, y0) -> (0, 0)` and
  `(x0 + w, y0 + h) -> (W, H)`.

  Args:
    box: `[..., 4]` as `(x0, y0, w, h)`.
    out_size: `(H, W)` of the crop, in pixels.

  Returns:
    `A [..., 3, 3]` acting on homogeneous `(u, v, 1)` column vectors.
  """
  box = _as_float(box)
  chex.assert_axis_dimension(box, -1, 4)
  out_h, out_w = out_size
  sx = out_w / box[..., 2]
  sy = out_h / box[..., 3]
  zero, one = jnp.zeros_like(sx), jnp.ones_like(sx)
  return jnp.stack([
      jnp.stack([sx, zero, -sx * box[..., 0]], -1),
      jnp.stack([zero, sy, -sy * box[..., 1]], -1),
      jnp.stack([zero, zero, one], -1),
  ], axis=-2)


def apply_affine_2d(points: jax.Array, affine: jax.Array) -> jax.Array:
  """`points [..., N, 2]` mapped by `affine [..., 3, 3]` (last row `0 0 1`)."""
  points = _as_float(points)
  chex.assert_axis_dimension(points, -1, 2)
  lin = affine[..., :2, :2]
  return points @ jnp.swapaxes(lin, -1, -2) + affine[..., None, :2, 2]


def invert_affine_2d(affine: jax.Array) -> jax.Array:
  """Inverse of a 2D affine `[..., 3, 3]` in closed form (`[M^-1, -M^-1 b]`)."""
  affine = _as_float(affine)
  a, b = affine[..., 0, 0], affine[..., 0, 1]
  c, d = affine[..., 1, 0], affine[..., 1, 1]
  tx, ty = affine[..., 0, 2], affine[..., 1, 2]
  det = a * d - b * c
  ia, ib, ic, id_ = d / det, -b / det, -c / det, a / det
  zero, one = jnp.zeros_like(a), jnp.ones_like(a)
  return jnp.stack([
      jnp.stack([ia, ib, -(ia * tx + ib * ty)], -1),
      jnp.stack([ic, id_, -(ic * tx + id_ * ty)], -1),
      jnp.stack([zero, zero, one], -1),
  ], axis=-2)


def crop_intrinsics(focal, principal_point: jax.Array, box: jax.Array,
                    out_size: Tuple[int, int]) -> Tuple[jax.Array, jax.Array]:
  """Intrinsics of the cropped-and-resized image.

  Projecting with the returned intrinsics equals projecting with the original
  ones and then applying `crop_box_to_transform(box, out_size)` (exactly, as
  the crop is an axis-aligned scale and shift).

  Args:
    focal: scalar or `[..., 2]`.
    principal_point: `[..., 2]`.
    box: `[..., 4]` as `(x0, y0, w, h)`.
    out_size: `(H, W)`.

  Returns:
    `(focal' [..., 2], principal_point' [..., 2])`.
  """
  box = _as_float(box)
  out_h, out_w = out_size
  s = jnp.stack([out_w / box[..., 2], out_h / box[..., 3]], axis=-1)
  f = _focal_xy(focal) * s
  c = (_as_float(principal_point) - box[..., :2]) * s
  return f, c


def box_from_keypoints(keypoints: jax.Array, confidence: jax.Array,
                       scale: float = 1.2, aspect: float = 1.0,
                       min_size: float = 1.0) -> jax.Array:
  """Person box `(x0, y0, w, h)` around the confident 2D keypoints.

  The tight box of the keypoints with `confidence > 0` is grown about its
  centre to the aspect ratio `w / h = aspect` (the short side extended) and
  then scaled by `scale` for a margin. Sides are at least `min_size`, so the
  box is usable by `crop_box_to_transform` even with one or no keypoint (no
  keypoint: a box centred on the origin).

  Args:
    keypoints: `[..., K, 2]` pixels.
    confidence: `[..., K]`; zero marks missing keypoints.
    scale: margin factor applied to both sides.
    aspect: target `w / h`.
    min_size: smallest side, pixels.

  Returns:
    `[..., 4]` boxes.
  """
  keypoints = _as_float(keypoints)
  chex.assert_axis_dimension(keypoints, -1, 2)
  valid = (_as_float(confidence) > 0)[..., None]
  lo = jnp.min(jnp.where(valid, keypoints, jnp.inf), axis=-2)
  hi = jnp.max(jnp.where(valid, keypoints, -jnp.inf), axis=-2)
  any_valid = jnp.any(valid, axis=-2)
  lo = jnp.where(any_valid, lo, 0.0)
  hi = jnp.where(any_valid, hi, 0.0)
  center = 0.5 * (lo + hi)
  w, h = hi[..., 0] - lo[..., 0], hi[..., 1] - lo[..., 1]
  # Extend the short side to the aspect ratio, then add the margin; the floor
  # is applied to h so that w = aspect * h holds exactly.
  h = jnp.maximum(scale * jnp.maximum(h, w / aspect),
                  max(min_size, min_size / aspect))
  w = aspect * h
  return jnp.stack([center[..., 0] - 0.5 * w, center[..., 1] - 0.5 * h, w, h],
                   axis=-1)
