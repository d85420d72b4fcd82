"""Test-time flip averaging (`regressor_body.mean_with_mirror_image`,
`predict_batch(flip_average=True)`)."""

import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
# pylint: disable=g-import-not-at-top,wrong-import-position
from test_regressor import _batch
from test_regressor import _real_evidence_module_back_afterwards  # Autouse: the stand-in goes.
from test_regressor import make_tiny_prior
from test_regressor import runlocal_config

from flowpose import geometry
from flowpose.data import cmu_skeleton
from flowpose.models import regressor_body
from flowpose.prior import charts

pytestmark = pytest.mark.usefixtures("fast_compile")
F = np.diag([-1.0, 1.0, 1.0]).astype(np.float32)


@pytest.fixture(scope="module")
def config(tmp_path_factory):
  return runlocal_config(make_tiny_prior(tmp_path_factory.mktemp("prior")))


def _mirror_image(out):
  """What the prediction for the mirrored evidence is when the network is exactly equivariant."""
  return dict(out, dofs=jnp.asarray(cmu_skeleton.mirror_dofs(np.asarray(out["dofs"]))),
              root_rotmat=F @ out["root_rotmat"] @ F, root=out["root"] * F.diagonal())


def test_a_prediction_averaged_with_its_own_mirror_image_is_unchanged(config):
  from flowpose.tasks import regressor as task  # pylint: disable=g-import-not-at-top
  ctx = task.context(config)
  theta = ctx.theta_init + 0.3 * jax.random.normal(jax.random.key(1), (4, ctx.layout.dim))
  out = regressor_body.decode(ctx, theta, jnp.full((4,), 120.0))
  mean = regressor_body.mean_with_mirror_image(ctx, out, _mirror_image(out))
  for key in ("dofs", "root_rotmat", "root", "betas", "transl", "rotmats"):
    np.testing.assert_allclose(mean[key], out[key], atol=2e-4, err_msg=key)
  # The pose variable comes back through the flow's inverse: the same latent.
  np.testing.assert_allclose(mean["pose"], out["pose"], atol=2e-3)
  # Two different predictions: the mean lies between them (DOFs, root joint, betas).
  other = dict(_mirror_image(out), dofs=_mirror_image(out)["dofs"] + 0.1,
               betas=out["betas"] + 1.0)
  mean = regressor_body.mean_with_mirror_image(ctx, out, other)
  shift = 0.5 * cmu_skeleton.mirror_dofs(np.full(50, 0.1, np.float32))  # +-0.05 (ry, rz flip).
  free = charts.FREE_COLUMNS
  np.testing.assert_allclose(np.asarray(mean["dofs"])[:, free],
                             (np.asarray(out["dofs"]) + shift)[:, free], atol=2e-4)
  np.testing.assert_allclose(mean["betas"], out["betas"] + 0.5, atol=1e-5)
  # Views 180 degrees apart (a front / back doubt) are averaged too: the midpoint's angle to
  # each is 90 degrees.
  half_turn = geometry.rotation_about_axis(jnp.pi, "Y")
  doubt = dict(_mirror_image(out), root_rotmat=_mirror_image(out)["root_rotmat"] @ half_turn)
  mean = regressor_body.mean_with_mirror_image(ctx, out, doubt)
  np.testing.assert_allclose(geometry.geodesic_angle(mean["root_rotmat"], out["root_rotmat"]),
                             np.pi / 2, atol=1e-3)


def test_flip_averaged_prediction_is_exactly_left_right_equivariant(config):
  from flowpose.tasks import regressor as task  # pylint: disable=g-import-not-at-top
  batch = _batch(config)
  params = task.init(config, jax.random.key(0), jax.tree.map(np.asarray, batch))
  predict = jax.jit(lambda p, b, f: task.predict_batch(p, b, config, flip_average=f),
                    static_argnums=2)
  mirrored = {**batch, **regressor_body.flip_evidence(batch, config.data.resolution)}
  plain, plain_mirrored = predict(params, batch, False), predict(params, mirrored, False)
  # The untrained network is not equivariant ...
  gap = lambda a, b: float(jnp.max(jnp.abs(a - regressor_body.mirror_keypoints3d(b))))
  assert gap(plain["keypoints3d"], plain_mirrored["keypoints3d"]) > 1e-3
  # ... its flip average is: the mirrored evidence gives the mirror image of the prediction.
  avg, avg_mirrored = predict(params, batch, True), predict(params, mirrored, True)
  image = _mirror_image(avg_mirrored)
  for key in ("dofs", "root_rotmat", "root", "betas"):
    np.testing.assert_allclose(avg[key], image[key], atol=1e-5, err_msg=key)
  # The posed points too, up to the CC0 mesh's own left-right asymmetry (~1 mm).
  assert gap(avg["keypoints3d"], avg_mirrored["keypoints3d"]) < 2e-3
  for key in ("keypoints2d", "vertices", "visibility", "rotmats"):
    assert avg[key].shape == plain[key].shape, key


def test_network_reads_are_the_plain_read_and_the_mirrored_read_mapped_back(config):
  """`network_reads` (the refinement's two network starts): the first is the plain prediction,
  the second the prediction for the mirrored evidence mapped back; so the reads of the mirrored
  evidence are the mirror images of the reads of the evidence, exchanged."""
  from flowpose.tasks import regressor as task  # pylint: disable=g-import-not-at-top
  batch = _batch(config)
  params = task.init(config, jax.random.key(0), jax.tree.map(np.asarray, batch))
  ctx = task.context(config)
  reads = jax.jit(lambda p, b: regressor_body.network_reads(ctx, p, b))
  mirrored = {**batch, **regressor_body.flip_evidence(batch, config.data.resolution)}
  named, named_m = reads(params, batch), reads(params, mirrored)
  assert sorted(named) == sorted(regressor_body.NETWORK_READS)
  plain, back = named["read"], named["mirrored"]
  plain_m, back_m = named_m["read"], named_m["mirrored"]
  single = regressor_body.network_decode(ctx, params, batch)
  for key in ("dofs", "root_rotmat", "root", "betas", "pose", "transl"):
    np.testing.assert_allclose(plain[key], single[key], atol=1e-5, err_msg=key)
  for first, second in ((back_m, plain), (back, plain_m)):
    image = _mirror_image(second)
    for key in ("root_rotmat", "root", "betas"):
      np.testing.assert_allclose(first[key], image[key], atol=1e-4, err_msg=key)
    np.testing.assert_allclose(np.asarray(first["dofs"])[:, charts.FREE_COLUMNS],
                               np.asarray(image["dofs"])[:, charts.FREE_COLUMNS], atol=1e-4)
  # The reads differ (the untrained network is not equivariant); their mean is the flip average.
  assert float(jnp.max(jnp.abs(plain["root"] - back["root"]))) > 1e-4
  avg = regressor_body.network_decode(ctx, params, batch, flip_average=True)
  for key in ("dofs", "root_rotmat", "root", "betas", "pose"):
    np.testing.assert_allclose(named["mean"][key], avg[key], atol=1e-5, err_msg=key)
  np.testing.assert_allclose(avg["betas"], 0.5 * (plain["betas"] + back["betas"]), atol=1e-5)
  np.testing.assert_allclose(avg["root"], 0.5 * (plain["root"] + back["root"]), atol=1e-5)


def test_network_starts_are_the_named_reads_of_every_frame(config):
  """`network_refine.network_starts` (the benchmark's refinement starts): the flip average and
  the two reads, for every frame (batches padded), in the order named; bad names refused."""
  from flowpose.fitting import network_refine  # pylint: disable=g-import-not-at-top
  from flowpose.tasks import regressor as task  # pylint: disable=g-import-not-at-top
  batch = jax.tree.map(np.asarray, _batch(config))
  params = task.init(config, jax.random.key(0), batch)
  ctx = task.context(config)
  num = len(batch["focal"])
  starts = network_refine.network_starts(ctx, params, batch, batch_size=num - 1,
                                         starts=("read", "mean", "mirrored"))
  named = regressor_body.network_reads(ctx, params, batch)
  for got, want in zip(starts, (named["read"], named["mean"], named["mirrored"])):
    assert sorted(got) == sorted(network_refine.NETWORK_VARIABLES)
    for key in network_refine.NETWORK_VARIABLES:
      np.testing.assert_allclose(got[key], want[key], atol=1e-4, err_msg=key)
  with pytest.raises(ValueError, match="network starts"):
    network_refine.network_starts(ctx, params, batch, num, starts=("mean", "best"))
