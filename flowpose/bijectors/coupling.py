"""Coupling layers (RealNVP affine, rational-quadratic spline) and their MLP.

A coupling layer splits `x [..., D]` with a static boolean `mask [D]`:
`mask[i] == True` means dimension i is *passed through unchanged* and fed to the
conditioner; the other dimensions are transformed element-wise with parameters
the conditioner computes from the passed-through dimensions (and an optional
`context [..., C]`, concatenated to the conditioner input). Because the
transformed dimensions never influence their own parameters the Jacobian is
triangular and the inverse is exact.

The conditioner's last layer is zero-initialised, so a freshly initialised
coupling is the identity (its element-wise transform is the identity at zero
parameters) and a deep flow starts as the identity too.

Params: `{"conditioner": {"dense_0": {"w", "b"}, ..., "dense_out": {"w", "b"}}}`
(plain dicts of arrays).
"""

from typing import Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from flowpose.bijectors import core
from flowpose.bijectors import spline

Array = jax.Array
Activation = Callable[[Array], Array]


# ---------------------------------------------------------------------------
# Conditioner MLP: pure functions over a dict of dense layers.
# ---------------------------------------------------------------------------


def mlp_init(key: Array, in_dim: int, hidden_sizes: Sequence[int],
             out_dim: int, zero_last: bool = True) -> dict:
  """Initialises an MLP `in_dim -> hidden_sizes -> out_dim`.

  Hidden layers use LeCun-normal weights and zero biases. The output layer is
  all zeros when `zero_last` (the flow-is-identity-at-init convention).

  Returns:
    `{"dense_0": {"w": [in, h0], "b": [h0]}, ..., "dense_out": {...}}`.
  """
  params = {}
  sizes = [in_dim, *hidden_sizes]
  keys = jax.random.split(key, len(hidden_sizes) + 1)
  for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:])):
    # max(., 1): a coupling may have no passed-through inputs (context only).
    std = 1.0 / np.sqrt(max(fan_in, 1))
    params[f"dense_{i}"] = {
        "w": std * jax.random.normal(keys[i], (fan_in, fan_out), jnp.float32),
        "b": jnp.zeros((fan_out,), jnp.float32),
    }
  w_out = jnp.zeros((sizes[-1], out_dim), jnp.float32)
  if not zero_last:
    w_out = (jax.random.normal(keys[-1], w_out.shape)
             / np.sqrt(max(sizes[-1], 1)))
  params["dense_out"] = {"w": w_out, "b": jnp.zeros((out_dim,), jnp.float32)}
  return params


def mlp_apply(params: dict, h: Array,
              activation: Activation = jax.nn.gelu) -> Array:
  """Applies the MLP to `h [..., in_dim]`; returns `[..., out_dim]`."""
  num_hidden = len(params) - 1
  for i in range(num_hidden):
    layer = params[f"dense_{i}"]
    h = activation(h @ layer["w"] + layer["b"])
  return h @ params["dense_out"]["w"] + params["dense_out"]["b"]


# ---------------------------------------------------------------------------
# Generic masked coupling.
# ---------------------------------------------------------------------------

# (x_transformed [..., T], conditioner_out [..., T, P])
#   -> (y_transformed [..., T], log_det per dim [..., T])
ElementwiseFn = Callable[[Array, Array], tuple[Array, Array]]


def _coupling(name: str, mask, hidden_sizes: Sequence[int], context_dim: int,
              params_per_dim: int, transform: ElementwiseFn,
              inverse_transform: ElementwiseFn,
              activation: Activation) -> core.Bijector:
  """Builds a coupling bijector around an element-wise transform."""
  mask = np.asarray(mask)
  if mask.ndim != 1 or mask.dtype != np.bool_:
    raise ValueError(f"{name}: mask must be a 1-D boolean array, got "
                     f"{mask.dtype} {mask.shape}")
  if mask.all():
    raise ValueError(f"{name}: mask passes every dimension through; nothing "
                     "to transform")
  if context_dim < 0:
    raise ValueError(f"{name}: context_dim must be >= 0, got {context_dim}")
  dim = mask.size
  pass_idx = np.flatnonzero(mask)
  trans_idx = np.flatnonzero(~mask)
  num_trans = trans_idx.size
  # Re-interleave [passed, transformed] back into the original order.
  unsplit = np.argsort(np.concatenate([pass_idx, trans_idx]))

  def init(key, event_dim=None):
    core.check_event_dim(name, dim, event_dim)
    in_dim = pass_idx.size + context_dim
    return {"conditioner": mlp_init(key, in_dim, hidden_sizes,
                                    num_trans * params_per_dim)}

  def _split(params, x, context):
    core.check_input(name, x, dim)
    if context_dim:
      if context is None:
        raise ValueError(f"{name}: built with context_dim={context_dim} but "
                         "called without context")
      x, context = core.broadcast_context(x, context, context_dim, name)
    x_pass, x_trans = x[..., pass_idx], x[..., trans_idx]
    h = jnp.concatenate([x_pass, context], -1) if context_dim else x_pass
    out = mlp_apply(params["conditioner"], h, activation)
    out = out.reshape(out.shape[:-1] + (num_trans, params_per_dim))
    return x_pass, x_trans, out

  def _apply(fn, params, x, context):
    x_pass, x_trans, out = _split(params, x, context)
    y_trans, log_det = fn(x_trans, out)
    y = jnp.concatenate([x_pass, y_trans], -1)[..., unsplit]
    return y, jnp.sum(log_det, -1)

  def forward_and_log_det(params, x, context=None):
    return _apply(transform, params, x, context)

  def inverse_and_log_det(params, y, context=None):
    return _apply(inverse_transform, params, y, context)

  return core.Bijector(init, forward_and_log_det, inverse_and_log_det)


# ---------------------------------------------------------------------------
# Public factories.
# ---------------------------------------------------------------------------


def affine_coupling(mask, hidden_sizes: Sequence[int] = (256, 256),
                    context_dim: int = 0, scale_bound: Optional[float] = 3.0,
                    activation: Activation = jax.nn.gelu) -> core.Bijector:
  """RealNVP affine coupling: `y_t = x_t * exp(log_scale) + shift`.

  Args:
    mask: bool `[D]`; True = passed through unchanged (conditioner input).
    hidden_sizes: conditioner hidden widths.
    context_dim: C, size of the optional `context [..., C]` (0 = none).
    scale_bound: the log-scale is soft-clamped to `(-bound, bound)` as
      `bound * tanh(raw / bound)`; near zero this is the identity, and it
      keeps a single layer from blowing up early in training. None = unbounded.
    activation: conditioner nonlinearity (smooth by default so the prior's
      gradient with respect to the pose is smooth during fitting).

  Returns:
    A `Bijector`; params `{"conditioner": mlp params}`.
  """
  def log_scale_and_shift(out):
    raw, shift = out[..., 0], out[..., 1]
    if scale_bound is not None:
      raw = scale_bound * jnp.tanh(raw / scale_bound)
    return raw, shift

  def transform(x, out):
    log_scale, shift = log_scale_and_shift(out)
    return x * jnp.exp(log_scale) + shift, log_scale

  def inverse_transform(y, out):
    log_scale, shift = log_scale_and_shift(out)
    return (y - shift) * jnp.exp(-log_scale), -log_scale

  return _coupling("affine_coupling", mask, hidden_sizes, context_dim, 2,
                   transform, inverse_transform, activation)


def spline_coupling(mask, num_bins: int = 8, range_min: float = -5.0,
                    range_max: float = 5.0,
                    hidden_sizes: Sequence[int] = (256, 256),
                    context_dim: int = 0,
                    min_bin_size: float = spline.DEFAULT_MIN_BIN_SIZE,
                    min_derivative: float = spline.DEFAULT_MIN_DERIVATIVE,
                    activation: Activation = jax.nn.gelu) -> core.Bijector:
  """Rational-quadratic spline coupling (Durkan et al. 2019), linear tails.

  Transformed dimensions go through a monotonic spline on
  `[range_min, range_max]` and the identity outside it (so any input is
  valid; standardise the data, e.g. with `actnorm`, so most of it falls
  inside the range).

  Args:
    mask: bool `[D]`; True = passed through unchanged (conditioner input).
    num_bins: K, bins per spline.
    range_min, range_max: the spline interval `[-B, B]` (any interval works).
    hidden_sizes: conditioner hidden widths.
    context_dim: C, size of the optional `context [..., C]` (0 = none).
    min_bin_size: smallest bin width/height as a fraction of the range.
    min_derivative: smallest knot derivative.
    activation: conditioner nonlinearity.

  Returns:
    A `Bijector`; params `{"conditioner": mlp params}`, the MLP emitting
    `3K - 1` values per transformed dimension.
  """
  if not range_min < range_max:
    raise ValueError(f"spline_coupling: need range_min < range_max, got "
                     f"{range_min}, {range_max}")
  kwargs = dict(num_bins=num_bins, range_min=float(range_min),
                range_max=float(range_max), min_bin_size=min_bin_size,
                min_derivative=min_derivative)

  def transform(x, out):
    return spline.rational_quadratic_forward(x, out, **kwargs)

  def inverse_transform(y, out):
    return spline.rational_quadratic_inverse(y, out, **kwargs)

  return _coupling("spline_coupling", mask, hidden_sizes, context_dim,
                   spline.num_spline_params(num_bins), transform,
                   inverse_transform, activation)


def alternating_mask(dim: int, parity: int = 0) -> np.ndarray:
  """`[D]` bool mask, True on even (parity 0) or odd (parity 1) indices."""
  return np.arange(dim) % 2 == parity


def half_mask(dim: int, first: bool = True) -> np.ndarray:
  """`[D]` bool mask: True on the first `ceil(D/2)` dims (or the rest)."""
  m = np.arange(dim) < (dim + 1) // 2
  return m if first else ~m
