"""Reading one person's 2D keypoints from a COCO-format JSON file, with validation.

    person = read_coco_person(annotations_json, image_path, annotation_id=None)
    person.keypoints   # [17, 2] pixels (u, v), NaN where v == 0
    person.confidence  # [17] 1.0 labelled (v = 1 or 2), 0.0 unlabelled (v = 0)
    person.image       # [H, W, 3] uint8

Generic COCO JSON: `images` (id, file_name, width, height), `annotations` (id,
image_id, category_id, keypoints = 51 numbers `x, y, v` per COCO-17 keypoint),
`categories` (the person category, `keypoints` names). The annotation is the
one with `--annotation_id`, else the person annotation of the image with the
most labelled keypoints. COCO pixel coordinates are continuous with the
origin at the image corner, the convention of `flowpose.geometry.camera`.

Every problem raises `FitInputError` (a ValueError) naming the file and the
field: unreadable/invalid JSON, missing fields, no annotations or no person
annotation, keypoints of the wrong length or non-numeric / NaN / infinite,
all keypoints unlabelled (v = 0), visibility flags outside {0, 1, 2},
missing or unreadable image, image size different from the JSON's.
"""

import json
import math
import os
from typing import Any, NamedTuple, Optional

import numpy as np
from PIL import Image

from flowpose.fitting.config import FitInputError

NUM_KEYPOINTS = 17


class CocoPerson(NamedTuple):
  """One annotated person.

  Attributes:
    keypoints: [17, 2] float32 pixels; NaN where unlabelled.
    confidence: [17] float32, 1 labelled, 0 unlabelled.
    image: [H, W, 3] uint8 RGB.
    image_path: the image file read.
    annotation_id: the chosen annotation's id.
    bbox: [4] (x, y, w, h) from the annotation, or from the keypoints.
  """
  keypoints: np.ndarray
  confidence: np.ndarray
  image: np.ndarray
  image_path: str
  annotation_id: Any
  bbox: np.ndarray


def _fail(path, field, message):
  raise FitInputError(f"{path}: {field}: {message}")


def _load_json(path: str) -> dict:
  try:
    with open(path, encoding="utf-8") as f:
      data = json.load(f)
  except FileNotFoundError:
    _fail(path, "file", "not found")
  except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
    _fail(path, "file", f"not readable JSON ({e})")
  if not isinstance(data, dict):
    _fail(path, "top level", f"expected a JSON object, got {type(data).__name__}")
  return data


def _person_category_ids(path, data) -> set:
  cats = data.get("categories")
  if cats is None:  # Keypoint files always use category 1 for persons.
    return {1}
  if not isinstance(cats, list):
    _fail(path, "categories", "expected a list")
  ids = {c.get("id") for c in cats if isinstance(c, dict) and c.get("name") == "person"}
  return ids or {1}


def _parse_keypoints(path, ann_index, ann) -> tuple[np.ndarray, np.ndarray]:
  field = f"annotations[{ann_index}].keypoints"
  raw = ann.get("keypoints")
  if not isinstance(raw, list) or len(raw) != 3 * NUM_KEYPOINTS:
    got = f"length {len(raw)}" if isinstance(raw, list) else type(raw).__name__
    _fail(path, field, f"expected a list of {3 * NUM_KEYPOINTS} numbers "
          f"(17 x (x, y, v)), got {got}")
  if not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in raw):
    _fail(path, field, "expected numbers only")
  values = np.asarray(raw, np.float64).reshape(NUM_KEYPOINTS, 3)
  if not np.all(np.isfinite(values)):
    bad = int(np.flatnonzero(~np.all(np.isfinite(values), axis=1))[0])
    _fail(path, field, f"keypoint {bad} is NaN or infinite")
  flags = values[:, 2]
  if not np.all(np.isin(flags, (0, 1, 2))):
    _fail(path, field, f"visibility flags must be 0, 1 or 2, got {sorted(set(flags))}")
  labelled = flags > 0
  if not labelled.any():
    _fail(path, field, "all 17 keypoints are unlabelled (v = 0): nothing to fit")
  keypoints = np.where(labelled[:, None], values[:, :2], np.nan).astype(np.float32)
  return keypoints, labelled.astype(np.float32)


def _find_image_entry(path, data, image_id):
  images = data.get("images")
  if not isinstance(images, list) or not images:
    _fail(path, "images", "expected a non-empty list")
  for entry in images:
    if isinstance(entry, dict) and entry.get("id") == image_id:
      return entry
  _fail(path, "images", f"no image with id {image_id!r}")


def _read_image(path: str, json_path: str, entry: dict) -> np.ndarray:
  if not os.path.isfile(path):
    _fail(json_path, "image", f"image file {path} not found")
  try:
    with Image.open(path) as im:
      image = np.asarray(im.convert("RGB"))
  except (OSError, ValueError) as e:
    _fail(json_path, "image", f"image file {path} is not a readable image ({e})")
  height, width = entry.get("height"), entry.get("width")
  if (height, width) != (None, None) and image.shape[:2] != (height, width):
    _fail(json_path, "images.height/width",
          f"JSON says {height}x{width}, image {path} is {image.shape[0]}x{image.shape[1]}")
  return image


def read_coco_person(annotations_path: str, image_path: Optional[str] = None,
                     annotation_id: Optional[Any] = None) -> CocoPerson:
  """Reads and validates one person annotation and its image.

  Args:
    annotations_path: COCO JSON file.
    image_path: the image; default: the chosen image entry's `file_name` next
      to the JSON file.
    annotation_id: the annotation to use; default: among the person
      annotations (of the image named by `image_path`, when given), the one
      with the most labelled keypoints.

  Returns:
    A `CocoPerson`. Raises `FitInputError` on any problem (see module doc).
  """
  path = annotations_path
  data = _load_json(path)
  anns = data.get("annotations")
  if not isinstance(anns, list) or not anns:
    _fail(path, "annotations", "no annotations")
  person_ids = _person_category_ids(path, data)
  candidates = [(i, a) for i, a in enumerate(anns)
                if isinstance(a, dict) and a.get("category_id", 1) in person_ids
                and "keypoints" in a]
  if annotation_id is not None:
    candidates = [(i, a) for i, a in candidates if str(a.get("id")) == str(annotation_id)]
    if not candidates:
      _fail(path, "annotations", f"no person annotation with id {annotation_id!r}")
  elif image_path is not None:
    name = os.path.basename(image_path)
    ids = {e.get("id") for e in data.get("images") or []
           if isinstance(e, dict) and e.get("file_name") == name}
    if ids:
      candidates = [(i, a) for i, a in candidates if a.get("image_id") in ids]
  if not candidates:
    _fail(path, "annotations", "no person annotation with keypoints")

  def labelled_count(item):
    raw = item[1].get("keypoints")
    if isinstance(raw, list) and len(raw) == 3 * NUM_KEYPOINTS:
      flags = raw[2::3]
      return sum(1 for v in flags if isinstance(v, (int, float)) and not
                 (isinstance(v, float) and math.isnan(v)) and v > 0)
    return -1

  index, ann = max(candidates, key=labelled_count)
  keypoints, confidence = _parse_keypoints(path, index, ann)
  entry = _find_image_entry(path, data, ann.get("image_id"))
  if image_path is None:
    if not isinstance(entry.get("file_name"), str):
      _fail(path, "images.file_name", "missing")
    image_path = os.path.join(os.path.dirname(os.path.abspath(path)), entry["file_name"])
  image = _read_image(image_path, path, entry)
  bbox = ann.get("bbox")
  if (isinstance(bbox, list) and len(bbox) == 4
      and all(isinstance(x, (int, float)) for x in bbox)):
    bbox = np.asarray(bbox, np.float32)
  else:
    pts = keypoints[confidence > 0]
    lo, hi = pts.min(0), pts.max(0)
    bbox = np.concatenate([lo, hi - lo]).astype(np.float32)
  return CocoPerson(keypoints, confidence, image, image_path, ann.get("id"), bbox)
