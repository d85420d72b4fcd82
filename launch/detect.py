"""People in a photo -> COCO keypoint *results* JSON (BlazePose from shipped weights).

  python -m launch.detect --image=X.jpg --out=F.json

Writes a list of {image_id, category_id: 1, keypoints: [x, y, score] x 17, score, bbox} (standard
COCO tooling reads it), atomically. Bad input (not an image, truncated, no person) -> one line
naming the file, exit 1, nothing written. EXIF rotation is applied; grayscale / alpha images are
converted to RGB; images larger than --max_side are downscaled for the models and the results
mapped back to the original pixels.
"""

import json
import sys

from absl import app
from absl import flags

from flowpose import io_utils
from flowpose.evidence import detector_weights
from flowpose.evidence import image_io

_IMAGE = flags.DEFINE_string("image", None, "Photograph (any format PIL reads).")
_OUT = flags.DEFINE_string("out", None, "Output JSON (COCO keypoint results format).")
_IMAGE_ID = flags.DEFINE_integer("image_id", 0, "image_id written in the results.")
_MAX_PEOPLE = flags.DEFINE_integer("max_people", 5, "At most this many people.")
_MAX_SIDE = flags.DEFINE_integer("max_side", 2048, "Longer sides are downscaled to this.")


def results(people, image_id: int, scale: float) -> list:
  """Person list -> COCO keypoint results (original image pixels)."""
  out = []
  for p in people:
    kps = p.keypoints.copy()
    kps[:, :2] /= scale
    out.append({"image_id": image_id, "category_id": 1,
                "keypoints": [round(float(v), 2) for v in kps.ravel()],
                "score": round(float(p.score), 4),
                "bbox": [round(float(v) / scale, 2) for v in p.bbox]})
  return out


def main(argv):
  del argv
  try:
    if not _IMAGE.value:
      raise image_io.ImageInputError("--image is required")
    out = io_utils.require_output_path(_OUT.value, "--out", is_dir=False)
    image, scale = image_io.load_image(_IMAGE.value, _MAX_SIDE.value)
    # Imported here: tensorflow loads only once the inputs are known to be good.
    from flowpose.evidence import detector  # pylint: disable=g-import-not-at-top
    people = detector.Detector(max_people=_MAX_PEOPLE.value)(image)
    if not people:
      raise image_io.ImageInputError(f"{_IMAGE.value}: no person found")
  except (image_io.ImageInputError, io_utils.OutputPathError,
          detector_weights.DetectorWeightsError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  io_utils.atomic_write(out, json.dumps(results(people, _IMAGE_ID.value, scale)).encode())
  print(f"[detect] {len(people)} people -> {out}")
  return 0


if __name__ == "__main__":
  sys.exit(app.run(main) or 0)
