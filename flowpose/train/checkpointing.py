"""Checkpoints of the train state (orbax).

* `checkpoints/<step>/`: orbax `CheckpointManager` checkpoints of the whole
  `TrainState` (step, params, optimizer state), written every
  `config.checkpoint_every` steps, at the end and on preemption; the newest
  `config.keep_checkpoints` are kept. The data iterator needs no state (the
  batch of step `s` is a function of `(seed, s)`, see `flowpose.data.poses`).
The trained prior exported for downstream use lives beside them (`flowpose.prior.io`).
"""

import os
from typing import Any, Optional

import jax
import orbax.checkpoint as ocp


CHECKPOINT_DIR = "checkpoints"


def create_manager(workdir: str, keep: int) -> ocp.CheckpointManager:
  """A CheckpointManager over `workdir/checkpoints` keeping `keep` steps."""
  options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True)
  return ocp.CheckpointManager(os.path.join(os.path.abspath(workdir),
                                            CHECKPOINT_DIR), options=options)


def restore_latest(manager: ocp.CheckpointManager,
                   abstract_state: Any) -> Optional[Any]:
  """The newest checkpoint restored onto `abstract_state`'s shardings, or None.

  Args:
    manager: from `create_manager`.
    abstract_state: pytree of `jax.ShapeDtypeStruct` (with shardings) shaped
      like the train state.
  """
  step = manager.latest_step()
  if step is None:
    return None
  return manager.restore(step, args=ocp.args.StandardRestore(abstract_state))


def save(manager: ocp.CheckpointManager, step: int, state: Any,
         wait: bool = False) -> None:
  """Saves `state` as checkpoint `step` (async unless `wait`)."""
  manager.save(step, args=ocp.args.StandardSave(state), force=True)
  if wait:
    manager.wait_until_finished()
