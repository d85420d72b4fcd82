"""Pictures of fitted joint sequences against the truth (numpy + PIL, no rendering).

    rgb = joint_strip({"truth": gt [T, J, 3], "per_frame": ..., "dynamics": ...}, parents,
                      occluded [T], every=3)

One row per sequence, one cell every `every` frames: the sequence's skeleton (colour) over the
truth's (grey), both root-centred and seen from the camera (x right, y down: the camera frame's
own axes, orthographic), the same scale in every cell. Occluded frames are captioned "occl.".
"""

from typing import Dict, Sequence

import numpy as np

from flowpose.viz import images as viz

_TRUTH = (170, 170, 170)
_COLOURS = ((31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189))


def joint_strip(rows: Dict[str, np.ndarray], parents: Sequence[int], occluded=None,
                every: int = 3, cell=(96, 128), truth_key: str = "truth") -> np.ndarray:
  """[H, W, 3] uint8 grid (module docstring).

  Args:
    rows: name -> joints [T, J, 3] (metres, camera frame); `truth_key` is drawn under each row.
    parents: [J] parent index per joint (-1 for the root).
    occluded: optional [T] bool.
    every: frame step between cells.
    cell: (width, height) of a cell in pixels.
  """
  truth = np.asarray(rows[truth_key], np.float64)
  frames = np.arange(0, truth.shape[0], every)
  occluded = np.zeros(truth.shape[0], bool) if occluded is None else np.asarray(occluded)
  centre = lambda x: x[..., :2] - x[..., :1, :2]
  extent = max(float(np.abs(centre(np.asarray(v))).max()) for v in rows.values()) + 1e-6
  width, height = cell
  scale = 0.45 * min(width, height * 0.9) / extent

  def to_px(joints):
    return centre(np.asarray(joints, np.float64)) * scale + np.array([width / 2, height * 0.5])

  cells, captions = [], []
  for r, (name, joints) in enumerate(rows.items()):
    colour = _TRUTH if name == truth_key else _COLOURS[r % len(_COLOURS)]
    for t in frames:
      image = np.full((height, width, 3), 255, np.uint8)
      if name != truth_key:
        image = viz.draw_skeleton(image, to_px(truth[t]), parents, color=_TRUTH, radius=1.0,
                                  width=2)
      image = viz.draw_skeleton(image, to_px(joints[t]), parents, color=colour, radius=1.5,
                                width=2)
      cells.append(image)
      captions.append(f"{name} {t}" + (" occl." if occluded[t] else ""))
  return viz.image_grid(cells, captions, num_cols=len(frames), font_size=10)
