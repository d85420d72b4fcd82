"""Reading one person's 2D keypoints from a COCO-format JSON file, with validation.

    person = read_coco_person(annotations_json, image_path, annotation_id=None)
    person.keypoints   # [17, 2] pixels (u, v), NaN where v == 0
    person.confidence  # [17] 1.0 labelled (v = 1 or 2), 0.0 unlabelled (v = 0)
    person.image       # [H, W, 3] uint8
    people, skipped = read_coco_people(annotations_json, image_path)   # every annotated person
    person.mask        # [H, W] bool from `segmentation` (polygons or RLE), None without one

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
from PIL import ImageDraw

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
    mask: [H, W] bool person mask (`segmentation`), or None (not read / not annotated).
  """
  keypoints: np.ndarray
  confidence: np.ndarray
  image: np.ndarray
  image_path: str
  annotation_id: Any
  bbox: np.ndarray
  mask: Optional[np.ndarray] = None


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


# ---------------------------------------------------------------------------
# Every person of one image, with its segmentation as a mask.
# ---------------------------------------------------------------------------


def _rle_counts(counts: str) -> list:
  """COCO's compressed RLE string -> run lengths (pycocotools' rleFrString, 6-bit chunks)."""
  out, pos = [], 0
  while pos < len(counts):
    value, shift, more = 0, 0, True
    while more:
      c = ord(counts[pos]) - 48
      value |= (c & 0x1F) << (5 * shift)
      more = bool(c & 0x20)
      pos += 1
      shift += 1
      if not more and (c & 0x10):
        value |= -1 << (5 * shift)
    if len(out) > 2:
      value += out[-2]
    out.append(value)
  return out


def segmentation_mask(segmentation: Any, height: int, width: int,
                      where: str = "segmentation") -> Optional[np.ndarray]:
  """[H, W] bool mask of a COCO `segmentation` (polygon list, or RLE dict); None when empty.

  Raises:
    FitInputError: malformed polygons or RLE (message starts with `where`).
  """
  if segmentation is None or (isinstance(segmentation, list) and not segmentation):
    return None
  if isinstance(segmentation, dict):
    size, counts = segmentation.get("size"), segmentation.get("counts")
    if size != [height, width]:
      raise FitInputError(f"{where}.size: expected [{height}, {width}], got {size!r}")
    if isinstance(counts, str):
      counts = _rle_counts(counts)
    if (not isinstance(counts, list) or any(not isinstance(c, int) or c < 0 for c in counts)
        or sum(counts) != height * width):
      raise FitInputError(f"{where}.counts: expected run lengths summing to {height * width}")
    flat = np.repeat(np.arange(len(counts)) % 2 == 1, counts)
    mask = flat.reshape(width, height).T  # Column-major, as COCO stores it.
    return mask if mask.any() else None
  if not isinstance(segmentation, list) or not all(
      isinstance(p, list) and len(p) >= 6 and len(p) % 2 == 0 and
      all(isinstance(v, (int, float)) and math.isfinite(v) for v in p) for p in segmentation):
    raise FitInputError(f"{where}: expected polygons (lists of >= 3 x, y pairs) or an RLE dict")
  canvas = Image.new("L", (width, height), 0)
  for poly in segmentation:
    ImageDraw.Draw(canvas).polygon([float(v) for v in poly], fill=1)
  mask = np.asarray(canvas) > 0
  return mask if mask.any() else None


def read_coco_people(annotations_path: str, image_path: Optional[str] = None,
                     min_keypoints: int = 2) -> tuple:
  """Every annotated person of one image: keypoints, and the segmentation as a mask.

  The image is the JSON's entry whose `file_name` is `image_path`'s name (or its only image).
  Crowd annotations and persons with fewer than `min_keypoints` labelled keypoints are skipped
  (they cannot determine a body), malformed ones raise.

  Returns:
    (people: list of `CocoPerson` with `mask`, skipped: list of (annotation id, reason)).

  Raises:
    FitInputError: naming the file and field (no usable person, bad keypoints/segmentation, ...).
  """
  path = annotations_path
  data = _load_json(path)
  anns = data.get("annotations")
  if not isinstance(anns, list) or not anns:
    _fail(path, "annotations", "no annotations")
  images = [e for e in data.get("images") or [] if isinstance(e, dict)]
  if image_path is not None:
    named = [e for e in images if e.get("file_name") == os.path.basename(image_path)]
    entry = named[0] if named else (images[0] if len(images) == 1 else None)
    if entry is None:
      _fail(path, "images", f"no image entry with file_name {os.path.basename(image_path)!r}")
  else:
    if not images or not isinstance(images[0].get("file_name"), str):
      _fail(path, "images", "expected a non-empty list with file_name")
    entry = images[0]
    image_path = os.path.join(os.path.dirname(os.path.abspath(path)), entry["file_name"])
  image = _read_image(image_path, path, entry)
  height, width = image.shape[:2]
  person_ids = _person_category_ids(path, data)
  people, skipped = [], []
  for i, ann in enumerate(anns):
    if not (isinstance(ann, dict) and ann.get("image_id") == entry.get("id")
            and ann.get("category_id", 1) in person_ids):
      continue
    raw = ann.get("keypoints")
    if ann.get("iscrowd"):
      skipped.append((ann.get("id"), "crowd annotation"))
      continue
    flags = raw[2::3] if isinstance(raw, list) and len(raw) == 3 * NUM_KEYPOINTS else None
    if raw is None or (flags is not None and sum(
        1 for v in flags if isinstance(v, (int, float)) and v > 0) < min_keypoints):
      skipped.append((ann.get("id"), f"fewer than {min_keypoints} labelled keypoints"))
      continue
    keypoints, confidence = _parse_keypoints(path, i, ann)
    mask = segmentation_mask(ann.get("segmentation"), height, width,
                             f"{path}: annotations[{i}].segmentation")
    pts = keypoints[confidence > 0]
    bbox = np.concatenate([pts.min(0), pts.max(0) - pts.min(0)]).astype(np.float32)
    people.append(CocoPerson(keypoints, confidence, image, image_path, ann.get("id"), bbox, mask))
  if not people:
    _fail(path, "annotations", f"no person annotation of image {entry.get('id')!r} with at "
          f"least {min_keypoints} labelled keypoints (skipped: {skipped})")
  return people, skipped
