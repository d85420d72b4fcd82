"""Tests for flowpose.prior.charts (Euler-DOF and axis-angle charts of the CMU pose)."""

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

# pylint: disable=g-import-not-at-top,wrong-import-position
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flowpose.data import cmu_skeleton
from flowpose.data import retarget
from flowpose.fitting import reduced_body
from flowpose.prior import charts
from flowpose.prior import flow as prior_lib


pytestmark = pytest.mark.usefixtures("fast_compile")  # conftest: XLA optimisations off


@pytest.fixture(scope="module")
def real_dofs(cmu_dir):
  from flowpose.prior import evaluate  # pylint: disable=g-import-not-at-top
  return evaluate.read_clip_dofs(cmu_dir / "05_03.amc.gz")[::4]  # Dance, 30 -> 7.5 fps.


def test_dimensions_and_bones():
  assert charts.chart_dim("euler_dofs") == 50
  assert charts.chart_dim("axis_angle") == 72 == 3 * len(charts.CHART_BONES)
  assert charts.dim_bones("axis_angle")[:3] == ("lowerback",) * 3
  assert len(charts.dim_bones("euler_dofs")) == 50
  with pytest.raises(ValueError, match="quaternion"):
    charts.chart_dim("quaternion")
  with pytest.raises(ValueError, match=r"\[\.\.\., 72\]"):
    charts.to_dofs("axis_angle", np.zeros((2, 50)))


def test_axis_angle_round_trip_on_real_poses(real_dofs):
  x = charts.from_dofs_np("axis_angle", real_dofs)
  assert x.shape == (len(real_dofs), 72) and np.all(np.linalg.norm(
      x.reshape(-1, 24, 3), axis=-1) <= np.pi + 1e-5)
  back = np.asarray(charts.to_dofs("axis_angle", x))
  # Same rotations, hence the same body pose ...
  np.testing.assert_allclose(charts.dofs_to_bone_rotmats(back),
                             charts.dofs_to_bone_rotmats(real_dofs), atol=2e-5)
  # ... and the same angles (CMU's middle Euler angles stay inside +-90 degrees).
  delta = np.angle(np.exp(1j * (back - real_dofs)))
  np.testing.assert_allclose(delta, 0.0, atol=5e-5)
  # The body-model path sees the same rotations.
  np.testing.assert_allclose(retarget.pose_dofs_to_body_rotmats(back),
                             retarget.pose_dofs_to_body_rotmats(real_dofs), atol=5e-5)


def test_to_dofs_projects_off_manifold_points_and_has_gradients():
  x = np.zeros((72,), np.float32)
  tibia = charts.CHART_BONES.index("ltibia")
  x[3 * tibia:3 * tibia + 3] = [0.8, 0.05, -0.04]  # A knee bend plus jitter off its 1 DOF.
  dofs = np.asarray(jax.jit(charts.to_dofs, static_argnums=0)("axis_angle", x))
  assert abs(dofs[cmu_skeleton.POSE_DOF_NAMES.index("ltibia.rx")] - 0.8) < 0.01
  grad = jax.jit(jax.grad(lambda v: jnp.sum(charts.to_dofs("axis_angle", v) ** 2)))(
      jnp.asarray(x + 0.1))
  assert np.all(np.isfinite(grad))


@pytest.mark.parametrize("mask, mixing", [("alternating", "lu"), ("kinematic", "group_lu")])
def test_axis_angle_prior_on_real_poses(real_dofs, mask, mixing):
  flow = prior_lib.default_flow_config()
  # event_dim follows the chart (72).
  flow.update(chart="axis_angle", num_layers=2, hidden_sizes=(16,), mask=mask, mixing=mixing)
  prior = prior_lib.make_prior(flow)
  assert prior.chart == "axis_angle" and prior.coupling_masks.shape == (2, 72)
  assert prior.event_dim == 72
  x = charts.from_dofs_np("axis_angle", real_dofs)
  params = prior.init(jax.random.key(0), x)
  # Not periodic: the center is the plain mean, no wrapping.
  np.testing.assert_allclose(params["stats"]["center"], x.mean(0), atol=1e-5)
  assert np.all(np.isfinite(jax.jit(prior.log_prob)(params, x)))
  z = jax.jit(prior.pose_to_latent)(params, x)
  np.testing.assert_allclose(jax.jit(prior.latent_to_pose)(params, z), x, atol=1e-4)
  fit_prior = reduced_body.make_pose_prior("flow", flow=prior, flow_params=params)
  assert fit_prior.init.shape == (72,)
  decoded = jax.jit(fit_prior.space.decode)(fit_prior.params, z[0])
  np.testing.assert_allclose(charts.dofs_to_bone_rotmats(decoded),
                             charts.dofs_to_bone_rotmats(real_dofs[0]), atol=1e-3)


def test_wrong_event_dim_for_chart_is_rejected():
  flow = prior_lib.default_flow_config()
  flow.update(chart="axis_angle", event_dim=50)  # Set explicitly: no longer derived.
  with pytest.raises(ValueError, match=r"flow\.event_dim.*72"):
    prior_lib.make_prior(flow)


# --- euler_free: the DOFs CMU holds at 0 are fixed, not modelled ---

def test_euler_free_chart_drops_exactly_the_fixed_dofs(real_dofs):
  assert charts.chart_dim("euler_free") == 46 and charts.is_periodic("euler_free")
  names = [cmu_skeleton.POSE_DOF_NAMES[i] for i in charts.FIXED_COLUMNS]
  assert sorted(names) == sorted(cmu_skeleton.FIXED_POSE_DOFS)
  assert np.abs(real_dofs[:, charts.FIXED_COLUMNS]).max() < 1e-12  # CMU never moves them.
  x = charts.from_dofs("euler_free", real_dofs)
  assert x.shape == (real_dofs.shape[0], 46)
  np.testing.assert_allclose(charts.to_dofs("euler_free", x), real_dofs, atol=1e-6)
  np.testing.assert_array_equal(charts.from_dofs_np("euler_free", real_dofs), np.asarray(x))
  assert len(charts.dim_bones("euler_free")) == 46


def _init_and_nll(chart, dofs):
  import ml_collections  # pylint: disable=g-import-not-at-top
  from flowpose.tasks import prior as prior_task  # pylint: disable=g-import-not-at-top
  config = ml_collections.ConfigDict()
  config.flow = prior_lib.default_flow_config()
  config.flow.update(chart=chart, num_layers=2, hidden_sizes=(16,), coupling="affine")
  config.input_noise = 0.0
  config.loss_weights = ml_collections.ConfigDict({"nll": 1.0, "weight_l2": 0.0})
  params = prior_task.init(config, jax.random.key(0), dofs)
  _, terms = prior_task.loss(params, dofs, jax.random.key(1), config)
  return float(terms["nll"])


def test_constant_dofs_without_jitter(real_dofs):
  """Without jitter the 50-DOF chart puts a near-delta on the 4 constant clavicle DOFs (each
  standardised by the 1e-3 floor: ~+30 nats of spurious density); `euler_free` leaves them out,
  so its NLL is that of the 46 moving DOFs, finite and of the same size per DOF."""
  free = _init_and_nll("euler_free", real_dofs)
  full = _init_and_nll("euler_dofs", real_dofs)
  assert np.isfinite(free) and np.isfinite(full)
  assert full < free - 20.0, (full, free)   # The delta's bonus, absent from euler_free.
  assert abs(free) < 200.0
