"""Checkpoints of the train state (orbax) and the exported prior (params + config).

Two kinds of files live in a workdir:

* `checkpoints/<step>/`: orbax `CheckpointManager` checkpoints of the whole
  `TrainState` (step, params, optimizer state), written every
  `config.checkpoint_every` steps, at the end and on preemption; the newest
  `config.keep_checkpoints` are kept. The data iterator needs no state (the
  batch of step `s` is a function of `(seed, s)`, see `input_pipeline`).
* `prior_params.msgpack` + `config.json`: the trained prior for downstream use
  (fitting), read back with `load_exported_prior(workdir)`.
"""

import json
import os
from typing import Any, Optional

import flax
import jax
import ml_collections
import orbax.checkpoint as ocp

from flowpose import io_utils
from flowpose import prior as prior_lib

CHECKPOINT_DIR = "checkpoints"
PARAMS_FILE = "prior_params.msgpack"
CONFIG_FILE = "config.json"


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


atomic_write = io_utils.atomic_write  # Used by prior_eval too.


def write_config(workdir: str, config: ml_collections.ConfigDict) -> None:
  """Writes `workdir/config.json` (the full experiment config)."""
  atomic_write(os.path.join(workdir, CONFIG_FILE),
               config.to_json_best_effort(indent=2).encode())


def export_prior(workdir: str, params: Any,
                 config: ml_collections.ConfigDict) -> str:
  """Writes `prior_params.msgpack` and `config.json`; returns the params path."""
  write_config(workdir, config)
  path = os.path.join(workdir, PARAMS_FILE)
  atomic_write(path, flax.serialization.to_bytes(jax.device_get(params)))
  return path


def load_exported_prior(workdir: str):
  """Reads an exported prior.

  Returns:
    `(prior, params, config)`: the `FlowPrior` rebuilt from the saved
    `config.flow`, its params, and the experiment `ConfigDict`.
  """
  with open(os.path.join(workdir, CONFIG_FILE)) as f:
    config = ml_collections.ConfigDict(json.load(f))
  # JSON turns tuples into lists.
  config.flow.hidden_sizes = tuple(config.flow.hidden_sizes)
  prior = prior_lib.make_prior(config.flow)
  example = jax.ShapeDtypeStruct((2, prior.event_dim), jax.numpy.float32)
  target = jax.eval_shape(prior.init, jax.random.key(0), example)
  with open(os.path.join(workdir, PARAMS_FILE), "rb") as f:
    params = flax.serialization.from_bytes(target, f.read())
  return prior, params, config
