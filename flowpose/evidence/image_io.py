"""Reading a user's photograph for the detector: RGB uint8, EXIF rotation applied, size bounded.

Grayscale and palette images become RGB, transparent pixels white; a file that is not an image,
is truncated, or would be a decompression bomb raises `ImageInputError` naming the file.
"""

import warnings

import numpy as np
from PIL import Image, ImageOps


class ImageInputError(ValueError):
  """The image cannot be read as a photograph; the message names the file."""


def load_image(path: str, max_side: int = 2048):
  """Reads an image as RGB uint8, EXIF orientation applied, downscaled to `max_side`.

  Returns:
    (image [h, w, 3] uint8, scale) with original pixel = model pixel / scale.
  """
  try:
    with warnings.catch_warnings():
      warnings.simplefilter("error", Image.DecompressionBombWarning)
      with Image.open(path) as img:
        img.load()  # A truncated file fails here, not later.
        img = ImageOps.exif_transpose(img)
        if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
          # Transparent pixels become white, not the black their RGB values often hold.
          rgba = img.convert("RGBA")
          img = Image.new("RGB", rgba.size, (255, 255, 255))
          img.paste(rgba, mask=rgba.getchannel("A"))
        img = img.convert("RGB")
  except FileNotFoundError as e:
    raise ImageInputError(f"{path}: no such file") from e
  except (OSError, SyntaxError, ValueError, Image.DecompressionBombError,
          Image.DecompressionBombWarning) as e:
    raise ImageInputError(f"{path}: cannot read as an image ({e})") from e
  scale = min(1.0, max_side / max(img.size))
  if scale < 1.0:
    img = img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))),
                     Image.BILINEAR)
  return np.asarray(img, np.uint8), scale
