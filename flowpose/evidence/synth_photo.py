"""The `self` regime's evidence: shaded CC0 bodies over random backgrounds, seen by BlazePose.

    photos = synth_photo.PhotoRenderer(model, resolution=64)      # 256 px photos
    truth = renderer.render_at(scene, vertices, keypoints3d, transl)  # synth.Renderer
    fields = photos.detect(rng, scene, vertices, truth)

The scene is the one of `flowpose.evidence.synth` (same key, same camera and framing); the
photo is rendered at `PHOTO_SIZE` px with the focal scaled to it, so photo pixels are crop
pixels times `PHOTO_SIZE / R`. The body is shaded (smooth Lambertian, random light) in random
clothes (skin on head, neck, forearms and hands; a top; trousers; shoes), not in part colours,
over a random background (two-colour gradient, low-frequency colour noise, or stripes, plus
pixel noise); no external images. `flowpose.evidence.detector` (BlazePose) then gives the
evidence, mapped back to the R px crop:
  keypoints [17, 2] the detector's (zeros when nobody is found), visible [17] its keypoint
  confidence >= `MIN_KEYPOINT_SCORE`, keypoint_score [17] its keypoint confidence in [0, 1]
  (0 when nobody is found), mask [R, R] its person mask, part_map all background (a
  detector has no part labels); beside them, for evaluation only: keypoints_true [17, 2],
  visible_true [17] (the rendered truth), detected (bool), detector_score.
"""

from typing import Dict

import numpy as np
from PIL import Image

from flowpose.body import model as body_lib
from flowpose.evidence import shading
from flowpose.evidence import synth
from flowpose.evidence import views
from flowpose.evidence import zbuffer

PHOTO_SIZE = 256
MIN_KEYPOINT_SCORE = 0.5
_SKIN = ("head", "neck", "left_forearm", "left_hand", "right_forearm", "right_hand")
_TOP = ("chest", "abdomen", "left_upper_arm", "right_upper_arm")
_FEET = ("left_foot", "right_foot")
_SKIN_TONES = np.array([[0.96, 0.80, 0.69], [0.45, 0.30, 0.20]])  # Light .. dark.


def random_background(rng: np.random.Generator, size: int) -> np.ndarray:
  """[size, size, 3] uint8: gradient, colour noise or stripes (uniform choice) + pixel noise."""
  kind = rng.integers(3)
  a, b = rng.uniform(0, 1, (2, 3))
  yy, xx = (np.mgrid[:size, :size] + 0.5) / size
  angle = rng.uniform(0, 2 * np.pi)
  along = np.cos(angle) * xx + np.sin(angle) * yy
  if kind == 0:
    t = (along - along.min()) / max(np.ptp(along), 1e-9)
    image = a + t[..., None] * (b - a)
  elif kind == 1:
    cells = int(rng.integers(3, 13))
    grid = Image.fromarray((rng.uniform(0, 1, (cells, cells, 3)) * 255).astype(np.uint8))
    image = np.asarray(grid.resize((size, size), Image.BILINEAR), np.float64) / 255
  else:
    t = 0.5 + 0.5 * np.sin(2 * np.pi * rng.uniform(2, 20) * along)
    image = a + t[..., None] * (b - a)
  image = image + rng.normal(0, rng.uniform(0, 0.05), image.shape)
  return np.clip(np.round(image * 255), 0, 255).astype(np.uint8)


def clothes(rng: np.random.Generator, part_names) -> np.ndarray:
  """[P, 3] float colours in [0, 1] per part: skin, a top, trousers, shoes."""
  skin = _SKIN_TONES[0] + rng.uniform() * (_SKIN_TONES[1] - _SKIN_TONES[0])
  top, bottom, shoes = rng.uniform(0.05, 0.95, (3, 3))
  return np.stack([skin if n in _SKIN else top if n in _TOP else shoes if n in _FEET
                   else bottom for n in part_names])


class PhotoRenderer:
  """Renders a `synth.Scene`'s body as a photo and runs the detector on it."""

  def __init__(self, model: body_lib.BodyModel, resolution: int, detector=None):
    from flowpose.evidence import detector as detector_lib  # pylint: disable=g-import-not-at-top
    self.model = model
    self.resolution = int(resolution)
    self.faces = np.asarray(model.faces)
    self.face_parts = zbuffer.face_labels(self.faces, np.asarray(model.part_labels))
    self.detector = detector or detector_lib.Detector(max_people=2)

  def photo(self, rng: np.random.Generator, focal: float, vertices: np.ndarray) -> np.ndarray:
    """[PHOTO_SIZE, PHOTO_SIZE, 3] uint8 of the body (camera-frame `vertices`, crop `focal`)."""
    scale = PHOTO_SIZE / self.resolution
    cam = views.PinholeCamera(np.eye(3), np.zeros(3), np.full(2, focal * scale),
                              np.full(2, PHOTO_SIZE / 2))
    raster = zbuffer.rasterize(vertices, self.faces, cam, (PHOTO_SIZE, PHOTO_SIZE))
    colors = clothes(rng, self.model.part_names)[self.face_parts]
    light = np.array([rng.uniform(-1, 1), rng.uniform(-1, 0.2), -1.0])
    body = shading.shade(vertices, self.faces, raster, cam, colors, light_dir=light,
                         ambient=rng.uniform(0.25, 0.5), smooth=True)
    image = random_background(rng, PHOTO_SIZE)
    person = raster.face_index >= 0
    image[person] = body[person]
    return image

  def detect(self, rng: np.random.Generator, scene: synth.Scene, vertices: np.ndarray,
             truth: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
    """The stored fields of a `self` example (module docstring).

    Args:
      rng: the photo's Generator (clothes, light, background).
      scene: the example's scene. vertices: [V, 3] the placed body (camera frame).
      truth: `synth.Renderer.render_at` of the same body (the rendered evidence and labels).
    """
    res = self.resolution
    out = dict(truth)
    people = self.detector(self.photo(rng, scene.focal, vertices))
    scale = res / PHOTO_SIZE
    out["keypoints_true"], out["visible_true"] = out["keypoints"], out["visible"]
    out["part_map"] = np.zeros((res, res), np.uint8)
    if people:
      best = max(people, key=lambda p: p.score)
      out["keypoints"] = (best.keypoints[:, :2] * scale).astype(np.float32)
      out["visible"] = (best.keypoints[:, 2] >= MIN_KEYPOINT_SCORE).astype(np.float32)
      out["keypoint_score"] = np.clip(best.keypoints[:, 2], 0.0, 1.0).astype(np.float32)
      small = Image.fromarray(best.mask.astype(np.uint8) * 255).resize((res, res), Image.BOX)
      out["mask"] = (np.asarray(small) >= 128).astype(np.uint8)
      out["detector_score"] = np.float32(best.score)
    else:
      out["keypoints"] = np.zeros((17, 2), np.float32)
      out["visible"] = np.zeros(17, np.float32)
      out["keypoint_score"] = np.zeros(17, np.float32)
      out["mask"] = np.zeros((res, res), np.uint8)
      out["detector_score"] = np.float32(0.0)
    out["detected"] = np.bool_(bool(people))
    return out
