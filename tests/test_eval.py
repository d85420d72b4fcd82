"""Tests for flowpose/eval.py with hand-computed values."""

import numpy as np
import pytest

from flowpose import metrics as eval_lib
from flowpose import geometry


def _points(n=6, seed=0):
  return np.random.default_rng(seed).normal(size=(n, 3)).astype(np.float32)


def test_mpjpe_hand_computed():
  target = np.zeros((2, 3), np.float32)
  pred = np.array([[0.003, 0.004, 0.0], [0.0, 0.0, 0.001]], np.float32)
  # |(3,4,0)| = 5 mm, |(0,0,1)| = 1 mm -> mean 3 mm (no root alignment).
  np.testing.assert_allclose(eval_lib.mpjpe(pred, target, root_index=None),
                             3.0, rtol=1e-5)
  # Root-aligned: joint 0 subtracted -> pred = [0, (-3,-4,1) mm]; |.| = 26^.5.
  np.testing.assert_allclose(eval_lib.mpjpe(pred, target, root_index=0),
                             np.sqrt(26.0) / 2, rtol=1e-5)


def test_mpjpe_translation_invariant_with_root():
  x = _points()
  np.testing.assert_allclose(eval_lib.mpjpe(x + [1.0, 2.0, 3.0], x), 0.0,
                             atol=1e-3)
  np.testing.assert_allclose(eval_lib.mpjpe(x + [0.0, 0.0, 0.01], x,
                                            root_index=None), 10.0, rtol=1e-4)


def test_pa_mpjpe_zero_for_similarity_copy_batched():
  x = np.stack([_points(seed=s) for s in range(3)])  # [3, 6, 3]
  rot = np.asarray(geometry.axis_angle_to_matrix(
      np.array([[0.3, -1.2, 0.5], [2.0, 0.1, 0.0], [0.0, 0.0, 3.0]])))
  y = 1.7 * np.einsum("bij,bnj->bni", rot, x) + np.array([0.5, -2.0, 4.0])
  err = eval_lib.pa_mpjpe(y, x)
  assert err.shape == (3,)
  np.testing.assert_allclose(err, 0.0, atol=1e-2)  # mm
  # Plain MPJPE of the same pair is large.
  assert np.all(eval_lib.mpjpe(y, x) > 100.0)


def test_pa_mpjpe_nonrigid_change():
  # Target: a square; pred: the square with one corner pushed out. The best
  # similarity cannot undo a non-rigid change, so the error is > 0. Procrustes
  # minimises the *squared* error, so only that is guaranteed to drop (the
  # mean distance can grow: the outlier's error is spread over all corners).
  target = np.array([[0, 0, 0], [1, 0, 0], [1, 1, 0], [0, 1, 0]], np.float32)
  pred = target.copy()
  pred[2] = [1.2, 1.2, 0.0]
  pa = float(eval_lib.pa_mpjpe(pred, target))
  raw = float(eval_lib.mpjpe(pred, target, root_index=None))
  aligned = np.asarray(geometry.procrustes_align(pred, target))
  assert pa > 1.0
  assert np.sum((aligned - target)**2) < np.sum((pred - target)**2)
  np.testing.assert_allclose(raw, 1000 * np.sqrt(0.08) / 4, rtol=1e-5)


def test_pve_with_roots():
  v = _points(10)
  shift = np.array([0.0, 0.02, 0.0], np.float32)
  np.testing.assert_allclose(eval_lib.pve(v + shift, v), 20.0, rtol=1e-4)
  np.testing.assert_allclose(
      eval_lib.pve(v + shift, v, pred_root=shift, target_root=np.zeros(3)),
      0.0, atol=1e-3)
  with pytest.raises(ValueError, match="both"):
    eval_lib.pve(v, v, pred_root=shift)


def test_shape_mismatch_raises():
  with pytest.raises(ValueError, match="pa_mpjpe"):
    eval_lib.pa_mpjpe(np.zeros((4, 3)), np.zeros((5, 3)))


# ---------------------------------------------------------------------------
# Procrustes optimality on noisy point sets (a wrong scale/rotation/translation formula must
# fail: noise-free similarity copies are reproduced by almost any formula).
# ---------------------------------------------------------------------------


def _umeyama_float64(x, y):
  """Independent least-squares similarity `y ~ s R x + t` (Umeyama 1991), float64 numpy."""
  x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
  mu_x, mu_y = x.mean(0), y.mean(0)
  xc, yc = x - mu_x, y - mu_y
  sigma = yc.T @ xc / len(x)
  u, d, vt = np.linalg.svd(sigma)
  sign = np.eye(3)
  if np.linalg.det(u) * np.linalg.det(vt) < 0:
    sign[2, 2] = -1.0
  rot = u @ sign @ vt
  var_x = np.mean(np.sum(xc**2, 1))
  s = np.trace(np.diag(d) @ sign) / var_x
  return s, rot, mu_y - s * rot @ mu_x


def _noisy_pair(seed):
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(17, 3))
  rot = np.asarray(geometry.axis_angle_to_matrix(rng.normal(size=3)), np.float64)
  y = 0.7 * x @ rot.T + rng.normal(size=3) + 0.15 * rng.normal(size=(17, 3))
  return x.astype(np.float32), y.astype(np.float32)


def _sq_error(s, rot, t, x, y):
  x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
  return float(np.sum((s * x @ np.asarray(rot, np.float64).T + t - y) ** 2))


@pytest.mark.parametrize("seed", range(4))
def test_procrustes_matches_float64_umeyama_on_noisy_points(seed):
  x, y = _noisy_pair(seed)
  s, rot, t = (np.asarray(a) for a in geometry.procrustes(x, y))
  s_ref, rot_ref, t_ref = _umeyama_float64(x, y)
  np.testing.assert_allclose(s, s_ref, rtol=1e-4)
  np.testing.assert_allclose(rot, rot_ref, atol=1e-4)
  np.testing.assert_allclose(t, t_ref, atol=1e-4)
  # PA-MPJPE = mean distance after that alignment (computed independently in float64).
  aligned = s_ref * np.asarray(x, np.float64) @ rot_ref.T + t_ref
  expected = 1000 * np.mean(np.linalg.norm(aligned - y, axis=-1))
  np.testing.assert_allclose(eval_lib.pa_mpjpe(x, y), expected, rtol=1e-4)


@pytest.mark.parametrize("seed", range(4))
def test_perturbing_the_procrustes_solution_never_lowers_the_error(seed):
  x, y = _noisy_pair(seed)
  s, rot, t = (np.asarray(a, np.float64) for a in geometry.procrustes(x, y))
  best = _sq_error(s, rot, t, x, y)
  rng = np.random.default_rng(100 + seed)
  for _ in range(20):
    delta = np.asarray(geometry.axis_angle_to_matrix(0.01 * rng.normal(size=3)), np.float64)
    for candidate in ((s * (1 + 0.01 * rng.normal()), rot, t), (s, delta @ rot, t),
                      (s, rot, t + 0.01 * rng.normal(size=3))):
      assert _sq_error(*candidate, x, y) >= best * (1 - 1e-6)
