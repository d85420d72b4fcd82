r"""Trains any task (`config.task`, default the flow prior).

  python -m launch.main --config=experiments/prior_cmu.py[:runlocal] --workdir=DIR \
      [--config.flow.coupling=spline ...]

Writes checkpoints, TensorBoard metrics, `config.json` and the task's export (the prior:
`prior_params.msgpack`) into `--workdir`; rerunning with the same workdir resumes from the
newest checkpoint (refused if the config changed the result, unless `--override`; a second
run on a workdir in use fails at once). SIGTERM checkpoints and exits with 143 (128 + SIGTERM), so a script
running this stops. A bad flag, config field or workdir exits with 2 and one line naming it.
"""

import os

# The flow's LU layers call LAPACK on tiny (<= 50 x 50) matrices, where OpenBLAS's thread pool
# only costs: on a busy 2-core machine it made a train step 70x slower. Must be set before the
# first LAPACK call.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

# pylint: disable=g-import-not-at-top,wrong-import-position
import importlib.util
import signal
import sys

from absl import app
from absl import flags
from absl import logging
import jax
from ml_collections import config_flags

from flowpose import io_utils
from flowpose.train import checkpointing
from flowpose.train import config_lib
from flowpose.train import trainer
from flowpose.train import workdir as workdir_lib
# pylint: enable=g-import-not-at-top,wrong-import-position

_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and the "
                               "task's exported results.")
config_flags.DEFINE_config_file("config", None, "Experiment config file (`path.py[:arg]`).",
                                lock_config=True)
_OVERRIDE = flags.DEFINE_bool("override", False, "Resume --workdir even though --config differs "
                              "from its config.json in fields that change the result.")
flags.mark_flags_as_required(["config", "workdir"])
PREEMPTED_EXIT_CODE = 128 + signal.SIGTERM


def _usage_error(message: str) -> None:
  print(f"launch.main: {message}", file=sys.stderr)
  sys.exit(2)


def _load_config_file(argv):
  """The config of `--config=path.py[:arg]` in `argv`, loaded again (None if unloadable)."""
  spec = next((a.split("=", 1)[1] for a in argv[1:] if a.startswith("--config=")), None)
  if spec is None:
    return None
  path, _, arg = spec.partition(":")
  try:
    module_spec = importlib.util.spec_from_file_location("_launch_config", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module.get_config(arg) if arg else module.get_config()
  except Exception:  # pylint: disable=broad-except
    return None


def parse_flags(argv):
  """absl flag parsing; an unknown `--config.x.y` names the closest valid fields."""
  try:
    return flags.FLAGS(argv)
  except (AttributeError, KeyError) as e:
    # ml_collections raises a bare AttributeError for an override of a missing field.
    config = _load_config_file(argv)
    for arg in argv[1:]:
      if arg.startswith("--config.") and config is not None:
        try:
          config_lib.check_override(config, arg[len("--config."):].split("=", 1)[0])
        except config_lib.ConfigError as error:
          _usage_error(f"--config.{str(error)[len('config '):]}")
    _usage_error(f"bad --config override: {e}")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  logging.info("JAX process %d / %d, devices: %s", jax.process_index(), jax.process_count(),
               jax.devices())
  # Checked here too (the trainer repeats both) to fail in one line, not a traceback.
  try:
    config_lib.validate_config(flags.FLAGS.config)
    io_utils.require_output_path(_WORKDIR.value, "--workdir")
  except ValueError as e:  # ConfigError, OutputPathError, a flow field's ValueError.
    _usage_error(str(e))
  try:
    result = trainer.train_and_evaluate(flags.FLAGS.config, _WORKDIR.value,
                                        override=_OVERRIDE.value)
  except (workdir_lib.WorkdirLockedError, workdir_lib.ConfigMismatchError,
          checkpointing.CheckpointError) as e:
    sys.exit(f"launch.main: {e}")
  metrics = ", ".join(f"{k} {v:.4f}" for k, v in result.eval_metrics.items())
  if result.preempted:
    logging.warning("Preempted at step %d (checkpoint saved; last eval at step %d: %s); "
                    "exiting with %d.", result.step, result.eval_step, metrics,
                    PREEMPTED_EXIT_CODE)
    sys.exit(PREEMPTED_EXIT_CODE)
  logging.info("Done at step %d (eval at step %d: %s).", result.step, result.eval_step,
               metrics)


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
