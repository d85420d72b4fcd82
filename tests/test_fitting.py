"""Tests for flowpose.fitting (CC0 body, small synthetic cases) and benchmarks/fit_mocap2d's checks.

The known pose lives in a small pose space: 8 DOFs rotating in the body's
frontal plane (shoulder/elbow/hip abduction, spine and neck side bend), seen
by near-frontal cameras. Such rotations move the keypoints mostly within the
image plane, so 17 noiseless keypoints determine them; DOFs that swing limbs
towards the camera have a depth-flip twin with almost the same projection
and, without a prior, no unique answer (not what this test is about).
"""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flowpose import geometry
from flowpose import io_utils
from flowpose import losses
from flowpose import metrics as eval_lib
from flowpose.body import lbs
from flowpose.body import model as body_lib
from flowpose.body.build import assets
from flowpose.evidence import raster
from flowpose.fitting import checks
from flowpose.fitting import fit as fitting
from flowpose.fitting import reduced_body as fitting_body
from flowpose.fitting import stage
from flowpose.fitting import xla_options
from flowpose.geometry import camera
from flowpose.prior import baselines
from flowpose.prior import registry

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
  gt, keypoints, focal, centre = _scene(model, decoder, dofs)
  evidence = fitting.Evidence(keypoints, np.ones(keypoints.shape[:2]), focal,
                              centre)
  config = fitting.default_fit_config()
  config.loss_weights["depth"] = 0.0  # Noiseless: nothing to regularise.
  config.stages[0].update(steps=60, lr=0.02)
  config.stages[1].update(steps=200, lr=0.05,
                          free=("pose", "orient", "transl"))
  result = fitting.fit(config, model, body, prior, evidence)
  return dict(model=model, body=body, prior=prior, evidence=evidence,
              config=config, result=result, gt=gt, dofs=dofs, decoder=decoder)


def _scene(model, decoder, dofs):
  """GT bodies of `dofs [3, 8]` seen by near-frontal cameras: (gt, keypoints, focal, centre)."""
  num = len(dofs)
  yaws = np.array([10.0, -15.0, 170.0])  # The last one shows its back.
  roots = np.stack([fitting_body.facing_camera_rotation(y) for y in yaws])
  transl = np.array([[0.1, -0.2, 3.5], [-0.2, 0.0, 4.0], [0.0, 0.1, 4.5]])
  rotmats = jax.vmap(decoder)(jnp.asarray(dofs), jnp.asarray(roots, jnp.float32))
  gt = jax.vmap(body_lib.forward, (None, 0, 0, 0))(
      model, rotmats, jnp.zeros((num, model.num_betas)), jnp.asarray(transl))
  focal = np.full((num, 2), 1000.0, np.float32)
  centre = np.full((num, 2), 500.0, np.float32)
  keypoints = np.asarray(camera.perspective_project(gt.keypoints, focal, centre))
  return gt, keypoints, focal, centre


def _pa_mpjpe(setup, result, gt):
  joints = jax.vmap(fitting_body.pose_points, (None, 0, 0, 0, 0, None))(
      setup["body"], result.pose_dofs, result.rotmats[:, 0], result.betas,
      result.transl, False).joints
  return np.asarray(eval_lib.pa_mpjpe(joints, gt.joints))


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


# ---------------------------------------------------------------------------
# The prior and the part evidence must change and improve a fit.
# ---------------------------------------------------------------------------


def test_prior_changes_and_improves_the_fit(setup):
  """Noisy, partly occluded keypoints of poses near a Gaussian prior's mean: with the prior's
  weight the fit is better than with the same prior weighted 0 (a fitter that dropped its prior
  term would give equal results)."""
  rng = np.random.default_rng(1)
  mean = rng.uniform(-0.3, 0.3, len(_DOFS))
  dofs = (mean + 0.05 * rng.standard_normal((3, len(_DOFS)))).astype(np.float32)
  gt, keypoints, focal, centre = _scene(setup["model"], setup["decoder"], dofs)
  keypoints = keypoints + rng.normal(0.0, 12.0, keypoints.shape)
  confidence = (rng.uniform(size=keypoints.shape[:2]) > 0.3).astype(np.float32)
  confidence[:, list(fitting_body.TORSO_KEYPOINTS)] = 1.0
  evidence = fitting.Evidence(keypoints.astype(np.float32), confidence, focal, centre)
  gauss = baselines.gaussian_full_from_covariance(mean, 0.05**2 * np.eye(len(_DOFS)))
  prior = registry.make("gaussian", gaussian=gauss)
  errors = {}
  for weight in (0.0, 1.0):
    config = setup["config"].copy_and_resolve_references()
    config.loss_weights["pose_prior"] = weight
    result = fitting.fit(config, setup["model"], setup["body"], prior, evidence)
    errors[weight] = _pa_mpjpe(setup, result, gt)
  assert np.mean(errors[1.0]) < 0.8 * np.mean(errors[0.0]), errors


def test_part_evidence_changes_and_improves_the_fit(setup):
  """Legs without keypoints (knees, ankles occluded): the part map recovers the hip angles that
  the keypoints cannot; with the part weight at 0 the legs stay at the start."""
  dofs = np.zeros((3, len(_DOFS)), np.float32)
  dofs[:, 4], dofs[:, 5] = -0.35, 0.35  # LeftUpLeg, RightUpLeg spread.
  gt, keypoints, focal, centre = _scene(setup["model"], setup["decoder"], dofs)
  confidence = np.ones(keypoints.shape[:2], np.float32)
  confidence[:, 13:] = 0.0  # Knees and ankles.
  model = setup["model"]
  pixels, labels, valid = [], [], []
  for b in range(2):
    cam = raster.PinholeCamera(np.eye(3), np.zeros(3), focal[b] / 2, centre[b] / 2)
    label_map = raster.render(np.asarray(gt.vertices[b]), np.asarray(model.faces), cam,
                              (500, 500), vertex_labels=np.asarray(model.part_labels)).part_labels
    pix, lab, ok = losses.sample_part_pixels(label_map, 384, rng=b)
    pixels.append(2 * pix), labels.append(lab), valid.append(ok)
  evidence = fitting.Evidence(keypoints, confidence, focal, centre, np.stack(pixels),
                              np.stack(labels), np.stack(valid))
  evidence = fitting.Evidence(*[x[:2] for x in evidence])  # The two front views.
  errors = {}
  for weight in (0.0, 1e3):
    config = setup["config"].copy_and_resolve_references()
    config.visibility = "all"  # Frontal-plane poses: every part faces the camera.
    config.restart_yaws_deg = (0.0,)
    config.loss_weights["parts"] = weight
    result = fitting.fit(config, model, setup["body"], setup["prior"], evidence, (1000, 1000))
    errors[weight] = (_pa_mpjpe(setup, result, jax.tree.map(lambda x: x[:2], gt)),
                      np.abs(result.pose_dofs[:, 4:6] - dofs[:2, 4:6]))
  assert np.mean(errors[1e3][0]) < 0.7 * np.mean(errors[0.0][0]), errors
  assert np.mean(errors[1e3][1]) < 0.5 * np.mean(errors[0.0][1]), errors


def test_fitted_part_term_is_the_part_alignment_loss(setup):
  """The fitter's (grouped) part term equals `losses.part_alignment_loss` on the same points.

  The evidence and config are those of the test above (its compiled stages are reused)."""
  dofs = np.zeros((3, len(_DOFS)), np.float32)
  dofs[:, 4], dofs[:, 5] = -0.35, 0.35
  gt, keypoints, focal, centre = _scene(setup["model"], setup["decoder"], dofs)
  confidence = np.ones(keypoints.shape[:2], np.float32)
  confidence[:, 13:] = 0.0
  model, body = setup["model"], setup["body"]
  parts = []
  for b in range(2):
    cam = raster.PinholeCamera(np.eye(3), np.zeros(3), focal[b] / 2, centre[b] / 2)
    label_map = raster.render(np.asarray(gt.vertices[b]), np.asarray(model.faces), cam,
                              (500, 500), vertex_labels=np.asarray(model.part_labels)).part_labels
    pix, lab, ok = losses.sample_part_pixels(label_map, 384, rng=b)
    parts.append((2 * pix, lab, ok))
  evidence = fitting.Evidence(keypoints[:2], confidence[:2], focal[:2], centre[:2],
                              *[np.stack(x) for x in zip(*parts)])
  config = setup["config"].copy_and_resolve_references()
  config.visibility = "all"
  config.restart_yaws_deg = (0.0,)
  result = fitting.fit(config, model, body, setup["prior"], evidence, (1000, 1000))
  points = jax.vmap(fitting_body.pose_points, (None, 0, 0, 0, 0))(
      body, result.pose_dofs, result.rotmats[:, 0], result.betas, result.transl)
  projected = camera.perspective_project(points.vertices, jnp.asarray(result.focal),
                                         jnp.asarray(evidence.principal_point))
  scale = jax.vmap(losses.person_scale_from_keypoints)(
      jnp.asarray(evidence.keypoints), jnp.asarray(evidence.confidence))
  want = [losses.part_alignment_loss(
      projected[b], body.sub_labels, np.ones(len(body.sub_labels), np.float32),
      evidence.part_pixels[b], evidence.part_labels[b], evidence.part_valid[b],
      num_parts=body.num_parts, sigma=config.part_sigma, scale=scale[b])[0] for b in range(2)]
  np.testing.assert_allclose(result.terms["parts"], want, rtol=1e-5)
  assert np.all(np.asarray(want) > 0)


def _keypoints_by_transforms(body, dofs, root, betas, transl):
  """The keypoint basis contracted with the assembled `[J, 3, 4]` transforms (the form
  `reduced_body.pose_points` used before issue 15; the reference for its faster form)."""
  rotmats = body.pose_to_rotmats(dofs, root)
  rest = body.j_template + body.j_shapedirs @ betas
  rot, pos = lbs.forward_kinematics(body.parents, rotmats, rest)
  transforms = lbs.skinning_transforms(rot, pos, rest).at[:, :, 3].add(transl)
  kp_rest = body.kp_rest + body.kp_shapedirs @ betas
  return (jnp.einsum("jab,kjb->ka", transforms[:, :, :3], kp_rest) +
          body.kp_weights @ transforms[:, :, 3])


def test_keypoints_equal_the_full_model_and_the_transform_form_with_gradients(setup):
  model, body = setup["model"], setup["body"]
  rng = np.random.default_rng(3)
  dofs = jnp.asarray(rng.uniform(-0.6, 0.6, (3, len(_DOFS))), jnp.float32)
  roots = jnp.asarray(np.stack([fitting_body.facing_camera_rotation(y) for y in (20, 100, 200)]),
                      jnp.float32)
  betas = jnp.asarray(rng.normal(0, 1, (3, model.num_betas)), jnp.float32)
  transl = jnp.asarray([[0.3, -0.1, 4.0], [0.0, 0.2, 3.0], [-0.4, 0.0, 6.0]], jnp.float32)
  fast = jax.vmap(lambda *a: fitting_body.pose_points(body, *a, with_vertices=False).keypoints)
  slow = jax.vmap(lambda *a: _keypoints_by_transforms(body, *a))
  weights = jnp.asarray(rng.normal(size=(3, 17, 3)), jnp.float32)

  def keypoints_and_grads(fn):  # One compiled program per form: values and gradients.
    loss = lambda *a: (jnp.sum(weights * fn(*a)), fn(*a))
    (_, keypoints), grads = jax.jit(jax.value_and_grad(loss, (0, 1, 2, 3), has_aux=True))(
        dofs, roots, betas, transl)
    return keypoints, grads

  (kp_fast, grads_fast), (kp_slow, grads_slow) = map(keypoints_and_grads, (fast, slow))
  full = jax.vmap(body_lib.forward, (None, 0, 0, 0))(
      model, jax.jit(jax.vmap(setup["decoder"]))(dofs, roots), betas, transl).keypoints
  # rtol 3e-5: the full model's fused CPU kernel rounds differently from XLA (session 19's
  # AMD EPYC machine: 1.4e-5 relative at 6 m depth).
  np.testing.assert_allclose(kp_fast, full, rtol=3e-5, atol=1e-5)
  np.testing.assert_allclose(kp_fast, kp_slow, rtol=1e-5, atol=1e-5)
  for got, want in zip(grads_fast, grads_slow):
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * float(jnp.max(jnp.abs(want))))


def test_subset_vertices_dense_skinning_equal_the_full_model_with_gradients(setup):
  """`make_fit_body`'s subset: in part-group order (`sub_grouped`, the part term's reshape);
  `pose_points` = the full model's vertices; the dense `[Vs, J]` skinning = the sparse
  `lbs.skin`, values and gradients."""
  model, body = setup["model"], setup["body"]
  assert body.sub_grouped and body.sub_dense_weights is not None
  np.testing.assert_array_equal(np.asarray(body.sub_groups).ravel(),
                                np.arange(len(body.sub_index)))
  labels = np.asarray(model.part_labels)[np.asarray(body.sub_index)]
  np.testing.assert_array_equal(labels, np.asarray(body.sub_labels))
  assert np.all(np.diff(labels) >= 0)
  rng = np.random.default_rng(4)
  dofs = jnp.asarray(rng.uniform(-0.6, 0.6, len(_DOFS)), jnp.float32)
  root = jnp.asarray(fitting_body.facing_camera_rotation(30), jnp.float32)
  betas = jnp.asarray(rng.normal(0, 1, model.num_betas), jnp.float32)
  transl = jnp.asarray([0.3, -0.1, 4.0], jnp.float32)
  verts = jax.jit(lambda *a: fitting_body.pose_points(body, *a).vertices)(dofs, root, betas,
                                                                          transl)
  full = body_lib.forward(model, setup["decoder"](dofs, root), betas, transl).vertices
  np.testing.assert_allclose(verts, full[np.asarray(body.sub_index)], rtol=1e-5, atol=1e-5)
  rest = jnp.asarray(rng.normal(size=(len(body.sub_index), 3)), jnp.float32)
  transforms = jnp.asarray(rng.normal(size=(model.num_joints, 3, 4)), jnp.float32)
  weights = jnp.asarray(rng.normal(size=rest.shape), jnp.float32)

  def value_and_grads(b):
    loss = lambda v, t: jnp.sum(weights * fitting_body.skin_subset(b, v, t))
    return jax.jit(jax.value_and_grad(loss, (0, 1)))(rest, transforms)

  (dense, g_dense), (sparse, g_sparse) = map(
      value_and_grads, (body, body.replace(sub_dense_weights=None)))
  np.testing.assert_allclose(dense, sparse, rtol=1e-5)
  for got, want in zip(g_dense, g_sparse):
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * float(jnp.max(jnp.abs(want))))


def test_fit_programs_compile_without_ynn_fusions_on_cpu():
  # The fitter's stage runs without XLA:CPU's YNNPACK fusions (xla_options); same values.
  assert xla_options.cpu_small_op_options() == {xla_options.YNN_OPTION: ""}

  def fn(a, w):  # A 3x3 product (as FK does) and a small dense layer, with gradients.
    return jnp.sum(lbs.matmul33(a, a) ** 2) + jnp.sum(jnp.tanh(a.reshape(-1, 9) @ w))

  grad = jax.grad(fn, (0, 1))
  rng = np.random.default_rng(0)
  a = jnp.asarray(rng.normal(size=(256, 3, 3)), jnp.float32)
  w = jnp.asarray(rng.normal(size=(9, 64)), jnp.float32)
  fusions = lambda **kw: jax.jit(grad, **kw).lower(a, w).compile().as_text().count("__ynn_fusion")
  assert fusions() > 0  # XLA's default here: the option has something to turn off.
  assert fusions(compiler_options=xla_options.cpu_small_op_options()) == 0
  for got, want in zip(xla_options.jit(grad)(a, w), jax.jit(grad)(a, w)):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)


# ---------------------------------------------------------------------------
# Optax schedule and freezing; input checks and clamp reports.
# ---------------------------------------------------------------------------


def test_stage_schedule_is_the_cosine_decay_of_the_stage():
  schedule = stage.stage_schedule(0.05, 60, 0.05)
  for i in (0, 1, 30, 59):
    expected = 0.05 * (0.05 + 0.95 * 0.5 * (1 + np.cos(np.pi * i / 59)))
    np.testing.assert_allclose(schedule(i), expected, rtol=1e-5)
  warm = stage.stage_schedule(1.0, 11, 0.0, warmup_fraction=0.2)
  np.testing.assert_allclose([warm(0), warm(1), warm(2)], [0.0, 0.5, 1.0], atol=1e-6)


def test_frozen_variables_do_not_move():
  variables = {"pose": jnp.ones((2, 3)), "transl": jnp.ones((2, 3))}
  opt = stage.adam_optimizer(variables, ("transl",), lambda count: 0.1)
  state = opt.init(variables)
  grads = jax.tree.map(jnp.ones_like, variables)
  updates, _ = opt.update(grads, state, variables)
  np.testing.assert_array_equal(updates["pose"], 0.0)
  assert np.all(np.asarray(updates["transl"]) < 0)


@pytest.mark.parametrize("keypoints, confidence, size, message", [
    (np.full((1, 17, 2), 300.0), np.ones((1, 17)), None, "within"),
    (np.random.default_rng(0).uniform(0, 400, (1, 17, 2)), np.eye(17)[:1], None,
     "1 labelled"),
    (np.random.default_rng(0).uniform(2000, 2400, (1, 17, 2)), np.ones((1, 17)), (480, 640),
     "outside"),
    (np.random.default_rng(0).uniform(0, 64000, (1, 17, 2)), np.ones((1, 17)), (480, 640),
     "larger side"),
])
def test_meaningless_evidence_raises_before_fitting(keypoints, confidence, size, message):
  """Issue 10 (7): `fit` refuses evidence that cannot determine a body (model/body unused)."""
  evidence = fitting.Evidence(keypoints, confidence, np.full((1, 2), 1000.0),
                              np.full((1, 2), 300.0))
  with pytest.raises(fitting.FitInputError, match=f"person 0.*{message}"):
    fitting.fit(fitting.default_fit_config(), None, None, None, evidence, size)


def test_depth_clamp_is_reported(setup):
  """Issue 10 (7): a person far smaller than a human at 100 m: the initial depth clamp binds and
  the result says so (it would silently distort the body before)."""
  ev = setup["evidence"]
  tiny = np.array(ev.keypoints, copy=True)
  tiny[0] = ev.principal_point[0] + (tiny[0] - ev.principal_point[0]) / 60.0
  evidence = ev._replace(keypoints=tiny)
  result = fitting.fit(setup["config"], setup["model"], setup["body"], setup["prior"], evidence)
  assert any("depth estimate was clamped into 0.5-100 m" in w for w in result.warnings[0]), (
      result.warnings)
  assert not result.warnings[1] and not result.warnings[2]
  _, clamped = fitting_body.initial_translation(
      tiny, np.ones(tiny.shape[:2]), np.asarray(ev.focal), np.asarray(ev.principal_point),
      np.asarray(setup["gt"].keypoints[1]), np.zeros(3), np.stack([np.eye(3)] * 3))
  np.testing.assert_array_equal(clamped, [True, False, False])


def test_points_behind_the_camera_are_reported():
  kp = np.zeros((1, 17, 3))
  kp[0, :, 2] = 3.0
  kp[0, 3, 2] = -0.5
  warnings = checks.result_warnings(np.array([False]), np.array([3.0]), kp,
                                    np.array([[0.0, 0.0, 3.0]]), (0.5, 100.0))
  assert len(warnings[0]) == 1 and "1 fitted keypoint" in warnings[0][0]


# ---------------------------------------------------------------------------
# benchmarks/fit_mocap2d: everything checked before fitting (issue 10 (3), (5)).
# ---------------------------------------------------------------------------


@pytest.fixture
def bench(monkeypatch):
  from benchmarks import fit_mocap2d  # pylint: disable=g-import-not-at-top
  from experiments import fit_mocap2d as bench_config  # pylint: disable=g-import-not-at-top

  def no_work(*args, **kwargs):
    raise AssertionError("the benchmark started work before checking its inputs")

  monkeypatch.setattr(fit_mocap2d.assets, "load_cc0_model", no_work)
  monkeypatch.setattr(fit_mocap2d, "load_dofs", no_work)
  config = bench_config.get_config("runlocal")
  config.priors = ("none",)
  return fit_mocap2d, config


def test_benchmark_checks_out_before_fitting(bench, tmp_path, cmu_dir):
  module, config = bench
  (tmp_path / "a_file").write_text("x")
  for out in ("", str(tmp_path / "a_file" / "fit.json"), str(tmp_path)):
    with pytest.raises(io_utils.OutputPathError, match="--out"):
      module.run(config, out=out, prior_workdir=None, mocap_dir=cmu_dir)


def test_benchmark_refuses_zero_frames(bench, tmp_path, cmu_dir):
  module, config = bench
  with pytest.raises(module.BenchmarkInputError, match="num_frames"):
    module.run(config, out=str(tmp_path / "f.json"), prior_workdir=None, mocap_dir=cmu_dir,
               num_frames=0)


@pytest.mark.parametrize("priors, workdir", [(("none", "flow"), "missing"),
                                             (("gmm8",), "empty"), (("flow",), None),
                                             (("vae",), "empty")])
def test_benchmark_named_prior_must_load(bench, tmp_path, cmu_dir, priors, workdir):
  module, config = bench
  config.priors = priors
  (tmp_path / "empty").mkdir()
  with pytest.raises(module.BenchmarkInputError, match="prior"):
    module.run(config, out=str(tmp_path / "f.json"),
               prior_workdir=workdir and str(tmp_path / workdir), mocap_dir=cmu_dir)


def test_benchmark_evaluates_a_folder_as_given(bench, tmp_path, cmu_dir):
  """A folder without test-split subjects is not silently replaced by its training clips."""
  module, _ = bench
  train_clip = next(p for p in sorted(cmu_dir.glob("*.amc*")) if int(p.name[:2]) % 10 not in (3, 9))
  os.symlink(train_clip, tmp_path / train_clip.name)
  assert [p.name for p in module.clip_paths(tmp_path, "all")] == [train_clip.name]
  with pytest.raises(module.BenchmarkInputError, match="no clip of the 'test' split"):
    module.clip_paths(tmp_path, "test")
  assert all(int(p.name[:2]) % 10 == 9 for p in module.clip_paths(cmu_dir, "test"))
