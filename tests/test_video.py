"""Video in, sequence out: decoding, the end-to-end job on a rendered clip, bad input."""

import json
import subprocess
import sys

import numpy as np
import pytest

from flowpose.body.build import assets
from flowpose.data import bvh
from flowpose.evidence import video_io
from flowpose.fitting import sequence
from flowpose.fitting import sequence_init
from flowpose.fitting import video_job
from flowpose.fitting.config import FitInputError  # pylint: disable=g-importing-member
from flowpose.viz import images as viz
from flowpose.viz import render_clip
from tests import video_fixtures

pytestmark = pytest.mark.usefixtures("fast_compile")
FRAMES = 6


@pytest.fixture(scope="module")
def clip(shared_data, tmp_path_factory):
  """A shaded render of 6 frames of a held-out walk, its frames folder, prior and dynamics."""
  tmp = tmp_path_factory.mktemp("video")
  w = video_fixtures.windows(shared_data, tmp, window=FRAMES, stride=FRAMES)
  prior_dir = video_fixtures.tiny_prior(tmp / "prior", w.dofs)
  dyn_dir = video_fixtures.tiny_dynamics(tmp / "dyn", prior_dir, w.dofs)
  rendered = render_clip.render_mocap_clip(assets.load_cc0_model(), w.dofs[3],
                                           w.root_orient[3], w.root_transl[3], size=(192, 192))
  frames = tmp / "frames"
  for i, frame in enumerate(rendered.frames):
    viz.save_png(frames / f"{i:03d}.png", frame)
  return dict(tmp=tmp, prior=prior_dir, dyn=dyn_dir, rendered=rendered, frames=str(frames))


def _few_steps():
  config = sequence.default_sequence_config()
  config.restart_yaws_deg = (0.0,)
  config.stages[0]["steps"], config.stages[1]["steps"] = 10, 20
  config.warm_stages[0]["steps"] = 20
  return config


def _few_frame_steps():
  config = sequence_init.per_frame_config((0.0, 180.0))
  config.stages[0]["steps"], config.stages[1]["steps"] = 10, 20
  return config


def _empty(path):
  return not path.exists() or not any(path.iterdir())


def test_video_round_trip_keeps_frames_and_rate(clip, tmp_path):
  written = video_io.write_video(str(tmp_path / "a.mp4"), clip["rendered"].frames, 25.0)
  assert written.endswith(".mp4")
  video = video_io.read_video(written)
  assert video.frames.shape == clip["rendered"].frames.shape and video.fps == 25.0
  # H.264 is lossy; the body must still be where it was.
  assert np.mean(np.abs(video.frames.astype(float) - clip["rendered"].frames)) < 6.0
  assert sorted(p.name for p in tmp_path.iterdir()) == ["a.mp4"]  # No partial files left.


@pytest.mark.slow  # ~50 s of CPU (detector + sequence compile); CI runs it.
def test_end_to_end_rendered_clip_writes_bvh_json_overlay(clip, tmp_path):
  out = tmp_path / "out"
  summary = video_job.reconstruct_video(out_dir=str(out), prior_workdir=clip["prior"],
                                        dynamics_workdir=clip["dyn"], frames_dir=clip["frames"],
                                        config=_few_steps(), frame_config=_few_frame_steps())
  assert sorted(p.name for p in out.iterdir()) == ["frames.json", "motion.bvh", "overlay.mp4",
                                                    "summary.json"]
  assert summary["tracked_frames"] == FRAMES  # The detector follows the shaded render.
  motion = bvh.read_bvh(str(out / "motion.bvh"))
  assert motion.num_frames == FRAMES and motion.fps == pytest.approx(30.0)
  frames = json.loads((out / "frames.json").read_text())
  assert [f["frame"] for f in frames] == list(range(FRAMES))
  detected = np.array([f["keypoints_detected"] for f in frames])[..., :2]
  truth = clip["rendered"].keypoints
  assert np.median(np.linalg.norm(detected - truth, axis=-1)) < 4.0  # px, ~90 px tall body.
  assert video_io.read_video(str(out / "overlay.mp4")).frames.shape[0] == FRAMES


def test_bad_input_is_refused_and_nothing_is_written(clip, tmp_path):
  kwargs = dict(prior_workdir=clip["prior"], dynamics_workdir=clip["dyn"], config=_few_steps())
  garbage = tmp_path / "garbage.mp4"
  garbage.write_bytes(b"\x00not a video" * 100)
  with pytest.raises(video_io.VideoInputError, match="garbage.mp4"):
    video_job.reconstruct_video(out_dir=str(tmp_path / "o1"), video=str(garbage), **kwargs)
  assert _empty(tmp_path / "o1")
  truncated = tmp_path / "truncated.mp4"
  video_io.write_video(str(truncated), clip["rendered"].frames, 30.0)
  truncated.write_bytes(truncated.read_bytes()[:300])
  with pytest.raises(video_io.VideoInputError, match="truncated.mp4"):
    video_io.read_video(str(truncated))
  grey = tmp_path / "grey"
  for i in range(4):
    viz.save_png(grey / f"{i}.png", np.full((96, 96, 3), 128, np.uint8))
  with pytest.raises(video_job.VideoJobError, match="no person detected in any of the 4"):
    video_job.reconstruct_video(out_dir=str(tmp_path / "o2"), frames_dir=str(grey), **kwargs)
  assert _empty(tmp_path / "o2")
  viz.save_png(grey / "9.png", np.full((64, 96, 3), 128, np.uint8))
  with pytest.raises(video_io.VideoInputError, match="frame 4 is 96x64"):
    video_io.read_frames_dir(str(grey))
  with pytest.raises(video_io.VideoInputError, match="zero frames"):
    video_io.read_frames_dir(str(tmp_path / "o1"))
  track = tmp_path / "track.json"
  track.write_text(json.dumps([{"image_id": 99, "keypoints": [0] * 51}]))
  with pytest.raises(video_job.VideoJobError, match="entry 0"):
    video_job.reconstruct_video(out_dir=str(tmp_path / "o3"), frames_dir=clip["frames"],
                                keypoints_json=str(track), **kwargs)
  assert _empty(tmp_path / "o3")
  # A network trained on another prior (its latent means other poses): refused, naming the flag
  # (only the prior params' sha256 are compared before the network loads).
  network = tmp_path / "net" / "prior"
  network.mkdir(parents=True)
  (network / "prior_params.msgpack").write_bytes(b"another prior")
  with pytest.raises(FitInputError, match="--regressor_workdir.*trained with the prior"):
    video_job.reconstruct_video(out_dir=str(tmp_path / "o4"), frames_dir=clip["frames"],
                                regressor_workdir=str(tmp_path / "net"), **kwargs)
  assert _empty(tmp_path / "o4")


def test_tracker_follows_overlap_and_marks_missing_frames():
  kp = np.zeros((17, 3))
  a, b = np.array([10.0, 10, 50, 100]), np.array([200.0, 10, 50, 100])
  shifted = a + [5, 0, 0, 0]
  candidates = [[], [(kp + 1, 0.9, a), (kp + 2, 0.5, b)], [(kp + 3, 0.99, b)],
                [(kp + 4, 0.1, b), (kp + 5, 0.2, shifted)]]
  keypoints, tracked = video_job.track_person(candidates)
  assert tracked.tolist() == [False, True, False, True]  # Frame 2: only the other person.
  assert keypoints[1, 0, 0] == 1 and keypoints[3, 0, 0] == 5


@pytest.mark.slow
def test_cli_with_a_track_json_and_a_person_leaving(clip, tmp_path):
  truth = clip["rendered"].keypoints
  entries = [{"image_id": i, "keypoints": np.concatenate([truth[i], np.ones((17, 1))],
                                                         1).reshape(-1).tolist()}
             for i in range(FRAMES) if i != 2]  # Frame 2: the person is gone.
  track = tmp_path / "track.json"
  track.write_text(json.dumps(entries))
  out = tmp_path / "out"
  cmd = [sys.executable, "-m", "launch.reconstruct_video", f"--frames={clip['frames']}",
         f"--prior_workdir={clip['prior']}", f"--dynamics_workdir={clip['dyn']}",
         f"--out_dir={out}", f"--keypoints_json={track}"]
  done = subprocess.run(cmd, capture_output=True, text=True, check=False)
  assert done.returncode == 0, done.stderr[-2000:]
  frames = json.loads((out / "frames.json").read_text())
  assert [f["tracked"] for f in frames] == [i != 2 for i in range(FRAMES)]
  # Stage 1 from the network (tiny, untrained: the plumbing, not the accuracy).
  net_out = tmp_path / "net_out"
  regressor = video_fixtures.tiny_regressor(tmp_path / "regressor", clip["prior"])
  done = subprocess.run(cmd[:6] + [f"--out_dir={net_out}", cmd[7],
                                   f"--regressor_workdir={regressor}"],
                        capture_output=True, text=True, check=False)
  assert done.returncode == 0, done.stderr[-2000:]
  summary = json.loads((net_out / "summary.json").read_text())
  assert summary["stage1"] == "network" and summary["num_frames"] == FRAMES
  assert (net_out / "motion.bvh").is_file()
  bad = subprocess.run(cmd[:3] + ["--video=/nonexistent.mp4", cmd[4],
                                   f"--out_dir={tmp_path / 'o'}"],
                       capture_output=True, text=True, check=False)
  assert bad.returncode == 1 and "no such file" in bad.stderr
