r"""Reconstruction from the two evidence sources of a photo: the detector vs the COCO annotations.

  python -m benchmarks.reconstruct_sources --prior_workdir=P \
      --out=results/reconstruct_sources/reconstruct_sources.json \
      [--image=../shared/data/coco/000000000785.jpg] [--annotations=...person_keypoints_785.json] \
      [--config=experiments/reconstruct.py[:runlocal]] [--noablate_silhouette]

Both fits use the same config and prior (`flowpose.fitting.reconstruct`: keypoints weighted by
confidence + silhouette from the person mask + flow latent prior). Detected people are matched to
annotated ones by mean keypoint distance. Per matched person (pixels, millimetres):
  reprojection_own_px        mean distance of each fit's projected keypoints to its own evidence
                             (confidence > 0 keypoints)
  reprojection_vs_annotations_px   ... to the annotated keypoints (both fits)
  mask_iou_vs_annotation     IoU of each fit's rendered silhouette with the annotated polygon
  pa_mpjpe_between_mm        PA-MPJPE between the two 3D results (31 joints; neither is ground truth)
  pa_pve_between_mm          the same over all mesh vertices
With --ablate_silhouette (default), the detector fit is repeated with `loss_weights.silhouette = 0`
(`detector_no_silhouette`) to show what the term changes. Writes the JSON (atomically) and a
side-by-side PNG beside it (`<out>.png`: overlays and side views of both fits).
"""

import json
import os
import pathlib
import sys
import time

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

# pylint: disable=g-import-not-at-top,wrong-import-position
from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags
import numpy as np

from flowpose import io_utils
from flowpose import metrics
from flowpose.body.build import assets
from flowpose.evidence import detector_weights
from flowpose.evidence import image_io
from flowpose.evidence import raster
from flowpose.fitting import config as fit_config
from flowpose.fitting import photo
from flowpose.fitting import reconstruct
from flowpose.fitting import reduced_body
from flowpose.viz import images as viz
# pylint: enable=g-import-not-at-top,wrong-import-position

_REPO = pathlib.Path(__file__).resolve().parents[1]
_DATA = pathlib.Path(os.environ.get("FLOWPOSE_SHARED_DATA") or _REPO.parent / "shared" / "data")
config_flags.DEFINE_config_file("config", str(_REPO / "experiments" / "reconstruct.py"),
                                "Reconstruction config.")
_PRIOR_WORKDIR = flags.DEFINE_string("prior_workdir", None, "Trained prior workdir.")
_OUT = flags.DEFINE_string("out", None, "Output JSON (a PNG is written beside it).")
_IMAGE = flags.DEFINE_string("image", str(_DATA / "coco" / "000000000785.jpg"), "Photo.")
_ANNOTATIONS = flags.DEFINE_string("annotations", str(_DATA / "coco" / "person_keypoints_785.json"),
                                   "COCO keypoint JSON of the photo (with segmentation).")
_ABLATE = flags.DEFINE_bool("ablate_silhouette", True,
                            "Also fit the detector evidence without the silhouette term.")


def _mean_px(a: np.ndarray, b: np.ndarray, weight: np.ndarray) -> float:
  d = np.linalg.norm(a - np.nan_to_num(b), axis=-1)
  return float(np.sum(d * (weight > 0)) / max(np.sum(weight > 0), 1))


def _silhouette(model, fitted, size) -> np.ndarray:
  cam = raster.PinholeCamera(np.eye(3), np.zeros(3), fitted.focal, fitted.principal_point)
  return np.isfinite(raster.rasterize(fitted.vertices, np.asarray(model.faces), cam,
                                      size).depth)


def _iou(a, b) -> float:
  return float((a & b).sum() / max((a | b).sum(), 1))


def _match(det_people, ann_people) -> list:
  """Greedy (detected index, annotated index) pairs by mean distance of shared keypoints."""
  cost = np.full((len(det_people), len(ann_people)), np.inf)
  for i, d in enumerate(det_people):
    for j, a in enumerate(ann_people):
      both = (d.confidence > 0) & (a.confidence > 0)
      if both.any():
        cost[i, j] = np.linalg.norm(d.keypoints[both] - a.keypoints[both], axis=-1).mean()
  pairs = []
  while np.isfinite(cost).any():
    i, j = np.unravel_index(np.argmin(cost), cost.shape)
    pairs.append((int(i), int(j)))
    cost[i, :], cost[:, j] = np.inf, np.inf
  return pairs


def _fit(config, model, body, prior, photo_ev, label):
  start = time.time()
  fitted = reconstruct.fit_people(config, model, body, prior, photo_ev)
  seconds = time.time() - start
  logging.info("[reconstruct_sources] %s: %d people fitted in %.1fs", label, len(fitted), seconds)
  return fitted, seconds


def run(config, prior_workdir, out, image, annotations, ablate: bool) -> dict:
  out = io_utils.require_output_path(out, "--out", is_dir=False)
  prior = photo.load_pose_prior(config.fit.prior, prior_workdir)
  model = assets.load_cc0_model()
  body = reduced_body.make_fit_body(model, photo.body_rotmats_fn,
                                    config.fit.part_vertices_per_part)
  detected = reconstruct.detector_evidence(image, config)
  annotated = reconstruct.annotation_evidence(annotations, image)
  if detected.scale != 1.0:
    raise fit_config.FitInputError(f"--image: {image} is downscaled for detection; compare "
                                   "sources on photos of at most config.max_side pixels")
  size = annotated.image.shape[:2]
  fits = {"detector": _fit(config, model, body, prior, detected, "detector"),
          "annotations": _fit(config, model, body, prior, annotated, "annotations")}
  if ablate:
    ablated = config.copy_and_resolve_references()
    ablated.fit.loss_weights["silhouette"] = 0.0
    fits["detector_no_silhouette"] = _fit(ablated, model, body, prior, detected,
                                          "detector, no silhouette")
  people, tiles, captions = [], [], []
  for i, j in _match(detected.people, annotated.people):
    ann = annotated.people[j]
    ann_mask = ann.mask if ann.mask is not None else np.zeros(size, bool)
    row = {"detected": i, "annotation_id": ann.annotation_id}
    own = {"detector": detected.people[i], "annotations": ann,
           "detector_no_silhouette": detected.people[i]}
    for name, (fitted, _) in fits.items():
      k = i if name != "annotations" else j
      person = fitted[k]
      row[name] = {
          "reprojection_own_px": _mean_px(person.keypoints_2d, own[name].keypoints,
                                          own[name].confidence),
          "reprojection_vs_annotations_px": _mean_px(person.keypoints_2d, ann.keypoints,
                                                     ann.confidence),
          "mask_iou_vs_annotation": _iou(_silhouette(model, person, size), ann_mask),
          "loss_terms": {t: float(v[0]) for t, v in person.result.terms.items()},
      }
    det, ann_fit = fits["detector"][0][i], fits["annotations"][0][j]
    row["pa_mpjpe_between_mm"] = float(metrics.pa_mpjpe(det.joints, ann_fit.joints))
    row["pa_pve_between_mm"] = float(metrics.pa_mpjpe(det.vertices, ann_fit.vertices))
    if "detector_no_silhouette" in fits:
      row["pa_mpjpe_silhouette_effect_mm"] = float(metrics.pa_mpjpe(
          fits["detector_no_silhouette"][0][i].joints, det.joints))
    people.append(row)
    for name in fits:
      k = i if name != "annotations" else j
      ev = detected if name != "annotations" else annotated
      r = row[name]
      tiles.append(reconstruct.overlay_people(model, [fits[name][0][k]],
                                              ev._replace(people=[ev.people[k]]),
                                              config.overlay_alpha))
      captions.append(f"{name}: {r['reprojection_vs_annotations_px']:.1f} px vs annotations, "
                      f"IoU {r['mask_iou_vs_annotation']:.2f}")
    for name in fits:
      k = i if name != "annotations" else j
      tiles.append(photo.side_image(model, fits[name][0][k], size[0]))
      captions.append(f"{name}: side view")
  report = {
      "image": os.path.abspath(image), "annotations": os.path.abspath(annotations),
      "prior_workdir": os.path.abspath(prior_workdir) if prior_workdir else None,
      "prior": config.fit.prior, "stages": [f"{s['name']}:{s['steps']}" for s in config.fit.stages],
      "restarts": list(config.fit.restart_yaws_deg),
      "silhouette_weight": float(config.fit.loss_weights["silhouette"]),
      "num_detected": len(detected.people), "num_annotated": len(annotated.people),
      "fit_seconds": {name: round(s, 2) for name, (_, s) in fits.items()},
      "people": people,
  }
  png = out.with_suffix(".png")
  viz.save_png(png, viz.image_grid(tiles, captions, num_cols=len(fits)))
  report["png"] = str(png)
  io_utils.atomic_write(out, json.dumps(report, indent=2).encode())
  return report


def main(argv):
  del argv
  try:
    report = run(flags.FLAGS.config, _PRIOR_WORKDIR.value, _OUT.value, _IMAGE.value,
                 _ANNOTATIONS.value, _ABLATE.value)
  except (fit_config.FitInputError, image_io.ImageInputError, io_utils.OutputPathError,
          detector_weights.DetectorWeightsError) as e:
    print(f"reconstruct_sources: error: {e}", file=sys.stderr)
    return 2
  for row in report["people"]:
    print(f"person {row['annotation_id']}: PA-MPJPE between sources "
          f"{row['pa_mpjpe_between_mm']:.1f} mm, PA-PVE {row['pa_pve_between_mm']:.1f} mm")
    for name in report["fit_seconds"]:
      r = row[name]
      print(f"  {name:24s} own {r['reprojection_own_px']:5.1f} px, vs annotations "
            f"{r['reprojection_vs_annotations_px']:5.1f} px, mask IoU "
            f"{r['mask_iou_vs_annotation']:.3f}")
  print(f"[reconstruct_sources] -> {_OUT.value}, {report['png']}")
  return 0


if __name__ == "__main__":
  sys.exit(app.run(main) or 0)
