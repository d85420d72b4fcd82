"""A VAE pose prior (VPoser-style, Pavlakos et al. 2019) on the flow's pose chart.

    vae = make_vae(config.vae)                        # VaePrior of pure functions
    params = vae.init(key, poses)                     # poses: [N, D] chart coordinates
    terms = vae.elbo_terms(params, key, x)            # {"rec": [B], "kl": [B]} (nats)
    log_p = vae.log_prob(params, key, x, 1000)        # [B] importance-sampled log p(x)
    elbo = vae.elbo(params, key, x, 1000)             # [B] Monte Carlo ELBO (same draws)
    x = vae.decode(params, z)                         # z: [..., L] -> [..., D] decoder mean

Model. The pose `x [D]` (chart coordinates, `flowpose.prior.charts`) is standardised exactly as
the flow does it (`u = wrap(x - center) / scale`, per-DOF stats from the training data, the
periodic chart cut opposite the data), then

    q(z | u) = N(mu(u), diag sigma(u)^2)      encoder MLP (`hidden_sizes`), z in R^L
    p(z)     = N(0, I)
    p(u | z) = N(m(z), diag s^2)              decoder MLP; s [D] learned, >= `min_decoder_scale`

so `log p(x) = log p(u) - sum(log scale)`: densities of the raw angles in the chart, comparable
with the flow's and the baselines' (NLL table). VPoser decodes rotations with an L2 loss; a
Gaussian decoder with a learned scale is that loss with its weight learned, which gives a
density. Training maximises the ELBO with the KL weight annealed 0 -> 1 (`tasks/vae.py`).

Evaluation. The ELBO is a lower bound of log p(x); the importance-sampled estimate
`log (1/K) sum_k p(x, z_k) / q(z_k | x)`, z_k ~ q(z | x) (Burda et al. 2016) is a tighter lower
bound in expectation, and with the same K draws it is >= their ELBO estimate exactly (Jensen:
log-mean-exp >= mean). The NLL table reports both with K = 1000 (`DEFAULT_NUM_SAMPLES`).

Fitting (`flowpose.prior.registry` entry `vae`): the pose variable is z, decoded to the chart by
the decoder mean, penalised by ||z||^2 as for the flow's latent.
"""

import functools
from typing import Any, Callable, NamedTuple, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from flowpose.prior import charts

DEFAULT_NUM_SAMPLES = 1000
_MIN_STAT_SCALE = 1e-3  # As the flow's standardisation: a near-constant DOF is not amplified.
_LOG_2PI = float(np.log(2.0 * np.pi))


def wrap_angle(angle):
  """Angles to (-pi, pi] (atan2(sin, cos))."""
  return jnp.arctan2(jnp.sin(angle), jnp.cos(angle))


class _MLP(nn.Module):
  """ReLU MLP with a linear output of `out` units (last layer zero-initialised: a standard
  normal decoder / a prior-matching encoder at step 0)."""
  hidden: Sequence[int]
  out: int

  @nn.compact
  def __call__(self, x):
    for width in self.hidden:
      x = nn.relu(nn.Dense(width)(x))
    return nn.Dense(self.out, kernel_init=nn.initializers.zeros)(x)


class VaePrior(NamedTuple):
  """A VAE pose prior as pure functions (module docstring). `event_dim` D, `latent_dim` L."""
  init: Callable[..., Any]
  encode: Callable[..., Any]
  decode: Callable[..., jax.Array]
  elbo_terms: Callable[..., dict]
  log_prob: Callable[..., jax.Array]
  elbo: Callable[..., jax.Array]
  event_dim: int
  latent_dim: int
  chart: str


def default_vae_config() -> ml_collections.ConfigDict:
  """The default `config.vae`: VPoser's shape scaled to a 46-D chart and CPU training."""
  vae = ml_collections.ConfigDict()
  vae.chart = "euler_free"      # `flowpose.prior.charts` name; D follows it.
  vae.latent_dim = 32           # VPoser's latent size.
  vae.hidden_sizes = (256, 256)  # Encoder and decoder MLPs (VPoser: 512, 512).
  vae.min_decoder_scale = 1e-3  # Floor of the decoder std (standardised units).
  return vae


def validate_vae_config(vae: ml_collections.ConfigDict) -> None:
  """Raises ValueError naming the first bad `vae.*` field."""
  def bad(field, expected, value):
    raise ValueError(f"config vae.{field}: expected {expected}, got {value!r}")
  if vae.get("chart") not in charts.CHARTS:
    bad("chart", f"one of {charts.CHARTS}", vae.get("chart"))
  if not isinstance(vae.get("latent_dim"), int) or vae.latent_dim < 1:
    bad("latent_dim", "an int >= 1", vae.get("latent_dim"))
  hidden = vae.get("hidden_sizes")
  if not hidden or not all(isinstance(h, int) and h > 0 for h in hidden):
    bad("hidden_sizes", "a non-empty tuple of positive ints", hidden)
  if not (isinstance(vae.get("min_decoder_scale"), float) and vae.min_decoder_scale > 0):
    bad("min_decoder_scale", "a float > 0", vae.get("min_decoder_scale"))


def _normal_log_prob(x, mean, log_std):
  """`[...]` sum over the last axis of log N(x; mean, exp(log_std)^2)."""
  z = (x - mean) * jnp.exp(-log_std)
  return jnp.sum(-0.5 * z * z - log_std - 0.5 * _LOG_2PI, axis=-1)


def make_vae(vae_config: ml_collections.ConfigDict) -> VaePrior:
  """Builds the VAE of `config.vae` (ValueError naming a bad field)."""
  validate_vae_config(vae_config)
  chart, latent = vae_config.chart, vae_config.latent_dim
  dim = charts.chart_dim(chart)
  periodic = charts.is_periodic(chart)
  wrap = wrap_angle if periodic else (lambda x: x)
  encoder = _MLP(tuple(vae_config.hidden_sizes), 2 * latent)
  decoder = _MLP(tuple(vae_config.hidden_sizes), dim)
  log_floor = float(np.log(vae_config.min_decoder_scale))

  def _check(name, x, width):
    x = jnp.asarray(x, jnp.float32)
    if x.ndim < 1 or x.shape[-1] != width:
      raise ValueError(f"vae.{name}: expected [..., {width}], got {x.shape}")
    return x

  def _standardise(params, x):
    stats = jax.lax.stop_gradient(params["stats"])
    return wrap(x - stats["center"]) / stats["scale"], -jnp.sum(jnp.log(stats["scale"]))

  def _decoder_log_std(params):
    # Softly floored: log s = floor + softplus(raw - floor), ~raw above the floor.
    raw = params["decoder_log_std"]
    return log_floor + jax.nn.softplus(raw - log_floor)

  def init(key, example_poses):
    poses = _check("init", example_poses, dim).reshape(-1, dim)
    if periodic:
      center = jnp.arctan2(jnp.mean(jnp.sin(poses), 0), jnp.mean(jnp.cos(poses), 0))
    else:
      center = jnp.mean(poses, 0)
    scale = jnp.maximum(jnp.std(wrap(poses - center), 0), _MIN_STAT_SCALE)
    enc_key, dec_key = jax.random.split(key)
    return {"stats": {"center": center, "scale": scale},
            "encoder": encoder.init(enc_key, jnp.zeros((1, dim)))["params"],
            "decoder": decoder.init(dec_key, jnp.zeros((1, latent)))["params"],
            "decoder_log_std": jnp.zeros((dim,), jnp.float32)}

  def encode(params, x):
    """`x [..., D]` -> `(mu [..., L], log_sigma [..., L])` of q(z | x)."""
    u, _ = _standardise(params, _check("encode", x, dim))
    out = encoder.apply({"params": params["encoder"]}, u)
    return out[..., :latent], jnp.clip(out[..., latent:], -10.0, 5.0)

  def decode(params, z):
    """`z [..., L]` -> decoder mean `[..., D]` in chart coordinates (wrapped)."""
    m = decoder.apply({"params": params["decoder"]}, _check("decode", z, latent))
    stats = jax.lax.stop_gradient(params["stats"])
    return wrap(m * stats["scale"] + stats["center"])

  def _log_likelihood(params, u, log_det, z):
    """`log p(x | z)` of standardised `u [..., D]` for `z [..., L]` (broadcast)."""
    m = decoder.apply({"params": params["decoder"]}, z)
    return _normal_log_prob(u, m, _decoder_log_std(params)) + log_det

  def elbo_terms(params, key, x):
    """One-sample reparameterised ELBO terms of `x [B, D]`: `rec` = -log p(x | z),
    `kl` = KL(q(z | x) || N(0, I)) in closed form; ELBO = -(rec + kl)."""
    u, log_det = _standardise(params, _check("elbo_terms", x, dim))
    mu, log_sigma = encode(params, x)
    z = mu + jnp.exp(log_sigma) * jax.random.normal(key, mu.shape)
    rec = -_log_likelihood(params, u, log_det, z)
    kl = 0.5 * jnp.sum(mu * mu + jnp.exp(2 * log_sigma) - 1.0 - 2 * log_sigma, axis=-1)
    return {"rec": rec, "kl": kl}

  def _log_weights(params, key, x, num_samples):
    """`[K, B]` log p(x, z_k) - log q(z_k | x), z_k ~ q(z | x)."""
    u, log_det = _standardise(params, x)
    mu, log_sigma = encode(params, x)
    eps = jax.random.normal(key, (num_samples,) + mu.shape)
    z = mu + jnp.exp(log_sigma) * eps
    log_q = _normal_log_prob(z, mu, log_sigma)
    log_prior = _normal_log_prob(z, 0.0, jnp.zeros(()))
    return _log_likelihood(params, u, log_det, z) + log_prior - log_q

  def _reduce(params, key, x, num_samples, chunk, reduce_fn):
    x = _check("log_prob", x, dim)
    chunk = min(chunk, num_samples)
    if num_samples % chunk:
      raise ValueError(f"vae: num_samples={num_samples} must be a multiple of chunk={chunk}")
    keys = jax.random.split(key, num_samples // chunk)
    # lax.map over sample chunks bounds memory at [chunk, B, hidden].
    weights = jax.lax.map(lambda k: _log_weights(params, k, x, chunk), keys)
    return reduce_fn(weights.reshape((num_samples,) + x.shape[:-1]))

  def log_prob(params, key, x, num_samples=DEFAULT_NUM_SAMPLES, chunk=100):
    """`[B]` importance-sampled log p(x) (nats) of `x [B, D]` with `num_samples` draws."""
    return _reduce(params, key, x, num_samples, chunk,
                   lambda w: jax.nn.logsumexp(w, axis=0) - jnp.log(w.shape[0]))

  def elbo(params, key, x, num_samples=DEFAULT_NUM_SAMPLES, chunk=100):
    """`[B]` Monte Carlo ELBO of `x [B, D]` (the mean of the same log weights as `log_prob`
    with the same key: `log_prob >= elbo` elementwise)."""
    return _reduce(params, key, x, num_samples, chunk, lambda w: jnp.mean(w, axis=0))

  return VaePrior(init, encode, decode, elbo_terms, log_prob, elbo, dim, latent, chart)


@functools.lru_cache(maxsize=16)
def _jitted(vae: VaePrior, what: str, num_samples: int):
  fn = vae.log_prob if what == "log_prob" else vae.elbo
  return jax.jit(lambda params, key, x: fn(params, key, x, num_samples))


def evaluate_np(vae: VaePrior, params: Any, x: np.ndarray, what: str = "log_prob",
                num_samples: int = DEFAULT_NUM_SAMPLES, batch_size: int = 256,
                seed: int = 0) -> np.ndarray:
  """`[N]` float64 IS log p(x) (`what="log_prob"`) or ELBO (`"elbo"`) of chart poses
  `x [N, D]`, in fixed-size zero-padded batches (one compile); batch `i` draws with
  `fold_in(PRNGKey(seed), i)`, so `log_prob >= elbo` holds pose by pose for one seed."""
  if what not in ("log_prob", "elbo"):
    raise ValueError(f"vae.evaluate_np: what={what!r}, expected 'log_prob' or 'elbo'")
  fn = _jitted(vae, what, int(num_samples))
  x = np.asarray(x, np.float32)
  batch_size = min(batch_size, max(1, x.shape[0]))
  key, out = jax.random.PRNGKey(seed), []
  for i, start in enumerate(range(0, x.shape[0], batch_size)):
    chunk = x[start:start + batch_size]
    pad = batch_size - chunk.shape[0]
    if pad:
      chunk = np.concatenate([chunk, np.repeat(chunk[:1], pad, 0)])
    values = np.asarray(fn(params, jax.random.fold_in(key, i), chunk), np.float64)
    out.append(values[:batch_size - pad])
  return np.concatenate(out) if out else np.zeros((0,), np.float64)
