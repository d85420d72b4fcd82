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
