"""Tests for flowpose/fitting.py (CC0 body, small synthetic cases).

The known pose lives in a small pose space: 8 DOFs rotating in the body's
frontal plane (shoulder/elbow/hip abduction, spine and neck side bend), seen
by near-frontal cameras. Such rotations move the keypoints mostly within the
image plane, so 17 noiseless keypoints determine them; DOFs that swing limbs
towards the camera have a depth-flip twin with almost the same projection
and, without a prior, no unique answer (not what this test is about).
"""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from flowpose import metrics as eval_lib
from flowpose.fitting import fit as fitting
from flowpose.fitting import reduced_body as fitting_body
from flowpose import geometry
from flowpose.geometry import camera
from flowpose.body.build import assets
from flowpose.body import model as body_lib

_DOFS = (("LeftArm", "Z"), ("RightArm", "Z"), ("LeftForeArm", "Z"),
         ("RightForeArm", "Z"), ("LeftUpLeg", "Z"), ("RightUpLeg", "Z"),
         ("Spine", "Z"), ("Neck", "Z"))


pytestmark = pytest.mark.usefixtures("fast_compile")  # conftest: XLA optimisations off


@pytest.fixture(scope="module")
def setup(fast_compile):  # pylint: disable=unused-argument
  model = assets.load_cc0_model()
  index = np.array([model.joint_names.index(n) for n, _ in _DOFS])
  num_joints = model.num_joints

  def decoder(dofs, root):
    rots = jnp.stack([geometry.rotation_about_axis(dofs[i], axis)
                      for i, (_, axis) in enumerate(_DOFS)])
    out = jnp.broadcast_to(jnp.eye(3), (num_joints, 3, 3)).at[index].set(rots)
    return out.at[0].set(root)

  body = fitting_body.make_fit_body(model, decoder, vertices_per_part=4)
  prior = fitting_body.make_pose_prior("none", dim=len(_DOFS))
  rng = np.random.default_rng(0)
  num = 3
  dofs = rng.uniform(-0.4, 0.4, (num, len(_DOFS))).astype(np.float32)
  yaws = np.array([10.0, -15.0, 170.0])  # The last one shows its back.
  roots = np.stack([fitting_body.facing_camera_rotation(y) for y in yaws])
  transl = np.array([[0.1, -0.2, 3.5], [-0.2, 0.0, 4.0], [0.0, 0.1, 4.5]])
  rotmats = jax.vmap(decoder)(jnp.asarray(dofs), jnp.asarray(roots, jnp.float32))
  gt = jax.vmap(body_lib.forward, (None, 0, 0, 0))(
      model, rotmats, jnp.zeros((num, model.num_betas)), jnp.asarray(transl))
  focal = np.full((num, 2), 1000.0, np.float32)
  centre = np.full((num, 2), 500.0, np.float32)
  keypoints = np.asarray(camera.perspective_project(gt.keypoints, focal, centre))
  evidence = fitting.Evidence(keypoints, np.ones(keypoints.shape[:2]), focal,
                              centre)
  config = fitting.default_fit_config()
  config.loss_weights["depth"] = 0.0  # Noiseless: nothing to regularise.
  config.stages[0].update(steps=60, lr=0.02)
  config.stages[1].update(steps=200, lr=0.05,
                          free=("pose", "orient", "transl"))
  result = fitting.fit(config, model, body, prior, evidence)
  return dict(model=model, body=body, prior=prior, evidence=evidence,
              config=config, result=result, gt=gt, dofs=dofs)


def test_recovers_known_pose(setup):
  result = setup["result"]
  joints = jax.vmap(fitting_body.pose_points, (None, 0, 0, 0, 0, None))(
      setup["body"], result.pose_dofs, result.rotmats[:, 0], result.betas,
      result.transl, False).joints
  pa = np.asarray(eval_lib.pa_mpjpe(joints, setup["gt"].joints))
  mpjpe = np.asarray(eval_lib.mpjpe(joints, setup["gt"].joints))
  assert np.all(pa < 5.0), pa  # mm
  assert np.all(mpjpe < 10.0), mpjpe
  np.testing.assert_allclose(setup["result"].pose_dofs, setup["dofs"],
                             atol=0.05)


def test_restarts_keep_the_best(setup):
  result = setup["result"]
  assert result.restart_losses.shape == (3, 2)
  np.testing.assert_array_equal(result.restart,
                                np.argmin(result.restart_losses, axis=1))
  np.testing.assert_allclose(result.loss, result.restart_losses.min(1),
                             rtol=1e-5)
  # Facing the camera -> restart 0 (yaw 0); back to it -> restart 1 (180).
  np.testing.assert_array_equal(result.restart, [0, 0, 1])


def test_batched_matches_single(setup):
  # Person 1 fitted in a batch of copies of itself (same shapes as the main
  # fit, so no recompilation) must match its result inside the mixed batch:
  # persons do not interact through the optimiser.
  ev = setup["evidence"]
  copies = fitting.Evidence(*[np.repeat(x[1:2], 3, axis=0) for x in ev[:4]])
  alone = fitting.fit(setup["config"], setup["model"], setup["body"],
                      setup["prior"], copies)
  for i in range(3):
    np.testing.assert_allclose(alone.pose_dofs[i],
                               setup["result"].pose_dofs[1], atol=1e-4)
    np.testing.assert_allclose(alone.transl[i], setup["result"].transl[1],
                               atol=1e-4)
    np.testing.assert_allclose(alone.loss[i], setup["result"].loss[1],
                               rtol=1e-3)


def _config_with(**changes):
  config = fitting.default_fit_config()
  for path, value in changes.items():
    if path.startswith("stage_"):
      config.stages[0][path[len("stage_"):]] = value
    else:
      setattr(config, path, value)
  return config


@pytest.mark.parametrize("changes, field", [
    (dict(stage_steps=0), "stages[0].steps"),
    (dict(stage_lr=-1.0), "stages[0].lr"),
    (dict(stage_free=("pose", "elbows")), "stages[0].free"),
    (dict(stage_keypoints="legs"), "stages[0].keypoints"),
    (dict(stage_optimizer="sgd"), "stages[0].optimizer"),
    (dict(stage_loss_weights={"keypoint": 1.0}), "stages[0].loss_weights"),
    (dict(select_restart_after=5), "select_restart_after"),
    (dict(visibility="rays"), "visibility"),
    (dict(restart_yaws_deg=()), "restart_yaws_deg"),
])
def test_stage_config_validated(changes, field):
  with pytest.raises(fitting.FitInputError, match=field.replace("[", r"\[")):
    fitting.validate_fit_config(_config_with(**changes))


def test_loss_weights_must_name_every_term():
  config = fitting.default_fit_config()
  del config.loss_weights["depth"]
  with pytest.raises(fitting.FitInputError, match="loss_weights"):
    fitting.validate_fit_config(config)
  config = fitting.default_fit_config()
  config.stages = [dict(config.stages[0], extra=1)]
  with pytest.raises(fitting.FitInputError, match=r"stages\[0\]"):
    fitting.validate_fit_config(config)
  assert isinstance(ml_collections.ConfigDict(), ml_collections.ConfigDict)
