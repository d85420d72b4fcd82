"""Validation of the prior-training config (`experiments/prior_cmu.py` documents the fields).

`validate_config` runs before anything is built or written, so a typo in a
command-line override (`--config.flow.coupling=afine`) fails in seconds with
a ValueError naming the field, not after data preparation or compilation.
"""

import math
import numbers

import jax
import ml_collections

from flowpose.data import cmu_skeleton
from flowpose.prior import flow as prior_lib
from flowpose.data import poses as pose_data

# Names of the loss terms the trainer computes; `config.loss_weights` must
# give each a weight (0.0 switches a term off but keeps it logged).
LOSS_TERMS = ("nll", "weight_l2")


def _fail(field: str, expected: str, value) -> None:
  raise ValueError(f"config {field}: expected {expected}, got {value!r}")


def _positive_int(config, field: str) -> int:
  value = config
  for key in field.split("."):
    if key not in value:
      raise ValueError(f"config {field}: missing")
    value = value[key]
  if isinstance(value, bool) or not isinstance(value, int) or value < 1:
    _fail(field, "a positive int", value)
  return value


def _number(value) -> bool:
  return (isinstance(value, numbers.Real) and not isinstance(value, bool)
          and math.isfinite(value))


def validate_config(config: ml_collections.ConfigDict) -> None:
  """Raises ValueError naming the first invalid field of a prior config."""
  for section in ("flow", "data", "optimizer", "loss_weights"):
    if section not in config:
      raise ValueError(f"config {section}: missing section")
  prior_lib.validate_flow_config(config.flow)

  # Sizes and intervals.
  for field in ("num_train_steps", "batch_size", "eval_batch_size",
                "log_every", "eval_every", "checkpoint_every",
                "keep_checkpoints", "init_examples"):
    _positive_int(config, field)
  if not isinstance(config.seed, int):
    _fail("seed", "an int", config.seed)
  devices = jax.device_count()
  for field in ("batch_size", "eval_batch_size"):
    if config[field] % devices:
      _fail(field, f"a multiple of the {devices} devices", config[field])
  if config.init_examples < 2:
    _fail("init_examples", "an int >= 2", config.init_examples)
  if not _number(config.input_noise) or config.input_noise < 0:
    _fail("input_noise", "a float >= 0 (radians)", config.input_noise)

  # Optimizer.
  opt = config.optimizer
  if not _number(opt.learning_rate) or opt.learning_rate <= 0:
    _fail("optimizer.learning_rate", "a positive float", opt.learning_rate)
  if (not isinstance(opt.warmup_steps, int) or opt.warmup_steps < 0
      or opt.warmup_steps >= config.num_train_steps):
    _fail("optimizer.warmup_steps",
          f"an int in [0, num_train_steps={config.num_train_steps})",
          opt.warmup_steps)
  if not _number(opt.end_lr_factor) or not 0 <= opt.end_lr_factor <= 1:
    _fail("optimizer.end_lr_factor", "a float in [0, 1]", opt.end_lr_factor)
  if not _number(opt.grad_clip_norm) or opt.grad_clip_norm <= 0:
    _fail("optimizer.grad_clip_norm", "a positive float", opt.grad_clip_norm)

  # Loss weights: exactly the trainer's terms, finite and >= 0.
  weights = dict(config.loss_weights)
  if set(weights) != set(LOSS_TERMS):
    _fail("loss_weights", f"weights for exactly {list(LOSS_TERMS)}",
          sorted(weights))
  for name, weight in weights.items():
    if not _number(weight) or weight < 0:
      _fail(f"loss_weights.{name}", "a finite float >= 0", weight)

  # Data.
  data = config.data
  if data.source not in pose_data.SOURCES:
    _fail("data.source", f"one of {pose_data.SOURCES}", data.source)
  mirror = data.get("augment_mirror", False)
  if not isinstance(mirror, bool):
    _fail("data.augment_mirror", "a bool", mirror)
  if (mirror and config.flow.chart == "euler_dofs"
      and config.flow.event_dim != cmu_skeleton.NUM_POSE_DOFS):
    _fail("data.augment_mirror", f"False unless flow.event_dim is the "
          f"{cmu_skeleton.NUM_POSE_DOFS}-DOF CMU chart", mirror)
  if data.source == "synthetic":
    if _positive_int(config, "data.num_train") < config.batch_size:
      _fail("data.num_train", f">= batch_size={config.batch_size}",
            data.num_train)
    _positive_int(config, "data.num_eval")
  else:
    for field in ("tfds_name", "manual_dir", "train_split", "eval_split"):
      if not isinstance(data[field], str) or not data[field]:
        _fail(f"data.{field}", "a non-empty string", data[field])
    _positive_int(config, "data.fps")
