"""Tests for flowpose.prior.baselines: Gaussian and GMM density baselines."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flowpose.prior import baselines as bl

LOG_2PI = math.log(2.0 * math.pi)


def _random_covariance(rng, d):
  a = rng.normal(size=(d, d))
  return a @ a.T / d + 0.2 * np.eye(d)


def _gaussian_entropy(cov):
  d = cov.shape[0]
  return 0.5 * d * (1.0 + LOG_2PI) + 0.5 * np.linalg.slogdet(cov)[1]


def _brute_force_gaussian_log_prob(x, mean, cov):
  # Independent of the implementation: explicit inverse and slogdet.
  diff = x - mean
  maha = np.einsum("nd,de,ne->n", diff, np.linalg.inv(cov), diff)
  return -0.5 * (maha + np.linalg.slogdet(cov)[1] + x.shape[1] * LOG_2PI)


def _brute_force_gmm_log_prob(x, weights, means, covs):
  comps = np.stack([np.log(w) + _brute_force_gaussian_log_prob(x, m, c)
                    for w, m, c in zip(weights, means, covs)], axis=1)
  top = comps.max(1)
  return top + np.log(np.exp(comps - top[:, None]).sum(1))


@pytest.fixture(scope="module")
def correlated():
  rng = np.random.default_rng(0)
  d = 5
  mean = rng.normal(size=d)
  cov = _random_covariance(rng, d)
  x = rng.multivariate_normal(mean, cov, size=40_000)
  held_out = rng.multivariate_normal(mean, cov, size=5_000)
  return dict(mean=mean, cov=cov, x=x, held_out=held_out)


@pytest.fixture(scope="module")
def three_clusters():
  rng = np.random.default_rng(1)
  weights = np.array([0.2, 0.3, 0.5])
  means = np.array([[-6.0, 0.0, 1.0], [0.0, 6.0, -1.0], [6.0, -3.0, 0.0]])
  covs = np.stack([_random_covariance(rng, 3) for _ in range(3)])
  n = 6000
  labels = rng.choice(3, size=n, p=weights)
  noise = np.einsum("nij,nj->ni", np.linalg.cholesky(covs)[labels],
                    rng.normal(size=(n, 3)))
  x = means[labels] + noise
  return dict(weights=weights, means=means, covs=covs, x=x, labels=labels)


def test_diag_recovers_parameters_and_entropy():
  rng = np.random.default_rng(2)
  mean, std = np.array([1.0, -2.0, 0.5, 3.0]), np.array([0.5, 2.0, 1.0, 0.1])
  x = mean + std * rng.normal(size=(50_000, 4))
  params = bl.fit_gaussian_diag(x)
  np.testing.assert_allclose(params.mean, mean, atol=0.03)
  np.testing.assert_allclose(params.std, std, rtol=0.02)
  entropy = 0.5 * 4 * (1.0 + LOG_2PI) + np.log(std).sum()
  np.testing.assert_allclose(-bl.log_prob(params, x).mean(), entropy,
                             atol=0.02)


def test_full_recovers_parameters_and_entropy(correlated):
  params = bl.fit_gaussian_full(correlated["x"])
  np.testing.assert_allclose(params.mean, correlated["mean"], atol=0.03)
  np.testing.assert_allclose(params.covariance, correlated["cov"], atol=0.05)
  lp = bl.log_prob(params, correlated["held_out"])
  assert lp.dtype == np.float64 and lp.shape == (5_000,)
  np.testing.assert_allclose(-lp.mean(), _gaussian_entropy(correlated["cov"]),
                             atol=0.05)
  np.testing.assert_allclose(
      lp, _brute_force_gaussian_log_prob(correlated["held_out"], params.mean,
                                         params.covariance), atol=1e-9)


def test_full_beats_diag_on_correlated_data(correlated):
  full = bl.fit_gaussian_full(correlated["x"])
  diag = bl.fit_gaussian_diag(correlated["x"])
  held_out = correlated["held_out"]
  assert bl.log_prob(full, held_out).mean() > (
      bl.log_prob(diag, held_out).mean() + 0.1)


def test_gmm_recovers_weights_and_means(three_clusters):
  params = bl.fit_gmm(three_clusters["x"], num_components=3, seed=0)
  assert params.converged
  order = np.argsort(params.means[:, 0])  # True means sorted by x already.
  np.testing.assert_allclose(params.weights[order], three_clusters["weights"],
                             atol=0.02)
  np.testing.assert_allclose(params.means[order], three_clusters["means"],
                             atol=0.1)
  # Well separated, so EM should reproduce the per-cluster sample statistics
  # (the true covariances only up to sampling error).
  x, labels = three_clusters["x"], three_clusters["labels"]
  for k, j in enumerate(order):
    members = x[labels == k]
    np.testing.assert_allclose(params.weights[j], len(members) / len(x),
                               atol=1e-3)
    np.testing.assert_allclose(params.means[j], members.mean(0), atol=1e-2)
    np.testing.assert_allclose(params.covariances[j],
                               np.cov(members, rowvar=False, bias=True),
                               atol=2e-2)
    np.testing.assert_allclose(params.covariances[j], three_clusters["covs"][k],
                               rtol=0.15, atol=0.1)


def test_gmm_deterministic_given_seed(three_clusters):
  x = three_clusters["x"][:2000]
  a = bl.fit_gmm(x, num_components=4, seed=3, max_iters=30)
  b = bl.fit_gmm(x, num_components=4, seed=3, max_iters=30)
  np.testing.assert_array_equal(a.means, b.means)
  np.testing.assert_array_equal(a.covariances, b.covariances)
  c = bl.fit_gmm(x, num_components=4, seed=jax.random.key(3), max_iters=30)
  assert c.means.shape == (4, 3)


def test_gmm_log_prob_matches_brute_force(three_clusters):
  params = bl.fit_gmm(three_clusters["x"], num_components=3, seed=0)
  x = np.concatenate([three_clusters["x"][:500],
                      np.array([[40.0, -40.0, 40.0]])])  # Far outlier.
  lp = bl.log_prob(params, x)
  expected = _brute_force_gmm_log_prob(x, params.weights, params.means,
                                       params.covariances)
  assert np.all(np.isfinite(lp))
  np.testing.assert_allclose(lp, expected, rtol=1e-10, atol=1e-9)


def test_gmm_density_integrates_to_one():
  rng = np.random.default_rng(4)
  x = np.concatenate([rng.normal(size=(500, 2)) * [1.0, 0.3] + [-2.0, 0.0],
                      rng.normal(size=(500, 2)) @ [[1.0, 0.6], [0.0, 0.5]]
                      + [2.0, 1.0]])
  params = bl.fit_gmm(x, num_components=2, seed=0)
  grid = np.linspace(-10.0, 10.0, 401)
  gx, gy = np.meshgrid(grid, grid)
  points = np.stack([gx.ravel(), gy.ravel()], axis=1)
  mass = np.exp(bl.log_prob(params, points)).sum() * (grid[1] - grid[0])**2
  np.testing.assert_allclose(mass, 1.0, atol=1e-3)


def test_jax_log_prob_matches_numpy_and_differentiates(three_clusters):
  params = bl.fit_gmm(three_clusters["x"], num_components=3, seed=0)
  full = bl.fit_gaussian_full(three_clusters["x"])
  diag = bl.fit_gaussian_diag(three_clusters["x"])
  x = three_clusters["x"][:64]
  for p in (params, full, diag):
    lp_jax = jax.jit(bl.log_prob)(p, jnp.asarray(x))
    assert isinstance(lp_jax, jax.Array)
    np.testing.assert_allclose(lp_jax, p.log_prob(x), rtol=1e-4, atol=1e-4)
  grad = jax.grad(lambda x: bl.log_prob(params, x).sum())(jnp.asarray(x))
  assert np.all(np.isfinite(grad))


def test_samples_match_fitted_moments(correlated, three_clusters):
  full = bl.fit_gaussian_full(correlated["x"])
  s = np.asarray(full.sample(jax.random.key(0), 20_000))
  np.testing.assert_allclose(s.mean(0), full.mean, atol=0.05)
  np.testing.assert_allclose(np.cov(s, rowvar=False), full.covariance,
                             atol=0.06)
  diag = bl.fit_gaussian_diag(correlated["x"])
  s = np.asarray(bl.sample(diag, jax.random.key(1), 20_000))
  np.testing.assert_allclose(s.std(0), diag.std, rtol=0.03)
  gmm = bl.fit_gmm(three_clusters["x"], num_components=3, seed=0)
  s = np.asarray(gmm.sample(jax.random.key(2), 20_000))
  np.testing.assert_allclose(s.mean(0), gmm.weights @ gmm.means, atol=0.1)
  # Each sample is closest to some component mean; the split matches weights.
  nearest = np.argmin(((s[:, None] - gmm.means)**2).sum(-1), axis=1)
  np.testing.assert_allclose(np.bincount(nearest, minlength=3) / len(s),
                             gmm.weights, atol=0.02)


def test_bad_inputs_raise():
  with pytest.raises(ValueError, match=r"\[N, D\]"):
    bl.fit_gaussian_full(np.zeros(5))
  with pytest.raises(ValueError, match="NaN"):
    bl.fit_gmm(np.full((10, 2), np.nan))
  with pytest.raises(ValueError, match="num_components"):
    bl.fit_gmm(np.zeros((3, 2)), num_components=5)
