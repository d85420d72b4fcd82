"""Temporal fitting (`flowpose.fitting.sequence`): missing frames, windows without evidence."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flowpose import metrics
from flowpose.body.build import assets
from flowpose.fitting import photo
from flowpose.fitting import reduced_body
from flowpose.fitting import sequence
from flowpose.fitting import sequence_loss
from flowpose.fitting.config import FitInputError  # pylint: disable=g-importing-member
from flowpose.geometry import camera
from flowpose.models import dynamics_io
from flowpose.prior import registry
from tests import video_fixtures

pytestmark = pytest.mark.usefixtures("fast_compile")
FRAMES = 10


@pytest.fixture(scope="module")
def setup(shared_data, tmp_path_factory):
  tmp = tmp_path_factory.mktemp("sequence")
  w = video_fixtures.windows(shared_data, tmp, window=FRAMES, stride=FRAMES)
  prior_dir = video_fixtures.tiny_prior(tmp / "prior", w.dofs)
  dyn_dir = video_fixtures.tiny_dynamics(tmp / "dyn", prior_dir, w.dofs)
  model = assets.load_cc0_model()
  body = reduced_body.make_fit_body(model, photo.body_rotmats_fn)
  prior = registry.load("flow", prior_dir)
  dyn, dyn_params, _ = dynamics_io.load_dynamics(dyn_dir, prior_dir)
  # Ground truth: two windows of the clip, upright and facing the camera 4 m away.
  dofs = jnp.asarray(w.dofs[:2])
  root = jnp.asarray(reduced_body.facing_camera_rotation(0.0), jnp.float32)
  transl = jnp.stack([jnp.linspace(-0.3, 0.3, FRAMES), jnp.zeros(FRAMES),
                      jnp.full(FRAMES, 4.0)], 1)
  points = jax.vmap(jax.vmap(lambda d, t: reduced_body.pose_points(
      body, d, root, jnp.zeros(body.j_shapedirs.shape[-1]), t, False), (0, 0)), (0, None))(
          dofs, transl)
  focal = np.full((2, 2), 500.0, np.float32)
  centre = np.full((2, 2), 250.0, np.float32)
  kp = np.asarray(camera.perspective_project(points.keypoints, focal[:, None],
                                             centre[:, None]))
  return dict(body=body, prior=prior, dyn=dyn, dyn_params=dyn_params, kp=kp,
              joints=np.asarray(points.joints), focal=focal, centre=centre)


def _config(steps=60):
  config = sequence.default_sequence_config()
  config.restart_yaws_deg = (0.0,)
  config.stages[0]["steps"], config.stages[1]["steps"] = 20, steps
  return config


def test_missing_frame_is_carried_by_its_neighbours(setup):
  kp = setup["kp"].copy()
  conf = np.ones(kp.shape[:3], np.float32)
  # Frame 4 missing as a detector reports it: confidence 0 over stale keypoints far away
  # (25 px: inside the robust loss's quadratic zone, so a fit that read them would follow);
  # frame 7: NaN keypoints.
  kp[:, 4] += 25.0
  conf[:, 4] = 0.0
  kp[:, 7] = np.nan
  evidence = sequence.SequenceEvidence(kp, conf, setup["focal"], setup["centre"])
  result = sequence.fit_sequence(_config(), setup["body"], setup["prior"], evidence,
                                 setup["dyn"], setup["dyn_params"])
  assert result.joints.shape == setup["joints"].shape
  assert all(np.all(np.isfinite(x)) for x in (result.joints, result.loss, result.betas))
  # The missing frame's body sits between its neighbours (not at the init, not at NaN).
  root = result.joints[:, :, 0]
  np.testing.assert_allclose(root[:, 4], (root[:, 3] + root[:, 5]) / 2, atol=0.05)
  error = np.asarray(metrics.mpjpe(result.joints[:, [4, 7]], setup["joints"][:, [4, 7]], None))
  assert np.all(error < 150.0), error  # mm, camera frame (depth from 2D included).
  # The model's keypoints at the missing frames land near the truth they never saw.
  fitted = result.keypoints_2d[:, [3, 4, 5, 7]]
  per_frame = np.median(np.linalg.norm(fitted - setup["kp"][:, [3, 4, 5, 7]], axis=-1), -1)
  assert np.all(per_frame < 8.0), per_frame  # px, [window, frame] medians.


def test_a_window_without_evidence_is_refused(setup):
  kp = setup["kp"].copy()
  conf = np.ones(kp.shape[:3], np.float32)
  conf[1] = 0.0
  evidence = sequence.SequenceEvidence(kp, conf, setup["focal"], setup["centre"])
  with pytest.raises(FitInputError, match=r"window\(s\) \[1\] have no frame"):
    sequence.fit_sequence(_config(), setup["body"], setup["prior"], evidence)
  with pytest.raises(FitInputError, match="T = 2 frames"):
    sequence.fit_sequence(_config(), setup["body"], setup["prior"],
                          evidence._replace(keypoints=kp[:, :2], confidence=conf[:, :2]))
  bad = _config()
  bad.loss_weights = dict(keypoints=1.0)
  with pytest.raises(FitInputError, match="loss_weights"):
    sequence.fit_sequence(bad, setup["body"], setup["prior"], evidence)
  conf[1] = 1.0
  dim = setup["prior"].space.dim
  start = {"pose": np.zeros((2, FRAMES, dim)), "betas": np.zeros((2, 3)),
           "orient": np.zeros((2, FRAMES, 6)), "transl": np.zeros((2, FRAMES, 3))}
  with pytest.raises(FitInputError, match=r"initial\[0\].betas: expected finite"):
    sequence.fit_sequence(_config(), setup["body"], setup["prior"], evidence, initial=[start])
  bad = _config()
  bad.pose_prior_frames = "gaps"
  with pytest.raises(FitInputError, match="pose_prior_frames"):
    sequence.fit_sequence(bad, setup["body"], setup["prior"], evidence)


def test_chart_dynamics_and_gap_terms_are_what_they_say(setup):
  from flowpose.models import chart_residual  # pylint: disable=g-import-not-at-top
  prior, body = setup["prior"], setup["body"]
  rng = np.random.default_rng(0)
  z = jnp.asarray(0.5 * rng.standard_normal((FRAMES, prior.space.dim)), jnp.float32)
  variables = {"pose": z, "betas": jnp.zeros(body.j_shapedirs.shape[-1]),
               "orient": jnp.tile(jnp.asarray([1.0, 0, 0, 0, 1, 0]), (FRAMES, 1)),
               "transl": jnp.tile(jnp.asarray([0.0, 0, 4]), (FRAMES, 1))}
  dofs, penalty = (np.asarray(x) for x in jax.jit(lambda z: (
      jax.vmap(prior.space.decode, (None, 0))(prior.params, z),
      jax.vmap(prior.space.penalty, (None, 0))(prior.params, z)))(z))
  residual = chart_residual.fit("euler_free", np.asarray(_jittered_windows(dofs)))
  valid = np.arange(FRAMES) % 3 != 0
  valid[-2:] = False  # Inner gaps 3, 6; open gaps: leading 0, trailing 8, 9.
  has = jnp.asarray(valid, jnp.float32)
  open_gap = sequence.open_gap_frames(valid)
  np.testing.assert_array_equal(np.flatnonzero(open_gap), [0, 8, 9])
  aux = {"keypoints": jnp.asarray(setup["kp"][0]),
         "confidence": jnp.ones(setup["kp"].shape[1:3]), "focal": jnp.asarray(setup["focal"][0]),
         "principal_point": jnp.asarray(setup["centre"][0]),
         "keypoint_mask": jnp.ones(setup["kp"].shape[2]), "frame_valid": has,
         "prior_frames": has, "depth_init": jnp.full(FRAMES, 4.0),
         "open_gap": jnp.asarray(open_gap, jnp.float32),
         **dict(zip(("chord_index", "chord_weight"), sequence_loss.chord_ends(valid)))}
  weights = {k: jnp.float32(1.0) for k in sequence.LOSS_TERMS}
  dyn, dyn_params = setup["dyn"], setup["dyn_params"]
  # One compile (cheaper than the eager, vmapped flow decode).
  terms, joints, log_p = jax.jit(lambda v, a, w: (
      sequence.window_loss(v, a, w, body, prior.space, prior.params, dyn, dyn_params, 0.3,
                           residual)[1],
      sequence_loss.decode_window(body, prior.space, prior.params, v)[2].joints,
      (dyn.log_prob(dyn_params, v["pose"]), dyn.log_prob(dyn_params, v["pose"][::-1]))))(
          variables, aux, weights)
  expected = np.mean(chart_residual.neg2_log_prob(residual, dofs))
  np.testing.assert_allclose(terms["chart_dynamics"], expected, rtol=1e-4)
  np.testing.assert_allclose(terms["pose_prior"], penalty[valid].mean(), rtol=1e-5)
  # Gap terms: the static prior and the 3D acceleration over the frames without evidence
  # only; the backward dynamics is the model on the reversed window (not the forward cost).
  np.testing.assert_allclose(terms["gap_prior"], penalty[~valid].mean(), rtol=1e-5)
  step = np.square(np.diff(np.asarray(z), axis=0)).sum(-1)
  np.testing.assert_allclose(terms["gap_velocity"], step[~valid[1:]].mean(), rtol=1e-5)
  # The hold: only the steps out of the leading gap (0, 1) and into and inside the trailing one
  # (7, 8), (8, 9).
  np.testing.assert_allclose(terms["open_gap_velocity"], step[[0, 7, 8]].mean(), rtol=1e-5)
  np.testing.assert_allclose(terms["open_gap_prior"], penalty[[0, 8, 9]].mean(), rtol=1e-5)
  joints = np.asarray(joints, np.float64)
  accel = np.square(joints[2:] - 2 * joints[1:-1] + joints[:-2]).sum(-1).mean(-1)
  np.testing.assert_allclose(terms["gap_smooth"], accel[~valid[1:-1]].mean(), rtol=1e-4)
  np.testing.assert_allclose(terms["joint_smooth"], accel.mean(), rtol=1e-4)
  # The chord: inner gaps only (3 between 2 and 4, 6 between 5 and 7), open ones left out.
  line = {3: (joints[2] + joints[4]) / 2, 6: (joints[5] + joints[7]) / 2}
  chord = [np.square(joints[t] - x).sum(-1).mean() for t, x in line.items()]
  np.testing.assert_allclose(terms["gap_chord"], np.mean(chord), rtol=1e-4)
  np.testing.assert_allclose(terms["dynamics"], -2 * np.mean(log_p[0]), rtol=1e-5)
  np.testing.assert_allclose(terms["dynamics_backward"], -2 * np.mean(log_p[1]), rtol=1e-5)
  assert abs(float(terms["dynamics_backward"] - terms["dynamics"])) > 1e-3


def test_open_gaps_are_the_gaps_touching_a_window_end():
  valid = np.array([[0, 0, 1, 0, 1, 1, 0, 0],   # Leading and trailing gaps; one inner frame.
                    [1, 0, 0, 1, 1, 1, 1, 1],   # Inner gap only: nothing open.
                    [0, 0, 0, 0, 0, 0, 0, 1]], bool)
  np.testing.assert_array_equal(sequence.open_gap_frames(valid), [
      [1, 1, 0, 0, 0, 0, 1, 1], [0] * 8, [1, 1, 1, 1, 1, 1, 1, 0]])
  # The straight line across each closed gap: frame 3 of window 0 halfway between 2 and 4;
  # window 1's frames 1, 2 a third and two thirds of the way from 0 to 3; open gaps: zero rows.
  index, weight = sequence_loss.chord_ends(valid)
  assert index.shape == weight.shape == (3, 8, 2)
  chord = np.zeros((3, 8, 8))  # The ends as a [T, T] matrix (`chord @ x`: the line).
  for w, t, k in np.ndindex(index.shape):
    chord[w, t, index[w, t, k]] += weight[w, t, k]
  assert chord.shape == (3, 8, 8)
  np.testing.assert_allclose(chord[0, 3], np.eye(8)[2] / 2 + np.eye(8)[4] / 2)
  np.testing.assert_allclose(chord[1, 1:3, [0, 3]], [[2 / 3, 1 / 3], [1 / 3, 2 / 3]], rtol=1e-6)
  assert not chord[0, [0, 1, 2, 4, 5, 6, 7]].any() and not chord[2].any()
  np.testing.assert_allclose(chord[1].sum(-1), [0, 1, 1, 0, 0, 0, 0, 0])
  # Support 3: a gap with only 1-2 frames of evidence beyond it is open too.
  np.testing.assert_array_equal(sequence.open_gap_frames(valid, 3), [
      [1, 1, 0, 1, 0, 0, 1, 1], [0, 1, 1, 0, 0, 0, 0, 0], [1, 1, 1, 1, 1, 1, 1, 0]])


def _jittered_windows(dofs):
  """[N, T, 50] windows around one decoded track (a residual to fit on)."""
  rng = np.random.default_rng(1)
  return dofs[None] + 0.05 * rng.standard_normal((16,) + dofs.shape)



def test_benchmark_occlusion_placement():
  from benchmarks import fit_mocap2d, fit_video  # pylint: disable=g-import-not-at-top
  masks = {at: fit_video.occlusion_mask(64, 32, at, np.random.default_rng(0))
           for at in fit_video.OCCLUSION_AT}
  for at, mask in masks.items():  # One run of 15 frames per window.
    assert np.all(mask.sum(1) == 15) and np.all(np.abs(np.diff(mask.astype(int), axis=1)).sum(1)
                                                <= 2), at
  # Inside: evidence on both sides; start/end: the gap is open at that end only.
  assert not masks["random"][:, [0, -1]].any()
  assert masks["start"][:, 0].all() and not masks["start"][:, -1].any()
  assert masks["end"][:, -1].all() and not masks["end"][:, 0].any()
  with pytest.raises(fit_mocap2d.BenchmarkInputError, match="--occlusion_at"):
    fit_video.prepare(prior_workdir="p", dynamics_workdir="d", mocap_dir="m", num_windows=1,
                      occlusion_at="middle")


def test_fit_video_refine_flag():
  from benchmarks import fit_mocap2d, fit_video  # pylint: disable=g-import-not-at-top
  # --network_refine_steps (with --regressor_workdir): CAMERA,BODY or none.
  assert fit_video.refine_override(None) == {}
  assert fit_video.refine_override(["none"]) == {"network_refine_steps": ()}
  assert fit_video.refine_override(["5", "7"]) == {"network_refine_steps": (5, 7)}
  with pytest.raises(fit_mocap2d.BenchmarkInputError, match="--network_refine_steps"):
    fit_video.refine_override(["five"])


def test_fit_video_times_the_median_of_runs_after_compiling(monkeypatch):
  from benchmarks import fit_video  # pylint: disable=g-import-not-at-top
  clock = iter([0.0, 5.0, 10.0, 11.0, 20.0, 22.0])  # Runs of 5, 1, 2 s after the first call.
  monkeypatch.setattr(fit_video.time, "time", lambda: next(clock))
  calls = []
  result, seconds = fit_video._timed(lambda: calls.append(1) or len(calls))  # pylint: disable=protected-access
  assert len(calls) == 1 + fit_video.TIMED_RUNS == 4 and result == 4
  assert seconds == 2.0  # The median, not the first nor the best.
  calls.clear()
  assert fit_video._timed(lambda: calls.append(1), timed=False) == (None, None)  # pylint: disable=protected-access
  assert len(calls) == 1
