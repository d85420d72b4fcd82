"""The VAE pose prior (flowpose.prior.vae, tasks/vae.py, registry entry `vae`)."""

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

# pylint: disable=g-import-not-at-top,wrong-import-position
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from flowpose.data import cmu_skeleton
from flowpose.data import poses
from flowpose.prior import charts
from flowpose.prior import io as prior_io
from flowpose.prior import registry
from flowpose.prior import vae as vae_lib
from flowpose.tasks import vae as vae_task

pytestmark = pytest.mark.usefixtures("fast_compile")


def _poses(n=512, seed=0):
  """`[n, 50]` synthetic DOFs with the CMU-fixed clavicle DOFs at 0 (as in CMU)."""
  dofs = poses.synthetic_poses(n, cmu_skeleton.NUM_POSE_DOFS, seed, "train")
  dofs[:, charts.FIXED_COLUMNS] = 0.0
  return dofs


def _vae(latent=1, hidden=(16,), chart="euler_free"):
  config = vae_lib.default_vae_config()
  config.update(chart=chart, latent_dim=latent, hidden_sizes=hidden)
  return vae_lib.make_vae(config)


def test_importance_sampling_matches_quadrature_and_bounds_the_elbo():
  """L = 1: log p(x) = log int p(x|z) N(z) dz by dense quadrature, against the IS estimate."""
  vae = _vae(latent=1)
  x = charts.from_dofs_np("euler_free", _poses(64))
  params = vae.init(jax.random.PRNGKey(0), x)
  # A decoder whose mean moves with z, broad enough that K = 1000 draws from q ~ N(0, 1)
  # (zero encoder output at init) estimate the integral well.
  last = params["decoder"]["Dense_1"]
  params["decoder"]["Dense_1"] = {**last, "kernel": 0.3 * jax.random.normal(
      jax.random.PRNGKey(1), last["kernel"].shape)}
  params["decoder_log_std"] = jnp.full_like(params["decoder_log_std"], 0.7)
  x = x[:8]
  z = jnp.linspace(-7.0, 7.0, 1401)[:, None]
  dz = float(z[1, 0] - z[0, 0])
  mean = vae.decode(params, z)  # [Z, D] chart coordinates.
  stats = params["stats"]
  u = vae_lib.wrap_angle(x - stats["center"]) / stats["scale"]
  m = vae_lib.wrap_angle(mean - stats["center"]) / stats["scale"]
  floor = np.log(1e-3)  # The decoder's log std, softly floored at min_decoder_scale.
  log_std = float(floor + np.logaddexp(0.0, 0.7 - floor))
  r = (u[None] - m[:, None]) / np.exp(log_std)  # [Z, B, D]
  log_lik = jnp.sum(-0.5 * r * r - log_std - 0.5 * np.log(2 * np.pi), -1) - jnp.sum(
      jnp.log(stats["scale"]))
  log_joint = log_lik - 0.5 * z ** 2 - 0.5 * np.log(2 * np.pi)
  exact = np.asarray(jax.nn.logsumexp(log_joint, axis=0) + np.log(dz))
  is_estimate = np.asarray(vae.log_prob(params, jax.random.PRNGKey(2), x, 1000))
  elbo = np.asarray(vae.elbo(params, jax.random.PRNGKey(2), x, 1000))
  np.testing.assert_allclose(is_estimate, exact, atol=0.15)  # Monte Carlo error of K = 1000.
  assert abs(np.mean(is_estimate - exact)) < 0.05
  assert np.all(is_estimate >= elbo)           # Same draws: log-mean-exp >= mean.
  assert np.mean(exact - elbo) > 0.05           # The ELBO is a strictly looser bound here.
  # The NumPy path of the NLL table (other draws, padded batches): the same estimate.
  table = vae_lib.evaluate_np(vae, params, np.asarray(x), "log_prob", batch_size=5)
  np.testing.assert_allclose(table, exact, atol=0.15)
  assert np.all(table >= vae_lib.evaluate_np(vae, params, np.asarray(x), "elbo", batch_size=5))


def _task_config(steps=60):
  config = ml_collections.ConfigDict()
  config.vae = vae_lib.default_vae_config()
  config.vae.update(latent_dim=4, hidden_sizes=(32, 32))
  config.input_noise = 0.0
  config.kl_anneal_steps = steps // 2
  config.loss_weights = ml_collections.ConfigDict({"rec": 1.0, "kl": 1.0})
  config.init_examples = 256
  return config


def test_tiny_training_decreases_the_loss():
  config = _task_config()
  dofs = _poses(256)
  params = vae_task.init(config, jax.random.PRNGKey(0), {"poses": dofs,
                                                          "step": np.zeros(256, np.int32)})
  tx = optax.adam(3e-3)
  state = tx.init(params)

  @jax.jit
  def step(params, state, s, rng):
    batch = {"poses": dofs, "step": jnp.full((256,), s, jnp.int32)}
    (_, metrics), grads = jax.value_and_grad(
        lambda p: vae_task.loss(p, batch, rng, config), has_aux=True)(params)
    grads["stats"] = jax.tree.map(jnp.zeros_like, grads["stats"])
    updates, state = tx.update(grads, state)
    return optax.apply_updates(params, updates), state, metrics

  history = []
  for s in range(60):
    params, state, metrics = step(params, state, s, jax.random.PRNGKey(s))
    history.append(float(metrics["neg_elbo"]))
  assert float(metrics["kl_weight"]) == 1.0 and np.isfinite(history).all()
  assert np.mean(history[-5:]) < np.mean(history[:5]) - 5.0, history
  assert vae_task.kl_weight(0, 30) == 0.0 and vae_task.kl_weight(15, 30) == 0.5


def test_registry_round_trip(tmp_path):
  config = _task_config()
  dofs = _poses(128)
  params = vae_task.init(config, jax.random.PRNGKey(0), {"poses": dofs,
                                                          "step": np.zeros(128, np.int32)})
  flow_dir = tmp_path / "prior"
  with pytest.raises(registry.PriorRegistryError, match="prior_vae.py"):
    registry.load("vae", str(tmp_path))   # No VAE anywhere: says how to train one.
  prior_io.export_vae(str(flow_dir / "vae"), params, config)
  prior = registry.load("vae", str(flow_dir))      # Found in W/vae.
  again = registry.load("vae", str(flow_dir / "vae"))  # Or W itself.
  assert prior.name == "vae" and prior.space.dim == 4 and prior.init.shape == (4,)
  vae = vae_task.make_vae(config)
  expected = vae_lib.evaluate_np(vae, params, charts.from_dofs_np("euler_free", dofs[:5]))
  np.testing.assert_allclose(prior.log_prob(dofs[:5]), expected, rtol=1e-6)
  np.testing.assert_allclose(again.log_prob(dofs[:5]), expected, rtol=1e-6)
  # The fitter's variable: z -> 50 DOFs, the fixed DOFs at 0, decoder mean at z = 0.
  decoded = np.asarray(prior.space.decode(prior.params, prior.init))
  assert decoded.shape == (50,) and np.all(decoded[charts.FIXED_COLUMNS] == 0.0)
  np.testing.assert_allclose(decoded[charts.FREE_COLUMNS],
                             np.asarray(vae.decode(params, jnp.zeros(4))), atol=1e-6)
  assert float(prior.space.penalty(prior.params, jnp.ones(4))) == 4.0
  # A damaged export is named.
  (flow_dir / "vae" / prior_io.VAE_PARAMS_FILE).write_bytes(b"garbage")
  with pytest.raises(registry.PriorRegistryError, match="vae_params"):
    registry.load("vae", str(flow_dir))


def test_fixed_dofs_must_not_move():
  config = _task_config()
  dofs = _poses(64)
  dofs[3, charts.FIXED_COLUMNS[1]] = 0.2
  with pytest.raises(ValueError, match="rclavicle.rz"):
    vae_task.init(config, jax.random.PRNGKey(0), {"poses": dofs, "step": np.zeros(64, np.int32)})
