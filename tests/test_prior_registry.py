"""Tests for flowpose.prior.registry: names, loading from a workdir, densities that agree with
the prior evaluation, and the fitter's decode/penalty."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from flowpose.prior import evaluate
from flowpose.prior import flow as prior_lib
from flowpose.prior import io as prior_io
from flowpose.prior import registry

pytestmark = pytest.mark.usefixtures("fast_compile")  # conftest: XLA optimisations off


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
  """A prior workdir: an (untrained, data-initialised) small flow + baselines on toy DOFs."""
  rng = np.random.default_rng(0)
  dofs = (0.3 * rng.standard_normal((400, 50)) + rng.uniform(-1, 1, 50)).astype(np.float32)
  path = tmp_path_factory.mktemp("prior")
  flow_config = prior_lib.default_flow_config()
  flow_config.update(num_layers=2, hidden_sizes=(16,))
  flow = prior_lib.make_prior(flow_config)
  params = flow.init(jax.random.key(0), dofs)
  prior_io.export_prior(str(path), params, ml_collections.ConfigDict({"flow": flow_config}))
  fitted = evaluate.fit_baselines(dofs, np.asarray(params["stats"]["center"]), gmm_max_iters=10)
  evaluate.save_baselines(str(path), fitted)
  return path, dofs, flow, params, fitted


def test_names_and_unknown_name():
  assert registry.names()[:4] == ("none", "gaussian", "gmm8", "flow")
  with pytest.raises(registry.PriorRegistryError, match="vae.*none, gaussian, gmm8, flow"):
    registry.get("vae")


@pytest.mark.parametrize("name", ["gaussian", "gmm8", "flow"])
def test_missing_or_mistyped_workdir_is_an_error(tmp_path, name):
  with pytest.raises(registry.PriorRegistryError, match="not a folder"):
    registry.load(name, str(tmp_path / "typo"))
  with pytest.raises(registry.PriorRegistryError, match=name):
    registry.load(name, None)
  with pytest.raises(registry.PriorRegistryError, match="baselines.npz|prior_params.msgpack"):
    registry.load(name, str(tmp_path))


def test_densities_agree_with_the_prior_evaluation(workdir):
  path, dofs, flow, params, fitted = workdir
  test = dofs[:64] + 2 * np.pi  # Any 2 pi offset: the chart wraps.
  for name, model in (("gaussian", "gaussian_full"), ("gmm8", "gmm8")):
    got = np.asarray(registry.load(name, str(path)).log_prob(test))
    np.testing.assert_allclose(got, fitted.log_prob(model, test), rtol=2e-4, atol=2e-3)
  got = np.asarray(registry.load("flow", str(path)).log_prob(test))
  np.testing.assert_allclose(got, evaluate.flow_log_prob(flow, params, test), rtol=1e-4,
                             atol=1e-3)
  with pytest.raises(registry.PriorRegistryError, match="no density"):
    registry.load("none", str(path)).log_prob(test)


def test_fitter_penalty_matches_the_density(workdir):
  """The fitter's `||z||^2` of the Gaussian is -2 log p + const of the evaluated density, and
  the GMM's penalty is -2 log p itself: one prior, one number, in fitting and evaluation."""
  path, dofs, _, _, _ = workdir
  gauss = registry.load("gaussian", str(path))
  z = jnp.asarray(np.random.default_rng(1).standard_normal((5, 50)), jnp.float32)
  decoded = jax.vmap(gauss.space.decode, (None, 0))(gauss.params, z)
  penalty = jax.vmap(gauss.space.penalty, (None, 0))(gauss.params, z)
  log_p = gauss.log_prob(decoded)
  const = log_p + 0.5 * penalty
  np.testing.assert_allclose(const, const[0], rtol=1e-4)
  gmm = registry.load("gmm8", str(path))
  x = jnp.asarray(dofs[:5])
  np.testing.assert_allclose(jax.vmap(gmm.space.penalty, (None, 0))(gmm.params, x),
                             -2 * gmm.log_prob(x), rtol=1e-4)


def test_flow_decode_inverts_the_latent_and_none_starts_at_the_mean(workdir):
  path, dofs, flow, params, fitted = workdir
  prior = registry.load("flow", str(path))
  z = flow.pose_to_latent(params, dofs[:3])
  decoded = jax.vmap(prior.space.decode, (None, 0))(prior.params, z)
  np.testing.assert_allclose(np.cos(decoded - dofs[:3]), 1.0, atol=1e-4)
  np.testing.assert_array_equal(prior.init, np.zeros(50))
  none = registry.load("none", str(path))
  np.testing.assert_allclose(none.init, fitted.models["gaussian_full"].mean, atol=1e-5)
  np.testing.assert_array_equal(registry.load("none", None).init, np.zeros(50))
