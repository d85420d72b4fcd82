"""Numpy pinhole cameras for pictures and evidence: `PinholeCamera`, `look_at`, `fit_camera`.

OpenCV convention (`flowpose.geometry.camera`): x right, y down, z forward; `x_cam = R x + t`;
pixel `(row i, col j)` has its centre at `(j + 0.5, i + 0.5)`. Projection is
`flowpose.geometry.camera.perspective_project_np` (the one formula, float64).
"""

from typing import Any, NamedTuple

import numpy as np

from flowpose.geometry import camera as camera_lib


class PinholeCamera(NamedTuple):
  """A pinhole camera, OpenCV convention (see the module docstring).

  Attributes:
    rotation: [3, 3] world-to-camera rotation `R`.
    translation: [3] world-to-camera translation `t` (`x_cam = R @ x_world + t`).
    focal: [2] focal lengths `(fx, fy)` in pixels.
    principal_point: [2] `(cx, cy)` in pixels (image centre: `(W / 2, H / 2)`).
  """
  rotation: np.ndarray
  translation: np.ndarray
  focal: np.ndarray
  principal_point: np.ndarray

  @property
  def center(self) -> np.ndarray:
    """[3] camera centre in world coordinates, `-R^T t`."""
    return -np.asarray(self.rotation).T @ np.asarray(self.translation)


def as_pinhole(camera: Any) -> PinholeCamera:
  """Converts a camera-like object to a float64 `PinholeCamera`.

  Accepts a `PinholeCamera`, a tuple `(R, t, focal, principal_point)` as `flowpose.geometry.camera`
  passes them (not imported here), or an object with attributes `rotation`|`R`,
  `translation`|`t`, `focal` and `principal_point`. A scalar focal means fx = fy.

  Raises:
    ValueError: a field is missing or has the wrong shape.
  """
  if isinstance(camera, (tuple, list)) and len(camera) == 4:
    camera = PinholeCamera(*camera)
  fields = [next((getattr(camera, n) for n in names if getattr(camera, n, None) is not None),
                 None) for names in (("rotation", "R"), ("translation", "t"), ("focal",),
                                     ("principal_point",))]
  if any(f is None for f in fields):
    raise ValueError(f"camera {type(camera).__name__}: expected rotation [3,3], translation "
                     "[3], focal [2] and principal_point [2]")
  rotation, translation, focal, principal = (np.asarray(f, np.float64) for f in fields)
  focal = np.broadcast_to(focal, (2,))
  if rotation.shape != (3, 3) or translation.shape != (3,) or principal.shape != (2,):
    raise ValueError(f"camera: expected rotation [3,3], translation [3], principal_point [2]; "
                     f"got {rotation.shape}, {translation.shape}, {principal.shape}")
  return PinholeCamera(rotation, translation, focal, principal)


def to_camera(points, cam: PinholeCamera) -> tuple[np.ndarray, np.ndarray]:
  """World points [N, 3] -> (camera-frame points [N, 3], pixels [N, 2]), float64.

  The pixels come from `flowpose.geometry.camera.perspective_project_np`, the one projection
  (depth clamped at `camera.MIN_DEPTH`; mask with `camera.in_front`).
  """
  x_cam = np.asarray(points, np.float64).reshape(-1, 3) @ cam.rotation.T + cam.translation
  return x_cam, camera_lib.perspective_project_np(x_cam, cam.focal, cam.principal_point)


def look_at(eye, target, up=(0.0, 1.0, 0.0), *, focal, principal_point) -> PinholeCamera:
  """A camera at `eye` looking at `target`, with world `up` appearing up in the image.

  Args:
    eye: [3] camera centre (world).
    target: [3] point on the optical axis (world).
    up: [3] world direction that should point up in the image (not parallel to the view).
    focal: scalar or [2] focal length in pixels.
    principal_point: [2] principal point in pixels.

  Returns:
    A `PinholeCamera`. E.g. eye on +Z looking at the origin with up = +Y sees world +X on the
    image's right: a body facing +Z with its left side at +X is seen un-mirrored.
  """
  eye = np.asarray(eye, np.float64)
  forward = np.asarray(target, np.float64) - eye
  forward /= np.linalg.norm(forward)
  right = np.cross(forward, np.asarray(up, np.float64))
  norm = np.linalg.norm(right)
  if norm < 1e-9:
    raise ValueError("look_at: `up` is parallel to the viewing direction")
  right /= norm
  down = np.cross(forward, right)  # Completes the right-handed x-right, y-down, z-forward frame.
  rotation = np.stack([right, down, forward])
  return PinholeCamera(rotation, -rotation @ eye,
                       np.broadcast_to(np.asarray(focal, np.float64), (2,)).copy(),
                       np.asarray(principal_point, np.float64))


def fit_camera(points, view_dir, image_size, *, up=(0.0, 1.0, 0.0), fov_deg: float = 30.0,
               margin: float = 0.05) -> PinholeCamera:
  """Places a camera looking along `-view_dir` so that all `points` fill the image.

  Args:
    points: [N, 3] world points to frame (e.g. mesh vertices).
    view_dir: [3] direction from the points towards the camera (e.g. +Z for a front view of a
      body that faces +Z).
    image_size: (H, W) in pixels.
    up: [3] world up.
    fov_deg: vertical field of view, which sets the focal length `fy = fx`.
    margin: fraction of the half-image left empty on each side.

  Returns:
    A `PinholeCamera` aimed at the bounding-box centre, at the smallest distance at which every
    point projects inside the image shrunk by `margin`.
  """
  points = np.asarray(points, np.float64).reshape(-1, 3)
  height, width = image_size
  focal = 0.5 * height / np.tan(np.radians(fov_deg) / 2)
  center = 0.5 * (points.min(0) + points.max(0))
  view_dir = np.asarray(view_dir, np.float64)
  view_dir = view_dir / np.linalg.norm(view_dir)
  cam = look_at(center + view_dir, center, up, focal=focal,
                principal_point=(width / 2, height / 2))
  rel = (points - center) @ cam.rotation.T  # Camera-frame offsets from the target.
  # A point at offset (x, y, z) from a target at distance d fits when |x| <= k (d + z).
  k_x = (1 - margin) * (width / 2) / focal
  k_y = (1 - margin) * (height / 2) / focal
  dist = max(np.max(np.abs(rel[:, 0]) / k_x - rel[:, 2]),
             np.max(np.abs(rel[:, 1]) / k_y - rel[:, 2]),
             np.max(-rel[:, 2]) + 1e-2 * np.ptp(points, 0).max() + 1e-6)
  return look_at(center + dist * view_dir, center, up, focal=focal,
                 principal_point=(width / 2, height / 2))


def project(points, camera) -> tuple[np.ndarray, np.ndarray]:
  """Projects world points to pixels.

  Args:
    points: [N, 3] world points.
    camera: a `PinholeCamera` (or anything `as_pinhole` accepts).

  Returns:
    uv: [N, 2] pixel coordinates (u = column, v = row; pixel centres at integer + 0.5).
    depth: [N] camera-frame z. Points not `camera.in_front` (depth <= `camera.MIN_DEPTH`, where
      the projection's depth clamp binds) get uv = nan.
  """
  x_cam, uv = to_camera(points, as_pinhole(camera))
  uv[~camera_lib.in_front(x_cam)] = np.nan
  return uv, x_cam[:, 2]
