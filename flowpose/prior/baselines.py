"""Density baselines for the pose-prior comparison: Gaussians and a GMM.

Fitting runs in float64 numpy on `[N, D]` training data (EM needs the precision
when components get narrow; see `fit_gmm`'s `e_step_dtype`). The fitted params are
`flax.struct` dataclasses (pytrees of arrays), evaluated with

* `log_prob(params, x [N, D]) -> [N]` log-density in nats. numpy in, float64
  numpy out; jax arrays in (or under `jit`/`grad`), jnp out, so a fitted GMM
  can serve as a differentiable prior during pose fitting, as SMPLify's
  mixture-of-Gaussians pose prior does;
* `sample(params, key, n) -> [n, D]` (jax.random, float32).

Both are also methods: `params.log_prob(x)`, `params.sample(key, n)`.

EM internals (k-means++ seeding, the chunked E/M pass, its cost) are in
`flowpose.prior.gmm_em`.
"""

import math
from typing import Union

from absl import logging
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from flowpose.prior import gmm_em

Array = Union[np.ndarray, jax.Array]
_LOG_2PI = math.log(2.0 * math.pi)


def _namespace(*arrays):
  """jnp when any input is a jax array (incl. tracers), else numpy."""
  if any(isinstance(a, jax.Array) for a in arrays):
    return jnp
  return np


def _as_data(x, name: str) -> np.ndarray:
  x = np.asarray(x, np.float64)
  if x.ndim != 2 or x.shape[0] < 2:
    raise ValueError(f"{name}: expected data [N, D] with N >= 2, got shape "
                     f"{x.shape}")
  if not np.all(np.isfinite(x)):
    raise ValueError(f"{name}: data contains NaN or inf")
  return x


def _gaussian_log_prob(xp, x, mean, precision_chol):
  """log N(x; mean, (P P^T)^{-1}) for `x [N, D]`, `P [D, D]` upper."""
  y = (x - mean) @ precision_chol
  log_det = xp.sum(xp.log(xp.diagonal(precision_chol)))
  return -0.5 * xp.sum(y * y, axis=-1) + log_det - 0.5 * x.shape[-1] * _LOG_2PI


def _logsumexp(xp, a, axis):
  if xp is jnp:
    return jax.nn.logsumexp(a, axis=axis)
  return gmm_em.logsumexp(a, axis)


# ---------------------------------------------------------------------------
# Gaussians.
# ---------------------------------------------------------------------------


class _Density:
  """Methods shared by the parameter pytrees: `p.log_prob(x)`, `p.sample(key, n)`."""

  def log_prob(self, x: Array) -> Array:
    return log_prob(self, x)

  def sample(self, key: jax.Array, n: int) -> jax.Array:
    return sample(self, key, n)


@flax.struct.dataclass
class GaussianDiagParams(_Density):
  """Axis-aligned Gaussian: `mean [D]`, `std [D]`."""
  mean: Array
  std: Array


@flax.struct.dataclass
class GaussianFullParams(_Density):
  """Full-covariance Gaussian.

  Attributes:
    mean: `[D]`.
    covariance: `[D, D]`.
    scale_tril: `[D, D]` lower Cholesky factor of the covariance (sampling).
    precision_cholesky: `[D, D]` upper, `scale_tril^{-T}` (densities).
  """
  mean: Array
  covariance: Array
  scale_tril: Array
  precision_cholesky: Array


def fit_gaussian_diag(x: Array, reg: float = 1e-12) -> GaussianDiagParams:
  """Maximum-likelihood axis-aligned Gaussian of `x [N, D]`.

  `reg` is added to the variances (a constant dimension stays finite).
  """
  x = _as_data(x, "fit_gaussian_diag")
  return GaussianDiagParams(mean=x.mean(0), std=np.sqrt(x.var(0) + reg))


def fit_gaussian_full(x: Array, reg: float = 1e-6) -> GaussianFullParams:
  """Maximum-likelihood Gaussian of `x [N, D]`; `reg * I` added to the cov."""
  x = _as_data(x, "fit_gaussian_full")
  mean = x.mean(0)
  centred = x - mean
  cov = centred.T @ centred / x.shape[0] + reg * np.eye(x.shape[1])
  return gaussian_full_from_covariance(mean, cov)


def gaussian_full_from_covariance(mean: Array,
                                  covariance: Array) -> GaussianFullParams:
  """`GaussianFullParams` (with Cholesky factors) from `[D]`, `[D, D]`."""
  mean = np.asarray(mean, np.float64)
  cov = np.asarray(covariance, np.float64)
  cov = 0.5 * (cov + cov.T)
  scale_tril, precision_chol = gmm_em.precision_cholesky(cov)
  return GaussianFullParams(mean, cov, scale_tril, precision_chol)


# ---------------------------------------------------------------------------
# Gaussian mixture (EM).
# ---------------------------------------------------------------------------


@flax.struct.dataclass
class GMMParams(_Density):
  """Full-covariance Gaussian mixture.

  Attributes:
    weights: `[K]` mixture weights (sum to 1).
    means: `[K, D]`.
    covariances: `[K, D, D]`.
    scale_trils: `[K, D, D]` lower Cholesky factors of the covariances.
    precision_choleskys: `[K, D, D]` upper, `scale_tril^{-T}` per component.
    num_iters: EM iterations run (static).
    converged: whether the log-likelihood change fell below `tol` (static).
  """
  weights: Array
  means: Array
  covariances: Array
  scale_trils: Array
  precision_choleskys: Array
  num_iters: int = flax.struct.field(pytree_node=False, default=0)
  converged: bool = flax.struct.field(pytree_node=False, default=True)


def gmm_from_components(weights: Array, means: Array, covariances: Array,
                        num_iters: int = 0,
                        converged: bool = True) -> GMMParams:
  """`GMMParams` from `[K]`, `[K, D]`, `[K, D, D]` (e.g. a published prior)."""
  weights = np.asarray(weights, np.float64)
  cov = np.asarray(covariances, np.float64)
  cov = 0.5 * (cov + np.swapaxes(cov, -1, -2))
  scale_trils, precision_chols = gmm_em.precision_cholesky(cov)
  return GMMParams(weights / weights.sum(), np.asarray(means, np.float64), cov,
                   scale_trils, precision_chols, num_iters, converged)


def _component_log_probs(xp, weights, means, precision_chols, x):
  """`[N, K]`: log w_k + log N(x; mu_k, Sigma_k).

  A loop over K keeps the temporaries at `[N, D]`.
  """
  cols = [_gaussian_log_prob(xp, x, means[k], precision_chols[k])
          for k in range(means.shape[0])]
  return xp.stack(cols, axis=-1) + xp.log(weights)


def fit_gmm(x: Array, num_components: int = 8,
            seed: Union[int, jax.Array] = 0, max_iters: int = 200,
            tol: float = 1e-6, reg_covar: float = 1e-6,
            num_kmeans_iters: int = 10, chunk_size: int = 2048,
            e_step_dtype=np.float32) -> GMMParams:
  """Full-covariance Gaussian mixture by EM, k-means++ initialisation.

  Deterministic for a given seed. Responsibilities use log-sum-exp, so
  far-away points do not underflow.

  Args:
    x: training data `[N, D]`.
    num_components: K.
    seed: int seed or a jax PRNG key (for the k-means++ seeding).
    max_iters: EM iteration cap.
    tol: stop when the mean per-sample log-likelihood (nats) changes by less.
    reg_covar: added to every covariance diagonal (keeps them invertible).
    num_kmeans_iters: Lloyd iterations after seeding.
    chunk_size: rows per block in each EM pass (memory/cache trade-off).
    e_step_dtype: dtype of the E-step's whitening product (the M-step is
      always float64). float32 (default) saves ~20% of the time and changes
      the log-likelihood by ~1e-8 nats; np.float64 for reference fits.

  Returns:
    `GMMParams` (float64 numpy leaves).
  """
  x = _as_data(x, "fit_gmm")
  if not 1 <= num_components <= x.shape[0]:
    raise ValueError(f"fit_gmm: num_components must be in [1, N={x.shape[0]}]"
                     f", got {num_components}")
  if not isinstance(seed, (int, np.integer)):
    seed = int(jax.random.randint(seed, (), 0, np.iinfo(np.int32).max))
  rng = np.random.default_rng(seed)
  # Centring improves the conditioning of the covariance products.
  offset = x.mean(0)
  x = x - offset

  labels = gmm_em.kmeans_plus_plus(x, num_components, rng, num_kmeans_iters)
  resp = np.zeros((x.shape[0], num_components))
  resp[np.arange(x.shape[0]), labels] = 1.0
  weights, means, covs = gmm_em.m_step(x, resp, reg_covar)

  prev, mean_ll, change, converged, it = -np.inf, -np.inf, np.inf, False, 0
  for it in range(1, max_iters + 1):
    mean_ll, weights, means, covs = gmm_em.em_step(
        x, weights, means, covs, reg_covar, chunk_size, e_step_dtype)
    change, prev = abs(mean_ll - prev), mean_ll
    if change < tol:
      converged = True
      break
  if not converged:
    logging.warning("fit_gmm: EM did not converge in %d iterations "
                    "(last change %.3g nats)", max_iters, change)
  logging.info("fit_gmm: K=%d, %d iterations, train mean log-lik %.4f nats",
               num_components, it, mean_ll)
  return gmm_from_components(weights, means + offset, covs, it, converged)


# ---------------------------------------------------------------------------
# Evaluation and sampling (every params type).
# ---------------------------------------------------------------------------


def log_prob(params, x: Array) -> Array:
  """Log-density in nats of `x [N, D]` (or `[D]`) under fitted `params`; `[N]`.

  numpy inputs give float64 numpy; jax inputs (or tracers) give jnp, so the
  function jits and differentiates with respect to `x` and the params.
  """
  xp = _namespace(x, *jax.tree.leaves(params))
  if xp is np:
    x = np.asarray(x, np.float64)
  if isinstance(params, GaussianDiagParams):
    z = (x - params.mean) / params.std
    return (-0.5 * xp.sum(z * z, axis=-1) - xp.sum(xp.log(params.std))
            - 0.5 * x.shape[-1] * _LOG_2PI)
  if isinstance(params, GaussianFullParams):
    return _gaussian_log_prob(xp, x, params.mean, params.precision_cholesky)
  if isinstance(params, GMMParams):
    log_probs = _component_log_probs(xp, params.weights, params.means,
                                     params.precision_choleskys, x)
    return _logsumexp(xp, log_probs, axis=-1)
  raise TypeError(f"log_prob: unsupported params type {type(params).__name__}")


def sample(params, key: jax.Array, n: int) -> jax.Array:
  """Draws `[n, D]` samples (float32, jax.random) from fitted `params`."""
  if isinstance(params, GaussianDiagParams):
    mean, std = jnp.asarray(params.mean), jnp.asarray(params.std)
    return mean + std * jax.random.normal(key, (n, mean.shape[-1]))
  if isinstance(params, GaussianFullParams):
    mean = jnp.asarray(params.mean)
    z = jax.random.normal(key, (n, mean.shape[-1]))
    return mean + z @ jnp.asarray(params.scale_tril).T
  if isinstance(params, GMMParams):
    key_component, key_normal = jax.random.split(key)
    idx = jax.random.categorical(
        key_component, jnp.log(jnp.asarray(params.weights)), shape=(n,))
    means = jnp.asarray(params.means)
    z = jax.random.normal(key_normal, (n, means.shape[-1]))
    scale = jnp.asarray(params.scale_trils)[idx]
    return means[idx] + jnp.einsum("nij,nj->ni", scale, z)
  raise TypeError(f"sample: unsupported params type {type(params).__name__}")
