"""Task "vae": the VAE pose prior (`flowpose.prior.vae`) trained on the flow's data.

Same data as the flow prior (`flowpose.data.poses`: 50 CMU DOFs per pose, mirrored in tf.data
when `data.augment_mirror`, the same subjects and splits), same chart conversion on device
(`tasks.prior.to_chart`), same optional jitter `input_noise`. Loss:
`weighted_sum({"rec": mean -log p(x | z), "kl": beta(step) * mean KL(q(z|x) || p(z))},
config.loss_weights)` with the KL weight annealed linearly from 0 to 1 over
`kl_anneal_steps` (VPoser-style warm-up: the decoder learns to reconstruct before the
posterior is pulled to the prior). The step reaches the jitted loss through the batch: the
training stream yields `{"poses": [B, 50], "step": [B]}` (the step of that batch in every row,
so it shards with the batch and a resumed run anneals exactly as an uninterrupted one).
Evaluation: the mean negative ELBO of the eval split (`nll_upper_bound`, one sample per pose;
the IS estimate with K = 1000 is the NLL table's, `flowpose.prior.evaluate`). At the end the
trainer exports `vae_params.msgpack` + `config.json` (`flowpose.prior.io.export_vae`), which
`flowpose.prior.registry` loads as the prior `vae`.

Config fields (besides the trainer's): `vae` (`flowpose.prior.vae.default_vae_config()`),
`input_noise`, `kl_anneal_steps`, `data.*` (`flowpose.data.poses.default_config()`).
"""

import functools
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from flowpose import losses
from flowpose.data import cmu_skeleton
from flowpose.data import poses
from flowpose.prior import io as prior_io
from flowpose.prior import vae as vae_lib
from flowpose.tasks import prior as prior_task
from flowpose.train import config_lib

LOSS_TERMS = ("rec", "kl")
CONFIG_FIELDS = ("vae", "input_noise", "kl_anneal_steps")


@functools.lru_cache(maxsize=16)
def _vae_for(vae: ml_collections.FrozenConfigDict) -> vae_lib.VaePrior:
  return vae_lib.make_vae(ml_collections.ConfigDict(vae))


def make_vae(config: ml_collections.ConfigDict) -> vae_lib.VaePrior:
  """The `VaePrior` of `config.vae` (memoised)."""
  return _vae_for(ml_collections.FrozenConfigDict(config.vae))


def validate_config(config: ml_collections.ConfigDict) -> None:
  """Raises ConfigError/ValueError naming the first bad field (vae, input_noise, data, ...)."""
  if "vae" not in config:
    raise config_lib.ConfigError("config vae: missing section")
  config_lib.check_keys(config.vae, "vae", vae_lib.default_vae_config().keys())
  vae_lib.validate_vae_config(config.vae)
  if config.init_examples < 2:
    config_lib.fail("init_examples", "an int >= 2", config.init_examples)
  noise = config.get("input_noise")
  if not config_lib.number(noise) or noise < 0:
    config_lib.fail("input_noise", "a float >= 0 (radians)", noise)
  config_lib.positive_int(config, "kl_anneal_steps", minimum=0)
  prior_task.validate_data(config.data, config.batch_size)
  if config.data.source == "synthetic" and config.vae.chart == "euler_free":
    config_lib.fail("vae.chart", "'euler_dofs' for the synthetic source (its DOFs all move)",
                    config.vae.chart)


def _chart(config, dofs, rng=None):
  x = prior_task.to_chart(config.vae.chart, dofs)
  if rng is not None and config.input_noise > 0:
    x = x + config.input_noise * jax.random.normal(rng, x.shape)
  return x


def init(config: ml_collections.ConfigDict, rng: jax.Array, example_batch) -> Any:
  """Standardisation stats from `example_batch["poses"] [N, 50]`, fresh MLPs."""
  dofs = example_batch["poses"]
  prior_task.check_fixed_dofs(config.vae.chart, dofs)
  noise_rng, init_rng = jax.random.split(rng)
  return make_vae(config).init(init_rng, _chart(config, dofs, noise_rng))


def kl_weight(step, anneal_steps: int):
  """Linear KL warm-up: 0 at step 0, 1 from `anneal_steps` on (1 throughout if 0)."""
  if not anneal_steps:
    return jnp.ones_like(jnp.asarray(step, jnp.float32))
  return jnp.clip(jnp.asarray(step, jnp.float32) / anneal_steps, 0.0, 1.0)


def loss(params: Any, batch, rng: jax.Array, config: ml_collections.ConfigDict):
  """`(weighted total, {"rec", "kl", "kl_weight", "neg_elbo"})` of a batch (module doc)."""
  noise_rng, sample_rng = jax.random.split(rng)
  terms = make_vae(config).elbo_terms(params, sample_rng,
                                      _chart(config, batch["poses"], noise_rng))
  beta = kl_weight(batch["step"][0], config.kl_anneal_steps)
  rec, kl = jnp.mean(terms["rec"]), jnp.mean(terms["kl"])
  total, weighted = losses.weighted_sum({"rec": rec, "kl": beta * kl},
                                        dict(config.loss_weights))
  metrics = dict(weighted)
  metrics.update(kl=kl, kl_weight=beta, neg_elbo=rec + kl)  # Unweighted KL, the true bound.
  return total, metrics


@functools.lru_cache(maxsize=16)
def _eval_fn(vae_config: ml_collections.FrozenConfigDict):
  vae = _vae_for(vae_config)

  @jax.jit
  def neg_elbo_sum(params, dofs, weight):
    terms = vae.elbo_terms(params, jax.random.PRNGKey(0),
                           prior_task.to_chart(vae_config.chart, dofs))
    value = jnp.where(weight > 0, terms["rec"] + terms["kl"], 0.0)
    return jnp.sum(value), jnp.sum(weight)
  return neg_elbo_sum


def evaluate(params: Any, dataset, config: ml_collections.ConfigDict) -> dict:
  """`{"nll_upper_bound": mean -ELBO}` (nats/pose, one fixed-key sample per pose)."""
  fn = _eval_fn(ml_collections.FrozenConfigDict(config.vae))
  return {"nll_upper_bound": prior_task.mean_over_eval_batches(fn, params, dataset)}


def input_pipeline(config: ml_collections.ConfigDict, split: str, process_index: int,
                   process_count: int, start_step: int = 0):
  """"train": `{"poses": [b, 50], "step": [b]}` from `start_step` on; "eval": as the prior's."""
  dim = cmu_skeleton.NUM_POSE_DOFS
  if split == "train":
    rows = config.batch_size // process_count
    return poses.with_steps(poses.train_batches(config.data, dim, rows, config.seed, start_step,
                                                process_index, process_count), start_step, rows)
  if split == "eval":
    return poses.eval_dataset(config.data, config.data.eval_split, dim, config.eval_batch_size)
  raise ValueError(f"vae input_pipeline: split {split!r}, expected 'train' or 'eval'")


def optimizer_labels(params: Any) -> dict:
  """The standardisation stats are data (frozen); the MLPs and decoder scale train."""
  return {k: ("frozen" if k == "stats" else "train") for k in params}


def export(workdir: str, params: Any, config: ml_collections.ConfigDict) -> str:
  """Writes the trained VAE for fitting and evaluation; returns the params path."""
  return prior_io.export_vae(workdir, params, config)
