r"""Trains any task (`config.task`, default the flow prior), on one process or many.

  python -m launch.main --config=experiments/prior_cmu.py[:runlocal] --workdir=DIR \
      [--config.flow.coupling=spline ...]

Several processes (hosts, or one per GPU) train one model over a mesh of all their devices:
under `srun` (Slurm) and on a Cloud TPU slice (`--cluster=tpu` on every worker) `jax.distributed`
is started from the environment (`launch/cluster/`); anywhere else pass
`--coordinator_address=HOST:PORT --num_processes=N --process_id=I` to each process. They share
`--workdir` (a shared filesystem): process 0 holds its lock and writes the metrics, config.json
and the export; checkpoints are written by all (orbax, multi-host) and resume with any process
count. Each process reads its own shard of the training split (`flowpose.train.distributed`).

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
from flowpose.train import distributed
from flowpose.train import trainer
from flowpose.train import workdir as workdir_lib
# pylint: enable=g-import-not-at-top,wrong-import-position

_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and the "
                               "task's exported results.")
config_flags.DEFINE_config_file("config", None, "Experiment config file (`path.py[:arg]`).",
                                lock_config=True)
_OVERRIDE = flags.DEFINE_bool("override", False, "Resume --workdir even though --config differs "
                              "from its config.json in fields that change the result.")
_CLUSTER = flags.DEFINE_enum(
    "cluster", "auto", distributed.CLUSTERS, "How to find the other processes: auto (explicit "
    "flags, else a Slurm step of > 1 task, else a multi-worker TPU slice in the environment, "
    "else one process), none, explicit, slurm, tpu (Cloud TPU VM metadata).")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None, "host:port of process 0's "
                                   "coordinator (explicit multi-process start).")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Number of processes (explicit).")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index in "
                                   "[0, num_processes) (explicit).")
_LOCAL_DEVICES = flags.DEFINE_list("local_device_ids", None, "Devices this process uses "
                                   "(default: JAX's choice, on Slurm GPUs [SLURM_LOCALID]).")
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
  # Before anything touches a JAX backend.
  try:
    local = [int(d) for d in _LOCAL_DEVICES.value] if _LOCAL_DEVICES.value else None
    info = distributed.initialize(_CLUSTER.value, _COORDINATOR.value, _NUM_PROCESSES.value,
                                  _PROCESS_ID.value, local)
  except ValueError as e:  # DistributedConfigError, a non-integer --local_device_ids.
    _usage_error(str(e))
  logging.info("JAX process %d / %d (%s start), devices: %s", jax.process_index(),
               jax.process_count(), info.how, jax.devices())
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
