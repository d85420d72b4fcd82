r"""Video (or a folder of frames) -> BVH of the whole sequence + overlay video + per-frame JSON.

  python -m launch.reconstruct_video --video=clip.mp4 --prior_workdir=P \
      --dynamics_workdir=W2 --out_dir=D [--keypoints_json=track.json]
  python -m launch.reconstruct_video --frames=DIR [--fps=30] --prior_workdir=P ... --out_dir=D
  ... --regressor_workdir=W   # the trained network (issue 12, same prior) as the fit's stage 1

The library call is `flowpose.fitting.video_job.reconstruct_video` (steps, file formats and bad
input are documented there); `launch.reconstruct --video/--frames` calls the same function.
Bad input: one line naming the flag or file on stderr, exit 1, nothing written to --out_dir.
"""

import sys

from absl import app
from absl import flags

FLAGS = flags.FLAGS


def define_flags():
  flags.DEFINE_string("video", None, "Input video file (anything ffmpeg decodes).")
  flags.DEFINE_string("frames", None, "Input folder of frames (PNG/JPEG, sorted by name).")
  flags.DEFINE_float("fps", 30.0, "Frame rate of --frames (a video's own rate is used).")
  flags.DEFINE_string("prior_workdir", None, "Trained prior workdir.", required=True)
  flags.DEFINE_string("dynamics_workdir", None, "Trained dynamics workdir (default: none, "
                      "constant velocity in the prior's latent space).")
  flags.DEFINE_string("out_dir", None, "Output folder (replaced atomically).", required=True)
  flags.DEFINE_string("keypoints_json", None, "COCO-style keypoint track JSON instead of the "
                      "detector (entries with image_id/frame, keypoints, bbox?, score?).")
  flags.DEFINE_string("regressor_workdir", None, "Trained reconstruction network (issue 12, "
                      "trained with --prior_workdir's prior) as stage 1 of the sequence fit "
                      "instead of per-frame fits.")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  # Heavy imports after flag parsing: --help stays fast.
  from flowpose import io_utils  # pylint: disable=g-import-not-at-top
  from flowpose.evidence import video_io  # pylint: disable=g-import-not-at-top
  from flowpose.fitting import video_job  # pylint: disable=g-import-not-at-top
  from flowpose.fitting.config import FitInputError  # pylint: disable=g-import-not-at-top
  from flowpose.models import dynamics_io  # pylint: disable=g-import-not-at-top
  from flowpose.prior import registry  # pylint: disable=g-import-not-at-top
  try:
    summary = video_job.reconstruct_video(
        out_dir=FLAGS.out_dir, prior_workdir=FLAGS.prior_workdir,
        dynamics_workdir=FLAGS.dynamics_workdir, video=FLAGS.video, frames_dir=FLAGS.frames,
        keypoints_json=FLAGS.keypoints_json, fps=FLAGS.fps,
        regressor_workdir=FLAGS.regressor_workdir)
  except (video_job.VideoJobError, video_io.VideoInputError, io_utils.OutputPathError,
          registry.PriorRegistryError, dynamics_io.DynamicsLoadError, FitInputError) as e:
    print(f"reconstruct_video: {e}", file=sys.stderr)
    return 1
  print(f"reconstruct_video: {summary['num_frames']} frames ({summary['tracked_frames']} "
        f"tracked) at {summary['fps']:g} fps -> {FLAGS.out_dir}")
  return 0


if __name__ == "__main__":
  define_flags()
  app.run(main)
