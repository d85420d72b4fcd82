"""Video in, sequence out: frames -> 2D keypoints -> one tracked person -> sequence fit -> files.

    reconstruct_video(out_dir="D", prior_workdir=P, dynamics_workdir=W2, video="clip.mp4")
    reconstruct_video(out_dir="D", prior_workdir=P, dynamics_workdir=W2, frames_dir="F/",
                      keypoints_json="track.json")

1. Frames: `evidence.video_io` (ffmpeg from imageio-ffmpeg; a folder of images at `fps`).
2. 2D evidence per frame: the BlazePose detector (`evidence.detector.Detector`), or a COCO-style
   keypoint track JSON: a list of `{"image_id" (or "frame"): 0-based frame index, "keypoints":
   [x, y, v] * 17 (pixels of the original frames), "score"?, "bbox"? [x, y, w, h]}`; several
   entries per frame are candidates for the tracker.
3. Tracking: the highest-scoring person of the first frame with any person; then per frame the
   candidate whose box overlaps the last tracked box most (IoU >= `min_iou`). A frame with no
   such candidate (the person left the frame, was occluded or missed) is a missing frame: it
   has no evidence and the dynamics prior carries the fit through it (`fitting.sequence`).
   Keypoints below `min_confidence` count as missing.
4. Fit: the whole track as one window, in two stages (`fitting.sequence_init.fit_two_stage`):
   every tracked frame alone (`fitting.fit`, 4 yaw restarts), then the sequence fit
   (`fitting.sequence.fit_sequence`: z per frame, one shape, orientation/translation per frame,
   dynamics prior) warm-started from orientation-consistent readings of those fits, missing
   frames interpolated and carried by the dynamics prior; camera at the image centre with focal
   `focal_factor * max(H, W)` (as the photo fitter's initial focal). `two_stage=False`: the
   sequence fit alone from upright yaw restarts. With `regressor_workdir` (a trained network of
   issue 12 on the same prior), stage 1 is the network on every tracked frame (keypoint-only
   evidence cropped around the frame's keypoints) with its keyframe starts refined by a
   per-frame fit from 2 restarts (`fitting.sequence_network`); the sequence fit starts from that.
5. Outputs, one atomic folder swap (`io_utils.atomic_dir`; an error leaves `out_dir` as it was):
   `motion.bvh` (the whole sequence on the CC0 skeleton at the video's frame rate, Y-up world
   `diag(1, -1, -1) x_cam` as `fitting.photo`), `overlay.mp4` (mesh + keypoints over the frames;
   `overlay.png` strip when no encoder runs), `frames.json` (per frame: tracked, detected and
   model keypoints, DOFs, translation, joints) and `summary.json`.

Bad input raises `VideoJobError` (or `video_io.VideoInputError`) naming the file: unreadable or
empty video/folder, frame size changes, a bad track JSON, no person in any frame, fewer than 3
frames. The dynamics model assumes about 30 fps; other rates are fitted at the video's frame
step with a warning.
"""

import json
import pathlib
from typing import Optional

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np

from flowpose import io_utils
from flowpose.body import model as body_lib
from flowpose.body.build import assets
from flowpose.data import bvh
from flowpose.evidence import raster
from flowpose.evidence import video_io
from flowpose.fitting import photo
from flowpose.fitting import reduced_body
from flowpose.fitting import sequence
from flowpose.fitting import sequence_init
from flowpose.fitting import sequence_network
from flowpose.models import dynamics_io
from flowpose.prior import registry
from flowpose.viz import images as viz

NUM_KEYPOINTS = 17


class VideoJobError(ValueError):
  """Bad input of the video job (the message names the file or what is missing)."""


def box_iou(a: np.ndarray, b: np.ndarray) -> float:
  """IoU of two (x, y, w, h) boxes."""
  lo, hi = np.maximum(a[:2], b[:2]), np.minimum(a[:2] + a[2:], b[:2] + b[2:])
  inter = float(np.prod(np.maximum(hi - lo, 0)))
  union = float(a[2] * a[3] + b[2] * b[3]) - inter
  return inter / union if union > 0 else 0.0


def _box_of(keypoints: np.ndarray) -> np.ndarray:
  ok = keypoints[:, 2] > 0
  pts = keypoints[ok, :2] if ok.sum() >= 2 else keypoints[:, :2]
  lo, hi = pts.min(0), pts.max(0)
  return np.concatenate([lo, hi - lo])


def read_track_json(path: str, num_frames: int, scale: float) -> list:
  """Candidates per frame from a COCO-style keypoint track JSON (module docstring).

  Returns:
    [num_frames] lists of (keypoints [17, 3] in model pixels, score, bbox [4]).
  """
  try:
    entries = json.loads(pathlib.Path(path).read_text())
  except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
    raise VideoJobError(f"--keypoints_json {path}: cannot read as JSON ({e})") from None
  if isinstance(entries, dict) and "annotations" in entries:
    entries = entries["annotations"]
  if not isinstance(entries, list):
    raise VideoJobError(f"--keypoints_json {path}: expected a list of keypoint entries")
  out = [[] for _ in range(num_frames)]
  for i, entry in enumerate(entries):
    where = f"--keypoints_json {path}: entry {i}"
    frame = entry.get("frame", entry.get("image_id")) if isinstance(entry, dict) else None
    if not isinstance(frame, int) or not 0 <= frame < num_frames:
      raise VideoJobError(f"{where}: 'image_id'/'frame' must be a frame index in "
                          f"[0, {num_frames}), got {frame!r}")
    kp = np.asarray(entry.get("keypoints", []), np.float64)
    if kp.shape != (NUM_KEYPOINTS * 3,) or not np.all(np.isfinite(kp)):
      raise VideoJobError(f"{where}: 'keypoints' must be 51 finite numbers (x, y, v) * 17")
    kp = kp.reshape(NUM_KEYPOINTS, 3)
    kp[:, :2] *= scale
    kp[:, 2] = np.where(kp[:, 2] > 0, np.minimum(kp[:, 2], 1.0), 0.0)
    bbox = (np.asarray(entry["bbox"], np.float64) * scale if "bbox" in entry
            else _box_of(kp))
    out[frame].append((kp, float(entry.get("score", 1.0)), bbox))
  return out


def detect_frames(frames: np.ndarray) -> list:
  """Candidates per frame from the BlazePose detector (keypoints [17, 3], score, bbox)."""
  from flowpose.evidence import detector as detector_lib  # pylint: disable=g-import-not-at-top
  det = detector_lib.Detector()
  out = []
  for i, frame in enumerate(frames):
    out.append([(p.keypoints, p.score, p.bbox) for p in det(frame)])
    if i % 25 == 0:
      logging.info("detector: frame %d/%d", i + 1, len(frames))
  return out


def track_person(candidates: list, min_iou: float = 0.1):
  """Follows one person by box overlap (module docstring).

  Returns:
    (keypoints [N, 17, 3] with zero rows where untracked, tracked [N] bool).

  Raises:
    VideoJobError: no person in any frame.
  """
  num = len(candidates)
  keypoints = np.zeros((num, NUM_KEYPOINTS, 3), np.float32)
  tracked = np.zeros(num, bool)
  start = next((i for i, c in enumerate(candidates) if c), None)
  if start is None:
    raise VideoJobError(f"no person detected in any of the {num} frames")
  kp, _, last_box = max(candidates[start], key=lambda c: c[1])
  keypoints[start], tracked[start] = kp, True
  for i in range(start + 1, num):
    if not candidates[i]:
      continue
    overlaps = [box_iou(np.asarray(c[2]), np.asarray(last_box)) for c in candidates[i]]
    best = int(np.argmax(overlaps))
    if overlaps[best] >= min_iou:
      keypoints[i], tracked[i] = candidates[i][best][0], True
      last_box = candidates[i][best][2]
  return keypoints, tracked


def overlay_frames(model, frames, vertices, focal, centre, detected, model_kp, tracked):
  """[N, H, W, 3] uint8: the fitted mesh, detected (skeleton) and model (red) keypoints."""
  palette = viz.part_palette(len(model.part_names))
  cam = raster.PinholeCamera(np.eye(3), np.zeros(3), focal, centre)
  out = []
  for i, frame in enumerate(frames):
    render = raster.render(vertices[i], np.asarray(model.faces), cam, frame.shape[:2],
                           vertex_labels=np.asarray(model.part_labels), label_colors=palette)
    image = viz.overlay(frame, render.rgb, 0.5, mask=np.isfinite(render.depth))
    if tracked[i]:
      image = viz.draw_keypoints(image, detected[i, :, :2], visible=detected[i, :, 2] > 0)
    out.append(viz.draw_points(image, model_kp[i], colors=(255, 0, 0), radius=2.0))
  return np.stack(out)


def reconstruct_video(*, out_dir: str, prior_workdir: str, dynamics_workdir: Optional[str],
                      video: Optional[str] = None, frames_dir: Optional[str] = None,
                      keypoints_json: Optional[str] = None, fps: float = 30.0,
                      config=None, min_confidence: float = 0.2, min_iou: float = 0.1,
                      focal_factor: float = 1.2, max_side: int = 1280,
                      frame_config=None, two_stage: bool = True,
                      regressor_workdir: Optional[str] = None) -> dict:
  """Runs the video job (module docstring); returns the summary dict.

  Args:
    out_dir: output folder (replaced atomically).
    prior_workdir: trained prior. dynamics_workdir: trained dynamics model (None: constant
      velocity in the latent space), with its chart residual when it holds one.
    video / frames_dir: exactly one input. keypoints_json: optional 2D track (skips the detector).
    fps: frame rate of `frames_dir` (a video's own rate is used for a video).
    config: `sequence.default_sequence_config()` fields (default: that).
    frame_config: the per-frame stage's `fitting.config` (default:
      `sequence_init.per_frame_config()`). two_stage: module docstring, step 4.
    regressor_workdir: a trained reconstruction network as stage 1 (module docstring, step 4).

  Raises:
    VideoJobError, video_io.VideoInputError, io_utils.OutputPathError, registry.PriorRegistryError,
    dynamics_io.DynamicsLoadError, FitInputError (a network that cannot load or was trained on
    another prior: naming --regressor_workdir): before anything is written.
  """
  if (video is None) == (frames_dir is None):
    raise VideoJobError("give exactly one of --video and --frames")
  out_path = io_utils.require_output_path(out_dir, "--out_dir")
  # Before decoding: a network of another prior fails at once.
  predict = (sequence_network.load_network(regressor_workdir, prior_workdir)
             if regressor_workdir else None)
  clip = (video_io.read_video(video, max_side) if video is not None else
          video_io.read_frames_dir(frames_dir, fps, max_side))
  frames = clip.frames
  if len(frames) < 3:
    raise VideoJobError(f"{clip.source}: {len(frames)} frames, expected >= 3 for a sequence")
  if abs(clip.fps - 30.0) > 7.5:
    logging.warning("%s: %.1f fps; the dynamics model was trained at 30 fps", clip.source,
                    clip.fps)
  prior = registry.load("flow", prior_workdir)
  dynamics = (dynamics_io.load_dynamics(dynamics_workdir, prior_workdir)
              if dynamics_workdir else (None, None, None))
  residual = dynamics_io.load_chart_residual(dynamics_workdir)
  candidates = (read_track_json(keypoints_json, len(frames), clip.scale) if keypoints_json
                else detect_frames(frames))
  detected, tracked = track_person(candidates, min_iou)
  confidence = np.where(detected[..., 2] >= min_confidence, detected[..., 2], 0.0)
  height, width = frames.shape[1:3]
  focal = np.full(2, focal_factor * max(height, width), np.float32)
  centre = np.array([width / 2, height / 2], np.float32)
  model = assets.load_cc0_model()
  body = reduced_body.make_fit_body(model, photo.body_rotmats_fn)
  config = config or sequence.default_sequence_config()
  keypoints = np.where(confidence[..., None] > 0, detected[..., :2], np.nan)
  evidence = sequence.SequenceEvidence(keypoints[None], confidence[None].astype(np.float32),
                                       focal[None], centre[None])
  if predict is not None:
    result = sequence_network.fit_network_two_stage(
        predict, config, model, body, prior, evidence, dynamics[0], dynamics[1],
        chart_residual=residual, image_size=(height, width))[0]
  elif two_stage:
    result, _ = sequence_init.fit_two_stage(
        frame_config or sequence_init.per_frame_config(), config, model, body, prior, evidence,
        dynamics[0], dynamics[1], chart_residual=residual)
  else:
    result = sequence.fit_sequence(config, body, prior, evidence, dynamics[0], dynamics[1],
                                   chart_residual=residual)
  betas, rotmats, transl = result.betas[0], result.rotmats[0], result.transl[0]
  fwd = jax.jit(jax.vmap(body_lib.forward, (None, 0, None, 0)))
  vertices = np.asarray(fwd(model, jnp.asarray(rotmats), jnp.asarray(betas),
                            jnp.asarray(transl)).vertices)
  joints = result.joints[0]
  model_kp = result.keypoints_2d[0]
  per_frame = [{
      "frame": i, "tracked": bool(tracked[i]),
      "keypoints_detected": detected[i].tolist() if tracked[i] else None,
      "keypoints_model": model_kp[i].tolist(), "pose_dofs": result.pose_dofs[0, i].tolist(),
      "transl": transl[i].tolist(), "joints_camera": joints[i].tolist()}
      for i in range(len(frames))]
  summary = {
      "source": clip.source, "num_frames": int(len(frames)), "fps": clip.fps,
      "frame_size": [int(width), int(height)], "scale": clip.scale,
      "tracked_frames": int(tracked.sum()), "focal": focal.tolist(),
      "principal_point": centre.tolist(), "betas": betas.tolist(),
      "loss": float(result.loss[0]), "terms": {k: float(v[0]) for k, v in result.terms.items()},
      "prior_workdir": prior_workdir, "dynamics_workdir": dynamics_workdir,
      "regressor_workdir": regressor_workdir,
      "stage1": "network" if predict is not None else "per_frame_fits" if two_stage else "none",
      "keypoints": "track json" if keypoints_json else "BlazePose detector"}
  overlay = overlay_frames(model, frames, vertices, focal, centre, detected, model_kp, tracked)
  with io_utils.atomic_dir(out_path) as staging:
    staging = pathlib.Path(staging)
    bvh.write_bvh(photo.camera_fit_motion(model, betas, rotmats, joints[:, 0], clip.fps),
                  str(staging / "motion.bvh"))
    summary["overlay"] = pathlib.Path(video_io.write_video(
        str(staging / "overlay.mp4"), overlay, clip.fps)).name
    io_utils.atomic_write(staging / "frames.json", json.dumps(per_frame).encode())
    io_utils.atomic_write(staging / "summary.json", json.dumps(summary, indent=1).encode())
  logging.info("wrote %s (%d frames, %d tracked)", out_path, len(frames), tracked.sum())
  return summary
