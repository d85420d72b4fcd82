"""The density baselines of a trained prior, fitted in the flow's chart and cached in its workdir.

The chart. Angles are periodic; a density on R^D needs a cut. The flow cuts each DOF opposite
the circular mean `center` of its training data (`flowpose.prior.flow`): it sees
`center + wrap(a - center)` in (center - pi, center + pi]. The baselines (diagonal Gaussian,
full Gaussian, 8-component GMM by EM: `flowpose.prior.baselines`) are fitted and evaluated on
exactly those chart coordinates (same center, from the flow's params), so every model is a
density over the same set of angles and the NLLs compare (the shift by a multiple of 2 pi has
unit Jacobian). A non-periodic chart (`flow.chart = "axis_angle"`) is used as it is. All models
share one variance floor (1e-3 rad std, as the flow's standardisation), so a near-constant DOF
cannot dominate a baseline's NLL.

The fit is cached in `workdir/baselines.npz` with the chart center and a fingerprint of the
training data. `load_baselines(workdir)` reads it (pose fitting with a GMM prior, benchmarks);
`baselines_for` reuses it when the fingerprint matches and refits otherwise. A cache that fails
to load (truncated, garbled, wrong fields) never surfaces as a bare `BadZipFile`: `baselines_for`
refits it with a warning naming the file, `load_baselines` raises `PriorEvalError` naming the
file and what to delete.
"""

import hashlib
import os
import pickle
import zipfile
import zlib
from typing import Any, Dict, NamedTuple

from absl import logging
import numpy as np

from flowpose import io_utils
from flowpose.prior import baselines as baselines_lib
from flowpose.prior import io as prior_io

BASELINES_FILE = "baselines.npz"
BASELINE_NAMES = ("gaussian_diag", "gaussian_full", "gmm8")
_FORMAT_VERSION = 1
# Variance floor of every baseline = (1e-3 rad)^2, the flow's standardisation floor.
_VARIANCE_FLOOR = 1e-6
# What np.load and the array checks raise on a damaged file (zip, zlib, npy header, pickle guard).
_UNREADABLE = (OSError, EOFError, ValueError, KeyError, TypeError, zipfile.BadZipFile, zlib.error,
               pickle.UnpicklingError, np.linalg.LinAlgError)


class PriorEvalError(prior_io.PriorLoadError):
  """Missing or unusable evaluation files in a prior workdir, or a folder without clips."""


class FittedBaselines(NamedTuple):
  """Baselines fitted in the flow's chart.

  Attributes:
    center: `[D]` chart center (radians) the baselines were fitted in.
    models: name (`gaussian_diag`, `gaussian_full`, `gmm8`) -> `flowpose.prior.baselines` params.
    fingerprint: hash of the training DOFs they were fitted on.
    periodic: the chart's coordinates are angles wrapped around `center` (Euler DOFs); False
      for a non-periodic chart (axis-angle), used as is.
  """
  center: np.ndarray
  models: Dict[str, Any]
  fingerprint: str
  periodic: bool = True

  def log_prob(self, name: str, dofs: np.ndarray) -> np.ndarray:
    """`[N]` log-density (nats) of chart poses `[N, D]` (any 2 pi offsets) under model `name`."""
    x = to_chart(dofs, self.center) if self.periodic else np.asarray(dofs, np.float64)
    return np.asarray(baselines_lib.log_prob(self.models[name], x))


def to_chart(dofs: np.ndarray, center: np.ndarray) -> np.ndarray:
  """`[N, D]` raw angles -> float64 `center + wrap(dofs - center)` in (c - pi, c + pi]."""
  dofs = np.asarray(dofs, np.float64)
  delta = dofs - np.asarray(center, np.float64)
  return center + np.arctan2(np.sin(delta), np.cos(delta))


def fingerprint(dofs: np.ndarray, center: np.ndarray, input_noise: float = 0.0) -> str:
  """Hash of the training DOFs `[N, D]`, the chart center `[D]` and the input jitter."""
  digest = hashlib.sha1(np.ascontiguousarray(dofs, np.float32).tobytes())
  digest.update(np.ascontiguousarray(center, np.float32).tobytes())
  digest.update(repr(float(input_noise)).encode())
  return digest.hexdigest()


def fit_baselines(train_dofs: np.ndarray, center: np.ndarray, seed: int = 0,
                  gmm_max_iters: int = 100, input_noise: float = 0.0,
                  periodic: bool = True) -> FittedBaselines:
  """Fits the three baselines on `train_dofs [N, D]` in the chart around `center [D]`.

  When the flow was trained on jittered angles (`config.input_noise` = sigma), the baselines
  model the same jittered distribution: sigma^2 is added to every (component) covariance, which
  is exactly the covariance of x + N(0, sigma^2 I). Without this a DOF that is constant in the
  training data (CMU clavicles) would hand the baselines an unbounded likelihood bonus.
  """
  chart = to_chart(train_dofs, center) if periodic else np.asarray(train_dofs, np.float64)
  reg = _VARIANCE_FLOOR + float(input_noise) ** 2
  models = {
      "gaussian_diag": baselines_lib.fit_gaussian_diag(chart, reg=reg),
      "gaussian_full": baselines_lib.fit_gaussian_full(chart, reg=reg),
      "gmm8": baselines_lib.fit_gmm(chart, num_components=8, seed=seed,
                                    max_iters=gmm_max_iters, tol=1e-5,
                                    reg_covar=reg),
  }
  return FittedBaselines(np.asarray(center, np.float64), models,
                         fingerprint(train_dofs, center, input_noise), periodic)


def save_baselines(workdir: str, fitted: FittedBaselines) -> str:
  """Writes `workdir/baselines.npz` atomically; returns its path."""
  diag, full, gmm = (fitted.models[n] for n in BASELINE_NAMES)
  arrays = {
      "format_version": np.int64(_FORMAT_VERSION), "center": fitted.center,
      "fingerprint": np.str_(fitted.fingerprint), "periodic": np.bool_(fitted.periodic),
      "gaussian_diag/mean": diag.mean, "gaussian_diag/std": diag.std,
      "gaussian_full/mean": full.mean, "gaussian_full/covariance": full.covariance,
      "gmm8/weights": gmm.weights, "gmm8/means": gmm.means,
      "gmm8/covariances": gmm.covariances, "gmm8/num_iters": np.int64(gmm.num_iters),
      "gmm8/converged": np.bool_(gmm.converged)}
  path = os.path.join(workdir, BASELINES_FILE)
  with io_utils.atomic_open(path) as f:
    np.savez(f, **{k: np.asarray(v) for k, v in arrays.items()})
  return path


def _read(path: str) -> FittedBaselines:
  """Parses and checks `baselines.npz`; raises one of `_UNREADABLE` on damage."""
  with np.load(path, allow_pickle=False) as f:
    version = int(f["format_version"])
    if version != _FORMAT_VERSION:
      raise ValueError(f"format_version {version}, expected {_FORMAT_VERSION}")
    center = np.asarray(f["center"], np.float64)
    dim = center.shape[-1] if center.ndim == 1 else -1
    fields = {k: np.asarray(f[k]) for k in f.files if "/" in k}
    shapes = {"gaussian_diag/mean": (dim,), "gaussian_diag/std": (dim,),
              "gaussian_full/mean": (dim,), "gaussian_full/covariance": (dim, dim)}
    k = fields["gmm8/weights"].shape[0] if fields["gmm8/weights"].ndim == 1 else -1
    shapes.update({"gmm8/means": (k, dim), "gmm8/covariances": (k, dim, dim)})
    for key, shape in shapes.items():
      if fields[key].shape != shape:
        raise ValueError(f"field {key} has shape {fields[key].shape}, expected {shape}")
    for key, value in list(fields.items()) + [("center", center)]:
      if value.dtype.kind == "f" and not np.all(np.isfinite(value)):
        raise ValueError(f"field {key} holds NaN or inf")
    models = {
        "gaussian_diag": baselines_lib.GaussianDiagParams(
            fields["gaussian_diag/mean"], fields["gaussian_diag/std"]),
        "gaussian_full": baselines_lib.gaussian_full_from_covariance(
            fields["gaussian_full/mean"], fields["gaussian_full/covariance"]),
        "gmm8": baselines_lib.gmm_from_components(
            fields["gmm8/weights"], fields["gmm8/means"], fields["gmm8/covariances"],
            int(fields["gmm8/num_iters"]), bool(fields["gmm8/converged"])),
    }
    periodic = bool(f["periodic"]) if "periodic" in f.files else True
    return FittedBaselines(center, models, str(f["fingerprint"]), periodic)


def load_baselines(workdir: str) -> FittedBaselines:
  """Reads `workdir/baselines.npz` written by the prior evaluation.

  Raises:
    PriorEvalError: the file is missing, or unreadable (the message names it and says to delete
      it and refit).
  """
  path = os.path.join(workdir, BASELINES_FILE)
  command = f"`python -m launch.evaluate_prior --workdir={workdir}`"
  if not os.path.isfile(path):
    raise PriorEvalError(f"{path} not found: run {command} (evaluate_nll) first to fit the "
                         "baselines")
  try:
    return _read(path)
  except _UNREADABLE as e:
    raise PriorEvalError(f"{path} is unreadable ({type(e).__name__}: {e}); delete it and run "
                         f"{command} to refit the baselines on the training split") from None


def baselines_for(workdir: str, train_dofs: np.ndarray, center: np.ndarray, seed: int,
                  input_noise: float = 0.0, periodic: bool = True) -> FittedBaselines:
  """The cached baselines if fitted on these DOFs in this chart, else fits and caches them.

  A cache that cannot be read is refitted with a warning naming it (the training data is here).
  """
  expected = fingerprint(train_dofs, center, input_noise)
  path = os.path.join(workdir, BASELINES_FILE)
  if os.path.isfile(path):
    try:
      cached = load_baselines(workdir)
    except PriorEvalError as e:
      logging.warning("%s; refitting and overwriting it.", e)
    else:
      if cached.fingerprint == expected and cached.periodic == periodic:
        logging.info("Reusing baselines from %s.", path)
        return cached
      logging.info("%s was fitted on other training data or another chart; refitting.", path)
  logging.info("Fitting baselines on %d training poses.", train_dofs.shape[0])
  fitted = fit_baselines(train_dofs, center, seed=seed, input_noise=input_noise,
                         periodic=periodic)
  save_baselines(workdir, fitted)
  return fitted
