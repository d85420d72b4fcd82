r"""Fits the chart constant-velocity residual (`flowpose.models.chart_residual`) of a dynamics run.

  python -m launch.chart_residual --dynamics_workdir=W --out=F.npz [--limit=8192]

Uses the dynamics run's own training windows (its `config.data`, the prior's folders) and the
prior's chart (the prior recorded in W). Writes F atomically; bad flags exit 2, nothing written.
"""

import sys

from absl import app
from absl import flags
from absl import logging
import numpy as np

flags.DEFINE_string("dynamics_workdir", None, "Trained dynamics workdir.", required=True)
flags.DEFINE_string("out", None, "Output .npz.", required=True)
flags.DEFINE_integer("limit", 8192, "Training windows to fit on (>= 16).")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  f = flags.FLAGS
  from flowpose import io_utils  # pylint: disable=g-import-not-at-top
  from flowpose.models import chart_residual  # pylint: disable=g-import-not-at-top
  from flowpose.models import dynamics_io  # pylint: disable=g-import-not-at-top
  from flowpose.prior import io as prior_io  # pylint: disable=g-import-not-at-top
  from launch import evaluate_dynamics  # pylint: disable=g-import-not-at-top
  try:
    if f.limit < 16:
      raise ValueError(f"--limit: expected >= 16, got {f.limit}")
    out = io_utils.require_output_path(f.out, "--out", is_dir=False)
    _, _, config = dynamics_io.load_dynamics(f.dynamics_workdir)
    prior, _, _ = prior_io.load_trained_prior(config.prior_workdir)
  except (ValueError, OSError, io_utils.OutputPathError, dynamics_io.DynamicsLoadError) as e:
    print(f"chart_residual: {e}", file=sys.stderr)
    return 2
  windows = evaluate_dynamics.training_windows(config, f.limit)
  logging.info("%d training windows %s, chart %s", len(windows), windows.shape[1:], prior.chart)
  residual = chart_residual.fit(prior.chart, windows)
  chart_residual.save(str(out), residual)
  print(f"wrote {out}: chart {prior.chart}, D = {len(residual.mean)}, residual std "
        f"median {np.median(np.diag(np.linalg.inv(residual.precision))) ** 0.5:.4f} rad")
  return 0


if __name__ == "__main__":
  app.run(main)
