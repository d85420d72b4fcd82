"""Checks of fitting inputs and results: evidence that cannot determine a body, clamps that bind.

`evidence_errors` finds per-person 2D evidence from which no body can be fitted (the fitter would
run and return something meaningless); `fit` raises `FitInputError` with them. `result_warnings`
lists what the fit accepted but the user must know: the similar-triangles depth start clamped to
`reduced_body.INIT_DEPTH_RANGE`, a final depth outside that range, and keypoints behind or within
`camera.MIN_DEPTH` of the camera plane (where the projection's depth clamp binds and the
reprojection term is meaningless for them).
"""

from typing import Optional, Sequence

import numpy as np

from flowpose.geometry import camera

# A keypoint box smaller than this (pixels) carries no scale: all keypoints on one pixel.
MIN_KEYPOINT_SPREAD_PX = 2.0
# A keypoint box this many times the image's larger side is not a person in this image.
MAX_PERSON_TO_IMAGE = 10.0


def evidence_errors(keypoints: np.ndarray, confidence: np.ndarray,
                    image_size: Optional[Sequence[int]] = None) -> list:
  """Why each person's evidence cannot determine a body (empty lists: fine).

  Args:
    keypoints: [B, K, 2] pixels (NaN where missing).
    confidence: [B, K] (0 = missing).
    image_size: optional (H, W); enables the in-image and size checks.

  Returns:
    [B] lists of messages.
  """
  keypoints = np.asarray(keypoints, np.float64)
  confidence = np.asarray(confidence, np.float64)
  out = []
  for kp, conf in zip(keypoints, confidence):
    problems = []
    valid = (conf > 0) & np.all(np.isfinite(kp), -1)
    points = kp[valid]
    if len(points) < 2:
      problems.append(f"{len(points)} labelled keypoint(s); at least 2 are needed to fix "
                      "the person's scale and depth")
      out.append(problems)
      continue
    spread = float(np.max(points.max(0) - points.min(0)))
    if spread < MIN_KEYPOINT_SPREAD_PX:
      problems.append(f"all {len(points)} labelled keypoints lie within {spread:.2g} px of "
                      "each other: no person scale")
    if image_size is not None:
      height, width = image_size
      inside = ((points[:, 0] >= 0) & (points[:, 0] <= width) & (points[:, 1] >= 0) &
                (points[:, 1] <= height))
      if not inside.any():
        problems.append(f"every labelled keypoint lies outside the {width}x{height} image")
      if spread > MAX_PERSON_TO_IMAGE * max(height, width):
        problems.append(f"the keypoints span {spread:.0f} px, more than "
                        f"{MAX_PERSON_TO_IMAGE:g}x the image's larger side ({max(height, width)}"
                        " px): not keypoints of this image")
    out.append(problems)
  return out


def result_warnings(depth_init_clamped: np.ndarray, depth_init: np.ndarray,
                    keypoints_cam: np.ndarray, transl: np.ndarray,
                    depth_range: Sequence[float]) -> list:
  """[B] lists of warnings about a fit (see the module docstring).

  Args:
    depth_init_clamped: [B] bool, the initial depth estimate was clamped to `depth_range`.
    depth_init: [B] the (clamped) initial depth, metres.
    keypoints_cam: [B, K, 3] fitted keypoints in the camera frame.
    transl: [B, 3] fitted translations.
    depth_range: (near, far) metres.
  """
  out = []
  for b in range(len(transl)):
    warnings = []
    if depth_init_clamped[b]:
      warnings.append(f"the initial depth estimate was clamped into {depth_range[0]:g}-"
                      f"{depth_range[1]:g} m (start depth {depth_init[b]:.3g} m): the keypoints' "
                      "scale does not match a human at a plausible distance, the fit is distorted")
    depth = float(transl[b, 2])
    if not depth_range[0] <= depth <= depth_range[1]:
      warnings.append(f"fitted depth {depth:.3g} m is outside {depth_range[0]:g}-"
                      f"{depth_range[1]:g} m")
    behind = int(np.sum(~camera.in_front(np.asarray(keypoints_cam[b]))))
    if behind:
      warnings.append(f"{behind} fitted keypoint(s) lie behind or within "
                      f"{camera.MIN_DEPTH:g} m of the camera plane: the projection's depth "
                      "clamp binds and their reprojection is meaningless")
    out.append(warnings)
  return out
