r"""Evaluates a trained flow pose prior against density baselines.

  python -m launch.evaluate_prior --workdir=DIR [--mocap_dir=FOLDER] [--no_pictures] \
      [--splits=validation,test]

Reads `prior_params.msgpack` + `config.json` written by `launch.main`, fits (or reuses the
cached `baselines.npz`) diagonal/full Gaussians and an 8-component GMM on the training split,
and writes into `--workdir`:
  nll_table.json / .md       NLL (nats/pose, bits/DOF) of every model per split. Splits
                             accumulate over runs of the same prior (`--splits=validation`
                             keeps an earlier test entry); the top-level `flow`,
                             `gaussian_diag`, `gaussian_full`, `gmm8` are the test split's
                             whenever the table holds it, else the last split's;
  samples.png                16 flow samples posed on the CC0 body (unless --no_pictures);
  interpolation.png          latent interpolation between two poses of the last split;
  nll_table_<folder>.json    with --mocap_dir: every clip of that folder as given (no split
                             filter; ASF/AMC with SS.asf beside, or CMU-skeleton BVH; 30 fps),
                             labelled `folder <name>`. `--splits=` (empty) evaluates the
                             folder only.
Bad input (missing or unreadable workdir files, a folder without clips, a malformed clip, an
unwritable workdir) stops with one message naming the file and exit status 2.
"""

import os
import sys

# LU layers call LAPACK on tiny matrices: OpenBLAS threads only cost (see launch/main.py).
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

# pylint: disable=g-import-not-at-top,wrong-import-position
from absl import app
from absl import flags
from absl import logging

from flowpose import io_utils
from flowpose.data.motion import MocapFormatError
from flowpose.prior import evaluate as prior_eval
from flowpose.prior import io as prior_io
# pylint: enable=g-import-not-at-top,wrong-import-position

_WORKDIR = flags.DEFINE_string("workdir", None, "Workdir of a finished training run.")
_MOCAP_DIR = flags.DEFINE_string("mocap_dir", None,
                                 "Optional folder of ASF/AMC or BVH clips to evaluate (all "
                                 "clips, as given).")
_NO_PICTURES = flags.DEFINE_bool("no_pictures", False,
                                 "Skip samples.png and interpolation.png.")
_SPLITS = flags.DEFINE_list("splits", ["validation", "test"],
                            "Dataset splits to evaluate (merged into nll_table.json); empty: "
                            "--mocap_dir only.")
flags.mark_flags_as_required(["workdir"])


def _summary(table: dict) -> str:
  rows = table["splits"][table["headline_split"]]["nats_per_pose"]
  return ", ".join(f"{name} {value:.2f}" for name, value in rows.items())


def run(workdir: str, splits, mocap_dir, pictures: bool) -> None:
  """Checks the inputs up front, then evaluates the splits and the folder; prints the tables."""
  if not workdir or not os.path.isdir(workdir):
    raise prior_io.PriorLoadError(f"--workdir={workdir!r} is not a folder; expected the "
                                  "workdir of a finished `python -m launch.main` run")
  io_utils.require_output_path(workdir, "--workdir")
  if mocap_dir is not None and not os.path.isdir(mocap_dir):
    raise prior_eval.PriorEvalError(f"--mocap_dir={mocap_dir!r} is not a folder")
  if splits:
    table = prior_eval.evaluate_nll(workdir, splits=splits, pictures=pictures)
    logging.info("%s NLL (nats/pose): %s", table["headline_split"], _summary(table))
    with open(os.path.join(workdir, prior_eval.TABLE_STEM + ".md")) as f:
      print(f.read())
  if mocap_dir is not None:
    folder_table = prior_eval.evaluate_folder(workdir, mocap_dir)
    label = folder_table["headline_split"]
    logging.info("%s NLL (nats/pose): %s", label, _summary(folder_table))
    print(f"{folder_table['folder']} ({label}, {folder_table['num_clips']} clips, "
          f"{folder_table['splits'][label]['num_poses']} poses): {_summary(folder_table)}")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  splits = tuple(s for s in _SPLITS.value if s.strip())
  if not splits and _MOCAP_DIR.value is None:
    raise app.UsageError("--splits is empty and no --mocap_dir: nothing to evaluate")
  try:
    run(_WORKDIR.value, splits, _MOCAP_DIR.value, pictures=not _NO_PICTURES.value)
  except (prior_io.PriorLoadError, io_utils.OutputPathError, MocapFormatError) as e:
    logging.error("%s", e)
    print(f"evaluate_prior: {e}", file=sys.stderr)
    return 2
  return 0


if __name__ == "__main__":
  app.run(main)
