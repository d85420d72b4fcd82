"""Tests for flowpose.geometry: round trips, singular cases, Euler orders."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flowpose import geometry

TAIT_BRYAN = ("XYZ", "XZY", "YXZ", "YZX", "ZXY", "ZYX")
PROPER = ("XYX", "XZX", "YXY", "YZY", "ZXZ", "ZYZ")
ALL_ORDERS = TAIT_BRYAN + PROPER
# One batch size throughout: eager ops compile once per shape, and the
# machine running the suite is small.
N = 32


pytestmark = pytest.mark.usefixtures("fast_compile")  # conftest: XLA optimisations off


def _rx(a):
  c, s = np.cos(a), np.sin(a)
  return np.array([[1, 0, 0], [0, c, -s], [0, s, c]])


def _ry(a):
  c, s = np.cos(a), np.sin(a)
  return np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])


def _rz(a):
  c, s = np.cos(a), np.sin(a)
  return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])


def _random_axes(rng, n):
  v = rng.normal(size=(n, 3))
  return v / np.linalg.norm(v, axis=-1, keepdims=True)


def _assert_rotation(r, atol=1e-5):
  r = np.asarray(r, np.float64)
  eye = np.broadcast_to(np.eye(3), r.shape)
  np.testing.assert_allclose(np.swapaxes(r, -1, -2) @ r, eye, atol=atol)
  np.testing.assert_allclose(np.linalg.det(r), 1.0, atol=atol)


# Angles spanning the singular points of every conversion: exactly 0, far
# below float32 resolution of cos, both Taylor/closed-form regimes, and pi^-.
ANGLES = np.array([0.0, 1e-7, 1e-4, 2e-3, 0.9, 2.5, np.pi - 1e-3,
                   np.pi - 1e-6])


def test_axis_angle_matrix_round_trip_including_singular_angles():
  rng = np.random.default_rng(0)
  axes = _random_axes(rng, N // len(ANGLES))
  aa = (ANGLES[:, None, None] * axes[None]).reshape(N, 3).astype(np.float32)
  r = geometry.axis_angle_to_matrix(aa)
  _assert_rotation(r)
  np.testing.assert_allclose(geometry.matrix_to_axis_angle(r), aa, atol=2e-6)
  # Through quaternions as well.
  q = geometry.axis_angle_to_quaternion(aa)
  np.testing.assert_allclose(jnp.linalg.norm(q, axis=-1), 1.0, atol=1e-6)
  np.testing.assert_allclose(geometry.quaternion_to_axis_angle(q), aa,
                             atol=2e-6)
  np.testing.assert_allclose(geometry.quaternion_to_matrix(q), r, atol=1e-6)
  np.testing.assert_allclose(geometry.matrix_to_quaternion(r), q, atol=1e-6)


def test_axis_angle_tiny_angle_keeps_relative_precision():
  aa = jnp.tile(jnp.array([3e-8, -2e-8, 1e-8], jnp.float32), (N, 1))
  r = geometry.axis_angle_to_matrix(aa)
  # First-order term: R - I = [aa]_x, which float32 can hold at this size.
  np.testing.assert_allclose(r[:, 2, 1], 3e-8, rtol=1e-5)
  np.testing.assert_allclose(r[:, 0, 2], -2e-8, rtol=1e-5)
  np.testing.assert_allclose(r[:, 1, 0], 1e-8, rtol=1e-5)
  np.testing.assert_allclose(geometry.matrix_to_axis_angle(r), aa, rtol=1e-5)


def test_axis_angle_exactly_pi_axis_from_symmetric_part():
  rng = np.random.default_rng(1)
  axes = _random_axes(rng, N).astype(np.float32)
  axes[0] = [0.0, 0.0, 1.0]  # R has a zero skew part and two -1 diagonals.
  r = geometry.axis_angle_to_matrix(np.pi * axes)
  aa = np.asarray(geometry.matrix_to_axis_angle(r))
  angle = np.linalg.norm(aa, axis=-1, keepdims=True)
  np.testing.assert_allclose(angle, np.pi, atol=1e-5)
  # +-axis is the same rotation at pi.
  cos = np.abs(np.sum(aa / angle * axes, axis=-1))
  np.testing.assert_allclose(cos, 1.0, atol=1e-6)
  np.testing.assert_allclose(geometry.axis_angle_to_matrix(aa), r, atol=1e-6)


def test_axis_angle_matches_elementary_rotations():
  angles = np.linspace(-3.0, 3.0, N, dtype=np.float32)
  for axis, hand in (("X", _rx), ("Y", _ry), ("Z", _rz)):
    expected = np.stack([hand(a) for a in angles])
    aa = angles[:, None] * np.eye(3, dtype=np.float32)["XYZ".index(axis)]
    np.testing.assert_allclose(geometry.axis_angle_to_matrix(aa), expected,
                               atol=1e-6)
    np.testing.assert_allclose(geometry.rotation_about_axis(angles, axis),
                               expected, atol=1e-6)
  # Right-hand rule, independent of the hand-written matrices: +90 deg about
  # z maps x to y, about x maps y to z, about y maps z to x.
  aa = np.tile(np.eye(3, dtype=np.float32) * np.pi / 2, (N // 3 + 1, 1))[:N]
  r = np.asarray(geometry.axis_angle_to_matrix(aa))[:3]
  np.testing.assert_allclose(r[2] @ [1, 0, 0], [0, 1, 0], atol=1e-6)
  np.testing.assert_allclose(r[0] @ [0, 1, 0], [0, 0, 1], atol=1e-6)
  np.testing.assert_allclose(r[1] @ [0, 0, 1], [1, 0, 0], atol=1e-6)


def test_quaternion_round_trip_and_sign_canonicalisation():
  rng = np.random.default_rng(2)
  q = rng.normal(size=(N, 4)).astype(np.float32)
  q[0] = [1, 0, 0, 0]  # identity
  q[1] = [0, 0.6, 0, -0.8]  # angle exactly pi (w = 0)
  q[2] = [1e-4, 1, 1, 0]  # angle close to pi
  q[3] = [-1, 1e-6, 0, 0]  # identity-ish with w < 0
  unit = q / np.linalg.norm(q, axis=-1, keepdims=True)
  r = geometry.quaternion_to_matrix(q * 3.0)  # Unnormalised input is fine.
  _assert_rotation(r)
  q2 = np.asarray(geometry.matrix_to_quaternion(r))
  assert np.all(q2[:, 0] >= 0)
  # q2 = +-unit (the sign is only free when w == 0).
  np.testing.assert_allclose(np.abs(np.sum(q2 * unit, -1)), 1.0, atol=1e-6)
  np.testing.assert_allclose(geometry.quaternion_to_matrix(q2), r, atol=1e-6)
  aa = geometry.quaternion_to_axis_angle(q)
  assert np.all(np.linalg.norm(aa, axis=-1) <= np.pi + 1e-6)
  np.testing.assert_allclose(geometry.axis_angle_to_matrix(aa), r, atol=2e-6)


def test_rot6d_round_trip_and_column_layout():
  # Several leading batch dims.
  r = geometry.random_rotation(jax.random.key(0), (2, N // 2))
  x = geometry.matrix_to_rot6d(r)
  assert x.shape == (2, N // 2, 6)
  np.testing.assert_array_equal(x[..., :3], r[..., :, 0])
  np.testing.assert_array_equal(x[..., 3:], r[..., :, 1])
  np.testing.assert_allclose(geometry.rot6d_to_matrix(x), r, atol=1e-6)


def test_rot6d_of_non_orthogonal_input_is_proper_rotation():
  rng = np.random.default_rng(3)
  x = rng.normal(size=(N, 6)).astype(np.float32) * 5.0
  r = np.asarray(geometry.rot6d_to_matrix(x))
  _assert_rotation(r)
  # Gram-Schmidt keeps the direction of the first column, and the second
  # column stays in the plane of the two inputs on the same side.
  c0 = x[:, :3] / np.linalg.norm(x[:, :3], axis=-1, keepdims=True)
  np.testing.assert_allclose(r[:, :, 0], c0, atol=1e-6)
  assert np.all(np.sum(r[:, :, 1] * x[:, 3:], -1) > 0)
  np.testing.assert_allclose(np.sum(r[:, :, 2] * x[:, 3:], -1), 0, atol=1e-4)


@pytest.mark.parametrize("order", ALL_ORDERS)
def test_euler_round_trip_all_conventions(order):
  rng = np.random.default_rng(sum(map(ord, order)))
  n = N
  a = rng.uniform(-np.pi + 1e-3, np.pi - 1e-3, size=(n, 3))
  if order in PROPER:
    mid = rng.uniform(1e-3, np.pi - 1e-3, size=n)
  else:
    mid = rng.uniform(-np.pi / 2 + 1e-3, np.pi / 2 - 1e-3, size=n)
  a[:, 1] = mid
  a = a.astype(np.float32)
  for extrinsic in (False, True):
    r = geometry.euler_to_matrix(a, order, extrinsic=extrinsic)
    _assert_rotation(r)
    back = geometry.matrix_to_euler(r, order, extrinsic=extrinsic)
    # Inside the canonical ranges the decomposition is unique.
    np.testing.assert_allclose(back, a, atol=2e-4)
    deg = np.rad2deg(a)
    r_deg = geometry.euler_to_matrix(deg, order, degrees=True,
                                     extrinsic=extrinsic)
    np.testing.assert_allclose(r_deg, r, atol=1e-5)
    back_deg = geometry.matrix_to_euler(r, order, degrees=True,
                                        extrinsic=extrinsic)
    np.testing.assert_allclose(back_deg, deg, atol=1e-2)


@pytest.mark.parametrize("order", ALL_ORDERS)
def test_euler_gimbal_lock_reconstructs(order):
  rng = np.random.default_rng(7)
  if order in PROPER:
    mids = [0.0, np.pi, 1e-5, np.pi - 1e-5, 1e-3]
  else:
    mids = [np.pi / 2, -np.pi / 2, np.pi / 2 - 1e-5, -np.pi / 2 + 1e-3]
  a = rng.uniform(-np.pi, np.pi, size=(N, 3))
  a[:, 1] = np.resize(mids, N)
  a = a.astype(np.float32)
  for extrinsic in (False, True):
    r = geometry.euler_to_matrix(a, order, extrinsic=extrinsic)
    back = geometry.matrix_to_euler(r, order, extrinsic=extrinsic)
    assert np.all(np.isfinite(back))
    np.testing.assert_allclose(
        geometry.euler_to_matrix(back, order, extrinsic=extrinsic), r,
        atol=2e-6)


def test_euler_matches_hand_written_products():
  a, b, c = 0.3, -1.1, 2.4
  cases = {
      # Intrinsic: R = R_{o0}(a) R_{o1}(b) R_{o2}(c).
      ("ZYX", False): _rz(a) @ _ry(b) @ _rx(c),
      ("YXZ", False): _ry(a) @ _rx(b) @ _rz(c),
      ("ZXZ", False): _rz(a) @ _rx(b) @ _rz(c),
      # Extrinsic (ASF/AMC "XYZ"): x first, about fixed axes -> Rz Ry Rx.
      ("XYZ", True): _rz(c) @ _ry(b) @ _rx(a),
      ("YZY", True): _ry(c) @ _rz(b) @ _ry(a),
  }
  for (order, extrinsic), expected in cases.items():
    got = geometry.euler_to_matrix(jnp.array([a, b, c]), order,
                                   extrinsic=extrinsic)
    np.testing.assert_allclose(got, expected, atol=1e-6,
                               err_msg=f"{order} extrinsic={extrinsic}")
  # Closed form of intrinsic ZYX (yaw, pitch, roll), independent of products.
  cy, sy, cp, sp, cr, sr = (np.cos(a), np.sin(a), np.cos(b), np.sin(b),
                            np.cos(c), np.sin(c))
  zyx = np.array([[cy * cp, cy * sp * sr - sy * cr, cy * sp * cr + sy * sr],
                  [sy * cp, sy * sp * sr + cy * cr, sy * sp * cr - cy * sr],
                  [-sp, cp * sr, cp * cr]])
  np.testing.assert_allclose(geometry.euler_to_matrix([a, b, c], "ZYX"), zyx,
                             atol=1e-6)


def test_euler_rejects_bad_orders():
  for order in ("xyz", "XXY", "XY", "XYW"):
    with pytest.raises(ValueError, match="Euler order"):
      geometry.euler_to_matrix(jnp.zeros(3), order)
  with pytest.raises(ValueError, match="axis"):
    geometry.rotation_about_axis(0.0, "W")


def test_procrustes_recovers_similarity_transform():
  rng = np.random.default_rng(4)
  x = rng.normal(size=(3, 12, 3)).astype(np.float32)
  rot = np.asarray(geometry.random_rotation(jax.random.key(1), (3,)))
  s = np.array([0.5, 1.0, 2.3], np.float32)
  t = rng.normal(size=(3, 3)).astype(np.float32)
  y = s[:, None, None] * x @ np.swapaxes(rot, -1, -2) + t[:, None, :]
  s_hat, rot_hat, t_hat = geometry.procrustes(x, y)
  np.testing.assert_allclose(s_hat, s, rtol=1e-5)
  np.testing.assert_allclose(rot_hat, rot, atol=1e-5)
  np.testing.assert_allclose(t_hat, t, atol=1e-5)
  np.testing.assert_allclose(geometry.procrustes_align(x, y), y, atol=1e-5)
  # Rigid mode: unit scale; weighted mode ignores zero-weight outliers.
  s_rigid, _, _ = geometry.procrustes(x, y, scale=False)
  np.testing.assert_array_equal(s_rigid, 1.0)
  y_bad = y.copy()
  y_bad[:, :2] += 10.0
  w = np.ones((3, 12), np.float32)
  w[:, :2] = 0.0
  _, rot_w, _ = geometry.procrustes(x, y_bad, weights=w)
  np.testing.assert_allclose(rot_w, rot, atol=1e-5)


def test_procrustes_of_mirror_image_is_still_a_rotation():
  rng = np.random.default_rng(5)
  x = rng.normal(size=(3, 12, 3)).astype(np.float32)
  y = x * np.array([-1.0, 1.0, 1.0], np.float32)  # Only a reflection fits.
  _, rot, _ = geometry.procrustes(x, y)
  _assert_rotation(rot)
  aligned = geometry.procrustes_align(x, y)
  # Worse than zero error, but no worse than leaving x unaligned.
  err = np.mean(np.linalg.norm(aligned - y, axis=-1))
  assert 0.0 < err <= np.mean(np.linalg.norm(x - y, axis=-1)) + 1e-6


def test_gradients_finite_at_identity():
  @jax.jit  # One compilation for all the derivatives.
  def derivatives(v):
    return (
        jax.jacfwd(geometry.axis_angle_to_matrix)(v),
        jax.jacrev(lambda v: geometry.matrix_to_axis_angle(
            geometry.axis_angle_to_matrix(v)))(v),
        jax.jacrev(lambda v: geometry.quaternion_to_axis_angle(
            geometry.axis_angle_to_quaternion(v)))(v),
        jax.grad(lambda v: geometry.geodesic_angle(
            jnp.eye(3), geometry.axis_angle_to_matrix(v)))(v),
    )

  jac_r, jac_mat_round_trip, jac_quat_round_trip, grad_geodesic = (
      derivatives(jnp.zeros(3)))
  # dR/d(aa_i) at 0 is the generator [e_i]_x.
  np.testing.assert_array_equal(
      np.moveaxis(jac_r, -1, 0),
      [[[0, 0, 0], [0, 0, -1], [0, 1, 0]],
       [[0, 0, 1], [0, 0, 0], [-1, 0, 0]],
       [[0, -1, 0], [1, 0, 0], [0, 0, 0]]])
  np.testing.assert_allclose(jac_mat_round_trip, np.eye(3), atol=1e-6)
  np.testing.assert_allclose(jac_quat_round_trip, np.eye(3), atol=1e-6)
  assert np.all(np.isfinite(grad_geodesic))


def test_jit_matches_eager():
  def pipeline(aa):
    r = geometry.axis_angle_to_matrix(aa)
    e = geometry.matrix_to_euler(r, "ZXZ", extrinsic=True)
    r2 = geometry.rot6d_to_matrix(geometry.matrix_to_rot6d(
        geometry.euler_to_matrix(e, "ZXZ", extrinsic=True)))
    return geometry.matrix_to_axis_angle(
        geometry.quaternion_to_matrix(geometry.matrix_to_quaternion(r2)))

  aa = jnp.asarray(np.random.default_rng(6).normal(size=(N, 3)), jnp.float32)
  eager = pipeline(aa)
  np.testing.assert_allclose(jax.jit(pipeline)(aa), eager, atol=1e-6)
  np.testing.assert_allclose(geometry.axis_angle_to_matrix(eager),
                             geometry.axis_angle_to_matrix(aa), atol=2e-6)


def test_random_rotation_is_uniform_and_geodesic_angle():
  @jax.jit
  def moments(key):
    r = geometry.random_rotation(key, (4000,))
    ortho = jnp.max(jnp.abs(jnp.swapaxes(r, -1, -2) @ r - jnp.eye(3)))
    angle = geometry.geodesic_angle(jnp.eye(3), r)
    return ortho, jnp.min(jnp.linalg.det(r)), jnp.mean(r, 0), jnp.mean(angle)

  ortho, min_det, mean_r, mean_angle = moments(jax.random.key(2))
  assert ortho < 1e-5 and min_det > 1 - 1e-5
  # The Haar measure has E[R] = 0 and E[angle] = pi/2 + 2/pi.
  np.testing.assert_allclose(mean_r, 0.0, atol=0.05)
  np.testing.assert_allclose(mean_angle, np.pi / 2 + 2 / np.pi, atol=0.03)
  # geodesic_angle equals the axis-angle magnitude, including near 0 and pi.
  angles = np.resize(ANGLES, N)
  aa = jnp.asarray(angles[:, None] * np.array([[0.6, 0.0, 0.8]]), jnp.float32)
  r1 = geometry.random_rotation(jax.random.key(3), (N,))
  r2 = r1 @ geometry.axis_angle_to_matrix(aa)
  np.testing.assert_allclose(geometry.geodesic_angle(r1, r2), angles,
                             atol=5e-6, rtol=1e-4)
  np.testing.assert_allclose(geometry.geodesic_angle(r2, r1), angles,
                             atol=5e-6, rtol=1e-4)
