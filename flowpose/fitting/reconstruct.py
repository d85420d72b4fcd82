"""Photo in, 3D people out: 2D evidence of every person -> (network start) -> latent fit -> files.

    photo = detector_evidence(image_path, config)            # or annotation_evidence(json, image)
    fitted = fit_people(config, model, body, prior, photo, predict=None)
    write_reconstruction(out_dir, model, photo, fitted, config)   # all or nothing

Evidence per person (`coco.CocoPerson`): COCO-17 keypoints with a confidence (the detector's
per-keypoint visibility, or 1 for annotated keypoints; below `config.min_keypoint_confidence` a
keypoint is dropped) and an optional person mask (the detector's segmentation, or the annotation's
`segmentation` polygons/RLE). Every person is fitted in one batched `fit.fit` call (persons are
independent): keypoints weighted by confidence + the silhouette term on `config.fit.num_mask_pixels`
pixels sampled from the mask + the pose prior in the flow's latent. With a regressor
(`initial.load_regressor`), its prediction is an extra restart 0.

Outputs (`write_reconstruction`, one `io_utils.atomic_dir` swap of `out_dir`):
  overlay.png                 every fitted mesh over the photo (nearest surface wins), the
                              evidence skeletons and the model keypoints (red dots)
  people.json                 the source, image, scale, per person its folder, score and loss,
                              the skipped annotations
  person_NN/{mesh.obj, pose.bvh, params.json, side.png}   as `flowpose.fitting.photo` writes them
Coordinates: fitting happens in the pixels of the image as read (`image_io.load_image` downscales
photos larger than `config.max_side`; `people.json` records the scale), frames as in `photo`.
"""

import json
import os
import re
import time
from typing import Any, Callable, List, NamedTuple, Optional

from absl import logging
import ml_collections
import numpy as np

from flowpose import io_utils
from flowpose import losses
from flowpose.body import model as body_lib
from flowpose.evidence import coco
from flowpose.evidence import image_io
from flowpose.evidence import raster
from flowpose.fitting import checks
from flowpose.fitting import fit as fitting
from flowpose.fitting import initial as initial_lib
from flowpose.fitting import photo
from flowpose.fitting.config import FitInputError  # pylint: disable=g-importing-member
from flowpose.geometry import camera
from flowpose.prior import registry
from flowpose.viz import images as viz
from flowpose.data import bvh

PERSON_FILES = ("mesh.obj", "pose.bvh", "params.json", "side.png")
_PERSON_DIR = re.compile(r"person_\d+$")


class PhotoEvidence(NamedTuple):
  """The people of one photo.

  Attributes:
    image: [H, W, 3] uint8, the image the evidence lives in.
    image_path: the photo file.
    scale: image pixel = original pixel * scale (< 1 when downscaled).
    people: list of `coco.CocoPerson` (keypoints [17, 2] NaN where dropped, confidence [17],
      mask [H, W] bool or None, annotation_id, bbox).
    source: "detector" | "annotations".
    skipped: list of (id, reason) of persons left out.
    scores: [P] detection scores (1 for annotations).
  """
  image: np.ndarray
  image_path: str
  scale: float
  people: list
  source: str
  skipped: list
  scores: np.ndarray


def _drop_unsure(keypoints: np.ndarray, confidence: np.ndarray, threshold: float):
  keep = confidence >= threshold
  return (np.where(keep[:, None], keypoints, np.nan).astype(np.float32),
          np.where(keep, confidence, 0.0).astype(np.float32))


def detector_evidence(image_path: str, config: ml_collections.ConfigDict,
                      detector: Any = None) -> PhotoEvidence:
  """People found by the BlazePose detector (`flowpose.evidence.detector`).

  Raises:
    image_io.ImageInputError: not an image (naming the file), or no person found.
  """
  image, scale = image_io.load_image(image_path, config.max_side)
  if detector is None:
    # Imported here: tensorflow loads only once the image is known to be good.
    from flowpose.evidence import detector as detector_lib  # pylint: disable=g-import-not-at-top
    detector = detector_lib.Detector(max_people=config.max_people)
  people, skipped, scores = [], [], []
  for i, found in enumerate(detector(image)):
    keypoints, confidence = _drop_unsure(found.keypoints[:, :2], found.keypoints[:, 2],
                                         config.min_keypoint_confidence)
    problems = checks.evidence_errors(keypoints[None], confidence[None], image.shape[:2])[0]
    if problems:
      skipped.append((f"detection {i}", "; ".join(problems)))
      continue
    people.append(coco.CocoPerson(keypoints, confidence, image, image_path, f"detection_{i}",
                                  np.asarray(found.bbox, np.float32),
                                  found.mask if found.mask.any() else None))
    scores.append(float(found.score))
  if not people:
    detail = f" ({skipped})" if skipped else ""
    raise image_io.ImageInputError(f"{image_path}: no person found{detail}")
  return PhotoEvidence(image, image_path, scale, people, "detector", skipped,
                       np.asarray(scores, np.float32))


def annotation_evidence(annotations: str, image_path: Optional[str]) -> PhotoEvidence:
  """Every annotated person of the image (`coco.read_coco_people`; raises `FitInputError`)."""
  people, skipped = coco.read_coco_people(annotations, image_path)
  return PhotoEvidence(people[0].image, people[0].image_path, 1.0, people, "annotations",
                       skipped, np.ones(len(people), np.float32))


def evidence_batch(config: ml_collections.ConfigDict, photo_ev: PhotoEvidence) -> tuple:
  """(`fit.Evidence` [P, ...], `fit.MaskEvidence` or None) of every person: unknown focal
  (`config.focal_init_factor`), principal point at the centre; mask pixels when any person has a
  mask (the others: none valid)."""
  height, width = photo_ev.image.shape[:2]
  num = len(photo_ev.people)
  focal = np.full((num, 2), config.focal_init_factor * max(height, width), np.float32)
  centre = np.tile(np.array([[width / 2, height / 2]], np.float32), (num, 1))
  keypoints = np.stack([p.keypoints for p in photo_ev.people])
  confidence = np.stack([p.confidence for p in photo_ev.people])
  masks = [p.mask for p in photo_ev.people]
  evidence = fitting.Evidence(keypoints, confidence, focal, centre)
  if all(m is None for m in masks):
    return evidence, None
  size = config.fit.num_mask_pixels
  pixels = np.zeros((num, size, 2), np.float32)
  valid = np.zeros((num, size), bool)
  for b, mask in enumerate(masks):
    if mask is not None:
      pixels[b], valid[b] = losses.sample_mask_pixels(mask, size, config.mask_seed + b)
  return evidence, fitting.MaskEvidence(pixels, valid)


def _person_result(result: fitting.FitResult, b: int) -> fitting.FitResult:
  """Person b of a batched FitResult, as a B = 1 FitResult."""
  one = lambda x: np.asarray(x)[b:b + 1]
  return result._replace(
      variables={k: one(v) for k, v in result.variables.items()},
      pose_dofs=one(result.pose_dofs), rotmats=one(result.rotmats), betas=one(result.betas),
      transl=one(result.transl), focal=one(result.focal), loss=one(result.loss),
      terms={k: one(v) for k, v in result.terms.items()}, restart=one(result.restart),
      restart_losses=one(result.restart_losses), history=[h[:, b:b + 1] for h in result.history],
      warnings=[list(result.warnings[b])] if result.warnings else [])


def fit_people(config: ml_collections.ConfigDict, model: body_lib.BodyModel, body, prior,
               photo_ev: PhotoEvidence, predict: Optional[Callable] = None) -> List[Any]:
  """One batched fit of every person -> list of `photo.FittedPerson` (camera frame)."""
  evidence, mask = evidence_batch(config, photo_ev)
  size = photo_ev.image.shape[:2]
  initial = None
  if predict is not None:
    start = time.time()
    initial = initial_lib.predict_initial(predict, evidence, size)
    logging.info("[reconstruct] network start for %d people: %.2fs", len(photo_ev.people),
                 time.time() - start)
  result = fitting.fit(config.fit, model, body, prior, evidence, image_size=size,
                       initial=initial, mask=mask)
  if not np.all(np.isfinite(result.loss)):
    raise FloatingPointError("fit_people: the fit diverged (non-finite loss)")
  out = fitting.body_outputs(model, result)
  fitted = []
  for b in range(len(photo_ev.people)):
    kp = np.asarray(camera.perspective_project(out.keypoints[b], result.focal[b],
                                               evidence.principal_point[b]))
    fitted.append(photo.FittedPerson(_person_result(result, b), out.vertices[b], out.joints[b],
                                     kp, result.focal[b], evidence.principal_point[b]))
  return fitted


def overlay_people(model, fitted: list, photo_ev: PhotoEvidence, alpha: float) -> np.ndarray:
  """[H, W, 3] uint8: every mesh (the nearest surface per pixel) over the photo, evidence
  skeletons, model keypoints as red dots."""
  height, width = photo_ev.image.shape[:2]
  palette = viz.part_palette(len(model.part_names))
  depth = np.full((height, width), np.inf, np.float32)
  rgb = np.zeros((height, width, 3), np.uint8)
  for person in fitted:
    cam = raster.PinholeCamera(np.eye(3), np.zeros(3), person.focal, person.principal_point)
    rendering = raster.render(person.vertices, np.asarray(model.faces), cam, (height, width),
                              vertex_labels=np.asarray(model.part_labels), label_colors=palette)
    nearer = rendering.depth < depth
    depth = np.where(nearer, rendering.depth, depth)
    rgb[nearer] = rendering.rgb[nearer]
  image = viz.overlay(photo_ev.image, rgb, alpha, mask=np.isfinite(depth))
  for person, evidence in zip(fitted, photo_ev.people):
    image = viz.draw_keypoints(image, np.nan_to_num(evidence.keypoints, nan=-1e6),
                               visible=evidence.confidence > 0)
    image = viz.draw_points(image, person.keypoints_2d, colors=(255, 0, 0), radius=3.0)
  return image


def person_params(fitted, person: coco.CocoPerson, photo_ev: PhotoEvidence, config) -> dict:
  params = photo.params_dict(fitted, person, config)
  params.update(evidence=photo_ev.source, image_scale=photo_ev.scale,
                keypoint_confidence=person.confidence.tolist(),
                has_mask=person.mask is not None)
  return params


def write_reconstruction(out_dir: str, model, photo_ev: PhotoEvidence, fitted: list,
                         config) -> list:
  """Renders and writes every output into `out_dir` (one swap); returns the written paths."""
  with io_utils.atomic_dir(out_dir) as staging:
    viz.save_png(staging / "overlay.png",
                 overlay_people(model, fitted, photo_ev, config.overlay_alpha))
    summary = []
    for b, (person, evidence) in enumerate(zip(fitted, photo_ev.people)):
      folder = staging / f"person_{b:02d}"
      folder.mkdir()
      viz.save_png(folder / "side.png", photo.side_image(model, person, config.side_view_size))
      io_utils.atomic_write(folder / "mesh.obj", photo.obj_text(
          person.vertices @ photo.CAMERA_TO_WORLD.T, model.faces).encode())
      bvh.write_bvh(photo.fitted_motion(model, person), str(folder / "pose.bvh"))
      params = person_params(person, evidence, photo_ev, config)
      io_utils.atomic_write(folder / "params.json", json.dumps(params, indent=2).encode())
      summary.append({"folder": folder.name, "id": evidence.annotation_id,
                      "score": float(photo_ev.scores[b]), "loss": params["loss"],
                      "keypoint_rmse_px": params["keypoint_rmse_px"],
                      "warnings": params["warnings"]})
    io_utils.atomic_write(staging / "people.json", json.dumps({
        "image": os.path.abspath(photo_ev.image_path), "evidence": photo_ev.source,
        "image_scale": photo_ev.scale, "image_size": list(photo_ev.image.shape[:2]),
        "people": summary, "skipped": [[str(i), r] for i, r in photo_ev.skipped]},
        indent=2).encode())
    names = sorted(str(p.relative_to(staging)) for p in staging.rglob("*") if p.is_file())
  return [os.path.join(os.path.abspath(out_dir), name) for name in names]


def is_own_output(name: str) -> bool:
  """Whether a top-level name in an out_dir is one `write_reconstruction` writes."""
  return name in ("overlay.png", "people.json") or bool(_PERSON_DIR.match(name))


def check_evidence(photo_ev: PhotoEvidence, where: str) -> None:
  """Raises FitInputError naming `where` and the person when evidence cannot determine a body."""
  for person in photo_ev.people:
    problems = checks.evidence_errors(person.keypoints[None], person.confidence[None],
                                      photo_ev.image.shape[:2])[0]
    if problems:
      raise FitInputError(f"{where}: person {person.annotation_id}: " + "; ".join(problems))


def run(config: ml_collections.ConfigDict, image: Optional[str], prior_workdir: Optional[str],
        out_dir: str, annotations: Optional[str] = None, regressor_workdir: Optional[str] = None,
        model: Any = None, detector: Any = None) -> list:
  """The whole job (see the module docstring); returns the written paths.

  Every check (config, `out_dir`, prior and regressor workdirs, image, evidence) runs before
  fitting, and nothing is written unless everything succeeds.

  Raises:
    FitInputError: bad config, annotations, prior/regressor workdir, or evidence.
    image_io.ImageInputError: not an image, or no person found.
    io_utils.OutputPathError: an unusable `out_dir`.
  """
  start = time.time()
  fitting.validate_fit_config(config.fit)
  photo.require_out_dir(out_dir, own=is_own_output, tool="reconstruct")
  prior = photo.load_pose_prior(config.fit.prior, prior_workdir)
  predict = initial_lib.load_regressor(regressor_workdir) if regressor_workdir else None
  if annotations:
    logging.info("[reconstruct] 1/4 evidence: every annotated person of %s", annotations)
    photo_ev = annotation_evidence(annotations, image)
    check_evidence(photo_ev, annotations)
  else:
    if not image:
      raise image_io.ImageInputError("--image: required (or --annotations naming the image)")
    logging.info("[reconstruct] 1/4 evidence: detecting people in %s", image)
    photo_ev = detector_evidence(image, config, detector)
  logging.info("[reconstruct] 1/4 done (%.1fs): %d people (%d with a mask), %d skipped",
               time.time() - start, len(photo_ev.people),
               sum(p.mask is not None for p in photo_ev.people), len(photo_ev.skipped))
  if model is None:
    from flowpose.body.build import assets  # pylint: disable=g-import-not-at-top
    model = assets.load_cc0_model()
  body = photo.reduced_body.make_fit_body(model, photo.body_rotmats_fn,
                                          config.fit.part_vertices_per_part)
  logging.info("[reconstruct] 2/4 fitting %d people (%s start, %d restarts, stages %s)",
               len(photo_ev.people), "network" if predict else "default",
               len(config.fit.restart_yaws_deg) + (predict is not None),
               [f"{s['name']}:{s['steps']}" for s in config.fit.stages])
  fitted = fit_people(config, model, body, prior, photo_ev, predict)
  for b, person in enumerate(fitted):
    for message in person.result.warnings[0]:
      logging.warning("[reconstruct] person %d: %s", b, message)
  logging.info("[reconstruct] 3/4 writing overlay, per-person OBJ/BVH/params/side view -> %s",
               out_dir)
  paths = write_reconstruction(out_dir, model, photo_ev, fitted, config)
  logging.info("[reconstruct] 4/4 done in %.1fs: %d files", time.time() - start, len(paths))
  return paths


def video(video_path: Optional[str], frames_dir: Optional[str], prior_workdir: str, out_dir: str,
          *, dynamics_workdir: Optional[str] = None, keypoints_json: Optional[str] = None,
          fps: float = 30.0, regressor_workdir: Optional[str] = None) -> list:
  """`--video` / `--frames` of launch/reconstruct: `flowpose.fitting.video_job.reconstruct_video`
  (detector per frame or a keypoint track -> one person followed by box overlap -> sequence fit
  with the dynamics prior -> motion.bvh, overlay.mp4, frames.json, summary.json in out_dir).
  `regressor_workdir`: the trained network (same prior) as the sequence fit's stage 1
  (`flowpose.fitting.sequence_network`).

  Returns [out_dir]. Its errors come back as one `FitInputError` naming the flag or file.
  """
  if bool(video_path) == bool(frames_dir):
    raise FitInputError("--video / --frames: give exactly one (a video file or a folder of frames)")
  try:
    # pylint: disable=g-import-not-at-top
    from flowpose.evidence import video_io
    from flowpose.fitting import video_job
    from flowpose.models import dynamics_io
    # pylint: enable=g-import-not-at-top
  except ImportError as e:
    raise FitInputError(f"--video: video support not installed ({e})") from e
  try:
    video_job.reconstruct_video(
        out_dir=out_dir, prior_workdir=prior_workdir, dynamics_workdir=dynamics_workdir,
        video=video_path, frames_dir=frames_dir, keypoints_json=keypoints_json, fps=fps,
        regressor_workdir=regressor_workdir)
  except (video_job.VideoJobError, video_io.VideoInputError, dynamics_io.DynamicsLoadError,
          registry.PriorRegistryError) as e:
    raise FitInputError(str(e)) from e
  return [out_dir]
