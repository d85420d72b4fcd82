"""PNG helpers (pillow): atomic saving, keypoint/skeleton drawing, overlays, palettes, grids.

Images are numpy arrays: `[H, W]` grey or `[H, W, 3]` RGB (`[H, W, 4]` RGBA is accepted where
noted), uint8 or float in [0, 1]; every drawing function returns a new `[H, W, 3]` uint8 array
and leaves its input untouched.

2D points use the pixel convention of `flowpose.evidence.raster`: `(u, v)` = (column, row) with pixel
centres at integer + 0.5, so a point at (10.5, 20.5) is drawn centred on pixel row 20, col 10.
"""

import colorsys
import pathlib
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from flowpose import io_utils

COCO17_KEYPOINT_NAMES = (
    "nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder",
    "right_shoulder", "left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_hip",
    "right_hip", "left_knee", "right_knee", "left_ankle", "right_ankle")

# The 19 limbs of the COCO person skeleton (COCO's 1-based `skeleton` field, made 0-based).
COCO17_SKELETON = (
    (15, 13), (13, 11), (16, 14), (14, 12), (11, 12), (5, 11), (6, 12), (5, 6), (5, 7), (6, 8),
    (7, 9), (8, 10), (1, 2), (0, 1), (0, 2), (1, 3), (2, 4), (3, 5), (4, 6))

# Side colours: the body's left in blue, right in orange, midline in green (as most pose
# visualisers do). In a front view the body's left is on the image's right.
LEFT_COLOR = (30, 110, 230)
RIGHT_COLOR = (240, 120, 20)
CENTER_COLOR = (30, 170, 60)

# Hand-picked, well separated colours first (Tableau-like); `part_palette` continues with
# golden-angle hues beyond them.
_BASE_PALETTE = np.array([
    (31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
    (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207),
    (174, 199, 232), (255, 187, 120), (152, 223, 138), (255, 152, 150), (197, 176, 213),
    (196, 156, 148), (247, 182, 210), (199, 199, 199), (219, 219, 141), (158, 218, 229),
], np.uint8)


def _as_uint8(image) -> np.ndarray:
  """bool -> {0, 255}, float in [0, 1] -> rounded uint8 (NaN -> 0), uint8 unchanged."""
  image = np.asarray(image)
  if image.dtype == bool:
    return image.astype(np.uint8) * 255
  if image.dtype != np.uint8:
    image = np.clip(np.round(np.nan_to_num(image.astype(np.float64)) * 255), 0, 255)
    return image.astype(np.uint8)
  return image


def to_uint8_rgb(image) -> np.ndarray:
  """Converts a grey / RGB / RGBA image (uint8, bool or float in [0, 1]) to [H, W, 3] uint8.

  RGBA is composited over white.
  """
  image = _as_uint8(image)
  if image.ndim == 2:
    image = np.repeat(image[..., None], 3, axis=-1)
  if image.ndim != 3 or image.shape[-1] not in (3, 4):
    raise ValueError(f"image: expected [H, W], [H, W, 3] or [H, W, 4]; got {image.shape}")
  if image.shape[-1] == 4:
    alpha = image[..., 3:].astype(np.float64) / 255
    image = np.round(image[..., :3] * alpha + 255 * (1 - alpha)).astype(np.uint8)
  return np.ascontiguousarray(image)


def save_png(path, image) -> pathlib.Path:
  """Writes an image as PNG atomically (temp file in the same directory, then `os.replace`).

  Args:
    path: destination; parent directories are created.
    image: [H, W] grey, [H, W, 3] RGB or [H, W, 4] RGBA; uint8, bool or float in [0, 1].

  Returns:
    The path written.
  """
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  image = _as_uint8(image)
  if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[-1] not in (3, 4)):
    raise ValueError(f"save_png({path}): expected [H, W], [H, W, 3] or [H, W, 4]; "
                     f"got {image.shape}")
  with io_utils.atomic_open(path) as f:
    Image.fromarray(np.ascontiguousarray(image)).save(f, format="PNG")
  return path


def part_palette(num_colors: int) -> np.ndarray:
  """A deterministic categorical palette of distinct colours.

  The first 20 are a fixed Tableau-like set; after that hues step by the golden angle, with
  saturation and value cycling so neighbours differ in lightness too.

  Returns:
    [num_colors, 3] uint8.
  """
  colors = [tuple(c) for c in _BASE_PALETTE[:num_colors]]
  golden = 0.618033988749895
  for i in range(num_colors - len(colors)):
    hue = (0.11 + i * golden) % 1.0
    sat = (0.85, 0.55, 0.7)[i % 3]
    val = (0.9, 0.7, 0.55)[(i // 3) % 3]
    colors.append(tuple(round(255 * c) for c in colorsys.hsv_to_rgb(hue, sat, val)))
  return np.array(colors, np.uint8).reshape(num_colors, 3)


def side_color(name: str) -> tuple[int, int, int]:
  """LEFT_COLOR / RIGHT_COLOR / CENTER_COLOR from a joint or keypoint name.

  Left: contains "left" (any case), or starts with "l_" / "L_" or with "L" + a capital
  (CamelCase, e.g. "LHipJoint"); right likewise.
  """
  for side, color in (("left", LEFT_COLOR), ("right", RIGHT_COLOR)):
    letter = side[0]
    if (side in name.lower() or name.lower().startswith(letter + "_") or
        (len(name) > 1 and name[0] == letter.upper() and name[1].isupper())):
      return color
  return CENTER_COLOR


def skeleton_from_names(names: Sequence[str], limbs=COCO17_SKELETON,
                        limb_names: Sequence[str] = COCO17_KEYPOINT_NAMES):
  """Limb index pairs into `names` for the limbs (pairs into `limb_names`) both present.

  Lets a model whose keypoints are COCO-named, in any order or a superset, use the COCO
  skeleton: `skeleton_from_names(model.keypoint_names)`.
  """
  index = {n: i for i, n in enumerate(names)}
  return tuple((index[limb_names[a]], index[limb_names[b]]) for a, b in limbs
               if limb_names[a] in index and limb_names[b] in index)


def _canvas(image) -> tuple[Image.Image, ImageDraw.ImageDraw]:
  canvas = Image.fromarray(to_uint8_rgb(image))
  return canvas, ImageDraw.Draw(canvas)


def _dot(draw, u, v, radius, color, outline=(255, 255, 255)):
  x, y = u - 0.5, v - 0.5  # PIL puts pixel centres at integers.
  draw.ellipse((x - radius, y - radius, x + radius, y + radius), fill=tuple(color),
               outline=outline)


def _line(draw, p, q, color, width):
  draw.line((p[0] - 0.5, p[1] - 0.5, q[0] - 0.5, q[1] - 0.5), fill=tuple(color), width=width)


def _usable(points, visible) -> np.ndarray:
  points = np.asarray(points, np.float64).reshape(-1, 2)
  ok = np.all(np.isfinite(points), axis=1)
  if visible is not None:
    ok &= np.asarray(visible, bool).reshape(-1)
  return ok


def draw_points(image, points, colors=(255, 0, 0), radius: float = 3.0, visible=None):
  """Draws dots.

  Args:
    image: background image (see module docstring).
    points: [N, 2] pixel coordinates (u, v); non-finite points are skipped.
    colors: one RGB triple or [N, 3] uint8.
    radius: dot radius in pixels.
    visible: optional [N] bool; hidden points are skipped.

  Returns:
    [H, W, 3] uint8.
  """
  canvas, draw = _canvas(image)
  points = np.asarray(points, np.float64).reshape(-1, 2)
  colors = np.broadcast_to(np.asarray(colors, np.int64), (len(points), 3))
  for i in np.nonzero(_usable(points, visible))[0]:
    _dot(draw, points[i, 0], points[i, 1], radius, colors[i])
  return np.asarray(canvas)


def draw_keypoints(image, keypoints, visible=None, skeleton=COCO17_SKELETON, names=None,
                   radius: float = 3.0, width: int = 2):
  """Draws keypoints and the limbs of a skeleton, coloured by body side.

  Args:
    image: background image.
    keypoints: [K, 2] pixel coordinates (u, v).
    visible: optional [K] bool; hidden keypoints and their limbs are skipped.
    skeleton: limb index pairs (default: COCO-17; use `skeleton_from_names` for other orders).
    names: [K] keypoint names, used for left/right colours; defaults to COCO-17 names when
      K == 17, else everything gets CENTER_COLOR.
    radius: dot radius in pixels.
    width: limb line width in pixels.

  Returns:
    [H, W, 3] uint8.
  """
  keypoints = np.asarray(keypoints, np.float64).reshape(-1, 2)
  if names is None and len(keypoints) == len(COCO17_KEYPOINT_NAMES):
    names = COCO17_KEYPOINT_NAMES
  colors = [side_color(n) for n in names] if names is not None else [CENTER_COLOR] * len(
      keypoints)
  ok = _usable(keypoints, visible)
  canvas, draw = _canvas(image)
  for a, b in skeleton:
    if ok[a] and ok[b]:
      limb_color = colors[a] if colors[a] == colors[b] else CENTER_COLOR
      _line(draw, keypoints[a], keypoints[b], limb_color, width)
  for i in np.nonzero(ok)[0]:
    _dot(draw, keypoints[i, 0], keypoints[i, 1], radius, colors[i])
  return np.asarray(canvas)


def draw_skeleton(image, joints, parents, visible=None, names=None, color=None,
                  radius: float = 3.0, width: int = 2):
  """Draws joints and a bone from every joint to its parent.

  Args:
    image: background image.
    joints: [J, 2] pixel coordinates (u, v).
    parents: [J] parent index of every joint, -1 for roots.
    visible: optional [J] bool.
    names: optional [J] joint names for left/right colours (ignored when `color` is given).
    color: one RGB triple for everything; default: side colours from `names`, else black bones
      and CENTER_COLOR joints.
    radius: joint dot radius in pixels.
    width: bone line width in pixels.

  Returns:
    [H, W, 3] uint8.
  """
  joints = np.asarray(joints, np.float64).reshape(-1, 2)
  if color is not None:
    colors = [tuple(color)] * len(joints)
  elif names is not None:
    colors = [side_color(n) for n in names]
  else:
    colors = [CENTER_COLOR] * len(joints)
  ok = _usable(joints, visible)
  canvas, draw = _canvas(image)
  for j, p in enumerate(parents):
    if p >= 0 and ok[j] and ok[p]:
      bone = colors[j] if (color is not None or names is not None) else (40, 40, 40)
      _line(draw, joints[j], joints[p], bone, width)
  for j in np.nonzero(ok)[0]:
    _dot(draw, joints[j, 0], joints[j, 1], radius, colors[j])
  return np.asarray(canvas)


def overlay(photo, rendered, alpha: float = 0.6, mask=None):
  """Alpha-blends a rendering over a photo where the rendering has content.

  Args:
    photo: [H, W] / [H, W, 3] background.
    rendered: [H, W, 3] (or [H, W, 4], whose alpha channel multiplies `alpha`) rendering.
    alpha: opacity of the rendering in [0, 1].
    mask: [H, W] bool where to blend; default: where `rendered` has alpha > 0 (RGBA) or
      everywhere (RGB); pass `np.isfinite(rendering.depth)` to blend only the mesh.

  Returns:
    [H, W, 3] uint8.
  """
  base = to_uint8_rgb(photo).astype(np.float64)
  rendered = np.asarray(rendered)
  weight = np.full(base.shape[:2], float(alpha))
  if rendered.ndim == 3 and rendered.shape[-1] == 4:
    alpha_channel = rendered[..., 3].astype(np.float64)
    weight *= alpha_channel / 255 if rendered.dtype == np.uint8 else alpha_channel
    rendered = rendered[..., :3]
  top = to_uint8_rgb(rendered).astype(np.float64)
  if top.shape != base.shape:
    raise ValueError(f"overlay: rendering {top.shape} and photo {base.shape} differ in size")
  if mask is not None:
    weight = weight * np.asarray(mask, bool)
  out = base * (1 - weight[..., None]) + top * weight[..., None]
  return np.clip(np.round(out), 0, 255).astype(np.uint8)


def _font(size: int):
  try:
    return ImageFont.load_default(size=size)
  except (TypeError, OSError):  # Pillow without FreeType: the fixed bitmap font.
    return ImageFont.load_default()


def image_grid(images, captions=None, num_cols: int | None = None, pad: int = 4,
               background=(255, 255, 255), font_size: int = 14):
  """Tiles images (of any sizes) into a grid, each with an optional caption above it.

  Args:
    images: sequence of N images (grey / RGB / RGBA, uint8 or float).
    captions: optional N strings.
    num_cols: columns; default ceil(sqrt(N)).
    pad: pixels between and around cells.
    background: RGB uint8 fill.
    font_size: caption font size in pixels.

  Returns:
    [H, W, 3] uint8. Cells are as large as the largest image; smaller images are centred.
  """
  images = [to_uint8_rgb(im) for im in images]
  if not images:
    raise ValueError("image_grid: no images")
  if captions is not None and len(captions) != len(images):
    raise ValueError(f"image_grid: {len(images)} images but {len(captions)} captions")
  num_cols = num_cols or int(np.ceil(np.sqrt(len(images))))
  num_rows = -(-len(images) // num_cols)
  cell_h = max(im.shape[0] for im in images)
  cell_w = max(im.shape[1] for im in images)
  font = _font(font_size)
  caption_h = font_size + 6 if captions is not None else 0
  grid = Image.new("RGB", (num_cols * (cell_w + pad) + pad,
                           num_rows * (cell_h + caption_h + pad) + pad), tuple(background))
  draw = ImageDraw.Draw(grid)
  for i, im in enumerate(images):
    row, col = divmod(i, num_cols)
    x0 = pad + col * (cell_w + pad)
    y0 = pad + row * (cell_h + caption_h + pad)
    if captions is not None and captions[i]:
      text = str(captions[i])
      text_w = draw.textlength(text, font=font)
      draw.text((x0 + max(0.0, (cell_w - text_w) / 2), y0 + 2), text, fill=(0, 0, 0),
                font=font)
    grid.paste(Image.fromarray(im), (x0 + (cell_w - im.shape[1]) // 2,
                                     y0 + caption_h + (cell_h - im.shape[0]) // 2))
  return np.asarray(grid)


def legend(names: Sequence[str], colors, num_cols: int = 1, swatch: int = 14,
           font_size: int = 13, background=(255, 255, 255)):
  """A colour legend: one swatch + name per entry, filled column by column.

  Args:
    names: N labels.
    colors: [N, 3] uint8 colours.
    num_cols: columns of entries.
    swatch: swatch side in pixels.
    font_size: font size in pixels.
    background: RGB uint8 fill.

  Returns:
    [H, W, 3] uint8.
  """
  font = _font(font_size)
  colors = np.asarray(colors, np.int64).reshape(-1, 3)
  scratch = ImageDraw.Draw(Image.new("RGB", (1, 1)))
  entry_w = swatch + 6 + max(int(np.ceil(scratch.textlength(str(n), font=font)))
                             for n in names) + 12
  entry_h = max(swatch, font_size) + 4
  num_rows = -(-len(names) // num_cols)
  canvas = Image.new("RGB", (num_cols * entry_w + 8, num_rows * entry_h + 8), tuple(background))
  draw = ImageDraw.Draw(canvas)
  for i, name in enumerate(names):
    col, row = divmod(i, num_rows)
    x, y = 4 + col * entry_w, 4 + row * entry_h
    draw.rectangle((x, y + 2, x + swatch - 1, y + 2 + swatch - 1), fill=tuple(colors[i]),
                   outline=(60, 60, 60))
    draw.text((x + swatch + 6, y + 2 + swatch / 2), str(name), fill=(0, 0, 0), font=font,
              anchor="lm")
  return np.asarray(canvas)
