"""Tests for flowpose.geometry.camera: projection, look_at, crops and boxes."""

import jax
import numpy as np
import pytest

from flowpose.geometry import camera
from flowpose import geometry

FOCAL = np.array([500.0, 600.0], np.float32)
CENTER = np.array([320.0, 240.0], np.float32)


pytestmark = pytest.mark.usefixtures("fast_compile")  # conftest: XLA optimisations off


def _random_points(seed, n=8):
  rng = np.random.default_rng(seed)
  pts = rng.uniform(-1.0, 1.0, size=(n, 3)).astype(np.float32)
  pts[:, 2] += 4.0  # In front of the camera.
  return pts


def test_perspective_project_matches_hand_computation():
  pts = np.array([[0.1, -0.2, 2.0], [0.0, 0.0, 1.0], [1.0, 1.0, 4.0]],
                 np.float32)
  expected = np.array([[500 * 0.05 + 320, 600 * -0.1 + 240],
                       [320, 240],
                       [500 * 0.25 + 320, 600 * 0.25 + 240]])
  np.testing.assert_allclose(camera.perspective_project(pts, FOCAL, CENTER),
                             expected, rtol=1e-6)
  # Scalar focal length = equal fx, fy.
  np.testing.assert_allclose(
      camera.perspective_project(pts, 500.0, CENTER)[:, 1],
      500 * pts[:, 1] / pts[:, 2] + 240, rtol=1e-6)
  # Same as K @ (x / z) with the intrinsics matrix.
  k = np.asarray(camera.intrinsics_matrix(FOCAL, CENTER))
  homog = (pts / pts[:, 2:]) @ k.T
  np.testing.assert_allclose(camera.perspective_project(pts, FOCAL, CENTER),
                             homog[:, :2], rtol=1e-6)
  # Points on or behind the camera plane stay finite (depth clamp).
  behind = np.array([[0.1, 0.1, 0.0], [0.1, 0.1, -2.0]], np.float32)
  assert np.all(np.isfinite(camera.perspective_project(behind, FOCAL, CENTER)))


def test_project_batched_matches_explicit_extrinsics():
  pts = _random_points(0)
  rot = np.asarray(geometry.random_rotation(jax.random.key(0), (2,)))
  t = np.array([[0.1, -0.2, 5.0], [0.0, 0.3, 6.0]], np.float32)
  focal = np.stack([FOCAL, FOCAL * 1.5])
  got = camera.project(pts, rot, t, focal, CENTER)  # Batch of 2 cameras.
  assert got.shape == (2, 8, 2)
  for b in range(2):
    cam = pts @ rot[b].T + t[b]
    expected = focal[b] * cam[:, :2] / cam[:, 2:] + CENTER
    np.testing.assert_allclose(got[b], expected, rtol=1e-5)
    np.testing.assert_allclose(
        camera.camera_to_world(cam, rot[b], t[b]), pts, atol=1e-5)


def test_look_at_puts_target_on_optical_axis():
  eyes = np.array([[0.0, 1.0, 3.0], [2.0, 0.5, -1.0], [-1.0, 3.0, 1.0]],
                  np.float32)
  target = np.array([0.0, 1.0, 0.0], np.float32)
  rot, t = camera.look_at(eyes, target)
  rot, t = np.asarray(rot), np.asarray(t)
  for b in range(3):
    np.testing.assert_allclose(rot[b] @ rot[b].T, np.eye(3), atol=1e-6)
    np.testing.assert_allclose(np.linalg.det(rot[b]), 1.0, atol=1e-6)
    # The eye is the camera centre; the target is straight ahead.
    np.testing.assert_allclose(rot[b] @ eyes[b] + t[b], 0.0, atol=1e-6)
    dist = np.linalg.norm(target - eyes[b])
    np.testing.assert_allclose(rot[b] @ target + t[b], [0, 0, dist],
                               atol=1e-5)
  uv = camera.project(target[None], rot, t, FOCAL, CENTER)
  np.testing.assert_allclose(uv[:, 0], np.tile(CENTER, (3, 1)), atol=1e-4)


def test_look_at_front_view_of_body_frame():
  # Camera in front of a Y-up, +Z-facing body: the head (+Y) is at the top of
  # the image and the body's left (+X) on the image right.
  rot, t = camera.look_at(np.array([0.0, 1.0, 3.0]), np.array([0.0, 1.0, 0.0]))
  pts = np.array([[0.0, 1.8, 0.0], [0.3, 1.0, 0.0]], np.float32)
  uv = np.asarray(camera.project(pts, rot, t, FOCAL, CENTER))
  assert uv[0, 1] < CENTER[1]  # head above centre (v grows downwards)
  assert uv[1, 0] > CENTER[0]  # left hand to the right
  np.testing.assert_allclose(uv[1], [320 + 500 * 0.3 / 3, 240], atol=1e-3)


def test_weak_perspective_matches_hand_computation():
  pts = np.array([[1.0, 2.0, 5.0], [-0.5, 0.0, -3.0]], np.float32)
  uv = camera.weak_perspective_project(pts, np.float32(100.0),
                                       np.array([10.0, 20.0], np.float32))
  np.testing.assert_allclose(uv, [[110, 220], [-40, 20]], rtol=1e-6)
  # Batched scale [2] and trans [2, 2].
  uv = camera.weak_perspective_project(pts, np.array([1.0, 2.0]),
                                       np.array([[0.0, 0.0], [1.0, -1.0]]))
  np.testing.assert_allclose(uv, [[[1, 2], [-0.5, 0]], [[3, 3], [0, -1]]],
                             rtol=1e-6)


def test_weak_perspective_to_translation_agrees_with_pinhole():
  pts = _random_points(1)
  pts[:, 2] = 0.0  # Exact agreement on the z = 0 plane.
  scale, trans = np.float32(80.0), np.array([300.0, 260.0], np.float32)
  t = camera.weak_perspective_to_translation(scale, trans, 500.0, CENTER)
  np.testing.assert_allclose(t[2], 500.0 / 80.0, rtol=1e-6)
  weak = camera.weak_perspective_project(pts, scale, trans)
  full = camera.perspective_project(pts + t, 500.0, CENTER)
  np.testing.assert_allclose(full, weak, rtol=1e-5)
  # Off the plane, perspective differs from weak perspective.
  pts[:, 2] = 0.5
  full = camera.perspective_project(pts + t, 500.0, CENTER)
  assert np.max(np.abs(full - weak)) > 1.0


def test_crop_transform_maps_box_and_round_trips():
  box = np.array([100.0, 50.0, 200.0, 300.0], np.float32)  # x0, y0, w, h
  out_size = (256, 192)  # H, W
  a = camera.crop_box_to_transform(box, out_size)
  corners = np.array([[100, 50], [300, 350], [200, 200]], np.float32)
  np.testing.assert_allclose(camera.apply_affine_2d(corners, a),
                             [[0, 0], [192, 256], [96, 128]], atol=1e-4)
  a_inv = camera.invert_affine_2d(a)
  np.testing.assert_allclose(a_inv @ a, np.eye(3), atol=1e-6)
  rng = np.random.default_rng(2)
  pts = rng.uniform(0, 640, size=(8, 2)).astype(np.float32)
  back = camera.apply_affine_2d(camera.apply_affine_2d(pts, a), a_inv)
  np.testing.assert_allclose(back, pts, rtol=1e-5)
  # A general (rotated, sheared) affine inverts too.
  general = np.array([[1.2, 0.3, 5.0], [-0.4, 0.9, -7.0], [0, 0, 1]],
                     np.float32)
  np.testing.assert_allclose(camera.invert_affine_2d(general),
                             np.linalg.inv(general), rtol=1e-5, atol=1e-5)


def test_crop_intrinsics_equal_cropping_the_projection():
  pts = _random_points(3)
  boxes = np.array([[100.0, 50.0, 200.0, 300.0], [-20.0, 10.0, 400.0, 380.0]],
                   np.float32)
  out_size = (256, 192)
  focal, center = camera.crop_intrinsics(FOCAL, CENTER, boxes, out_size)
  assert focal.shape == center.shape == (2, 2)
  direct = camera.perspective_project(pts, focal, center)
  uv = camera.perspective_project(pts, FOCAL, CENTER)
  cropped = camera.apply_affine_2d(
      uv, camera.crop_box_to_transform(boxes, out_size))
  np.testing.assert_allclose(direct, cropped, rtol=1e-5, atol=1e-4)


def test_box_from_keypoints():
  kp = np.array([[100, 50], [200, 250], [150, 100], [900, 900]], np.float32)
  conf = np.array([1.0, 0.5, 0.2, 0.0], np.float32)  # Last one missing.
  # Tight box 100 x 200 centred at (150, 150); square, then 1.2x margin.
  np.testing.assert_allclose(camera.box_from_keypoints(kp, conf),
                             [30, 30, 240, 240], rtol=1e-6)
  # w / h = 0.75: width grows to 150, then 1.2x.
  np.testing.assert_allclose(
      camera.box_from_keypoints(kp, conf, aspect=0.75), [60, 30, 180, 240],
      rtol=1e-6)
  # Batched: a single keypoint and no keypoint give min-size boxes.
  conf_b = np.stack([conf, [0, 1, 0, 0], [0, 0, 0, 0]]).astype(np.float32)
  boxes = np.asarray(camera.box_from_keypoints(np.stack([kp] * 3), conf_b,
                                               min_size=4.0))
  np.testing.assert_allclose(boxes[1], [198, 248, 4, 4], rtol=1e-6)
  np.testing.assert_allclose(boxes[2], [-2, -2, 4, 4], rtol=1e-6)
  assert np.all(np.isfinite(camera.crop_box_to_transform(boxes, (64, 64))))


def test_one_projection_for_fitting_rendering_and_numpy():
  """The former three pinhole formulas (fitting, rasterizer, camera) are one: they agree in
  front of the camera, and points within MIN_DEPTH are clamped (jnp/numpy) or NaN (raster)."""
  from flowpose.evidence import raster  # pylint: disable=g-import-not-at-top
  from flowpose.fitting import reduced_body  # pylint: disable=g-import-not-at-top
  assert not hasattr(reduced_body, "project")
  pts = _random_points(3)
  near = np.array([[0.1, 0.2, 0.5 * camera.MIN_DEPTH], [0.1, 0.2, -1.0]], np.float32)
  pts = np.concatenate([pts, near])
  jnp_uv = np.asarray(camera.perspective_project(pts, FOCAL, CENTER))
  np_uv = camera.perspective_project_np(pts, FOCAL, CENTER)
  cam = raster.PinholeCamera(np.eye(3), np.zeros(3), np.asarray(FOCAL), np.asarray(CENTER))
  raster_uv, depth = raster.project(pts, cam)
  front = np.asarray(camera.in_front(pts))
  np.testing.assert_array_equal(front, [True] * (len(pts) - 2) + [False, False])
  np.testing.assert_allclose(jnp_uv, np_uv, rtol=1e-5)
  np.testing.assert_allclose(raster_uv[front], np_uv[front], rtol=1e-12)
  assert np.all(np.isnan(raster_uv[~front]))
  np.testing.assert_allclose(depth, pts[:, 2])
  # The clamp: a point within MIN_DEPTH projects as if at MIN_DEPTH.
  np.testing.assert_allclose(np_uv[-2], np.asarray(FOCAL) * near[0, :2] / camera.MIN_DEPTH
                             + np.asarray(CENTER), rtol=1e-5)
  # Differentiable, and no gradient flows through a clamped depth.
  grad = jax.grad(lambda p: camera.perspective_project(p, FOCAL, CENTER).sum())(pts)
  assert np.all(np.isfinite(grad)) and np.all(np.asarray(grad)[~front, 2] == 0)
