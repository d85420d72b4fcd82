"""Constant velocity in the pose chart (`flowpose.models.chart_residual`)."""

import numpy as np
import pytest

from flowpose.models import chart_residual
from flowpose.prior import charts
from launch import evaluate_dynamics


def _windows(num=200, frames=8, seed=0):
  """[N, T, 50] DOF windows: smooth angles that cross +-pi (the residual must wrap)."""
  rng = np.random.default_rng(seed)
  t = np.arange(frames)[None, :, None]
  start = rng.uniform(-np.pi, np.pi, (num, 1, 50))
  speed = rng.uniform(-0.2, 0.2, (num, 1, 50))
  dofs = start + speed * t + 0.01 * rng.standard_normal((num, frames, 50))
  return np.arctan2(np.sin(dofs), np.cos(dofs)).astype(np.float32)


def test_matches_the_evaluation_baseline_up_to_its_constant():
  windows = _windows()
  residual = chart_residual.fit("euler_free", windows)
  x = np.asarray(charts.from_dofs("euler_free", windows))
  mean, cov = evaluate_dynamics.const_velocity_fit(x)
  nll = evaluate_dynamics.const_velocity_nll(x, mean, cov)       # [N, T - 2]
  cost = np.asarray(chart_residual.neg2_log_prob(residual, windows))
  # -2 log p = 2 NLL - (log det C + D log 2 pi): the same up to one constant.
  offset = 2 * nll - cost
  assert cost.shape == nll.shape
  np.testing.assert_allclose(offset, offset.mean(), rtol=1e-3, atol=0.05)
  # Wrapped: a +-pi crossing costs what the same step elsewhere costs (an unwrapped residual
  # of ~2 pi would cost ~1e5 here).
  assert cost.max() < 400


def test_save_load_round_trip_and_bad_files(tmp_path):
  residual = chart_residual.fit("euler_free", _windows(num=50))
  chart_residual.save(str(tmp_path / chart_residual.FILE), residual)
  loaded = chart_residual.load(str(tmp_path))  # A folder holding the file.
  assert loaded.chart == "euler_free"
  np.testing.assert_array_equal(loaded.precision, residual.precision)
  (tmp_path / "bad.npz").write_bytes(b"not an npz")
  with pytest.raises(chart_residual.ChartResidualError, match="bad.npz"):
    chart_residual.load(str(tmp_path / "bad.npz"))
  np.savez(tmp_path / "short.npz", chart=np.asarray("euler_free"), mean=np.zeros(3),
           precision=np.eye(3))
  with pytest.raises(chart_residual.ChartResidualError, match=r"mean \[46\]"):
    chart_residual.load(str(tmp_path / "short.npz"))
  with pytest.raises(chart_residual.ChartResidualError, match="T >= 3"):
    chart_residual.fit("euler_free", _windows(frames=2))


def test_dynamics_workdir_carries_its_chart_residual(tmp_path):
  from flowpose.models import dynamics_io  # pylint: disable=g-import-not-at-top
  assert dynamics_io.load_chart_residual(str(tmp_path)) is None  # A model without one.
  assert dynamics_io.load_chart_residual(None) is None
  residual = chart_residual.fit("euler_free", _windows(num=50))
  chart_residual.save(str(tmp_path / chart_residual.FILE), residual)
  np.testing.assert_array_equal(dynamics_io.load_chart_residual(str(tmp_path)).mean,
                                residual.mean)
  (tmp_path / chart_residual.FILE).write_bytes(b"")
  with pytest.raises(dynamics_io.DynamicsLoadError, match=chart_residual.FILE):
    dynamics_io.load_chart_residual(str(tmp_path))
