"""Validation of the generic training config; each task validates its own fields.

`validate_config` runs before anything is built or written, so a typo in a command-line
override (`--config.optimizer.learning_rat=1e-3`, `--config.flow.coupling=afine`) fails in
seconds with a ValueError naming the field (and, for an unknown field, the closest valid
ones), not after data preparation or compilation.

Generic fields (every task): `task` (default "prior"), `seed`, `num_train_steps`,
`batch_size`, `eval_batch_size`, `init_examples`, `log_every`, `eval_every`,
`checkpoint_every`, `keep_checkpoints`, `optimizer.{learning_rate, warmup_steps,
end_lr_factor, grad_clip_norm}`, `loss_weights` (exactly the task's `LOSS_TERMS`) and `data`
(its fields are the task's). The task adds its own top-level fields (`CONFIG_FIELDS`).
"""

import difflib
import math
import numbers
from typing import Iterable

import jax
import ml_collections

from flowpose import tasks

GENERIC_FIELDS = ("task", "seed", "num_train_steps", "batch_size", "eval_batch_size",
                  "init_examples", "log_every", "eval_every", "checkpoint_every",
                  "keep_checkpoints", "optimizer", "loss_weights", "data")
OPTIMIZER_FIELDS = ("learning_rate", "warmup_steps", "end_lr_factor", "grad_clip_norm")
DEFAULT_TASK = "prior"


class ConfigError(ValueError):
  """A config field is missing, unknown or has a bad value (the message names it)."""


def fail(field: str, expected: str, value) -> None:
  raise ConfigError(f"config {field}: expected {expected}, got {value!r}")


def unknown_key_message(field: str, valid: Iterable[str]) -> str:
  """`config a.b.c: unknown field; closest valid: ...` (difflib on the last name)."""
  valid = sorted(valid)
  *parents, name = field.split(".")
  prefix = ".".join(parents) + "." if parents else ""
  close = difflib.get_close_matches(name, valid, n=3, cutoff=0.5)
  hint = (f"did you mean {', '.join(prefix + c for c in close)}?" if close
          else f"valid fields of {prefix.rstrip('.') or 'config'}: {', '.join(valid)}")
  return f"config {field}: unknown field; {hint}"


def check_keys(section, path: str, valid: Iterable[str]) -> None:
  """Raises ConfigError for the first key of `section` not in `valid` (`path`: its name)."""
  valid = tuple(valid)
  for key in section.keys():
    if key not in valid:
      raise ConfigError(unknown_key_message(f"{path}.{key}" if path else key, valid))


def check_override(config, dotted: str) -> None:
  """Raises ConfigError if the dotted field (`flow.num_layers`) does not exist in `config`."""
  node, done = config, []
  for key in dotted.split("."):
    if not isinstance(node, (ml_collections.ConfigDict, dict)) or key not in node:
      valid = node.keys() if isinstance(node, (ml_collections.ConfigDict, dict)) else ()
      raise ConfigError(unknown_key_message(".".join(done + [key]), valid))
    node, done = node[key], done + [key]


def positive_int(config, field: str, prefix: str = "", minimum: int = 1) -> int:
  """`config[field]` checked to be an int >= `minimum` (`prefix` + `field` names it)."""
  value = config
  for key in field.split("."):
    if key not in value:
      raise ConfigError(f"config {prefix}{field}: missing")
    value = value[key]
  if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
    fail(prefix + field, "a positive int" if minimum == 1 else f"an int >= {minimum}", value)
  return value


def number(value) -> bool:
  """A finite real number (not a bool)."""
  return (isinstance(value, numbers.Real) and not isinstance(value, bool)
          and math.isfinite(value))


def task_name(config) -> str:
  """`config.task`, "prior" when the config has no such field."""
  return config.get("task", DEFAULT_TASK)


def validate_config(config: ml_collections.ConfigDict):
  """Raises ValueError naming the first invalid field; returns the task module."""
  task = tasks.get_task(task_name(config))
  check_keys(config, "", GENERIC_FIELDS + tuple(getattr(task, "CONFIG_FIELDS", ())))
  for section in ("data", "optimizer", "loss_weights"):
    if section not in config:
      raise ConfigError(f"config {section}: missing section")

  # Sizes and intervals.
  for field in ("num_train_steps", "batch_size", "eval_batch_size", "log_every",
                "eval_every", "checkpoint_every", "keep_checkpoints", "init_examples"):
    positive_int(config, field)
  if "seed" not in config or isinstance(config.seed, bool) or not isinstance(config.seed, int):
    fail("seed", "an int", config.get("seed"))
  devices, processes = jax.device_count(), jax.process_count()
  for field in ("batch_size", "eval_batch_size"):
    if config[field] % devices or config[field] % processes:
      fail(field, f"a multiple of the {devices} devices", config[field])

  # Optimizer.
  opt = config.optimizer
  check_keys(opt, "optimizer", OPTIMIZER_FIELDS)
  for field in OPTIMIZER_FIELDS:
    if field not in opt:
      raise ConfigError(f"config optimizer.{field}: missing")
  if not number(opt.learning_rate) or opt.learning_rate <= 0:
    fail("optimizer.learning_rate", "a positive float", opt.learning_rate)
  if (isinstance(opt.warmup_steps, bool) or not isinstance(opt.warmup_steps, int)
      or not 0 <= opt.warmup_steps < config.num_train_steps):
    fail("optimizer.warmup_steps",
         f"an int in [0, num_train_steps={config.num_train_steps})", opt.warmup_steps)
  if not number(opt.end_lr_factor) or not 0 <= opt.end_lr_factor <= 1:
    fail("optimizer.end_lr_factor", "a float in [0, 1]", opt.end_lr_factor)
  if not number(opt.grad_clip_norm) or opt.grad_clip_norm <= 0:
    fail("optimizer.grad_clip_norm", "a positive float", opt.grad_clip_norm)

  # Loss weights: exactly the task's terms, finite and >= 0.
  weights = dict(config.loss_weights)
  if set(weights) != set(task.LOSS_TERMS):
    fail("loss_weights", f"weights for exactly {list(task.LOSS_TERMS)}", sorted(weights))
  for name, weight in weights.items():
    if not number(weight) or weight < 0:
      fail(f"loss_weights.{name}", "a finite float >= 0", weight)

  task.validate_config(config)
  return task
