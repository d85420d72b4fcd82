"""A motion model in the pose prior's latent space: `p(z_t | z_{t-1}, z_{t-2})`.

The flow prior (`flowpose.prior.flow`) maps a pose to a latent `z [D]` that is standard
normal over poses. Consecutive frames of a motion are close in that space, so the motion
model is a diagonal Gaussian around a constant-velocity guess corrected by a small MLP:

    v = z_{t-1} - z_{t-2}
    mean      = z_{t-1} + gain * v + MLP_mean([z_{t-1}, v])
    log_scale = base_log_scale + bound * tanh(MLP_scale([z_{t-1}, v]) / bound)
    u = W (z_t - mean),  u ~ N(0, diag(exp(2 log_scale)))

`W [D, D]` is unit lower-triangular (determinant 1): with `residual = "full"` it decorrelates
the residual (joints move together: a diagonal Gaussian pays for every coupled DOF separately,
and loses to a full-covariance constant-velocity baseline by that much); with "diagonal" W = I.
`gain [D]` starts at 1 (constant velocity), `W` and `base_log_scale [D]` at the Cholesky factor
of the constant-velocity residuals of the example windows (`C = L L^T`, `L = W^-1 diag(s)`:
a data-dependent init, as the flow's actnorm), and the MLP's last layer at zero, so a new model
is exactly "constant velocity + fitted Gaussian residual" and training only has to learn the
corrections. The soft clamp `bound` keeps a scale from collapsing onto a training window.

Pure functions over an explicit params pytree (the flow's `FlowPrior` shape):

    model = make_dynamics(config.dynamics)
    params = model.init(key, example_latents)         # [N, T, D], T >= 3
    log_p = model.log_prob(params, z)                 # z: [..., T, D] -> [..., T - 2] nats
    z_next = model.rollout(params, key, z0, z1, 60)   # [..., 60, D] sampled continuation

Nats are of the latent `z`; `pose_log_prob` turns them into nats of the pose chart (the
prior's Jacobian), the unit the static prior's NLL table uses.
"""

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from flowpose.bijectors import conditioners

Array = jax.Array
ORDER = 2  # Frames of context.
_LOG_2PI = jnp.log(2.0 * jnp.pi)


def default_dynamics_config() -> ml_collections.ConfigDict:
  """The default `config.dynamics` (experiments override fields)."""
  c = ml_collections.ConfigDict()
  c.hidden_sizes = (256, 256)
  # Largest change of a log-scale from its per-dimension base (nats): the MLP can widen or
  # narrow the Gaussian by e^2 at most.
  c.scale_bound = 2.0
  c.min_log_scale = -7.0  # Floor of the base log-scale at init (a constant latent dimension).
  # "full": a learned unit lower-triangular decorrelation of the residual; "diagonal": none
  # (models exported before the field existed).
  c.residual = "full"
  return c


def validate_dynamics_config(dynamics: ml_collections.ConfigDict) -> None:
  """Raises ValueError naming the first bad `dynamics.*` field."""
  def bad(field, expected, value):
    raise ValueError(f"config dynamics.{field}: expected {expected}, got {value!r}")
  known = set(default_dynamics_config().keys())
  unknown = set(dynamics.keys()) - known
  if unknown:
    bad(sorted(unknown)[0], f"one of the fields {sorted(known)}", "an unknown field")
  sizes = tuple(dynamics.hidden_sizes)
  if not sizes or not all(isinstance(h, int) and h > 0 for h in sizes):
    bad("hidden_sizes", "a non-empty tuple of positive ints", dynamics.hidden_sizes)
  if not isinstance(dynamics.scale_bound, (int, float)) or not dynamics.scale_bound > 0:
    bad("scale_bound", "a float > 0", dynamics.scale_bound)
  if not isinstance(dynamics.min_log_scale, (int, float)):
    bad("min_log_scale", "a float", dynamics.min_log_scale)
  if dynamics.get("residual", "diagonal") not in ("full", "diagonal"):
    bad("residual", "'full' or 'diagonal'", dynamics.residual)


class Dynamics(NamedTuple):
  """The latent motion model as pure functions (module docstring).

  Attributes:
    init: `(key, example_latents [N, T, D]) -> params` (T >= 3).
    mean_and_log_scale: `(params, z_prev2 [..., D], z_prev1 [..., D]) -> ([..., D], [..., D])`.
    log_prob: `(params, z [..., T, D]) -> [..., T - 2]` nats of `z_t` given the two before.
    rollout: `(params, key, z0 [..., D], z1 [..., D], steps, temperature=1.0,
      prior_product=True) -> [..., steps, D]` samples; `prior_product` multiplies each step's
      Gaussian by the static prior N(0, I) (a product of experts, as the sequence fitter does).
    dim: D.
  """
  init: Callable[..., Any]
  mean_and_log_scale: Callable[..., Any]
  log_prob: Callable[..., Array]
  rollout: Callable[..., Array]
  dim: int


def make_dynamics(config: ml_collections.ConfigDict, dim: int) -> Dynamics:
  """The motion model of `config` (`default_dynamics_config()` fields) for D = `dim` latents."""
  validate_dynamics_config(config)
  mlp = conditioners.MLP(tuple(int(h) for h in config.hidden_sizes), 2 * dim)
  bound = float(config.scale_bound)

  def _check(name, z, min_frames=0):
    z = jnp.asarray(z, jnp.float32)
    if z.ndim < 1 or z.shape[-1] != dim or (min_frames and (z.ndim < 2 or
                                                            z.shape[-2] < min_frames)):
      frames = f"T >= {min_frames}, " if min_frames else ""
      raise ValueError(f"dynamics.{name}: expected [..., {'T, ' if min_frames else ''}{dim}] "
                       f"({frames}D = {dim}), got {z.shape}")
    return z

  full = config.get("residual", "diagonal") == "full"
  # NumPy constants: a model first built under a trace (the task's jitted loss) must not keep
  # a tracer.
  strict_lower = np.tril(np.ones((dim, dim), np.float32), -1)
  eye = np.eye(dim, dtype=np.float32)

  def whitener(params):
    """`[D, D]` unit lower-triangular W (the identity for a diagonal residual)."""
    if not full:
      return jnp.asarray(eye)
    return eye + params["whiten"] * strict_lower

  def init(key, example_latents):
    z = _check("init", example_latents, ORDER + 1).reshape(
        (-1,) + tuple(example_latents.shape[-2:]))
    residual = (z[:, 2:] - 2 * z[:, 1:-1] + z[:, :-2]).reshape(-1, dim)
    params = {
        "net": mlp.init(key, jnp.zeros((1, 2 * dim), jnp.float32))["params"],
        "gain": jnp.ones((dim,), jnp.float32),
    }
    floor = float(config.min_log_scale)
    if not full:
      std = jnp.sqrt(jnp.mean(jnp.square(residual), 0))
      params["base_log_scale"] = jnp.maximum(jnp.log(std + 1e-12), floor)
      return params
    # C = L L^T with L = W^-1 diag(s): W = (L diag(1/s))^-1. The ridge (relative: 1e-6 of the
    # mean variance) keeps a constant latent dimension from making C singular.
    cov = residual.T @ residual / residual.shape[0]
    cov = cov + 1e-6 * jnp.trace(cov) / dim * jnp.eye(dim)
    chol = jnp.linalg.cholesky(cov.astype(jnp.float32))
    diag = jnp.diagonal(chol)
    whiten = jax.scipy.linalg.solve_triangular(chol / diag, jnp.eye(dim), lower=True)
    params["whiten"] = whiten * strict_lower
    params["base_log_scale"] = jnp.maximum(jnp.log(diag), floor)
    return params

  def mean_and_log_scale(params, z_prev2, z_prev1):
    z_prev2, z_prev1 = _check("mean_and_log_scale", z_prev2), _check("mean_and_log_scale",
                                                                     z_prev1)
    velocity = z_prev1 - z_prev2
    out = mlp.apply({"params": params["net"]}, jnp.concatenate([z_prev1, velocity], -1))
    delta_mean, delta_log_scale = jnp.split(out, 2, axis=-1)
    mean = z_prev1 + params["gain"] * velocity + delta_mean
    log_scale = params["base_log_scale"] + bound * jnp.tanh(delta_log_scale / bound)
    return mean, log_scale

  def log_prob(params, z):
    z = _check("log_prob", z, ORDER + 1)
    mean, log_scale = mean_and_log_scale(params, z[..., :-2, :], z[..., 1:-1, :])
    decorrelated = (z[..., 2:, :] - mean) @ whitener(params).T  # det W = 1.
    standard = decorrelated * jnp.exp(-log_scale)
    return -0.5 * jnp.sum(jnp.square(standard) + _LOG_2PI + 2 * log_scale, -1)

  def rollout(params, key, z0, z1, steps: int, temperature: float = 1.0,
              prior_product: bool = True):
    z0, z1 = _check("rollout", z0), _check("rollout", z1)

    w = whitener(params)

    def step(carry, key):
      prev2, prev1 = carry
      mean, log_scale = mean_and_log_scale(params, prev2, prev1)
      noise = jax.random.normal(key, mean.shape)
      if not prior_product:
        # z = mean + W^-1 (s * eps).
        scaled = jnp.exp(log_scale) * noise
        new = mean + temperature * jnp.linalg.solve(
            jnp.broadcast_to(w, scaled.shape + (dim,)), scaled[..., None])[..., 0]
        return (prev1, new), new
      # p(z_t | z_{t-1}, z_{t-2}) N(z_t; 0, I), renormalised: the sequence fitter's objective
      # (dynamics + static prior). Without it the one-step model's noise integrates twice
      # and samples leave the prior's typical set within a second (measured: WORKSPACE.md).
      # Precision P = W^T diag(s^-2) W; the product has precision P + I, mean (P + I)^-1 P m.
      scaled_w = w * jnp.exp(-log_scale)[..., :, None]             # [..., D, D] diag(1/s) W
      precision = jnp.swapaxes(scaled_w, -1, -2) @ scaled_w + jnp.eye(dim)
      chol = jnp.linalg.cholesky(precision)
      rhs = (precision - jnp.eye(dim)) @ mean[..., None]
      mean = jax.scipy.linalg.cho_solve((chol, True), rhs)[..., 0]
      # x = mean + L^-T eps has covariance (L L^T)^-1.
      draw = jax.scipy.linalg.solve_triangular(jnp.swapaxes(chol, -1, -2), noise[..., None],
                                               lower=False)[..., 0]
      new = mean + temperature * draw
      return (prev1, new), new

    _, out = jax.lax.scan(step, (z0, z1), jax.random.split(key, steps))
    return jnp.moveaxis(out, 0, -2)

  return Dynamics(init, mean_and_log_scale, log_prob, rollout, dim)


def constant_velocity_params(params: Any) -> Any:
  """`params` with the MLP's corrections and the gain removed: constant velocity + the learned
  (full-covariance) residual only, the model at its initialisation's form.

  The MLP's mean correction learns the training subjects' typical motion; through a gap
  without evidence it pulls an unseen subject's pose towards it (rollouts drift to typical
  poses: WORKSPACE.md). The residual's shape keeps what generalises (which joints move together).
  """
  net = jax.tree.map(jnp.zeros_like, params["net"])
  return {**params, "net": net, "gain": jnp.ones_like(params["gain"])}


def pose_log_prob(dynamics_log_prob: Array, prior_log_prob: Array, z: Array) -> Array:
  """Nats of the pose chart from nats of the latent: `log p(x_t|.) = log p(z_t|.) + log|dz/dx|`.

  The flow's `log p_prior(x) = log N(z; 0, I) + log|dz/dx|`, so the Jacobian term is
  `log p_prior(x_t) - log N(z_t; 0, I)`.

  Args:
    dynamics_log_prob: [..., T - 2] `Dynamics.log_prob` of the window.
    prior_log_prob: [..., T] the prior's `log_prob` of the window's poses.
    z: [..., T, D] their latents.

  Returns:
    [..., T - 2] nats per frame, frames 2..T-1 (comparable with the static prior's NLL).
  """
  standard = -0.5 * jnp.sum(jnp.square(z) + _LOG_2PI, -1)
  return dynamics_log_prob + (prior_log_prob - standard)[..., ORDER:]
