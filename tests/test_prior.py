"""Tests for flowpose.prior.flow: init, change of variables, inverses, wrap-around, masks,
and the prior's config (defaults, `event_dim` derived from the chart, the experiment)."""

import os

# LU layers run LAPACK on tiny matrices; OpenBLAS threads only slow them down
# (badly so on a loaded machine). Takes effect before the first LAPACK call.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

# pylint: disable=g-import-not-at-top,wrong-import-position
import functools
import pathlib

from absl import flags
import jax
import jax.numpy as jnp
import ml_collections
from ml_collections import config_flags
import numpy as np
import pytest

from flowpose.prior import flow as prior_lib
from experiments import prior_cmu

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]

D = 50
SMALL_D = 6


def flow_config(**overrides):
  config = prior_lib.default_flow_config()
  # These tests exercise the kinematic structure (the experiment default is alternating).
  config.mask = "kinematic"
  config.mixing = "group_lu"
  config.num_layers = 2
  config.hidden_sizes = (16, 16)
  for name, value in overrides.items():
    config[name] = value
  return config


def example_poses(n=512, dim=D, seed=0):
  """Correlated angle-like poses, some DOFs centred near the +-pi cut."""
  rng = np.random.default_rng(seed)
  mix = rng.normal(size=(dim, dim)) * 0.1
  mean = rng.uniform(-1.0, 1.0, size=dim)
  mean[:3] = [3.0, -3.0, np.pi]  # Spread across the cut at +-pi.
  x = mean + rng.normal(size=(n, dim)) @ mix
  return np.arctan2(np.sin(x), np.cos(x)).astype(np.float32)


def perturbed(params, scale=0.1, seed=1):
  """Params with random flow weights: the flow is no longer the identity."""
  leaves, treedef = jax.tree.flatten(params["flow"])
  keys = jax.random.split(jax.random.key(seed), len(leaves))
  leaves = [x + scale * jax.random.normal(k, x.shape)
            for x, k in zip(leaves, keys)]
  return {"stats": params["stats"],
          "flow": jax.tree.unflatten(treedef, leaves)}


pytestmark = pytest.mark.usefixtures("fast_compile")  # conftest: XLA optimisations off


class Jitted:
  """A prior's functions, jitted once and shared by the tests using it."""

  def __init__(self, config):
    self.prior = prior_lib.make_prior(config)
    self.init = jax.jit(self.prior.init)
    self.log_prob = jax.jit(self.prior.log_prob)
    self.pose_to_latent = jax.jit(self.prior.pose_to_latent)
    self.latent_to_pose = jax.jit(self.prior.latent_to_pose)
    self.sample = jax.jit(self.prior.sample, static_argnums=2)


@pytest.fixture(scope="module")
def kinematic(fast_compile):
  """A tiny kinematic (affine, group_lu) prior and its params."""
  flow = Jitted(flow_config())
  poses = example_poses()
  params = flow.init(jax.random.key(0), poses)
  return flow, poses, params


def test_init_is_the_fitted_diagonal_gaussian(kinematic):
  flow, poses, params = kinematic
  # Independent reference: a diagonal Gaussian fitted to the poses, in the
  # chart centred on each DOF's circular mean (the first 3 DOFs straddle
  # +-pi, so a naive mean/std would be wrong there).
  center = np.arctan2(np.sin(poses).mean(0), np.cos(poses).mean(0))
  centred = np.arctan2(np.sin(poses - center), np.cos(poses - center))
  mean, std = centred.mean(0), centred.std(0)
  expected = np.sum(-0.5 * ((centred - mean) / std) ** 2 - np.log(std)
                    - 0.5 * np.log(2 * np.pi), -1)
  np.testing.assert_allclose(flow.log_prob(params, poses), expected,
                             rtol=1e-4, atol=1e-3)
  np.testing.assert_allclose(params["stats"]["center"], center, atol=1e-5)


@functools.lru_cache
def small_flow(coupling):
  """A 6-D alternating-mask flow (jitted once per coupling)."""
  return Jitted(flow_config(event_dim=SMALL_D, mask="alternating",
                            mixing="lu", coupling=coupling))


@pytest.mark.parametrize("coupling", ["affine", "spline"])
def test_log_prob_is_change_of_variables(coupling):
  dim = SMALL_D
  flow = small_flow(coupling)
  poses = example_poses(64, dim)
  params = perturbed(flow.init(jax.random.key(0), poses))

  @jax.jit
  def reference(pose):
    z = flow.prior.pose_to_latent(params, pose)
    _, log_det = jnp.linalg.slogdet(
        jax.jacfwd(lambda p: flow.prior.pose_to_latent(params, p))(pose))
    return -0.5 * jnp.sum(z**2) - 0.5 * dim * np.log(2 * np.pi) + log_det

  np.testing.assert_allclose(flow.log_prob(params, poses[:4]),
                             jax.vmap(reference)(poses[:4]),
                             rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("coupling", ["affine", "spline"])
def test_latent_round_trip(coupling):
  flow, poses = small_flow(coupling), example_poses(64, SMALL_D)
  params = perturbed(flow.init(jax.random.key(0), poses), scale=0.05)
  back = flow.latent_to_pose(params, flow.pose_to_latent(params, poses))
  # Compare on the circle: DOFs near +-pi may come back as -pi vs pi.
  np.testing.assert_allclose(np.sin(back - poses), 0.0, atol=1e-4)
  np.testing.assert_allclose(np.cos(back - poses), 1.0, atol=1e-4)


def test_kinematic_round_trip_and_samples(kinematic):
  flow, poses, params = kinematic
  params = perturbed(params, scale=0.05)
  back = flow.latent_to_pose(params, flow.pose_to_latent(params, poses))
  np.testing.assert_allclose(np.sin(back - poses), 0.0, atol=1e-4)
  np.testing.assert_allclose(np.cos(back - poses), 1.0, atol=1e-4)
  samples = flow.sample(params, jax.random.key(2), 64)
  assert samples.shape == (64, D)
  assert np.all(np.abs(samples) <= np.pi + 1e-6)
  assert np.all(np.isfinite(flow.log_prob(params, samples)))


def test_density_is_periodic(kinematic):
  flow, poses, params = kinematic
  params = perturbed(params)
  turns = np.random.default_rng(3).integers(-2, 3, size=poses.shape)
  shifted = poses + 2 * np.pi * turns
  np.testing.assert_allclose(flow.log_prob(params, shifted),
                             flow.log_prob(params, poses), atol=1e-3)


def test_stats_get_no_gradient(kinematic):
  flow, poses, params = kinematic
  grads = jax.jit(jax.grad(
      lambda p: jnp.mean(flow.prior.log_prob(p, poses))))(params)
  assert all(np.all(g == 0) for g in jax.tree.leaves(grads["stats"]))
  assert any(np.any(g != 0) for g in jax.tree.leaves(grads["flow"]))


def test_kinematic_masks_are_valid():
  masks = prior_lib.coupling_masks(flow_config(num_layers=8))
  assert masks.shape == (8, D) and masks.dtype == bool
  for mask in masks:
    assert 0 < mask.sum() < D  # Conditions on something, updates something.
  assert np.all((~masks).any(0))  # Every DOF is updated by some layer.
  groups = prior_lib.group_indices()
  assert sorted(np.concatenate(list(groups.values()))) == list(range(D))
  # The first four schedule rows move whole kinematic groups.
  for mask in masks[:4]:
    for idx in groups.values():
      assert mask[idx].all() or not mask[idx].any()
  torso = groups["torso"]
  assert masks[0][torso].all() and not masks[0].sum() > len(torso)


def test_group_lu_mixes_only_within_groups(kinematic):
  _, _, params = kinematic
  params = perturbed(params)
  mixing = prior_lib._group_lu(D, list(prior_lib.group_indices().values()))
  jac = jax.jacfwd(lambda x: mixing.forward(params["flow"][2], x))(
      jnp.zeros(D))
  group_of = np.zeros(D, int)
  for g, idx in enumerate(prior_lib.group_indices().values()):
    group_of[idx] = g
  cross = group_of[:, None] != group_of[None, :]
  assert np.all(np.asarray(jac)[cross] == 0)
  assert np.any(np.asarray(jac)[~cross & ~np.eye(D, dtype=bool)] != 0)


@pytest.mark.parametrize("field, value", [
    ("chart", "quaternion"), ("coupling", "maf"), ("mask", "random"),
    ("mixing", "lu"),  # A global mixing would scramble kinematic groups.
    ("num_layers", 0), ("hidden_sizes", ()), ("event_dim", 6),
])
def test_bad_flow_config_names_the_field(field, value):
  with pytest.raises(ValueError, match=f"flow.{field}"):
    prior_lib.make_prior(flow_config(**{field: value}))


def test_bad_pose_shape_raises(kinematic):
  flow, _, params = kinematic
  with pytest.raises(ValueError, match=r"expected \[\.\.\., 50\]"):
    flow.log_prob(params, jnp.zeros((3, 49)))


# ---------------------------------------------------------------------------
# Config: defaults, derived event_dim, the experiment.
# ---------------------------------------------------------------------------


def _changed_fields(config, reference):
  return {k for k in set(config) | set(reference) if config.get(k) != reference.get(k)}


def test_experiment_flow_is_the_default_plus_named_overrides():
  default = prior_lib.default_flow_config()
  experiment = prior_cmu.get_config()
  assert experiment.task == "prior"
  # The experiment models the 46 DOFs CMU moves (chart euler_free; event_dim follows the chart).
  assert _changed_fields(experiment.flow, default) == {"chart", "event_dim"}
  assert experiment.flow.chart == "euler_free" and experiment.flow.event_dim == 46
  assert (_changed_fields(prior_cmu.get_config("runlocal").flow, default)
          == {"chart", "event_dim", "num_layers"})
  # The experiment took the derived event_dim, not a copy of its value.
  experiment.flow.chart = "axis_angle"
  assert experiment.flow.event_dim == 72


def _parse_experiment(*overrides):
  """The experiment config as the launcher parses it (absl flags + config_flags)."""
  argv = ["launch", f"--config={REPO_ROOT / 'experiments' / 'prior_cmu.py'}", *overrides]
  flag_values = flags.FlagValues()
  # config_flags reads the overrides from `sys_argv` (default: sys.argv).
  config_flags.DEFINE_config_file("config", None, "", flag_values=flag_values,
                                  lock_config=True, sys_argv=argv)
  flag_values(argv)
  return flag_values.config


def test_chart_override_alone_sets_event_dim():
  config = _parse_experiment("--config.flow.chart=axis_angle")
  assert config.flow.chart == "axis_angle" and config.flow.event_dim == 72
  prior = prior_lib.make_prior(config.flow)
  assert prior.event_dim == 72 and prior.coupling_masks.shape == (8, 72)
  assert _parse_experiment().flow.event_dim == 46  # euler_free
  assert _parse_experiment("--config.flow.chart=euler_dofs").flow.event_dim == 50
  # An explicit event_dim pins it (e.g. a small synthetic flow) ...
  config = _parse_experiment("--config.flow.chart=euler_dofs", "--config.flow.event_dim=12")
  assert config.flow.event_dim == 12
  assert prior_lib.make_prior(config.flow).event_dim == 12
  # ... and one that contradicts the chart is rejected, naming the field.
  config = _parse_experiment("--config.flow.chart=axis_angle", "--config.flow.event_dim=50")
  with pytest.raises(ValueError, match=r"flow\.event_dim.*72"):
    prior_lib.make_prior(config.flow)


def test_event_dim_of_a_hand_built_config_comes_from_the_chart():
  flow = ml_collections.ConfigDict(dict(prior_lib.default_flow_config()))
  del flow["event_dim"]
  assert prior_lib.flow_event_dim(flow) == 50
  flow.chart = "axis_angle"
  assert prior_lib.flow_event_dim(flow) == 72
  bad = prior_lib.default_flow_config()
  bad.chart = "quaternion"
  assert "quaternion" in str(bad)  # Printable although event_dim cannot be derived.
  with pytest.raises(ValueError, match=r"flow\.chart"):
    prior_lib.make_prior(bad)


def test_benchmark_reference_realnvp_is_a_normalised_flow():
  # benchmarks/flow_train.py measures flowpose against this plain RealNVP: it must be a real
  # flow (log_prob = change of variables through its own forward map), not a cheaper stand-in.
  from benchmarks import realnvp_reference as ref  # pylint: disable=g-import-not-at-top
  dim = 5
  params = ref.init(jax.random.key(0), dim, 3, (8,))
  params = jax.tree.map(lambda p: p + 0.3 * jax.random.normal(jax.random.key(1), p.shape),
                        params)
  z = jax.random.normal(jax.random.key(2), (4, dim))
  x = jax.jit(ref.forward)(params, z)
  jac = jax.vmap(jax.jacfwd(lambda zi: ref.forward(params, zi[None])[0]))(z)
  base = -0.5 * jnp.sum(z**2, -1) - 0.5 * dim * jnp.log(2 * jnp.pi)
  expected = base - jnp.linalg.slogdet(jac)[1]
  np.testing.assert_allclose(jax.jit(ref.log_prob)(params, x), expected, atol=1e-4)
  assert np.abs(np.asarray(x - z)).max() > 1e-2


def test_a_kinematic_flow_first_built_inside_a_trace_works_outside(fast_compile):
  # The trainer first builds the prior under jax.eval_shape; a jnp constant made while building
  # (group_lu's block mask once was) is then a tracer kept by the built flow, and every later
  # use outside the trace fails with UnexpectedTracerError.
  config = flow_config(num_layers=1)
  box = {}

  def build_in_trace(x):
    box["flow"] = prior_lib.build_flow(config)
    return x

  jax.eval_shape(build_in_trace, jnp.zeros(2))
  flow = box["flow"]
  params = flow.init(jax.random.key(0), D)
  y, log_det = flow.forward_and_log_det(params, jnp.zeros((3, D)))
  assert np.all(np.isfinite(np.asarray(y))) and np.all(np.isfinite(np.asarray(log_det)))


def test_actnorm_switch_removes_the_actnorm_layers():
  """`flow.actnorm=False` (the notebook's ablation) drops exactly the per-block actnorm params,
  and the flow without them is still a normalised change of variables."""
  poses = example_poses(64, SMALL_D)
  on = Jitted(flow_config(event_dim=SMALL_D, mask="alternating", mixing="lu"))
  off = Jitted(flow_config(event_dim=SMALL_D, mask="alternating", mixing="lu", actnorm=False))
  params_on = on.init(jax.random.key(0), poses)
  params_off = perturbed(off.init(jax.random.key(0), poses), scale=0.05)
  count = lambda p: sum(np.size(x) for x in jax.tree.leaves(p["flow"]))
  # One actnorm = a [D] shift and a [D] log-scale, before each of the 2 couplings.
  assert count(params_on) - count(params_off) == 2 * 2 * SMALL_D
  back = off.latent_to_pose(params_off, off.pose_to_latent(params_off, poses))
  np.testing.assert_allclose(np.sin(back - poses), 0.0, atol=1e-4)
  samples = np.asarray(off.sample(params_off, jax.random.key(1), 256))
  assert np.all(np.isfinite(np.asarray(off.log_prob(params_off, samples))))
