r"""Evaluates a trained flow pose prior against density baselines.

  python -m launch.evaluate_prior --workdir=DIR [--mocap_dir=FOLDER] [--no_pictures] \
      [--splits=validation,test]

Reads `prior_params.msgpack` + `config.json` written by `launch.main`, fits (or reuses the
cached `baselines.npz`) diagonal/full Gaussians and an 8-component GMM on the training split,
and writes into `--workdir`:
  nll_table.json / .md       NLL (nats/pose, bits/DOF) of every model per split; the top-level
                             `flow`, `gaussian_diag`, `gaussian_full`, `gmm8` are the last split's;
  samples.png                16 flow samples posed on the CC0 body (unless --no_pictures);
  interpolation.png          latent interpolation between two poses of the last split;
  nll_table_<folder>.json    with --mocap_dir: the same table for the clips of that folder
                             (ASF/AMC with SS.asf beside, or CMU-skeleton BVH; 30 fps).
"""

import os

# LU layers call LAPACK on tiny matrices: OpenBLAS threads only cost (see launch/main.py).
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

# pylint: disable=g-import-not-at-top,wrong-import-position
from absl import app
from absl import flags
from absl import logging

# Before anything imports TensorFlow (TFP requires it): see flowpose.prior.flow.
from flowpose.prior import evaluate as prior_eval  # pylint: disable=g-bad-import-order
# pylint: enable=g-import-not-at-top,wrong-import-position

_WORKDIR = flags.DEFINE_string("workdir", None, "Workdir of a finished training run.")
_MOCAP_DIR = flags.DEFINE_string("mocap_dir", None,
                                 "Optional folder of ASF/AMC or BVH clips to evaluate.")
_NO_PICTURES = flags.DEFINE_bool("no_pictures", False,
                                 "Skip samples.png and interpolation.png.")
_SPLITS = flags.DEFINE_list("splits", ["validation", "test"],
                            "Dataset splits to evaluate; the last one is the headline.")
flags.mark_flags_as_required(["workdir"])


def _summary(table: dict) -> str:
  return ", ".join(f"{name} {table[name]:.2f}" for name in prior_eval.MODELS)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  table = prior_eval.evaluate_nll(_WORKDIR.value, splits=tuple(_SPLITS.value),
                                  pictures=not _NO_PICTURES.value)
  logging.info("%s NLL (nats/pose): %s", table["headline_split"], _summary(table))
  print(open(os.path.join(_WORKDIR.value, prior_eval.TABLE_STEM + ".md")).read())
  if _MOCAP_DIR.value:
    folder_table = prior_eval.evaluate_folder(_WORKDIR.value, _MOCAP_DIR.value)
    logging.info("%s NLL (nats/pose): %s", folder_table["headline_split"],
                 _summary(folder_table))
    print(f"{_MOCAP_DIR.value}: {_summary(folder_table)} "
          f"({folder_table['splits'][folder_table['headline_split']]['num_poses']} poses)")


if __name__ == "__main__":
  app.run(main)
