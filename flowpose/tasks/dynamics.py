"""Task "dynamics": the latent motion model `p(z_t | z_{t-1}, z_{t-2})` on mocap windows.

Data: windows of T consecutive frames at 30 fps from the `cmu_mocap` builder's windows configs
(`data.tfds_config`, e.g. "fps30_win32": T = 32, stride 16), read by `flowpose.data.poses`
(`examples` + `epoch_batches`: the batch of step s is a pure function of (seed, s)); a batch is
`[B, T, 50]` DOF angles. On device: with `data.augment_mirror` each window is replaced by its
left-right mirror image with probability 1/2 (`cmu_skeleton.mirror_permutation_and_signs`), the
poses go to the prior's chart and through the trained prior's inverse flow (frozen: params
`["prior"]`, label "frozen") to latents `z [B, T, D]`, and the loss is
`weighted_sum({"nll": mean over frames t >= 2 of -log p(z_t | z_{t-1}, z_{t-2}),
"weight_l2": 0.5 * ||dynamics params||^2}, config.loss_weights)` (`flowpose.models.dynamics`).

Evaluation (windows of `data.eval_split`): `nll` (latent nats/frame, what is trained),
`nll_pose` (nats/frame of the pose chart: comparable with the prior's NLL table) and
`nll_static` (the prior alone, same frames). At the end `export` writes
`dynamics_params.msgpack` + `config.json` (with the prior's sha256; `flowpose.models.dynamics_io`).

Config fields besides the trainer's: `prior_workdir` (a trained prior), `dynamics`
(`flowpose.models.dynamics.default_dynamics_config()`), `data.*` (`flowpose.data.poses`;
`tfds_config` must be a windows config).
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
from flowpose.models import dynamics as dynamics_lib
from flowpose.models import dynamics_io
from flowpose.prior import charts
from flowpose.prior import io as prior_io
from flowpose.train import config_lib

LOSS_TERMS = ("nll", "weight_l2")
CONFIG_FIELDS = ("prior_workdir", "dynamics")


@functools.lru_cache(maxsize=4)
def load_prior(prior_workdir: str):
  """`(FlowPrior, params)` of a trained prior workdir (memoised)."""
  prior, params, _ = prior_io.load_trained_prior(prior_workdir)
  return prior, params


@functools.lru_cache(maxsize=16)
def _model_for(dynamics: ml_collections.FrozenConfigDict, dim: int) -> dynamics_lib.Dynamics:
  return dynamics_lib.make_dynamics(ml_collections.ConfigDict(dynamics), dim)


def make_model(config: ml_collections.ConfigDict) -> dynamics_lib.Dynamics:
  """The `Dynamics` of `config.dynamics` in the latent space of `config.prior_workdir`."""
  prior, _ = load_prior(config.prior_workdir)
  return _model_for(ml_collections.FrozenConfigDict(config.dynamics), prior.event_dim)


def validate_config(config: ml_collections.ConfigDict) -> None:
  """Raises ValueError naming the first bad field (prior_workdir, dynamics, data)."""
  if not isinstance(config.get("prior_workdir"), str) or not config.prior_workdir:
    config_lib.fail("prior_workdir", "a trained prior workdir (--config.prior_workdir=W)",
                    config.get("prior_workdir"))
  try:
    load_prior(config.prior_workdir)
  except prior_io.PriorLoadError as e:
    raise config_lib.ConfigError(f"config prior_workdir: {e}") from None
  if "dynamics" not in config:
    raise config_lib.ConfigError("config dynamics: missing section")
  dynamics_lib.validate_dynamics_config(config.dynamics)
  data = config.data
  config_lib.check_keys(data, "data", poses.DATA_DEFAULTS)
  if data.get("source") != "tfds":
    config_lib.fail("data.source", "'tfds' (windows of real clips)", data.get("source"))
  if not str(data.get("tfds_config", "")).startswith("fps30_win"):
    config_lib.fail("data.tfds_config", "a windows config of cmu_mocap (fps30_win32 or "
                    "fps30_win64)", data.get("tfds_config"))
  if config.init_examples < 2:
    config_lib.fail("init_examples", "an int >= 2 (windows)", config.init_examples)


def _latents(prior, prior_params, dofs):
  """`[..., T, 50]` DOFs -> `[..., T, D]` latents (gradient stopped: the prior is frozen)."""
  x = charts.from_dofs(prior.chart, jnp.asarray(dofs, jnp.float32))
  return jax.lax.stop_gradient(prior.pose_to_latent(prior_params, x))


def _mirror(rng, dofs):
  """Each window `[B, T, 50]` replaced by its left-right mirror with probability 1/2."""
  perm, signs = (jnp.asarray(a) for a in cmu_skeleton.mirror_permutation_and_signs())
  flip = jax.random.bernoulli(rng, 0.5, dofs.shape[:1])
  return jnp.where(flip[:, None, None], dofs[..., perm] * signs, dofs)


def init(config: ml_collections.ConfigDict, rng: jax.Array, example_batch) -> Any:
  """`{"dynamics": model params (data-dependent scale), "prior": the frozen prior's params}`."""
  prior, prior_params = load_prior(config.prior_workdir)
  z = _latents(prior, prior_params, example_batch)
  return {"dynamics": make_model(config).init(rng, z),
          "prior": jax.tree.map(jnp.asarray, prior_params)}


def loss(params: Any, batch: jax.Array, rng: jax.Array, config: ml_collections.ConfigDict):
  """`(weighted total, {"nll", "weight_l2"})` of a window batch `[B, T, 50]`."""
  prior, _ = load_prior(config.prior_workdir)
  dofs = jnp.asarray(batch, jnp.float32)
  if config.data.augment_mirror:
    dofs = _mirror(rng, dofs)
  z = _latents(prior, params["prior"], dofs)
  net = params["dynamics"]["net"]
  terms = {
      "nll": -jnp.mean(make_model(config).log_prob(params["dynamics"], z)),
      "weight_l2": 0.5 * sum(jnp.sum(jnp.square(p)) for p in jax.tree.leaves(net)),
  }
  total, terms = losses.weighted_sum(terms, dict(config.loss_weights))
  return total, dict(terms)


def window_nll(model, prior, params, windows):
  """Per-frame NLLs of windows `[B, T, 50]` (frames 2..T-1), jnp.

  Returns:
    `{"nll": latent nats [B, T-2], "nll_pose": pose-chart nats [B, T-2], "nll_static": the
    prior alone [B, T-2]}`.
  """
  x = charts.from_dofs(prior.chart, jnp.asarray(windows, jnp.float32))
  z = prior.pose_to_latent(params["prior"], x)
  latent = model.log_prob(params["dynamics"], z)
  static = prior.log_prob(params["prior"], x)
  return {"nll": -latent, "nll_pose": -dynamics_lib.pose_log_prob(latent, static, z),
          "nll_static": -static[..., dynamics_lib.ORDER:]}


@functools.lru_cache(maxsize=8)
def _eval_fn(config: ml_collections.FrozenConfigDict):
  config = ml_collections.ConfigDict(config)
  model, (prior, _) = make_model(config), load_prior(config.prior_workdir)

  @jax.jit
  def sums(params, windows, weight):
    nll = window_nll(model, prior, params, windows)
    return {k: jnp.sum(jnp.mean(v, -1) * weight) for k, v in nll.items()}, jnp.sum(weight)
  return sums


def evaluate(params: Any, dataset, config: ml_collections.ConfigDict) -> dict:
  """`{"nll", "nll_pose", "nll_static"}` nats/frame over `{"windows", "weight"}` batches."""
  fn = _eval_fn(ml_collections.FrozenConfigDict(config))
  totals, count = {}, 0.0
  for batch in dataset:
    sums, n = jax.device_get(fn(params, batch["windows"], batch["weight"]))
    totals = {k: totals.get(k, 0.0) + float(v) for k, v in sums.items()}
    count += float(n)
  return {k: v / count for k, v in totals.items()}


def input_pipeline(config: ml_collections.ConfigDict, split: str, process_index: int,
                   process_count: int, start_step: int = 0):
  """"train": `[B, T, 50]` window batches from `start_step` on; "eval": padded batches."""
  dim = cmu_skeleton.NUM_POSE_DOFS
  if split == "train":
    ds, num = poses.examples(config.data, config.data.train_split, dim, process_index,
                             process_count)
    return poses.epoch_batches(ds, num, config.batch_size // process_count,
                               poses.process_seed(config.seed, process_index), start_step,
                               config.data.shuffle_buffer)
  if split == "eval":
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    ds, num = poses.examples(config.data, config.data.eval_split, dim)
    shape = ds.element_spec.shape
    ds = ds.map(lambda x: {"windows": x, "weight": tf.constant(1.0)})
    pad = (-num) % config.eval_batch_size
    if pad:  # Fixed shapes: the eval step compiles once.
      ds = ds.concatenate(tf.data.Dataset.from_tensors(
          {"windows": tf.zeros(shape, tf.float32), "weight": tf.constant(0.0)}).repeat(pad))
    return ds.batch(config.eval_batch_size, drop_remainder=True).prefetch(2)
  raise ValueError(f"dynamics input_pipeline: split {split!r}, expected 'train' or 'eval'")


def optimizer_labels(params: Any) -> dict:
  """The prior is frozen; the motion model trains."""
  del params
  return {"dynamics": "train", "prior": "frozen"}


def export(workdir: str, params: Any, config: ml_collections.ConfigDict) -> str:
  """Writes the trained motion model (`flowpose.models.dynamics_io`); returns the params path."""
  config = ml_collections.ConfigDict(config.to_dict())
  config.latent_dim = int(np.asarray(params["dynamics"]["gain"]).shape[0])
  return dynamics_io.export_dynamics(workdir, params, config)
