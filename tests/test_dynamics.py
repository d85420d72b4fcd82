"""The latent dynamics model, its export/load, the `dynamics` task and `metrics.accel_error`."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flowpose import metrics
from flowpose.models import dynamics as dynamics_lib
from flowpose.models import dynamics_io
from flowpose.prior import charts
from flowpose.prior import io as prior_io
from tests import video_fixtures

pytestmark = pytest.mark.usefixtures("fast_compile")


def _smooth_latents(num=64, frames=12, dim=6, seed=0):
  """Smooth random trajectories (sums of slow sines): a stand-in for motion latents."""
  rng = np.random.default_rng(seed)
  t = np.arange(frames)[None, :, None]
  freq = rng.uniform(0.05, 0.3, (num, 1, dim))
  phase = rng.uniform(0, 2 * np.pi, (num, 1, dim))
  return (np.sin(freq * t + phase) + 0.01 * rng.standard_normal((num, frames, dim))).astype(
      np.float32)


def _model(dim=6, residual="diagonal"):
  config = dynamics_lib.default_dynamics_config()
  config.hidden_sizes = (16,)
  config.residual = residual
  return dynamics_lib.make_dynamics(config, dim)


def _correlated_latents(num=64, frames=12, dim=6, seed=0):
  """Latents whose constant-velocity residuals are strongly correlated across dimensions."""
  rng = np.random.default_rng(seed)
  mix = np.eye(dim) + 0.8 * rng.standard_normal((dim, dim))
  accel = rng.standard_normal((num, frames, dim)) @ mix.T * 0.01
  return np.cumsum(np.cumsum(accel, 1), 1).astype(np.float32)


def test_new_full_model_is_constant_velocity_with_the_fitted_residual_covariance():
  from scipy import stats  # pylint: disable=g-import-not-at-top
  z = _correlated_latents()
  model = _model(residual="full")
  params = model.init(jax.random.key(0), z)
  residual = (z[:, 2:] - 2 * z[:, 1:-1] + z[:, :-2]).reshape(-1, 6).astype(np.float64)
  cov = residual.T @ residual / len(residual)
  expected = stats.multivariate_normal(np.zeros(6), cov).logpdf(residual).reshape(64, 10)
  np.testing.assert_allclose(model.log_prob(params, z), expected, rtol=1e-4, atol=2e-3)
  # The diagonal model pays for the correlation: the full one is better on the same windows.
  diag = _model()
  diag_lp = diag.log_prob(diag.init(jax.random.key(0), z), z)
  assert float(jnp.mean(model.log_prob(params, z))) > float(jnp.mean(diag_lp)) + 1.0
  # The product with N(0, I) in a rollout: mean (P + I)^-1 P m with P = cov^-1.
  out = model.rollout(params, jax.random.key(2), z[:2, 0], z[:2, 1], 1, temperature=0.0)
  precision = np.linalg.inv(cov)
  guess = (2 * z[:2, 1] - z[:2, 0]).astype(np.float64)
  pulled = np.linalg.solve(precision + np.eye(6), (precision @ guess.T)).T
  np.testing.assert_allclose(out[:, 0], pulled, rtol=1e-3, atol=1e-4)
  free = model.rollout(params, jax.random.key(3), z[:2, 0], z[:2, 1], 1, temperature=0.0,
                       prior_product=False)
  np.testing.assert_allclose(free[:, 0], guess, atol=1e-5)


def test_new_model_is_constant_velocity_with_the_fitted_residual_scale():
  z = _smooth_latents()
  model = _model()
  params = model.init(jax.random.key(0), z)
  residual = z[:, 2:] - 2 * z[:, 1:-1] + z[:, :-2]
  std = np.sqrt(np.mean(residual.reshape(-1, 6) ** 2, 0))
  np.testing.assert_allclose(np.exp(params["base_log_scale"]), std, rtol=1e-4)
  expected = np.sum(-0.5 * (residual / std) ** 2 - np.log(std) - 0.5 * np.log(2 * np.pi), -1)
  np.testing.assert_allclose(model.log_prob(params, z), expected, rtol=1e-4, atol=1e-4)


def test_real_windows_beat_time_shuffled_windows_after_brief_training():
  z = _smooth_latents()
  model = _model()
  params = model.init(jax.random.key(0), z)
  opt = __import__("optax").adam(3e-3)
  state = opt.init(params)
  grad = jax.jit(jax.grad(lambda p: -jnp.mean(model.log_prob(p, z))))
  for _ in range(30):
    updates, state = opt.update(grad(params), state)
    params = jax.tree.map(lambda p, u: p + u, params, updates)
  shuffled = z[:, np.random.default_rng(1).permutation(z.shape[1])]
  real_nll = -float(jnp.mean(model.log_prob(params, z)))
  shuffled_nll = -float(jnp.mean(model.log_prob(params, shuffled)))
  assert real_nll < shuffled_nll - 10.0, (real_nll, shuffled_nll)


def test_rollout_continues_from_the_start_frames():
  z = _smooth_latents(num=2)
  model = _model()
  params = model.init(jax.random.key(0), z)
  out = model.rollout(params, jax.random.key(2), z[:, 0], z[:, 1], 5, temperature=0.0,
                      prior_product=False)
  assert out.shape == (2, 5, 6)
  # Temperature 0 and a new model: exact constant-velocity extrapolation.
  np.testing.assert_allclose(out[:, 0], 2 * z[:, 1] - z[:, 0], atol=1e-5)
  np.testing.assert_allclose(out[:, 1], 3 * z[:, 1] - 2 * z[:, 0], atol=1e-5)
  # With the static prior as a second expert the mean is shrunk by 1 / (1 + s^2).
  var = np.exp(2 * np.asarray(params["base_log_scale"]))
  pulled = model.rollout(params, jax.random.key(2), z[:, 0], z[:, 1], 1, temperature=0.0)
  np.testing.assert_allclose(pulled[:, 0], (2 * z[:, 1] - z[:, 0]) / (1 + var), atol=1e-5)


def test_bad_shapes_and_config_are_named():
  model = _model()
  with pytest.raises(ValueError, match=r"dynamics.log_prob: expected \[..., T, 6\]"):
    model.log_prob({}, jnp.zeros((4, 2, 6)))
  config = dynamics_lib.default_dynamics_config()
  config.scale_bound = -1.0
  with pytest.raises(ValueError, match="dynamics.scale_bound"):
    dynamics_lib.make_dynamics(config, 6)
  config = dynamics_lib.default_dynamics_config()
  config.residual = "banded"
  with pytest.raises(ValueError, match="dynamics.residual"):
    dynamics_lib.make_dynamics(config, 6)


def test_accel_error_counts_jitter_not_offsets():
  rng = np.random.default_rng(0)
  gt = rng.standard_normal((10, 5, 3)).cumsum(0) * 0.01
  assert float(jnp.max(metrics.accel_error(gt + 0.3, gt))) < 1e-3  # A global offset: 0.
  jitter = gt.copy()
  jitter[4, 1, 0] += 0.01  # 1 cm (x) on one joint of one frame: a ±2 cm second-difference spike.
  err = np.asarray(metrics.accel_error(jitter, gt, root_index=None))
  np.testing.assert_allclose(err[[2, 3, 4]], [10 / 5, 20 / 5, 10 / 5], rtol=1e-4)
  assert err.shape == (8,)
  with pytest.raises(ValueError, match="T >= 3"):
    metrics.accel_error(gt[:2], gt[:2])


def test_export_load_round_trip_and_prior_mismatch(shared_data, tmp_path):
  w = video_fixtures.windows(shared_data, tmp_path)
  prior_dir = video_fixtures.tiny_prior(tmp_path / "prior", w.dofs)
  dyn_dir = video_fixtures.tiny_dynamics(tmp_path / "dyn", prior_dir, w.dofs)
  model, params, config = dynamics_io.load_dynamics(dyn_dir, prior_dir)
  prior, prior_params, _ = prior_io.load_trained_prior(prior_dir)
  assert model.dim == prior.event_dim and config.prior_sha256 == prior_io.params_sha256(prior_dir)
  x = charts.from_dofs(prior.chart, w.dofs)
  z = prior.pose_to_latent(prior_params, x)
  assert np.all(np.isfinite(model.log_prob(params, z)))
  # Pose-chart nats = latent nats + the flow's log-Jacobian (change of variables).
  static = prior.log_prob(prior_params, x)
  pose = dynamics_lib.pose_log_prob(model.log_prob(params, z), static, z)
  logdet = static - jnp.sum(-0.5 * (z ** 2 + np.log(2 * np.pi)), -1)
  np.testing.assert_allclose(pose - model.log_prob(params, z), logdet[:, 2:], rtol=1e-4,
                             atol=1e-3)
  other = video_fixtures.tiny_prior(tmp_path / "other", w.dofs[:, ::-1] + 0.1)
  with pytest.raises(dynamics_io.DynamicsLoadError, match="trained on the prior"):
    dynamics_io.load_dynamics(dyn_dir, other)
  (tmp_path / "dyn" / dynamics_io.PARAMS_FILE).write_bytes(b"garbage")
  with pytest.raises(dynamics_io.DynamicsLoadError, match="SHA-256"):
    dynamics_io.load_dynamics(dyn_dir, prior_dir)
  json.loads((tmp_path / "dyn" / "config.json").read_text())  # Still readable JSON.


@pytest.mark.slow
def test_dynamics_task_trains_resumes_and_exports(shared_data, tmp_path):
  from experiments import dynamics_cmu  # pylint: disable=g-import-not-at-top
  from flowpose.train import trainer  # pylint: disable=g-import-not-at-top
  w = video_fixtures.windows(shared_data, tmp_path)
  prior_dir = video_fixtures.tiny_prior(tmp_path / "prior", w.dofs)
  manual = tmp_path / "cmu"
  manual.mkdir()
  for name in ("13.asf.gz", "13_11.amc.gz", "02.asf.gz", "02_01.amc.gz"):
    (manual / name).symlink_to(shared_data / "cmu" / name)
  config = dynamics_cmu.get_config("runlocal")
  config.prior_workdir = prior_dir
  config.data.manual_dir = str(manual)
  config.data.data_dir = str(tmp_path / "tfds")
  config.dynamics.hidden_sizes = (16,)
  # Diagonal residual here: on this two-clip toy set (train subject 02, eval 13, a tiny prior) the
  # full-covariance residual fitted to subject 02 loses to the static prior on subject 13 after
  # 6 steps (NLL 657 vs 599, measured); the full model's own maths is tested above, and on the
  # real folders it beats the diagonal one (WORKSPACE.md, issue 13).
  config.dynamics.residual = "diagonal"
  config.batch_size, config.init_examples, config.eval_batch_size = 4, 8, 8
  config.num_train_steps, config.eval_every, config.checkpoint_every = 6, 6, 3
  config.optimizer.warmup_steps = 2
  workdir = str(tmp_path / "run")
  first = trainer.train_and_evaluate(config, workdir)
  assert first.step == 6 and np.isfinite(first.eval_metrics["nll"])
  assert first.eval_metrics["nll_pose"] < first.eval_metrics["nll_static"]
  config.num_train_steps = 9
  second = trainer.train_and_evaluate(config, workdir, override=True)
  assert second.step == 9
  model, params, _ = dynamics_io.load_dynamics(workdir, prior_dir)
  assert model.dim == prior_io.load_trained_prior(prior_dir)[0].event_dim
  assert np.all(np.isfinite(params["gain"]))


def test_constant_velocity_params_drop_the_learned_corrections():
  z = _correlated_latents()
  model = _model(residual="full")
  params = model.init(jax.random.key(0), z)
  # A trained-looking model: non-zero MLP output layer and gain.
  trained = jax.tree.map(lambda x: x + 0.3, params)
  cv = dynamics_lib.constant_velocity_params(trained)
  mean, log_scale = model.mean_and_log_scale(cv, z[:, 0], z[:, 1])
  np.testing.assert_allclose(mean, 2 * z[:, 1] - z[:, 0], atol=1e-6)
  np.testing.assert_allclose(log_scale, np.broadcast_to(trained["base_log_scale"], (64, 6)),
                             atol=1e-6)
  np.testing.assert_array_equal(cv["whiten"], trained["whiten"])  # The residual's shape kept.
