r"""Photo in, 3D people out: detector (or COCO annotations) -> latent fit -> OBJ/BVH/JSON/PNGs.

  python -m launch.reconstruct --image=photo.jpg --prior_workdir=P --out_dir=D
  python -m launch.reconstruct --image=photo.jpg --annotations=COCO.json --prior_workdir=P \
      --out_dir=D                                  # every annotated person, masks from polygons
  ... --regressor_workdir=W                        # the network's prediction as a start
  ... --config=experiments/reconstruct.py:runlocal --config.fit.prior=none   # quick look

Writes D/overlay.png (every person), D/people.json, D/person_NN/{mesh.obj, pose.bvh, params.json,
side.png}, all in one atomic folder swap (`flowpose.fitting.reconstruct`). Bad input (not an
image, no person found, bad annotations, unusable --out_dir or workdirs) stops with one line naming
the file or flag, exit status 2, nothing written. Progress is logged per stage (--alsologtostderr
shows it when absl logs to files).

Video in, sequence out (`flowpose.fitting.video_job`):
  python -m launch.reconstruct --video=clip.mp4 | --frames=DIR [--fps=30] --prior_workdir=P \
      [--dynamics_workdir=W2] [--keypoints_json=track.json] [--regressor_workdir=W] --out_dir=D
writes D/motion.bvh (the video's frame rate), D/overlay.mp4 (a PNG strip without an encoder),
D/frames.json, D/summary.json.
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
from flowpose.evidence import detector_weights
from flowpose.evidence import image_io
from flowpose.fitting import config as fit_config
from flowpose.fitting import reconstruct
# pylint: enable=g-import-not-at-top,wrong-import-position

config_flags.DEFINE_config_file("config", str(pathlib.Path(__file__).resolve().parents[1] /
                                              "experiments" / "reconstruct.py"),
                                "Reconstruction config (`path.py[:runlocal]`).")
_IMAGE = flags.DEFINE_string("image", None, "Photograph (any format PIL reads).")
_ANNOTATIONS = flags.DEFINE_string(
    "annotations", None, "Optional COCO keypoint JSON: fit every annotated person of the image "
    "(keypoints + segmentation) instead of detecting people.")
_PRIOR_WORKDIR = flags.DEFINE_string("prior_workdir", None, "Trained prior workdir.")
_REGRESSOR_WORKDIR = flags.DEFINE_string(
    "regressor_workdir", None, "Optional trained reconstruction network (issue 12): its "
    "prediction starts the fit (an extra restart).")
_OUT_DIR = flags.DEFINE_string("out_dir", None, "Output folder (replaced as a whole).")
_VIDEO = flags.DEFINE_string("video", None, "A video instead of --image (anything ffmpeg reads).")
_FRAMES = flags.DEFINE_string("frames", None, "A folder of frames (PNG/JPEG, sorted by name) "
                              "instead of --image or --video.")
_FPS = flags.DEFINE_float("fps", 30.0, "Frame rate of --frames (a video's own rate is used).")
_DYNAMICS_WORKDIR = flags.DEFINE_string(
    "dynamics_workdir", None, "Trained dynamics model for --video/--frames (default: constant "
    "velocity in the prior's latent space).")
_KEYPOINTS_JSON = flags.DEFINE_string(
    "keypoints_json", None, "COCO-style keypoint track JSON for --video/--frames instead of the "
    "detector.")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  config = flags.FLAGS.config
  try:
    if _VIDEO.value or _FRAMES.value:
      paths = reconstruct.video(_VIDEO.value, _FRAMES.value, _PRIOR_WORKDIR.value, _OUT_DIR.value,
                                dynamics_workdir=_DYNAMICS_WORKDIR.value,
                                keypoints_json=_KEYPOINTS_JSON.value, fps=_FPS.value,
                                regressor_workdir=_REGRESSOR_WORKDIR.value)
    else:
      paths = reconstruct.run(config, _IMAGE.value, _PRIOR_WORKDIR.value, _OUT_DIR.value,
                              annotations=_ANNOTATIONS.value,
                              regressor_workdir=_REGRESSOR_WORKDIR.value)
  except (fit_config.FitInputError, image_io.ImageInputError, io_utils.OutputPathError,
          detector_weights.DetectorWeightsError) as e:
    logging.error("%s", e)
    print(f"reconstruct: error: {e}", file=sys.stderr)
    return 2
  for path in paths:
    print(path)
  return 0


if __name__ == "__main__":
  sys.exit(app.run(main) or 0)
