"""ActNorm (Glow): per-dimension affine map with data-dependent initialisation.

`y = x * exp(log_scale) + shift`, `log|det| = sum(log_scale)`. At `init` the
params are zero (identity). Before training, a trainer calls
`flowpose.bijectors.data_init(flow, params, first_batch, direction=...)` (or
`actnorm_data_init` on a single layer): each actnorm then sets its shift and
scale so that its output on that batch has zero mean and unit variance per
dimension. This keeps every coupling's inputs in the range its conditioner and
spline expect, whatever the scale of the data.
"""

import jax
import jax.numpy as jnp

from flowpose.bijectors import core

Array = jax.Array

# Floor on the data-init std: a (near-)constant input dimension must not be amplified without
# bound (CMU's clavicle DOFs are exactly 0 in many subjects; a 1e-6 floor blew training up).
_MIN_STD = 1e-2


def actnorm(dim: int) -> core.Bijector:
  """Per-dimension affine bijector `y = x * exp(log_scale) + shift`.

  Args:
    dim: D.

  Returns:
    A `Bijector` with params `{"shift": [D], "log_scale": [D]}` (zeros at
    init) and a `data_init` (see `actnorm_data_init`).
  """
  def init(key, event_dim=None):
    del key
    core.check_event_dim("actnorm", dim, event_dim)
    return {"shift": jnp.zeros((dim,), jnp.float32),
            "log_scale": jnp.zeros((dim,), jnp.float32)}

  def forward_and_log_det(params, x, context=None):
    del context
    core.check_input("actnorm", x, dim)
    y = x * jnp.exp(params["log_scale"]) + params["shift"]
    log_det = jnp.broadcast_to(jnp.sum(params["log_scale"]), x.shape[:-1])
    return y, log_det

  def inverse_and_log_det(params, y, context=None):
    del context
    core.check_input("actnorm", y, dim)
    x = (y - params["shift"]) * jnp.exp(-params["log_scale"])
    log_det = jnp.broadcast_to(-jnp.sum(params["log_scale"]), y.shape[:-1])
    return x, log_det

  def data_init(params, x, context=None, direction=core.FORWARD):
    del context
    core.check_input("actnorm", x, dim)
    return actnorm_data_init(params, x, direction)

  return core.Bijector(init, forward_and_log_det, inverse_and_log_det,
                       data_init)


def actnorm_data_init(params: dict, x: Array,
                      direction: str = core.FORWARD) -> dict:
  """Sets actnorm params so the layer's output on `x` is standardised.

  Args:
    params: actnorm params (only their structure/dtype is used).
    x: batch `[..., D]` (statistics over every leading axis) on the input
      side of `direction`.
    direction: "forward": `forward(x)` gets zero mean / unit variance per
      dim. "inverse": `x` is on the output side and `inverse(x)` gets zero
      mean / unit variance (data pushed through the inverse of a
      `distrax.Transformed` flow).

  Returns:
    New `{"shift": [D], "log_scale": [D]}`.
  """
  core.check_direction(direction)
  dtype = params["shift"].dtype
  flat = jnp.reshape(jnp.asarray(x, dtype), (-1, x.shape[-1]))
  mean = jnp.mean(flat, axis=0)
  log_std = jnp.log(jnp.maximum(jnp.std(flat, axis=0), _MIN_STD))
  if direction == core.FORWARD:
    # y = (x - mean) / std = x * exp(-log_std) - mean * exp(-log_std).
    return {"shift": -mean * jnp.exp(-log_std), "log_scale": -log_std}
  # inverse: x_out = (y - shift) * exp(-log_scale) = (y - mean) / std.
  return {"shift": mean, "log_scale": log_std}
