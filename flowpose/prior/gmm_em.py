"""EM building blocks for full-covariance Gaussian mixtures (numpy float64).

`flowpose.prior.baselines.fit_gmm` drives these: k-means++ seeding, one weighted M-step for the
initial components, then `em_step` passes until the log-likelihood settles.

Cost: one EM iteration is ~3 K N D^2 flops (whitening in the E-step, a
symmetric rank-k update in the M-step), for N = 200k, D = 50, K = 8 about
0.6 s on one core (measured), so ~2 min at the 200-iteration cap and less when
EM converges earlier; the Gaussians fit in 0.15 s. On shared cores run with
`OPENBLAS_NUM_THREADS=1`: multithreaded OpenBLAS on oversubscribed cores was
over 10x slower for these tall-skinny products.
"""

import math

import numpy as np

_LOG_2PI = math.log(2.0 * math.pi)


def logsumexp(a: np.ndarray, axis: int) -> np.ndarray:
  """log sum exp of `a` along `axis`, shifted by the max (no overflow)."""
  m = np.max(a, axis=axis, keepdims=True)
  return np.squeeze(m, axis) + np.log(np.sum(np.exp(a - m), axis=axis))


def precision_cholesky(cov: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """`(L, P)`: `L L^T = cov` (L lower), `P = L^{-T}`, so `P P^T = cov^{-1}`.

  Args:
    cov: `[..., D, D]` symmetric positive definite.
  """
  scale_tril = np.linalg.cholesky(cov)
  eye = np.broadcast_to(np.eye(cov.shape[-1]), cov.shape)
  precision_chol = np.swapaxes(np.linalg.solve(scale_tril, eye), -1, -2)
  return scale_tril, precision_chol


def kmeans_plus_plus(x, num_components, rng, num_lloyd_iters=10):
  """k-means++ seeding then a few Lloyd steps; returns labels `[N]`."""
  n = x.shape[0]
  sq_norms = np.einsum("nd,nd->n", x, x)
  centres = [x[rng.integers(n)]]
  closest = np.sum((x - centres[0])**2, axis=1)
  for _ in range(1, num_components):
    # D^2 sampling: far-away points are likelier seeds (Arthur & Vassilvitskii).
    total = closest.sum()
    probs = closest / total if total > 0 else np.full(n, 1.0 / n)
    centres.append(x[rng.choice(n, p=probs)])
    closest = np.minimum(closest, np.sum((x - centres[-1])**2, axis=1))
  centres = np.stack(centres)
  labels = None
  for _ in range(num_lloyd_iters):
    dists = sq_norms[:, None] - 2.0 * x @ centres.T + np.sum(centres**2, 1)
    new_labels = np.argmin(dists, axis=1)
    if labels is not None and np.array_equal(new_labels, labels):
      break
    labels = new_labels
    for k in range(num_components):
      members = labels == k
      if members.any():  # An empty cluster keeps its previous centre.
        centres[k] = x[members].mean(0)
  return labels


def m_step(x, resp, reg_covar):
  """Weighted MLE of weights `[K]`, means `[K, D]`, covariances `[K, D, D]`.

  Used once, for the k-means initialisation; EM iterations use `em_step`.
  """
  n, d = x.shape
  # The 10 * eps floor keeps an emptied component finite (as sklearn does).
  nk = resp.sum(0) + 10.0 * np.finfo(np.float64).eps
  means = (resp.T @ x) / nk[:, None]
  covs = np.empty((resp.shape[1], d, d))
  for k in range(resp.shape[1]):
    centred = (x - means[k]) * np.sqrt(resp[:, k, None])
    covs[k] = centred.T @ centred / nk[k] + reg_covar * np.eye(d)
  return nk / n, means, covs


def em_step(x, weights, means, covs, reg_covar, chunk_size,
             e_step_dtype=np.float32):
  """One EM iteration (E-step and M-step) in a single pass over `x`.

  The pass goes in row chunks so each block of data stays in cache for all
  components and temporaries are `[K, chunk, D]`. The E-step's whitening
  product runs in `e_step_dtype` (float32 halves its cost and, measured,
  moves the mean log-likelihood by ~1e-8 nats); the M-step stays float64
  (in float32 its rounding random-walks the log-likelihood by ~1e-4 nats,
  which defeats a 1e-6 tolerance). Sums are centred on the current means.

  Args:
    x: `[N, D]` float64 data.
    weights, means, covs: current `[K]`, `[K, D]`, `[K, D, D]` (float64).
    reg_covar: added to the new covariances' diagonals.
    chunk_size: rows per block.
    e_step_dtype: dtype of the whitening product.

  Returns:
    `(mean log-likelihood under the input params, new weights, means, covs)`.
  """
  num_components, dim = means.shape
  _, precision_chols = precision_cholesky(covs)
  # log w_k + log det P_k - D/2 log 2 pi per component.
  offsets = (np.log(weights) - 0.5 * dim * _LOG_2PI
             + np.log(np.diagonal(precision_chols, axis1=1, axis2=2)).sum(1))
  precision_chols = precision_chols.astype(e_step_dtype)
  nk = np.zeros(num_components)
  sum_d = np.zeros((num_components, dim))
  sum_dd = np.zeros((num_components, dim, dim))
  total_ll = 0.0
  for start in range(0, x.shape[0], chunk_size):
    diffs = x[None, start:start + chunk_size] - means[:, None]  # [K, B, D]
    # Whitened: ||y||^2 is the Mahalanobis distance.
    y = diffs.astype(e_step_dtype, copy=False) @ precision_chols
    log_probs = offsets - 0.5 * np.einsum("kbd,kbd->bk", y, y).astype(
        np.float64)
    log_norm = logsumexp(log_probs, axis=1)
    total_ll += log_norm.sum()
    resp = np.exp(log_probs - log_norm[:, None])  # [B, K]
    nk += resp.sum(0)
    sum_d += np.matmul(resp.T[:, None], diffs)[:, 0]
    # sum_b r_bk d_b d_b^T as W^T W with W = sqrt(r_k) d: numpy dispatches
    # `a.T @ a` to a symmetric rank-k update (syrk), half a GEMM's flops.
    diffs *= np.sqrt(resp).T[:, :, None]  # In place: no copy.
    for k in range(num_components):
      sum_dd[k] += diffs[k].T @ diffs[k]
  # The 10 * eps floor keeps an emptied component finite (as sklearn does).
  nk += 10.0 * np.finfo(np.float64).eps
  delta = sum_d / nk[:, None]  # New mean minus old mean.
  new_covs = sum_dd / nk[:, None, None] - delta[:, :, None] * delta[:, None]
  new_covs = 0.5 * (new_covs + np.swapaxes(new_covs, -1, -2))
  new_covs += reg_covar * np.eye(dim)
  return total_ll / x.shape[0], nk / x.shape[0], means + delta, new_covs
