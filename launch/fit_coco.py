r"""Fits the body to one COCO photograph's keypoints and writes overlay/side view/OBJ/BVH/JSON.

  python -m launch.fit_coco --config=experiments/fit_coco.py \
      --image=../shared/data/coco/000000000785.jpg \
      --annotations=../shared/data/coco/person_keypoints_785.json \
      --prior_workdir=DIR --out_dir=/tmp/coco785

Bad inputs (JSON, keypoints, image, prior workdir, evidence that cannot
determine a body) stop with one `FitInputError` message naming the file and
field, an unusable `--out_dir` with `OutputPathError`, both before fitting;
exit status 2 and nothing is written then. Outputs replace `--out_dir` in one
rename (`io_utils.atomic_dir`); `params.json` lists warnings (clamps that bound).
"""

import os
import pathlib
import sys

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # As launch/main.py.

# pylint: disable=g-import-not-at-top,wrong-import-position
from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from flowpose import io_utils
from flowpose.fitting import config as fit_config
from flowpose.fitting import photo
# pylint: enable=g-import-not-at-top,wrong-import-position

_DATA = pathlib.Path(os.environ.get("FLOWPOSE_SHARED_DATA") or
                     pathlib.Path(__file__).resolve().parents[2] / "shared" / "data") / "coco"
config_flags.DEFINE_config_file("config", str(pathlib.Path(__file__).resolve().parents[1] /
                                              "experiments" / "fit_coco.py"),
                                "Fitting config (`path.py[:runlocal]`).")
_IMAGE = flags.DEFINE_string("image", str(_DATA / "000000000785.jpg"), "Photograph.")
_ANNOTATIONS = flags.DEFINE_string("annotations", str(_DATA / "person_keypoints_785.json"),
                                   "COCO keypoint JSON.")
_ANNOTATION_ID = flags.DEFINE_string("annotation_id", None,
                                     "Annotation to fit (default: most labelled keypoints).")
_PRIOR_WORKDIR = flags.DEFINE_string("prior_workdir", None, "Trained prior workdir.")
_OUT_DIR = flags.DEFINE_string("out_dir", None, "Output folder.", required=True)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  config = flags.FLAGS.config
  if _ANNOTATION_ID.value is not None:
    config.annotation_id = _ANNOTATION_ID.value
  try:
    paths = photo.run(config, _IMAGE.value, _ANNOTATIONS.value, _PRIOR_WORKDIR.value,
                      _OUT_DIR.value)
  except (fit_config.FitInputError, io_utils.OutputPathError) as e:
    logging.error("%s", e)
    print(f"fit_coco: {e}", file=sys.stderr)
    return 2
  for path in paths:
    print(path)
  return 0


if __name__ == "__main__":
  app.run(main)
