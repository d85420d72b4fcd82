"""Export and load a trained prior (`prior_params.msgpack` + `config.json` in its workdir).

The trainer exports here at the end of training; fitting, evaluation and benchmarks load from here,
so nothing outside `flowpose.train` imports the trainer's modules.

Loading verifies what it reads: a missing, empty, truncated or garbled file, params that do not
match the saved `config.flow`, or params whose SHA-256 differs from the one written at export
(`prior_params.sha256`, `sha256sum -c` format; absent in workdirs exported before it existed)
raise one `PriorLoadError` that names the file and says what to do, never a bare msgpack or JSON
error.
"""

import hashlib
import json
import os
from typing import Any

import flax
import jax
import ml_collections
import numpy as np

from flowpose import io_utils
from flowpose.prior import flow as prior_lib

PARAMS_FILE = "prior_params.msgpack"
CONFIG_FILE = "config.json"
CHECKSUM_FILE = "prior_params.sha256"
VAE_PARAMS_FILE = "vae_params.msgpack"  # A VAE workdir (tasks/vae.py): these + config.json.
VAE_CHECKSUM_FILE = "vae_params.sha256"
atomic_write = io_utils.atomic_write


class PriorLoadError(ValueError):
  """A prior workdir is missing or holds unreadable files (the message names the file)."""


def _remedy(workdir: str) -> str:
  return (f"delete it and rerun the training command on --workdir={workdir} (training resumes "
          "from the last checkpoint and exports the prior again), or use another trained workdir")


def write_config(workdir: str, config: ml_collections.ConfigDict) -> None:
  """Writes `workdir/config.json` (the full experiment config)."""
  atomic_write(os.path.join(workdir, CONFIG_FILE),
               config.to_json_best_effort(indent=2).encode())


def export_prior(workdir: str, params: Any, config: ml_collections.ConfigDict,
                 params_file: str = PARAMS_FILE, checksum_file: str = CHECKSUM_FILE) -> str:
  """Writes `prior_params.msgpack`, its `prior_params.sha256` and `config.json`; returns the
  params path."""
  write_config(workdir, config)
  path = os.path.join(workdir, params_file)
  data = flax.serialization.to_bytes(jax.device_get(params))
  atomic_write(path, data)
  atomic_write(os.path.join(workdir, checksum_file),
               f"{hashlib.sha256(data).hexdigest()}  {params_file}\n".encode())
  return path


def export_vae(workdir: str, params: Any, config: ml_collections.ConfigDict) -> str:
  """Writes `vae_params.msgpack`, `vae_params.sha256` and `config.json` (section `vae`)."""
  return export_prior(workdir, params, config, VAE_PARAMS_FILE, VAE_CHECKSUM_FILE)


def params_sha256(workdir: str) -> str:
  """SHA-256 (hex) of the exported params file: identifies the trained prior (NLL tables)."""
  with open(os.path.join(workdir, PARAMS_FILE), "rb") as f:
    return hashlib.sha256(f.read()).hexdigest()


def _existing(workdir: str, name: str) -> str:
  path = os.path.join(workdir, name)
  if not os.path.isfile(path):
    raise PriorLoadError(f"{path} not found: expected a workdir written by `python -m "
                         "launch.main` after training finished")
  return path


def _read_bytes(workdir: str, name: str) -> bytes:
  path = _existing(workdir, name)
  try:
    with open(path, "rb") as f:
      data = f.read()
  except OSError as e:
    raise PriorLoadError(f"{path} cannot be read ({e.strerror or e})") from e
  if not data:
    raise PriorLoadError(f"{path} is empty (0 bytes; an interrupted copy?): {_remedy(workdir)}")
  return data


def _read_config(workdir: str, section: str = "flow") -> ml_collections.ConfigDict:
  path = os.path.join(workdir, CONFIG_FILE)
  data = _read_bytes(workdir, CONFIG_FILE)
  try:
    fields = json.loads(data.decode("utf-8"))
  except (UnicodeDecodeError, json.JSONDecodeError) as e:
    raise PriorLoadError(f"{path} is not valid JSON ({e}; truncated or garbled?): "
                         f"{_remedy(workdir)}") from None
  if not isinstance(fields, dict) or not isinstance(fields.get(section), dict):
    raise PriorLoadError(f"{path} has no `{section}` section; expected the experiment config "
                         f"the trainer writes: {_remedy(workdir)}")
  config = ml_collections.ConfigDict(fields)
  if "hidden_sizes" in config[section]:  # JSON turns tuples into lists.
    config[section].hidden_sizes = tuple(config[section].hidden_sizes)
  return config


def _check_params(path: str, workdir: str, target: Any, params: Any) -> None:
  """Same tree, shapes and dtypes as `target` (from config.json), every value finite."""
  want = jax.tree_util.tree_flatten_with_path(target)[0]
  got, got_tree = jax.tree_util.tree_flatten(params)
  if got_tree != jax.tree_util.tree_structure(target):
    raise PriorLoadError(f"{path}: the parameter tree does not match {CONFIG_FILE}'s flow "
                         f"config (params and config of different runs?): {_remedy(workdir)}")
  for (key, spec), leaf in zip(want, got):
    name = jax.tree_util.keystr(key)
    leaf = np.asarray(leaf)
    if leaf.shape != spec.shape or leaf.dtype != spec.dtype:
      raise PriorLoadError(f"{path}: parameter {name} is {leaf.dtype}{list(leaf.shape)}, "
                           f"expected {spec.dtype}{list(spec.shape)} from {CONFIG_FILE}'s flow "
                           f"config (params and config of different runs?): {_remedy(workdir)}")
    if np.issubdtype(leaf.dtype, np.floating) and not np.all(np.isfinite(leaf)):
      raise PriorLoadError(f"{path}: parameter {name} holds NaN or inf: {_remedy(workdir)}")


def _read_params(workdir: str, prior, params_file: str = PARAMS_FILE,
                 checksum_file: str = CHECKSUM_FILE) -> Any:
  path = os.path.join(workdir, params_file)
  data = _read_bytes(workdir, params_file)
  checksum_path = os.path.join(workdir, checksum_file)
  if os.path.isfile(checksum_path):
    with open(checksum_path, "rb") as f:
      expected = f.read().decode("utf-8", errors="replace").split(maxsplit=1)[:1]
    actual = hashlib.sha256(data).hexdigest()
    if expected != [actual]:
      raise PriorLoadError(f"{path}: SHA-256 {actual[:16]}... differs from the one recorded at "
                           f"export in {checksum_path} (the file changed since: a corrupt copy "
                           f"or a partial overwrite): {_remedy(workdir)}")
  example = jax.ShapeDtypeStruct((2, prior.event_dim), jax.numpy.float32)
  target = jax.eval_shape(prior.init, jax.random.key(0), example)
  try:
    params = flax.serialization.from_bytes(target, data)
  except (ValueError, TypeError, KeyError, IndexError, AttributeError) as e:
    # msgpack's "Unpack failed", ExtraData, flax's state-dict mismatches, ...
    raise PriorLoadError(f"{path} cannot be decoded ({type(e).__name__}: {e}; truncated or "
                         f"garbled?): {_remedy(workdir)}") from None
  _check_params(path, workdir, target, params)
  return params


def load_exported_prior(workdir: str):
  """Reads and verifies an exported prior.

  Returns:
    `(prior, params, config)`: the `FlowPrior` rebuilt from the saved
    `config.flow`, its params, and the experiment `ConfigDict`.

  Raises:
    PriorLoadError: a file is missing or unreadable, or the params do not fit the config (the
      message names the file and what to do).
  """
  for name in (PARAMS_FILE, CONFIG_FILE):  # A missing file is named before anything is read.
    _existing(workdir, name)
  config = _read_config(workdir)
  try:
    prior = prior_lib.make_prior(config.flow)
  except (KeyError, AttributeError, TypeError, ValueError) as e:
    raise PriorLoadError(f"{os.path.join(workdir, CONFIG_FILE)}: its `flow` section does not "
                         f"build a prior ({type(e).__name__}: {e}): {_remedy(workdir)}") from None
  return prior, _read_params(workdir, prior), config


# The one loader, under the name the evaluation and fitting code use.
load_trained_prior = load_exported_prior


def load_trained_vae(workdir: str):
  """Reads and verifies an exported VAE prior (`tasks/vae.py`).

  Returns:
    `(vae, params, config)`: the `flowpose.prior.vae.VaePrior` of the saved `config.vae`, its
    params and the experiment config. Raises PriorLoadError as `load_exported_prior`.
  """
  from flowpose.prior import vae as vae_lib  # pylint: disable=g-import-not-at-top
  for name in (VAE_PARAMS_FILE, CONFIG_FILE):
    _existing(workdir, name)
  config = _read_config(workdir, "vae")
  try:
    vae = vae_lib.make_vae(config.vae)
  except (KeyError, AttributeError, TypeError, ValueError) as e:
    raise PriorLoadError(f"{os.path.join(workdir, CONFIG_FILE)}: its `vae` section does not "
                         f"build a VAE ({type(e).__name__}: {e}): {_remedy(workdir)}") from None
  return vae, _read_params(workdir, vae, VAE_PARAMS_FILE, VAE_CHECKSUM_FILE), config
