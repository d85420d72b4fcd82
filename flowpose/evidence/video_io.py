"""Video in and out: decode a clip (or a folder of frames) to RGB frames; write an overlay video.

Decoding uses imageio's FFMPEG plugin with the ffmpeg binary that the pinned `imageio-ffmpeg`
wheel ships (no system codec needed). Frames are RGB uint8 `[H, W, 3]`, downscaled so the
larger side is at most `max_side` (the detector works at 256 px anyway).

Bad input raises one `VideoInputError` naming the file: no such file, not a video, zero
frames, a truncated stream that yields no frame (a stream truncated after some frames gives
those frames, logged), frames whose size changes within the clip, a folder without images.
`write_video` writes H.264 MP4 when the encoder runs, else a PNG strip of up to 16 frames, to a
temporary name renamed at the end (nothing half-written).
"""

import os
import pathlib
from typing import List, NamedTuple, Optional

from absl import logging
import numpy as np

from flowpose.evidence import image_io

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
DEFAULT_FPS = 30.0


class VideoInputError(ValueError):
  """The video or frame folder cannot be read (the message names it)."""


class Video(NamedTuple):
  """Decoded frames.

  Attributes:
    frames: [N, H, W, 3] uint8 RGB (after downscaling).
    fps: frames per second (the container's, or the given one for a folder).
    scale: model pixel = original pixel * scale (<= 1).
    source: the path read.
  """
  frames: np.ndarray
  fps: float
  scale: float
  source: str


def _resize(frame: np.ndarray, scale: float) -> np.ndarray:
  if scale >= 1.0:
    return frame
  from PIL import Image  # pylint: disable=g-import-not-at-top
  h, w = frame.shape[:2]
  size = (max(1, round(w * scale)), max(1, round(h * scale)))
  return np.asarray(Image.fromarray(frame).resize(size, Image.BILINEAR))


def _stack(frames: List[np.ndarray], source: str) -> np.ndarray:
  if not frames:
    raise VideoInputError(f"{source}: zero frames (empty or truncated before the first frame)")
  first = frames[0].shape
  for i, frame in enumerate(frames):
    if frame.shape != first:
      raise VideoInputError(f"{source}: frame {i} is {frame.shape[1]}x{frame.shape[0]}, "
                            f"frame 0 is {first[1]}x{first[0]}; expected one frame size for "
                            "the whole clip (split the clip where the size changes)")
  return np.stack(frames)


def read_video(path: str, max_side: int = 1280, max_frames: Optional[int] = None) -> Video:
  """Decodes a video file (any format ffmpeg reads) to RGB frames.

  Raises:
    VideoInputError: see the module docstring.
  """
  import imageio  # pylint: disable=g-import-not-at-top
  source = str(path)
  if not os.path.isfile(source):
    raise VideoInputError(f"{source}: no such file")
  try:
    reader = imageio.get_reader(source, format="FFMPEG")
  except Exception as e:  # pylint: disable=broad-except  # imageio raises many kinds.
    raise VideoInputError(f"{source}: cannot open as a video ({type(e).__name__}: "
                          f"{str(e).splitlines()[0] if str(e) else ''})") from None
  frames: List[np.ndarray] = []
  scale = 1.0
  try:
    meta = reader.get_meta_data()
    fps = float(meta.get("fps") or DEFAULT_FPS)
    try:
      for frame in reader:
        frame = np.asarray(frame)[..., :3]
        if not frames:
          scale = min(1.0, max_side / max(frame.shape[:2]))
        frames.append(_resize(frame, scale))
        if max_frames and len(frames) >= max_frames:
          break
    except Exception as e:  # pylint: disable=broad-except
      if not frames:
        raise VideoInputError(f"{source}: cannot decode any frame ({type(e).__name__})") from None
      logging.warning("%s: stream ends early after %d frames (%s); using those", source,
                      len(frames), type(e).__name__)
  except VideoInputError:
    raise
  except Exception as e:  # pylint: disable=broad-except
    raise VideoInputError(f"{source}: cannot read as a video ({type(e).__name__})") from None
  finally:
    reader.close()
  if not np.isfinite(fps) or fps <= 0:
    fps = DEFAULT_FPS
  return Video(_stack(frames, source), fps, scale, source)


def read_frames_dir(folder: str, fps: float = DEFAULT_FPS, max_side: int = 1280) -> Video:
  """Reads a folder of images (sorted by name) as one clip at `fps`.

  Raises:
    VideoInputError: no folder, no image in it, an unreadable image, sizes that differ.
  """
  root = pathlib.Path(folder)
  if not root.is_dir():
    raise VideoInputError(f"{folder}: not a folder of frames")
  paths = sorted(p for p in root.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
  if not paths:
    raise VideoInputError(f"{folder}: zero frames (no {'/'.join(IMAGE_SUFFIXES)} files)")
  frames, scale = [], 1.0
  for i, path in enumerate(paths):
    try:
      image, _ = image_io.load_image(str(path), max_side=10**6)
    except image_io.ImageInputError as e:
      raise VideoInputError(f"{folder}: frame {i}: {e}") from None
    if i == 0:
      scale = min(1.0, max_side / max(image.shape[:2]))
    frames.append(_resize(image, scale))
  return Video(_stack(frames, str(folder)), float(fps), scale, str(folder))


def png_strip(frames: np.ndarray, max_frames: int = 16, height: int = 240) -> np.ndarray:
  """[h, w', 3] uint8: up to `max_frames` frames evenly spaced, side by side."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  index = np.unique(np.linspace(0, len(frames) - 1, min(max_frames, len(frames))).astype(int))
  tiles = []
  for i in index:
    h, w = frames[i].shape[:2]
    tiles.append(np.asarray(Image.fromarray(frames[i]).resize(
        (max(1, round(w * height / h)), height), Image.BILINEAR)))
  return np.concatenate(tiles, 1)


def write_video(path: str, frames: np.ndarray, fps: float) -> str:
  """Writes `frames [N, H, W, 3]` uint8 as H.264 MP4 at `path`, else a PNG strip beside it.

  Returns:
    The path written (`path`, or `path` with the suffix `.png` when no encoder ran).
  """
  import imageio  # pylint: disable=g-import-not-at-top
  from flowpose.viz import images as viz  # pylint: disable=g-import-not-at-top
  tmp = f"{path}.partial.mp4"
  try:
    writer = imageio.get_writer(tmp, fps=float(fps), format="FFMPEG", codec="libx264",
                                macro_block_size=1, quality=7)
    try:
      for frame in frames:
        writer.append_data(np.ascontiguousarray(frame))
    finally:
      writer.close()
    os.replace(tmp, path)
    return path
  except Exception as e:  # pylint: disable=broad-except  # No encoder: fall back.
    logging.warning("no video encoder (%s: %s); writing a PNG strip", type(e).__name__, e)
    if os.path.exists(tmp):
      os.remove(tmp)
  strip = os.path.splitext(path)[0] + ".png"
  viz.save_png(strip, png_strip(frames))
  return strip
