"""Pseudo 3D labels from a trained weak network's refined fits (`flowpose.tasks.regressor_pseudo`).

  python -m launch.pseudo_labels --regressor_workdir=DIR/weak_2d --out=DIR/pseudo_labels.npz
  python -m launch.main --config=experiments/regressor_weak.py --workdir=DIR/weak \
      --config.data.pseudo_labels=DIR/pseudo_labels.npz --config.model.init_from=DIR/weak_2d

(`bash launch/train_regressors.sh DIR` does both, with `--refinement=benchmark` from round
`experiments/regressor_base.BENCHMARK_LABELS_FROM_ROUND` on and `--every=regressor_base.
PSEUDO_LABEL_EVERY`.) About 12 min ("labels") or 65 min ("benchmark", session 15) for all 9,512
training examples on 2 cores (150 refinement steps); session 18, every 4th (2,378): 2.3 / 14.4 min.
Progress is logged with frames/s and the time left. Bad input (no finished run, a bad output
path) -> one line naming it, exit 1, nothing written.
"""

import sys

from absl import app
from absl import flags

from flowpose import io_utils
from flowpose.models import predictor

_WORKDIR = flags.DEFINE_string("regressor_workdir", None, "A finished weak regressor run.")
_OUT = flags.DEFINE_string("out", None, "Output .npz of pseudo-labels.")
_SPLIT = flags.DEFINE_string("split", "train", "cmu_evidence split to label.")
_STEPS = flags.DEFINE_integer("refine_steps", 150, "Fitter steps from the network's output.")
_BATCH = flags.DEFINE_integer("batch_size", 256, "Frames refined at once.")
_MASK = flags.DEFINE_bool("use_mask", False, "Also fit the person mask (3-5x slower; session "
                          "10, 512 training frames: labels 78.0 -> 77.3 mm PA-MPJPE).")
_REFINEMENT = flags.DEFINE_enum(
    "refinement", "labels", ["labels", "benchmark"], "The fitter's settings "
    "(`regressor_pseudo.label_refine_config`): 'labels' = yaw-0 restart, no anchor; 'benchmark' "
    "= the benchmark's weak_refined (z anchor, yaw-180 restart, mask; ~5x slower).")
_NUM = flags.DEFINE_integer("num_frames", 0, "Label only the first N frames (0 = all).")
_EVERY = flags.DEFINE_integer("every", 1, "Label every K-th frame only (file order; the rest stay "
                              "2D-only; train_regressors.sh passes regressor_base."
                              "PSEUDO_LABEL_EVERY).")
_MOCAP_DIR = flags.DEFINE_string("mocap_dir", "", "Clip folder, if not the run's data.manual_dir.")


def main(argv):
  del argv
  from flowpose.tasks import regressor_pseudo  # pylint: disable=g-import-not-at-top
  try:
    out = io_utils.require_output_path(_OUT.value, "--out", is_dir=False)
    if not str(out).endswith(".npz"):
      raise io_utils.OutputPathError(f"--out: {out} must end in .npz")
    for flag, value, low in (("--num_frames", _NUM.value, 0), ("--batch_size", _BATCH.value, 1),
                             ("--refine_steps", _STEPS.value, 1), ("--every", _EVERY.value, 1)):
      if value < low:
        raise ValueError(f"{flag}: expected an int >= {low}, got {value}")
    labels = regressor_pseudo.make_pseudo_labels(
        _WORKDIR.value, split=_SPLIT.value, refine_steps=_STEPS.value,
        batch_size=_BATCH.value, use_mask=_MASK.value, num_frames=_NUM.value,
        manual_dir=_MOCAP_DIR.value, refinement=_REFINEMENT.value, every=_EVERY.value)
  except (io_utils.OutputPathError, predictor.RegressorLoadError, ValueError) as e:
    print(f"launch.pseudo_labels: {e}", file=sys.stderr)
    return 1
  regressor_pseudo.save(str(out), labels)
  print(f"[pseudo_labels] {len(labels['key'])} examples -> {out} (diagnostic vs the unused true "
        f"3D: network {float(labels['network_pa_mpjpe_mm']):.1f} mm, labels "
        f"{float(labels['label_pa_mpjpe_mm']):.1f} mm PA-MPJPE)")
  return 0


if __name__ == "__main__":
  flags.mark_flags_as_required(["regressor_workdir", "out"])
  app.run(main)
