"""Stage 1 of the temporal fit from the reconstruction network (`fitting.sequence_network`).

Default tests use a stand-in network (a function of each frame's keypoints: the plumbing from
sequence evidence to per-frame starts); the slow ones a tiny untrained network exported as the
regressor task exports it (no training run), end to end through `benchmarks.fit_video`.
"""

import numpy as np
import pytest

from flowpose.data import poses
from flowpose.fitting import fit as fitting
from flowpose.fitting import sequence
from flowpose.fitting import sequence_network
from flowpose.fitting.config import FitInputError  # pylint: disable=g-importing-member
from flowpose.models import predictor
from flowpose.prior import io as prior_io
from tests import video_fixtures

pytestmark = pytest.mark.usefixtures("fast_compile")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
  tmp = tmp_path_factory.mktemp("seqnet")
  dofs = poses.synthetic_poses(256, 50, 0, "train")
  prior_dir = video_fixtures.tiny_prior(tmp / "prior", dofs)
  regressor = video_fixtures.tiny_regressor(tmp / "regressor", prior_dir)
  return dict(tmp=tmp, prior_dir=prior_dir, regressor=regressor,
              predict=sequence_network.load_network(regressor, prior_dir))


def _evidence(num=2, frames=6):
  """A person ~300 px tall walking across a 640 x 480 image; window 1 frame 2 has no
  evidence, window 0 frame 4 only one keypoint (cannot determine a body)."""
  rng = np.random.default_rng(0)
  base = np.stack([rng.uniform(280, 360, 17), np.linspace(120, 420, 17)], -1)
  kp = base[None, None] + np.array([8.0, 0.0]) * np.arange(frames)[None, :, None, None]
  kp = np.repeat(kp, num, 0) + rng.normal(0, 2.0, (num, frames, 17, 2))
  conf = np.ones((num, frames, 17), np.float32)
  conf[1, 2] = 0.0
  conf[0, 4, 1:] = 0.0
  return sequence.SequenceEvidence(kp.astype(np.float32), conf,
                                   np.full((num, 2), 600.0, np.float32),
                                   np.tile(np.array([[320.0, 240.0]], np.float32), (num, 1)))


def _fake_network(evidence, image_size):
  """A stand-in network: each frame's translation (x, y) is the mean of its labelled keypoints
  and z its focal; pose, betas, orientation constant (checks what `network_frames` passes)."""
  assert image_size == (480, 640)
  kp, conf = np.asarray(evidence.keypoints), np.asarray(evidence.confidence)
  assert np.all(np.isfinite(kp[conf > 0])), "labelled keypoints are finite"
  mean = np.nanmean(np.where(conf[..., None] > 0, kp, np.nan), 1)
  num = len(kp)
  return {"pose": np.zeros((num, 4), np.float32), "betas": np.ones((num, 3), np.float32),
          "orient": np.tile(np.eye(3)[:, :2].T.reshape(1, 6), (num, 1)).astype(np.float32),
          "transl": np.concatenate([mean, np.asarray(evidence.focal)[:, :1]], 1),
          "log_focal": np.zeros(num, np.float32)}


def test_network_frames_are_each_frames_own_prediction(monkeypatch):
  evidence = _evidence(3, 7)
  evidence.focal[2] = 700.0
  frames = sequence_network.network_frames(_fake_network, evidence, (480, 640))
  expected_valid = np.ones((3, 7), bool)
  expected_valid[1, 2] = expected_valid[0, 4] = False
  np.testing.assert_array_equal(frames.valid, expected_valid)
  assert frames.pose.shape == (3, 7, 4) and frames.orient.shape == (3, 7, 6)
  assert frames.result is None and np.all(np.isnan(frames.transl[~frames.valid]))
  labelled = np.where(evidence.confidence[..., None] > 0, evidence.keypoints, np.nan)
  expected = np.concatenate([np.nanmean(labelled, 2),
                             np.repeat(evidence.focal[:, None, :1], 7, 1)], -1)
  np.testing.assert_allclose(frames.transl[frames.valid], expected[frames.valid], rtol=1e-6)
  # Long tracks go in chunks (+ padding, rows dropped again): the same frames.
  monkeypatch.setattr(sequence_network, "MAX_BATCH", 8)  # 19 frames: 8 + 8 + 3 (padded to 8).
  monkeypatch.setattr(sequence_network, "BATCH_STEP", 4)
  chunked = sequence_network.network_frames(_fake_network, evidence, (480, 640))
  np.testing.assert_array_equal(np.nan_to_num(frames.transl), np.nan_to_num(chunked.transl))
  evidence.confidence[2] = 0.0  # A window with no frame to predict.
  with pytest.raises(FitInputError, match=r"window\(s\) \[2\]"):
    sequence_network.network_frames(_fake_network, evidence, (480, 640))


@pytest.mark.slow  # ~20 s of CPU: the tiny network built, compiled and run.
def test_real_network_frames_match_single_frame_predictions(setup):
  predict = setup["predict"]
  evidence = _evidence()
  frames = sequence_network.network_frames(predict, evidence, (480, 640))
  assert frames.pose.shape[:2] == (2, 6) and np.all(np.isfinite(frames.pose[frames.valid]))
  picks = ((0, 0), (0, 5), (1, 3))
  w, t = np.array(picks).T
  alone = predict(fitting.Evidence(evidence.keypoints[w, t], evidence.confidence[w, t],
                                   evidence.focal[w], evidence.principal_point[w]), (480, 640))
  for key in ("pose", "betas", "orient", "transl"):
    np.testing.assert_allclose(getattr(frames, key)[w, t], alone[key], rtol=1e-4, atol=1e-5,
                               err_msg=key)
  assert np.abs(frames.transl[0, 0] - frames.transl[0, 5]).max() > 1e-3


def test_network_of_another_prior_is_refused(tmp_path):
  """Only the params' sha256 are compared (before the network loads): two byte strings do."""
  prior, network = tmp_path / "prior", tmp_path / "net"
  (network / predictor.PRIOR_DIR).mkdir(parents=True)
  prior.mkdir()
  (prior / prior_io.PARAMS_FILE).write_bytes(b"the fit's prior")
  (network / predictor.PRIOR_DIR / prior_io.PARAMS_FILE).write_bytes(b"another prior")
  with pytest.raises(FitInputError, match="--regressor_workdir.*trained with the prior"):
    sequence_network.load_network(str(network), str(prior))
  with pytest.raises(FitInputError, match="--regressor_workdir.*config.json"):
    sequence_network.load_network(str(tmp_path / "nothing"), str(prior))
  # The same prior: on to loading the network (here: nothing to load, named).
  (network / predictor.PRIOR_DIR / prior_io.PARAMS_FILE).write_bytes(b"the fit's prior")
  with pytest.raises(FitInputError, match="--regressor_workdir"):
    sequence_network.load_network(str(network), str(prior))


def test_refine_steps_are_validated():
  config = sequence.default_sequence_config()
  config.network_refine_steps = (20,)
  with pytest.raises(FitInputError, match="network_refine_steps"):
    sequence.validate_sequence_config(config)
  config.network_refine_steps = ()
  sequence.validate_sequence_config(config)
  config.network_sequence_steps = 7
  run = sequence_network.network_sequence_config(config)
  assert run.warm_stages[0]["steps"] == 7 and config.warm_stages[0]["steps"] == 120  # A copy.
  config.network_sequence_steps = -1
  with pytest.raises(FitInputError, match="network_sequence_steps"):
    sequence.validate_sequence_config(config)
  refine = sequence_network.refine_config((3, 4))
  assert [s["steps"] for s in refine.stages] == [3, 4] and refine.restart_yaws_deg == (0.0,)




@pytest.mark.slow  # ~1-2 min: per-frame fits, the network, its refinement, the sequence stage.
def test_fit_video_with_a_network_reports_it_and_times_both_stages(shared_data, tmp_path):
  from benchmarks import fit_mocap2d, fit_video  # pylint: disable=g-import-not-at-top
  w = video_fixtures.windows(shared_data, tmp_path, window=10, stride=10)
  prior_dir = video_fixtures.tiny_prior(tmp_path / "prior", w.dofs)
  dyn_dir = video_fixtures.tiny_dynamics(tmp_path / "dyn", prior_dir, w.dofs)
  regressor = video_fixtures.tiny_regressor(tmp_path / "regressor", prior_dir)
  kwargs = dict(prior_workdir=prior_dir, dynamics_workdir=dyn_dir,
                mocap_dir=str(video_fixtures.clip_folder(shared_data, tmp_path)), num_windows=2,
                window=10, runlocal=True, time_per_frame=False, regressor_workdir=regressor)
  out = tmp_path / "net.json"
  report = fit_video.run(out=str(out), seq_overrides={"network_refine_steps": (2, 3)}, **kwargs)
  for key in ("pa_mpjpe_mm", "accel_error_mm", "occluded_pa_mpjpe_mm"):
    assert set(report[key]) == {"per_frame", "smoothed", "dynamics", "network"}, key
    assert all(np.isfinite(v) for v in report[key].values()), key
  assert {"network", "network_refine", "sequence_stage", "dynamics_two_stage"} <= set(
      report["frames_per_s"])
  assert report["stage1"] == "network" and report["network_refine_steps"] == [2, 3]
  assert out.is_file() and (tmp_path / "net.png").is_file()
  other = video_fixtures.tiny_regressor(  # A network of another prior: refused before fitting.
      tmp_path / "other_net", video_fixtures.another_prior(tmp_path / "other", prior_dir))
  with pytest.raises(fit_mocap2d.BenchmarkInputError, match="--regressor_workdir"):
    fit_video.run(out=str(tmp_path / "x.json"), **{**kwargs, "regressor_workdir": other})
  assert not (tmp_path / "x.json").exists()
