"""Export and load a trained prior (`prior_params.msgpack` + `config.json` in its workdir).

The trainer exports here at the end of training; fitting, evaluation and benchmarks load from here,
so nothing outside `flowpose.train` imports the trainer's modules.
"""

import json
import os
from typing import Any

import flax
import jax
import ml_collections

from flowpose import io_utils
from flowpose.prior import flow as prior_lib

PARAMS_FILE = "prior_params.msgpack"
CONFIG_FILE = "config.json"
atomic_write = io_utils.atomic_write


class PriorLoadError(ValueError):
  """A prior workdir is missing or holds unreadable files (the message names the file)."""


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


def load_trained_prior(workdir: str):
  """`(prior, params, config)` exported by the trainer; `PriorLoadError` names a missing file."""
  for name in (PARAMS_FILE, CONFIG_FILE):
    if not os.path.isfile(os.path.join(workdir, name)):
      raise PriorLoadError(f"{os.path.join(workdir, name)} not found: expected a workdir "
                           "written by `python -m launch.main` after training finished")
  return load_exported_prior(workdir)
