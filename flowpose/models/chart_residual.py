"""Constant velocity in the prior's pose chart with a fitted full-covariance residual.

The latent dynamics model (`models.dynamics`) measures motion in the flow's latent, which the
flow stretches where a subject sits off the prior's training poses (test subjects 9/49: static
NLL -4.3 vs -33.2 on validation), so its margin depends on the subject's style. This model
measures motion in the chart itself (Euler DOFs, wrapped):

    r_t = wrap(x_t - 2 x_{t-1} + x_{t-2}) - mean,   r_t ~ N(0, C)

fitted on the dynamics run's own training windows. It is the baseline that won the test NLL
(WORKSPACE.md issue 13) and is what the sequence fitter's `chart_dynamics` term uses:
`-2 log p = r^T C^-1 r + const` (the constant dropped).

    residual = fit(chart, windows_dofs)          # [N, T, 50] DOF windows
    save(path, residual); residual = load(path)  # .npz: chart, mean [D], precision [D, D]
    cost = neg2_log_prob(residual, dofs)         # dofs [..., T, 50] -> [..., T - 2]
"""

import os
import pickle
from typing import NamedTuple
import zipfile

import jax.numpy as jnp
import numpy as np

from flowpose import io_utils
from flowpose.prior import charts

FILE = "chart_residual.npz"


class ChartResidualError(ValueError):
  """A chart residual file that is missing, garbled, or of another chart."""


class ChartResidual(NamedTuple):
  """Attributes: chart (name), mean [D], precision [D, D] (float32)."""
  chart: str
  mean: np.ndarray
  precision: np.ndarray


def _wrap(x):
  return jnp.arctan2(jnp.sin(x), jnp.cos(x))


def fit(chart: str, windows_dofs: np.ndarray, ridge: float = 1e-6) -> ChartResidual:
  """Fits the residual Gaussian to DOF windows `[N, T, 50]` (T >= 3).

  The ridge (relative to the mean variance) keeps a DOF that never moves from making C singular.
  """
  dofs = np.asarray(windows_dofs, np.float32)
  if dofs.ndim != 3 or dofs.shape[1] < 3:
    raise ChartResidualError(f"chart_residual.fit: expected DOF windows [N, T >= 3, 50], got "
                             f"{dofs.shape}")
  x = np.asarray(charts.from_dofs(chart, dofs), np.float64)
  r = x[:, 2:] - 2 * x[:, 1:-1] + x[:, :-2]
  if charts.is_periodic(chart):
    r = np.arctan2(np.sin(r), np.cos(r))
  r = r.reshape(-1, r.shape[-1])
  mean = r.mean(0)
  cov = np.cov(r, rowvar=False)
  cov = cov + ridge * np.trace(cov) / len(cov) * np.eye(len(cov))
  return ChartResidual(chart, mean.astype(np.float32),
                       np.linalg.inv(cov).astype(np.float32))


def neg2_log_prob(residual: ChartResidual, dofs, mean=None, precision=None):
  """`[..., T - 2]` -2 log p (constant dropped) of the DOF frames `[..., T, 50]`.

  `mean`/`precision` override the residual's arrays (traced values inside a jitted fit).
  """
  x = charts.from_dofs(residual.chart, dofs)
  r = x[..., 2:, :] - 2 * x[..., 1:-1, :] + x[..., :-2, :]
  if charts.is_periodic(residual.chart):
    r = _wrap(r)
  r = r - (residual.mean if mean is None else mean)
  p = residual.precision if precision is None else precision
  return jnp.einsum("...i,ij,...j->...", r, p, r)


def save(path: str, residual: ChartResidual) -> None:
  """Writes the residual atomically (`.npz`)."""
  import io  # pylint: disable=g-import-not-at-top
  buf = io.BytesIO()
  np.savez(buf, chart=np.asarray(residual.chart), mean=residual.mean,
           precision=residual.precision)
  io_utils.atomic_write(path, buf.getvalue())


def load(path: str) -> ChartResidual:
  """Reads a residual (`path`: the .npz or a folder holding `FILE`)."""
  if os.path.isdir(path):
    path = os.path.join(path, FILE)
  try:
    with np.load(path, allow_pickle=False) as data:
      chart, mean, precision = str(data["chart"]), data["mean"], data["precision"]
  except (OSError, KeyError, ValueError, EOFError, pickle.UnpicklingError,
          zipfile.BadZipFile) as e:
    raise ChartResidualError(f"{path}: not a chart residual file ({e}); expected the .npz of "
                             "`python -m launch.chart_residual`") from None
  dim = charts.chart_dim(chart) if chart in charts.CHARTS else -1
  if mean.shape != (dim,) or precision.shape != (dim, dim) or not (
      np.all(np.isfinite(mean)) and np.all(np.isfinite(precision))):
    raise ChartResidualError(f"{path}: chart {chart!r} expects finite mean [{dim}] and precision "
                             f"[{dim}, {dim}], got {mean.shape} and {precision.shape}")
  return ChartResidual(chart, mean.astype(np.float32), precision.astype(np.float32))
