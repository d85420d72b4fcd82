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
  assert set(registry.names()) == {"none", "gaussian", "gmm8", "flow", "gaussian_diag", "vae"}
  # Every prior with a density is a row of the NLL table; `none` has none.
  assert set(registry.evaluated_names()) == set(registry.names()) - {"none"}
  with pytest.raises(registry.PriorRegistryError, match="vpose.*none, gaussian, gmm8, flow"):
    registry.get("vpose")


@pytest.mark.parametrize("name", ["gaussian", "gaussian_diag", "gmm8", "flow"])
def test_missing_or_mistyped_workdir_is_an_error(tmp_path, name):
  with pytest.raises(registry.PriorRegistryError, match="not a folder"):
    registry.load(name, str(tmp_path / "typo"))
  with pytest.raises(registry.PriorRegistryError, match=name):
    registry.load(name, None)
  with pytest.raises(registry.PriorRegistryError, match="baselines.npz|prior_params.msgpack"):
    registry.load(name, str(tmp_path))


def test_densities_agree_with_the_prior_evaluation(workdir):
  """numpy DOFs: exactly the baseline cache's float64 numbers and the batched flow; jax DOFs:
  the float32 jittable density, equal up to float32 round-off."""
  path, dofs, flow, params, fitted = workdir
  test = dofs[:64] + 2 * np.pi  # Any 2 pi offset: the chart wraps.
  for name, model in (("gaussian", "gaussian_full"), ("gaussian_diag", "gaussian_diag"),
                      ("gmm8", "gmm8")):
    prior = registry.load(name, str(path))
    got = prior.log_prob(test)
    assert isinstance(got, np.ndarray) and got.dtype == np.float64
    np.testing.assert_array_equal(got, fitted.log_prob(model, test))
    np.testing.assert_allclose(jax.jit(prior.log_prob)(jnp.asarray(test)), got, rtol=2e-4,
                               atol=2e-3)
  prior = registry.load("flow", str(path))
  np.testing.assert_array_equal(prior.log_prob(test), evaluate.flow_log_prob(flow, params, test))
  np.testing.assert_allclose(prior.log_prob(jnp.asarray(test)), prior.log_prob(test), rtol=1e-4,
                             atol=1e-3)
  with pytest.raises(registry.PriorRegistryError, match="no density"):
    registry.load("none", str(path)).log_prob(test)


def test_fitter_penalty_matches_the_density(workdir):
  """The fitter's `||z||^2` of the Gaussian is -2 log p + const of the evaluated density, and
  the GMM's penalty is -2 log p itself: one prior, one number, in fitting and evaluation."""
  path, dofs, _, _, _ = workdir
  z = jnp.asarray(np.random.default_rng(1).standard_normal((5, 50)), jnp.float32)
  for name in ("gaussian", "gaussian_diag"):
    gauss = registry.load(name, str(path))
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


def test_the_evaluation_builds_every_density_from_memory(workdir, monkeypatch):
  """`evaluate.table_priors` = `registry.make` on the flow and baselines in memory, one prior per
  table row (no file read: the workdir is gone); a newly registered prior is a row too."""
  path, dofs, flow, params, fitted = workdir
  # A copy of the entries, so the stand-in `vae` leaves the registry as it found it.
  # pylint: disable-next=protected-access
  monkeypatch.setattr(registry, "_ENTRIES", dict(registry._ENTRIES))
  wide = fitted.models["gaussian_diag"].replace(std=2 * fitted.models["gaussian_diag"].std)
  registry.register("vae", make=registry.make_gaussian_diag, load=lambda workdir: None,
                    description="stand-in", eval_kwargs=lambda context: {
                        "gaussian": wide, "chart": context.flow.chart,
                        "center": context.baselines.center})
  assert evaluate.table_rows()[-1] == ("vae", "vae")
  priors = evaluate.table_priors("/nonexistent", flow, params, fitted)
  assert list(priors) == ["flow", "gaussian_diag", "gaussian_full", "gmm8", "vae"]
  test = dofs[:32]
  for label, model in (("gaussian_diag", "gaussian_diag"), ("gaussian_full", "gaussian_full"),
                       ("gmm8", "gmm8")):
    np.testing.assert_array_equal(priors[label].log_prob(test), fitted.log_prob(model, test))
  np.testing.assert_array_equal(priors["flow"].log_prob(test),
                                evaluate.flow_log_prob(flow, params, test))
  assert np.all(priors["vae"].log_prob(test) != priors["gaussian_diag"].log_prob(test))
  with pytest.raises(registry.PriorRegistryError, match="no density"):
    registry.make("none").log_prob(test)
