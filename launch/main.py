r"""Trains the flow pose prior.

  python -m launch.main --config=experiments/prior_cmu.py[:runlocal] --workdir=DIR \
      [--config.flow.coupling=spline ...]

Writes checkpoints, TensorBoard metrics, `prior_params.msgpack` and
`config.json` into `--workdir`; rerunning with the same workdir resumes from
the newest checkpoint. SIGTERM checkpoints and exits cleanly.
"""

import os

# The flow's LU layers call LAPACK on tiny (<= 50 x 50) matrices, where
# OpenBLAS's thread pool only costs: on a busy 2-core machine it made a train
# step 70x slower. Must be set before the first LAPACK call.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

# pylint: disable=g-import-not-at-top,wrong-import-position
from absl import app
from absl import flags
from absl import logging
import jax
from ml_collections import config_flags

# Before anything imports TensorFlow (TFP requires it): see flowpose.prior.flow.
from flowpose.train import trainer  # pylint: disable=g-bad-import-order
# pylint: enable=g-import-not-at-top,wrong-import-position

_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, "
                               "metrics and the exported prior.")
config_flags.DEFINE_config_file(
    "config", None, "Experiment config file (`path.py[:arg]`).",
    lock_config=True)
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  logging.info("JAX process %d / %d, devices: %s", jax.process_index(),
               jax.process_count(), jax.devices())
  result = trainer.train_and_evaluate(flags.FLAGS.config, _WORKDIR.value)
  logging.info("Done at step %d (eval NLL %s nats/pose%s).", result.step,
               result.eval_nll, ", preempted" if result.preempted else "")


if __name__ == "__main__":
  app.run(main)
