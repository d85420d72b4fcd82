"""Task "prior": the flow pose prior trained by maximum likelihood on mocap DOF angles.

Data: `flowpose.data.poses` streams this process's DOF batches (`[B, D]` float32: D =
`flow.event_dim` in the Euler chart, the 50 CMU DOFs otherwise; mirrored in tf.data when
`data.augment_mirror`). On device the batch goes to the prior's chart
(`flowpose.prior.charts.from_dofs`) and gets Gaussian jitter `config.input_noise` (radians; 0
in the default `euler_free` chart, which drops the DOFs CMU holds constant),
then the loss is `weighted_sum({"nll": mean -log p (nats/pose), "weight_l2": 0.5 * sum of
squared flow params}, config.loss_weights)`. The standardisation stats (`params["stats"]`)
are data, not parameters: frozen by `optimizer_labels`. At the end the trainer exports the
prior with `flowpose.prior.io.export_prior` (`prior_params.msgpack` + `config.json`).

Config fields (besides the trainer's, `flowpose.train.config_lib`): `flow` (validated by
`flowpose.prior.flow.validate_flow_config`), `input_noise`, `data.*`
(`flowpose.data.poses.default_config()` documents them).
"""

import functools
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from flowpose import losses
from flowpose.data import cmu_skeleton
from flowpose.data import poses
from flowpose.prior import charts
from flowpose.prior import flow as prior_lib
from flowpose.prior import io as prior_io
from flowpose.train import config_lib

LOSS_TERMS = ("nll", "weight_l2")
CONFIG_FIELDS = ("flow", "input_noise")


@functools.lru_cache(maxsize=16)
def _prior_for(flow: ml_collections.FrozenConfigDict) -> prior_lib.FlowPrior:
  return prior_lib.make_prior(ml_collections.ConfigDict(flow))


def make_prior(config: ml_collections.ConfigDict) -> prior_lib.FlowPrior:
  """The `FlowPrior` of `config.flow` (memoised: one object per flow config)."""
  return _prior_for(ml_collections.FrozenConfigDict(config.flow))


def dofs_dim(config: ml_collections.ConfigDict) -> int:
  """Width of the data's DOF vectors: `flow.event_dim` in the Euler chart, else 50."""
  if config.flow.chart == "euler_dofs":
    return config.flow.event_dim
  return cmu_skeleton.NUM_POSE_DOFS


def to_chart(chart: str, dofs: jax.Array) -> jax.Array:
  """`[..., Dd]` DOF angles -> `[..., D]` coordinates of the prior's chart (jnp)."""
  return jnp.asarray(dofs, jnp.float32) if chart == "euler_dofs" else charts.from_dofs(
      chart, dofs)


def validate_config(config: ml_collections.ConfigDict) -> None:
  """Raises ValueError naming the first bad prior field (flow, input_noise, data)."""
  if "flow" not in config:
    raise config_lib.ConfigError("config flow: missing section")
  # event_dim is allowed even if the defaults derive it from the chart.
  config_lib.check_keys(config.flow, "flow",
                        set(prior_lib.default_flow_config().keys()) | {"event_dim"})
  prior_lib.validate_flow_config(config.flow)
  if config.init_examples < 2:
    config_lib.fail("init_examples", "an int >= 2", config.init_examples)
  noise = config.get("input_noise")
  if not config_lib.number(noise) or noise < 0:
    config_lib.fail("input_noise", "a float >= 0 (radians)", noise)
  validate_data(config.data, config.batch_size)
  if config.data.augment_mirror and dofs_dim(config) != cmu_skeleton.NUM_POSE_DOFS:
    config_lib.fail("data.augment_mirror", f"False unless flow.event_dim is the "
                    f"{cmu_skeleton.NUM_POSE_DOFS}-DOF CMU chart", config.data.augment_mirror)


def validate_data(data: ml_collections.ConfigDict, batch_size: int) -> None:
  """Raises ConfigError naming the first bad `data.*` field (shared with tasks/vae.py)."""
  config_lib.check_keys(data, "data", poses.DATA_DEFAULTS)
  if data.get("source") not in poses.SOURCES:
    config_lib.fail("data.source", f"one of {poses.SOURCES}", data.get("source"))
  for field in ("augment_mirror", "skip_bad_files"):
    if not isinstance(data.get(field, False), bool):
      config_lib.fail(f"data.{field}", "a bool", data[field])
  if "shuffle_buffer" in data:
    config_lib.positive_int(data, "shuffle_buffer", "data.")
  for field in ("train_split", "eval_split"):
    if not isinstance(data.get(field), str) or not data[field]:
      config_lib.fail(f"data.{field}", "a non-empty string", data.get(field))
  if data.source == "synthetic":
    if config_lib.positive_int(data, "num_train", "data.") < batch_size:
      config_lib.fail("data.num_train", f">= batch_size={batch_size}", data.num_train)
    config_lib.positive_int(data, "num_eval", "data.")
    config_lib.positive_int(data, "synthetic_seed", "data.", minimum=0)
  else:
    for field in ("tfds_name", "manual_dir"):
      if not isinstance(data.get(field), str) or not data[field]:
        config_lib.fail(f"data.{field}", "a non-empty string", data.get(field))
    config_lib.positive_int(data, "fps", "data.")


def check_fixed_dofs(chart: str, dofs) -> None:
  """Raises ValueError if a chart that holds DOFs fixed at 0 (`euler_free`) gets data where they
  move: its density would silently ignore them."""
  if chart != "euler_free":
    return
  if isinstance(dofs, jax.core.Tracer):  # Under the trainer's jit: checked when it runs.
    jax.debug.callback(functools.partial(check_fixed_dofs, chart), dofs)
    return
  fixed = np.abs(np.asarray(dofs, np.float64)[..., charts.FIXED_COLUMNS])
  if fixed.size and fixed.max() > 1e-6:
    moving = [cmu_skeleton.FIXED_POSE_DOFS[i] for i in np.flatnonzero(
        fixed.reshape(-1, fixed.shape[-1]).max(0) > 1e-6)]
    raise ValueError(f"chart 'euler_free' holds {list(cmu_skeleton.FIXED_POSE_DOFS)} at 0, but "
                     f"the training poses move {moving} (max |angle| {fixed.max():.3g} rad); "
                     "use --config.flow.chart=euler_dofs with input_noise > 0 for such data")


def init(config: ml_collections.ConfigDict, rng: jax.Array, example_batch) -> Any:
  """Data-dependent init (standardisation, actnorm) from `example_batch [N, Dd]` DOFs."""
  check_fixed_dofs(config.flow.chart, example_batch)
  prior = make_prior(config)
  noise_rng, init_rng = jax.random.split(rng)
  x = to_chart(config.flow.chart, example_batch)
  if config.input_noise > 0:
    # The init must see the same jittered poses as training: a DOF that is constant in the
    # data would otherwise be scaled by 1/floor and the jitter would arrive hundreds of
    # standard deviations out (loss ~1e26 at step 0).
    x = x + config.input_noise * jax.random.normal(noise_rng, x.shape)
  return prior.init(init_rng, x)


def loss(params: Any, batch: jax.Array, rng: jax.Array, config: ml_collections.ConfigDict):
  """`(weighted total, {"nll", "weight_l2"})` of a DOF batch `[B, Dd]`."""
  prior = make_prior(config)
  x = to_chart(config.flow.chart, batch)
  if config.input_noise > 0:
    x = x + config.input_noise * jax.random.normal(rng, x.shape)
  terms = {
      "nll": -jnp.mean(prior.log_prob(params, x)),
      "weight_l2": 0.5 * sum(jnp.sum(jnp.square(p)) for p in jax.tree.leaves(params["flow"])),
  }
  total, terms = losses.weighted_sum(terms, dict(config.loss_weights))
  return total, dict(terms)


@functools.lru_cache(maxsize=16)
def _eval_fn(flow: ml_collections.FrozenConfigDict):
  prior = _prior_for(flow)

  @jax.jit
  def nll_sum(params, dofs, weight):
    nll = jnp.where(weight > 0, -prior.log_prob(params, to_chart(flow.chart, dofs)), 0.0)
    return jnp.sum(nll), jnp.sum(weight)
  return nll_sum


def mean_over_eval_batches(sum_fn, params: Any, dataset) -> float:
  """The weighted mean of a per-pose value over padded `{"poses", "weight"}` eval batches.

  `sum_fn(params, poses [b, Dd], weight [b]) -> (sum of the value over weight > 0 rows, sum of
  weight)`, jitted by the caller (padding rows have weight 0 and must not count).
  """
  total, count = 0.0, 0.0
  for batch in dataset:
    value_sum, n = jax.device_get(sum_fn(params, batch["poses"], batch["weight"]))
    total, count = total + float(value_sum), count + float(n)
  return total / count


def evaluate(params: Any, dataset, config: ml_collections.ConfigDict) -> dict:
  """`{"nll": mean -log p}` (nats/pose) over `{"poses", "weight"}` batches."""
  fn = _eval_fn(ml_collections.FrozenConfigDict(config.flow))
  return {"nll": mean_over_eval_batches(fn, params, dataset)}


def input_pipeline(config: ml_collections.ConfigDict, split: str, process_index: int,
                   process_count: int, start_step: int = 0):
  """"train": DOF batches from `start_step` on (infinite); "eval": padded eval batches."""
  if split == "train":
    return poses.train_batches(config.data, dofs_dim(config),
                               config.batch_size // process_count, config.seed, start_step,
                               process_index, process_count)
  if split == "eval":
    return poses.eval_dataset(config.data, config.data.eval_split, dofs_dim(config),
                              config.eval_batch_size)
  raise ValueError(f"prior input_pipeline: split {split!r}, expected 'train' or 'eval'")


def optimizer_labels(params: Any) -> dict:
  """The standardisation stats are data (frozen); the flow trains."""
  del params
  return {"stats": "frozen", "flow": "train"}


def export(workdir: str, params: Any, config: ml_collections.ConfigDict) -> str:
  """Writes the trained prior for fitting and evaluation; returns the params path."""
  return prior_io.export_prior(workdir, params, config)
