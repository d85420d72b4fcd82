"""2D people from a photo: BlazePose detection + landmarks (Google's shipped weights), no mediapipe.

Pipeline (as mediapipe's pose_detection_cpu / pose_landmark_cpu graphs define it):
  1. letterbox the image to 224x224 in [-1, 1]; the detector gives per SSD anchor a box and 4
     keypoints (0 = hip centre, 1 = a point fixing full-body scale and rotation) and a score logit;
  2. decode on the 2254 anchors, sigmoid, weighted NMS (IoU 0.3);
  3. per person a rotated square ROI: centre at keypoint 0, side 2 |kp1 - kp0| x 1.25, rotated so
     hips -> shoulders points up;
  4. the 256x256 crop in [0, 1] -> 39 landmarks (x, y, z, visibility, presence logits) and
     segmentation logits, both mapped back to the image.
Image ops are numpy + PIL; tensorflow (tf.lite.Interpreter) is imported lazily.
"""

import math
import warnings
from typing import List, NamedTuple, Optional, Tuple

import numpy as np
from PIL import Image

from flowpose.evidence import detector_weights

DET_SIZE = 224
LMK_SIZE = 256
NUM_LANDMARKS = 39
# BlazePose landmark index of each COCO-17 keypoint (left/right are the person's own, as in COCO).
COCO_FROM_BLAZEPOSE = (0, 2, 5, 7, 8, 11, 12, 13, 14, 15, 16, 23, 24, 25, 26, 27, 28)
# mediapipe/modules/pose_detection/pose_detection_cpu.pbtxt (SsdAnchorsCalculator and
# TensorsToDetectionsCalculator options).
ANCHOR_STRIDES = (8, 16, 32, 32, 32)
MIN_SCORE = 0.5
NMS_IOU = 0.3
ROI_SCALE = 1.25


class Person(NamedTuple):
  """One detected person, image pixel coordinates.

  keypoints: [17, 3] COCO order, (x, y, confidence in [0, 1]).
  landmarks: [39, 5] BlazePose (x, y, z pixels; visibility, presence probabilities).
  score: detection score x pose-presence flag.
  bbox: [4] (x, y, w, h) around the 33 body landmarks, clipped to the image (the detector's own
    box covers the face only).
  mask: [H, W] bool person mask.
  """
  keypoints: np.ndarray
  landmarks: np.ndarray
  score: float
  bbox: np.ndarray
  mask: np.ndarray


def ssd_anchors() -> np.ndarray:
  """Anchor centres of the detector, normalised to [0, 1]: [2254, 2] (x, y).

  Fixed anchor size (w = h = 1); consecutive layers with the same stride share one grid, each layer
  adding 2 anchors per cell (aspect 1.0 + the interpolated scale): 28²x2 + 14²x2 + 7²x6 = 2254.
  """
  out = []
  layer = 0
  while layer < len(ANCHOR_STRIDES):
    last = layer
    while last < len(ANCHOR_STRIDES) and ANCHOR_STRIDES[last] == ANCHOR_STRIDES[layer]:
      last += 1
    per_cell = 2 * (last - layer)
    n = math.ceil(DET_SIZE / ANCHOR_STRIDES[layer])
    ys, xs = np.meshgrid((np.arange(n) + 0.5) / n, (np.arange(n) + 0.5) / n, indexing="ij")
    cells = np.stack([xs.ravel(), ys.ravel()], -1)
    out.append(np.repeat(cells, per_cell, axis=0))
    layer = last
  return np.concatenate(out).astype(np.float32)


def _sigmoid(x):
  return 1.0 / (1.0 + np.exp(-np.clip(np.asarray(x, np.float64), -100.0, 100.0)))


def decode_detections(raw_boxes: np.ndarray, raw_scores: np.ndarray,
                      anchors: np.ndarray) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Decodes detector outputs (reverse_output_order: x, y, w, h; scales 224).

  Args:
    raw_boxes: [N, 12]; raw_scores: [N] logits; anchors: [N, 2].

  Returns:
    boxes [N, 4] (xmin, ymin, xmax, ymax), keypoints [N, 4, 2], scores [N]; normalised letterbox
    coordinates.
  """
  cx = raw_boxes[:, 0] / DET_SIZE + anchors[:, 0]
  cy = raw_boxes[:, 1] / DET_SIZE + anchors[:, 1]
  w = raw_boxes[:, 2] / DET_SIZE
  h = raw_boxes[:, 3] / DET_SIZE
  boxes = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], -1)
  kps = raw_boxes[:, 4:12].reshape(-1, 4, 2) / DET_SIZE + anchors[:, None, :]
  return boxes, kps, _sigmoid(raw_scores)


def _iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
  """IoU of box [4] with boxes [M, 4] (xmin, ymin, xmax, ymax) -> [M]."""
  lo = np.maximum(box[:2], boxes[:, :2])
  hi = np.minimum(box[2:], boxes[:, 2:])
  inter = np.prod(np.clip(hi - lo, 0, None), -1)
  area = lambda b: np.prod(np.clip(b[..., 2:] - b[..., :2], 0, None), -1)
  return inter / np.maximum(area(box) + area(boxes) - inter, 1e-12)


def weighted_nms(boxes, kps, scores, min_score=MIN_SCORE, iou=NMS_IOU):
  """mediapipe's WEIGHTED non-max suppression.

  Each kept detection is the score-weighted mean (box and keypoints) of the candidates overlapping
  the best remaining one by more than `iou`, with the best one's score.

  Args:
    boxes: [N, 4]; kps: [N, K, 2]; scores: [N].

  Returns:
    list of (box [4], keypoints [K, 2], score), best first.
  """
  idx = np.flatnonzero(scores >= min_score)
  idx = idx[np.argsort(-scores[idx], kind="stable")]
  out = []
  while idx.size:
    overlap = _iou(boxes[idx[0]], boxes[idx]) > iou
    group = idx[overlap]
    wts = scores[group] / scores[group].sum()
    out.append(((boxes[group] * wts[:, None]).sum(0),
                (kps[group] * wts[:, None, None]).sum(0), float(scores[idx[0]])))
    idx = idx[~overlap]
  return out


def letterbox(image: np.ndarray) -> Tuple[np.ndarray, float, np.ndarray]:
  """Resizes image [H, W, 3] uint8 keeping aspect, zero-padded to [224, 224, 3] in [-1, 1].

  Returns the tensor, the scale s and the padding [2] (x, y): letterbox pixel = s * image pixel + pad.
  """
  h, w = image.shape[:2]
  s = min(DET_SIZE / w, DET_SIZE / h)
  nw, nh = max(1, round(w * s)), max(1, round(h * s))
  small = np.asarray(Image.fromarray(image).resize((nw, nh), Image.BILINEAR), np.float32)
  pad = np.array([(DET_SIZE - nw) // 2, (DET_SIZE - nh) // 2])
  out = np.full((DET_SIZE, DET_SIZE, 3), -1.0, np.float32)  # Zero border before normalisation.
  out[pad[1]:pad[1] + nh, pad[0]:pad[0] + nw] = small / 127.5 - 1.0
  return out, s, pad.astype(np.float64)


def refine_from_heatmap(uv: np.ndarray, heatmap: np.ndarray, kernel: int = 7,
                        min_confidence: float = 0.5) -> np.ndarray:
  """mediapipe's RefineLandmarksFromHeatmapCalculator (kernel 7 as pose_landmark sets it).

  Each landmark moves to the sigmoid-weighted mean cell of the kernel x kernel window around it
  (window clipped at the border) when the window's top confidence is >= `min_confidence`. Cell
  indices are used without +0.5, as mediapipe does (the model was trained with that convention).

  Args:
    uv: [L, 2] landmark crop coordinates in [0, S) pixels; heatmap: [h, w, L] logits.

  Returns:
    [L, 2] refined crop coordinates.
  """
  hm_h, hm_w, _ = heatmap.shape
  size = LMK_SIZE
  out = uv.copy()
  off = (kernel - 1) // 2
  for i in range(uv.shape[0]):
    col, row = int(uv[i, 0] / size * hm_w), int(uv[i, 1] / size * hm_h)  # C++ truncation.
    if uv[i, 0] < 0 or uv[i, 1] < 0 or not (0 <= col < hm_w and 0 <= row < hm_h):
      continue
    r0, r1 = max(0, row - off), min(hm_h, row + off + 1)
    c0, c1 = max(0, col - off), min(hm_w, col + off + 1)
    conf = _sigmoid(heatmap[r0:r1, c0:c1, i])
    if conf.max() >= min_confidence and conf.sum() > 0:
      rows, cols = np.mgrid[r0:r1, c0:c1]
      out[i] = [(cols * conf).sum() / conf.sum() / hm_w * size,
                (rows * conf).sum() / conf.sum() / hm_h * size]
  return out


def detection_roi(kps: np.ndarray) -> Tuple[np.ndarray, float, float]:
  """Rotated square ROI from the detection keypoints [4, 2] (image pixels).

  Returns centre [2], side length (pixels) and rotation (radians; rotating the crop by it maps
  crop-up to the hips -> shoulders direction).
  """
  centre, scale_pt = kps[0], kps[1]
  side = 2.0 * float(np.linalg.norm(scale_pt - centre)) * ROI_SCALE
  angle = math.pi / 2 - math.atan2(-(scale_pt[1] - centre[1]), scale_pt[0] - centre[0])
  angle = angle - 2 * math.pi * math.floor((angle + math.pi) / (2 * math.pi))
  return centre, side, angle


def _crop_affine(centre, side, angle, size):
  """Matrix A [2, 3] mapping crop pixel coords (u, v, 1) of a [size, size] crop to image pixels."""
  c, s = math.cos(angle), math.sin(angle)
  rot = np.array([[c, -s], [s, c]]) * side / size
  return np.concatenate([rot, (centre - rot @ np.array([size / 2, size / 2]))[:, None]], 1)


def _warp(img: Image.Image, affine: np.ndarray, size: Tuple[int, int]) -> Image.Image:
  """Samples img at affine @ (x, y, 1) for every output pixel of `size` (w, h); bilinear, zero fill."""
  return img.transform(size, Image.AFFINE, tuple(affine.ravel()), resample=Image.BILINEAR,
                       fillcolor=0)


class Detector:
  """Both BlazePose models, loaded once (tf.lite.Interpreter, weights from `detector_weights`)."""

  def __init__(self, max_people: int = 5):
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    self.max_people = max_people
    self.anchors = ssd_anchors()
    with warnings.catch_warnings():
      # tf.lite.Interpreter warns that it moves to ai_edge_litert (not installed); it still works.
      warnings.filterwarnings("ignore", message=".*tf.lite.Interpreter is deprecated")
      self._det = tf.lite.Interpreter(
          model_content=detector_weights.load_model_bytes("pose_detection"))
      self._lmk = tf.lite.Interpreter(
          model_content=detector_weights.load_model_bytes("pose_landmark_full"))
    for it in (self._det, self._lmk):
      it.allocate_tensors()

  @staticmethod
  def _run(it, x: np.ndarray) -> dict:
    it.set_tensor(it.get_input_details()[0]["index"], x[None].astype(np.float32))
    it.invoke()
    # Outputs are told apart by shape, not by name or order.
    return {tuple(d["shape"][1:]): it.get_tensor(d["index"])[0] for d in it.get_output_details()}

  def detect_boxes(self, image: np.ndarray):
    """image [H, W, 3] uint8 -> list of (box [4] xyxy, keypoints [4, 2], score), image pixels."""
    tensor, s, pad = letterbox(image)
    out = self._run(self._det, tensor)
    boxes, kps, scores = decode_detections(out[(len(self.anchors), 12)],
                                           out[(len(self.anchors), 1)][:, 0], self.anchors)
    people = []
    for box, kp, score in weighted_nms(boxes, kps, scores)[:self.max_people]:
      people.append(((box.reshape(2, 2) * DET_SIZE - pad) / s, (kp * DET_SIZE - pad) / s, score))
    return [(b.ravel(), k, sc) for b, k, sc in people]

  def landmarks(self, image: np.ndarray, kps: np.ndarray):
    """Landmarks [39, 5] (image px; sigmoid visibility/presence), pose flag, mask prob [H, W]."""
    h, w = image.shape[:2]
    centre, side, angle = detection_roi(kps)
    affine = _crop_affine(centre, side, angle, LMK_SIZE)
    crop = _warp(Image.fromarray(image), affine, (LMK_SIZE, LMK_SIZE))
    out = self._run(self._lmk, np.asarray(crop, np.float32) / 255.0)
    raw = out[(NUM_LANDMARKS * 5,)].reshape(NUM_LANDMARKS, 5)
    uv = refine_from_heatmap(raw[:, :2], out[(64, 64, NUM_LANDMARKS)])
    xy = uv @ affine[:, :2].T + affine[:, 2]
    z = raw[:, 2] * side / LMK_SIZE
    lmk = np.concatenate([xy, z[:, None], _sigmoid(raw[:, 3:5])], 1)
    flag = float(out[(1,)][0])
    # The inverse map sends image pixels into the crop.
    inv = np.linalg.inv(np.vstack([affine, [0, 0, 1]]))[:2]
    seg = Image.fromarray(_sigmoid(out[(LMK_SIZE, LMK_SIZE, 1)][..., 0]).astype(np.float32), "F")
    mask = np.asarray(_warp(seg, inv, (w, h)), np.float32)
    return lmk, flag, mask

  def __call__(self, image: np.ndarray) -> List[Person]:
    """image [H, W, 3] uint8 RGB -> people, best first (empty list when nobody is found)."""
    people = []
    for box, kps, score in self.detect_boxes(image):
      lmk, flag, prob = self.landmarks(image, kps)
      if flag < 0.5:  # mediapipe's pose-presence gate: the crop holds no pose.
        continue
      keypoints = np.concatenate([lmk[COCO_FROM_BLAZEPOSE, :2],
                                  lmk[COCO_FROM_BLAZEPOSE, 3:4]], 1)
      del box
      lo = np.clip(lmk[:33, :2].min(0), 0, [image.shape[1], image.shape[0]])
      hi = np.clip(lmk[:33, :2].max(0), 0, [image.shape[1], image.shape[0]])
      bbox = np.concatenate([lo, hi - lo])
      people.append(Person(keypoints, lmk, score * flag, bbox, prob > 0.5))
    return people


def detect(image: np.ndarray, detector: Optional[Detector] = None) -> List[Person]:
  """Convenience: `Detector()(image)` (builds the detector when none is given)."""
  return (detector or Detector())(image)
