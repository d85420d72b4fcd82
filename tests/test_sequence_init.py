"""Warm starts of the sequence fit from per-frame fits (`flowpose.fitting.sequence_init`)."""

from typing import NamedTuple

import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from flowpose import geometry
from flowpose.fitting import sequence_init
from flowpose.fitting.config import FitInputError  # pylint: disable=g-importing-member

FRAMES = 12


def _orient(yaw_deg):
  """[T, 6] 6D orientations turning about the vertical by `yaw_deg` [T]."""
  rot = np.stack([np.asarray(geometry.rotation_about_axis(np.deg2rad(a), "Y")) for a in yaw_deg])
  return np.asarray(geometry.matrix_to_rot6d(jnp.asarray(rot, jnp.float32)))


def _frames(yaw_deg, valid):
  num = len(yaw_deg)
  t = np.arange(num, dtype=np.float32)
  pose = np.stack([t, -t], 1)[None]  # [1, T, 2]: a latent moving linearly.
  betas = np.zeros((1, num, 3), np.float32)
  betas[0, :, 0] = np.where(np.arange(num) % 2, 1.0, 2.0)
  transl = np.stack([t * 0.1, 0 * t, 4 + 0 * t], 1)[None]
  orient = np.array(_orient(yaw_deg)[None])
  nan = ~np.asarray(valid)[None]
  for x in (pose, betas, orient, transl):
    x[nan] = np.nan
  return sequence_init.FrameFits(pose, betas, orient, transl, np.asarray(valid)[None], None)


def test_a_turning_person_is_one_chain_and_flipped_frames_are_the_other():
  # Turning 5 deg per frame (55 deg over the window: one chain), frames 3 and 8 read backwards.
  yaw = 5.0 * np.arange(FRAMES)
  yaw[[3, 8]] += 180.0
  valid = np.ones(FRAMES, bool)
  valid[5] = False  # No fit (occluded): on no chain.
  chain0, chain1 = sequence_init.orientation_chains(_orient(yaw), valid)
  expected = valid.copy()
  expected[[3, 8]] = False
  np.testing.assert_array_equal(chain0, expected)
  np.testing.assert_array_equal(chain1, np.isin(np.arange(FRAMES), [3, 8]))
  # Consistent frames only: no second hypothesis.
  assert sequence_init.orientation_chains(_orient(5.0 * np.arange(FRAMES)), valid)[1] is None


def test_hypotheses_interpolate_gaps_and_off_chain_frames():
  yaw = np.zeros(FRAMES)
  yaw[[3, 4]] = 180.0
  valid = np.ones(FRAMES, bool)
  valid[[7, 8]] = False
  frames = _frames(yaw, valid)
  starts = sequence_init.hypotheses(frames)
  assert len(starts) == 2
  first, second = starts
  # Hypothesis 0: the flipped frames 3-4 and the gap 7-8 interpolated (the latent is linear).
  t = np.arange(FRAMES, dtype=np.float32)
  np.testing.assert_allclose(first["pose"][0], np.stack([t, -t], 1), atol=1e-5)
  np.testing.assert_allclose(first["orient"][0], np.repeat(_orient([0.0]), FRAMES, 0),
                             atol=1e-5)
  assert first["betas"].shape == (1, 3) and np.isfinite(first["betas"]).all()
  # Hypothesis 1: the flipped reading everywhere.
  np.testing.assert_allclose(second["orient"][0], np.repeat(_orient([180.0]), FRAMES, 0),
                             atol=1e-5)
  assert all(np.all(np.isfinite(v)) for h in starts for v in h.values())


def test_a_failed_fit_is_no_start():
  # Frame 6's fit ran away (96 m deep, its keypoint term 300x the others'): the start there is
  # interpolated like a missing frame's; a 10x worse term is kept (`FAILED_FIT_FACTOR` 20).
  valid = np.ones(FRAMES, bool)
  frames = _frames(np.zeros(FRAMES), valid)
  error = np.full((1, FRAMES), 1e-4, np.float32)
  error[0, 6], error[0, 2] = 3e-2, 1e-3
  transl = frames.transl.copy()
  transl[0, 6] = [0.3, -6.8, 96.0]
  frames = frames._replace(transl=transl, keypoint_error=error)
  expected = valid.copy()
  expected[6] = False
  np.testing.assert_array_equal(sequence_init.reliable_fits(frames)[0], expected)
  start = sequence_init.hypotheses(frames, max_count=1)[0]
  np.testing.assert_allclose(start["transl"][0, 6], [0.6, 0.0, 4.0], atol=1e-5)
  np.testing.assert_allclose(start["transl"][0, 2], frames.transl[0, 2], atol=1e-6)
  # Unknown terms (the network's predictions alone): every fitted frame is a start; subsets
  # keep the terms of their own frames.
  assert sequence_init.reliable_fits(frames._replace(keypoint_error=None)).all()
  keep = valid.copy()
  keep[::2] = False
  sub = sequence_init.subset_frames(frames, keep[None])
  assert np.isnan(sub.keypoint_error[0, ::2]).all()
  np.testing.assert_array_equal(sub.keypoint_error[0, 1::2], error[0, 1::2])


def test_smoothed_hypotheses_keep_linear_motion_and_remove_jitter():
  valid = np.ones(FRAMES, bool)
  frames = _frames(np.zeros(FRAMES), valid)
  jitter = 0.3 * np.where(np.arange(FRAMES) % 2, 1.0, -1.0)[:, None]
  frames = frames._replace(pose=frames.pose + jitter[None].astype(np.float32))
  raw = sequence_init.hypotheses(frames)[0]["pose"][0]
  smooth = sequence_init.hypotheses(frames, smooth=5)[0]["pose"][0]
  t = np.arange(FRAMES, dtype=np.float32)
  line = np.stack([t, -t], 1)
  # Savitzky-Golay (order 2) passes the linear motion and damps the frame-to-frame flip.
  inner = slice(2, FRAMES - 2)
  assert np.abs(smooth - line)[inner].max() < 0.5 * np.abs(raw - line)[inner].max()
  np.testing.assert_allclose(sequence_init._smooth(line, 5), line, atol=1e-4)


def test_frames_that_cannot_determine_a_body_are_not_fitted():
  kp = np.tile(np.array([[100.0, 100.0], [200.0, 300.0], [150.0, 250.0]], np.float32),
               (1, 4, 1, 1))
  conf = np.ones(kp.shape[:3], np.float32)
  conf[0, 1, 1:] = 0.0                     # One keypoint.
  kp[0, 2] = kp[0, 2, :1] + 0.5            # All within 2 px.
  conf[0, 3, 0] = 0.0
  kp[0, 3, 0] = np.nan                     # NaN where not labelled: fine.
  evidence = sequence_init.sequence.SequenceEvidence(kp, conf, np.full((1, 2), 500.0),
                                                     np.full((1, 2), 250.0))
  np.testing.assert_array_equal(sequence_init.fittable_frames(evidence),
                                [[True, False, False, True]])
  with pytest.raises(FitInputError, match=r"window\(s\) \[0\]"):
    sequence_init.fit_two_stage(None, None, None, None, None,
                                evidence._replace(confidence=0 * conf))


class _CubeFlow(NamedTuple):
  """A stand-in flow: chart angle = wrap(z^3) (a periodic chart; a line in z is not one in it)."""
  chart: str = "euler_free"

  @staticmethod
  def latent_to_pose(params, z):
    del params
    return jnp.arctan2(jnp.sin(z ** 3), jnp.cos(z ** 3))

  @staticmethod
  def pose_to_latent(params, pose):
    del params
    return jnp.cbrt(pose)


def test_chart_gap_fill_is_a_line_in_the_chart_the_shorter_way_round():
  valid = np.ones(FRAMES, bool)
  valid[3:8] = False  # A gap of 5 frames between frames 2 and 8.
  frames = _frames(np.zeros(FRAMES), valid)
  chart = np.zeros((FRAMES, 2), np.float32)
  chart[:, 0] = np.where(np.arange(FRAMES) <= 2, 3.0, -3.0)  # Crosses +-pi, not 0.
  chart[:, 1] = np.where(np.arange(FRAMES) <= 2, 0.2, 2.0)
  pose = np.cbrt(chart)
  pose[~valid] = np.nan
  frames = frames._replace(pose=pose[None])
  start = sequence_init.hypotheses(frames, flow=(_CubeFlow(), None))[0]["pose"][0]
  np.testing.assert_allclose(start[valid], pose[valid], atol=1e-6)  # Chain frames kept.
  decoded = np.asarray(_CubeFlow.latent_to_pose(None, jnp.asarray(start)))
  frac = (np.arange(3, 8) - 2) / 6.0
  step = 2 * np.pi - 6.0
  expected = np.stack([np.arctan2(np.sin(3.0 + frac * step), np.cos(3.0 + frac * step)),
                       0.2 + frac * 1.8], 1)
  np.testing.assert_allclose(decoded[3:8], expected, atol=1e-4)
  # The default (a line in the latent) is not the chart line.
  latent = sequence_init.hypotheses(frames)[0]["pose"][0]
  decoded = np.asarray(_CubeFlow.latent_to_pose(None, jnp.asarray(latent)))
  assert np.abs(decoded[3:8] - expected).max() > 0.3


def test_gap_flow_follows_the_config():
  config = ml_collections.ConfigDict({"warm_gaps": "latent"})
  assert sequence_init.gap_flow(config, (_CubeFlow(), None)) is None
  config.warm_gaps = "chart"
  with pytest.raises(FitInputError, match="needs the flow"):
    sequence_init.gap_flow(config, None)
  config.warm_gaps = "bogus"
  with pytest.raises(FitInputError, match="warm_gaps"):
    sequence_init.gap_flow(config, None)


def test_keyframes_keep_every_kth_frame_and_the_ends_of_every_run():
  valid = np.ones((2, FRAMES), bool)
  valid[0, 5:9] = False  # A gap: frames 4 and 9 anchor it.
  valid[1, :2] = False   # The track starts late: frame 2 anchors the start.
  keep = sequence_init.keyframes(valid, 4)
  np.testing.assert_array_equal(np.flatnonzero(keep[0]), [0, 4, 9, 11])
  np.testing.assert_array_equal(np.flatnonzero(keep[1]), [2, 4, 8, 11])
  np.testing.assert_array_equal(sequence_init.keyframes(valid, 1), valid)
  # Off-keyframe fits are dropped; the warm start interpolates them (the latent is linear).
  frames = sequence_init.subset_frames(_frames(np.zeros(FRAMES), valid[0]), keep[:1])
  np.testing.assert_array_equal(frames.valid, keep[:1])
  assert np.isnan(frames.pose[0, 1]).all() and not np.isnan(frames.pose[0, 4]).any()
  start = sequence_init.hypotheses(frames, max_count=1)[0]["pose"][0]
  t = np.arange(FRAMES, dtype=np.float32)
  np.testing.assert_allclose(start, np.stack([t, -t], 1), atol=1e-5)
