"""Monotonic rational-quadratic splines (Durkan et al., Neural Spline Flows).

Element-wise maps `x -> y` on `[range_min, range_max]` with `K` bins, identity
(linear tails of slope 1) outside. The spline is given by unconstrained
parameters, typically a conditioner's outputs:

* `raw_widths [..., K]`, `raw_heights [..., K]`: softmax-normalised bin sizes,
  each at least `min_bin_size` of the range;
* `raw_derivatives [..., K - 1]`: derivatives at the interior knots; the two
  boundary derivatives are fixed to 1 so the spline joins the identity tails
  with a continuous first derivative.

All-zero raw parameters give the identity: equal widths and heights and, via a
softplus offset, derivatives of exactly 1 everywhere. That is what makes a
zero-initialised spline coupling an identity flow.

The notation follows the paper's appendix A: for bin k with left knot
`(x_k, y_k)`, width `w_k`, height `h_k`, slope `s_k = h_k / w_k`, knot
derivatives `d_k, d_{k+1}` and `xi = (x - x_k) / w_k`:

  y = y_k + h_k [s_k xi^2 + d_k xi (1 - xi)]
            / [s_k + (d_{k+1} + d_k - 2 s_k) xi (1 - xi)].
"""

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array

DEFAULT_MIN_BIN_SIZE = 1e-3
DEFAULT_MIN_DERIVATIVE = 1e-3


def num_spline_params(num_bins: int) -> int:
  """Unconstrained parameters per dimension: K widths, K heights, K-1 slopes."""
  return 3 * num_bins - 1


def _cumsum_matrix(num_bins: int) -> np.ndarray:
  """`[K, K+1]` with `sizes @ m = [0, s_0, s_0 + s_1, ..., sum(s)]` (an exclusive cumsum)."""
  return (np.arange(num_bins)[:, None] < np.arange(num_bins + 1)[None, :]).astype(np.float32)


def _knots(raw: Array, lo: float, hi: float, min_bin_size: float):
  """Knot positions `[..., K+1]` (first `lo`, last `hi`) from raw logits `[..., K]`.

  The cumulative sum is a product with a constant `[K, K+1]` matrix and the softmax's shift is
  stopped (the same value and gradient): XLA:CPU runs `cumsum` as a reduce-window whose
  transpose is another one, and the unstopped max adds a reduction to the backward pass; these
  were ~10% of the fitter's flow decode (profile, WORKSPACE.md issue 15).
  """
  num_bins = raw.shape[-1]
  if min_bin_size * num_bins >= 1.0:
    raise ValueError(
        f"min_bin_size={min_bin_size} too large for {num_bins} bins")
  e = jnp.exp(raw - jax.lax.stop_gradient(jnp.max(raw, -1, keepdims=True)))
  frac = min_bin_size + (1.0 - min_bin_size * num_bins) * (e / jnp.sum(e, -1, keepdims=True))
  # HIGHEST: a default-precision f32 dot is TF32 on recent GPUs (knots off by ~1e-3).
  knots = lo + jnp.matmul(frac * (hi - lo), _cumsum_matrix(num_bins),
                          precision=jax.lax.Precision.HIGHEST)
  # Pin the last knot exactly to `hi` (the sum rounds) so tails stay continuous.
  return jnp.where(np.arange(num_bins + 1) == num_bins, jnp.float32(hi), knots)


def _softplus(x: Array) -> Array:
  # = jax.nn.softplus; its logaddexp form carries inf/NaN selects through the backward pass.
  return jnp.maximum(x, 0.0) + jnp.log1p(jnp.exp(-jnp.abs(x)))


def _interior_derivatives(raw: Array, min_derivative: float) -> Array:
  """Interior knot derivatives `[..., K-1]` (softplus); both boundary ones are 1."""
  # softplus(0 + offset) + min_derivative == 1, so raw == 0 gives slope 1.
  offset = float(np.log(np.expm1(1.0 - min_derivative)))
  return min_derivative + _softplus(raw + offset)


def _spline_params(raw_widths, raw_heights, raw_derivatives, range_min,
                   range_max, min_bin_size, min_derivative):
  """(x_knots, y_knots [..., K+1], interior derivatives [..., K-1])."""
  k = raw_widths.shape[-1]
  if raw_heights.shape[-1] != k or raw_derivatives.shape[-1] != k - 1:
    raise ValueError(
        "spline: expected raw widths/heights [..., K] and derivatives "
        f"[..., K-1], got {raw_widths.shape}, {raw_heights.shape}, "
        f"{raw_derivatives.shape}")
  x_knots = _knots(raw_widths, range_min, range_max, min_bin_size)
  y_knots = _knots(raw_heights, range_min, range_max, min_bin_size)
  return x_knots, y_knots, _interior_derivatives(raw_derivatives, min_derivative)


def _split_params(params, x: Array, num_bins: int):
  if isinstance(params, (tuple, list)):  # Already (widths, heights, derivatives).
    sizes = (num_bins, num_bins, num_bins - 1)
    if len(params) != 3 or tuple(p.shape[-1] for p in params) != sizes:
      raise ValueError(f"spline: expected (widths [..., {num_bins}], heights [..., {num_bins}], "
                       f"derivatives [..., {num_bins - 1}]), got "
                       f"{[getattr(p, 'shape', p) for p in params]}")
    return tuple(jnp.broadcast_to(p, x.shape + p.shape[-1:]) for p in params)
  if params.shape[-1] != num_spline_params(num_bins):
    raise ValueError(f"spline: expected [..., {num_spline_params(num_bins)}] "
                     f"params for {num_bins} bins, got {params.shape}")
  params = jnp.broadcast_to(params, x.shape + params.shape[-1:])
  return (params[..., :num_bins], params[..., num_bins:2 * num_bins],
          params[..., 2 * num_bins:])


def _bin_of(search_knots, value, x_knots, y_knots, interior):
  """The spline bin holding `value` among `search_knots`: its width, height, left knots, knot
  derivatives (left, right) and slope `h / w`, each `[...]`.

  Selected by a one-hot over the bins and a sum, not a gather: the sums fuse with the spline's
  element-wise math and their transpose is a product (a gather's is a scatter-add).
  """
  num_bins = interior.shape[-1] + 1
  # Number of interior knots at or left of the value (the value is inside the range).
  k = jnp.sum(value[..., None] >= search_knots[..., 1:-1], axis=-1)
  onehot = (k[..., None] == np.arange(num_bins)).astype(value.dtype)  # [..., K]
  pick = lambda hot, v: jnp.sum(hot * v, axis=-1)
  picked = (pick(onehot, x_knots[..., :-1]), pick(onehot, x_knots[..., 1:]),
            pick(onehot, y_knots[..., :-1]), pick(onehot, y_knots[..., 1:]),
            pick(onehot[..., 1:], interior), pick(onehot[..., :-1], interior))
  x_k, x_k1, y_k, y_k1, d_k, d_k1 = picked
  w, h = x_k1 - x_k, y_k1 - y_k
  # Boundary derivatives are 1: bin 0's left and bin K-1's right knot.
  d_k = jnp.where(k == 0, 1.0, d_k)
  d_k1 = jnp.where(k == num_bins - 1, 1.0, d_k1)
  return w, h, x_k, y_k, d_k, d_k1, h / w


def rational_quadratic_forward(
    x: Array, params: Array, *, num_bins: int, range_min: float,
    range_max: float, min_bin_size: float = DEFAULT_MIN_BIN_SIZE,
    min_derivative: float = DEFAULT_MIN_DERIVATIVE) -> tuple[Array, Array]:
  """Element-wise spline forward map.

  Args:
    x: inputs `[...]`.
    params: unconstrained spline parameters `[..., 3K-1]` (widths, heights,
      interior derivatives, concatenated), broadcastable against `x`; or the
      three as a tuple `([..., K], [..., K], [..., K-1])` (no slicing: a coupling
      whose conditioner emits them apart assembles no `[..., 3K-1]` gradient).
    num_bins: K.
    range_min, range_max: the spline's domain and range; identity outside.
    min_bin_size: smallest bin width/height as a fraction of the range.
    min_derivative: smallest knot derivative.

  Returns:
    `(y [...], log_det [...])`, element-wise `log dy/dx`.
  """
  x_knots, y_knots, interior = _spline_params(
      *_split_params(params, x, num_bins), range_min, range_max, min_bin_size,
      min_derivative)
  inside = (x >= range_min) & (x <= range_max)
  # Evaluate the spline on a safe copy so the unused branch of `where` stays
  # finite (NaNs there would poison gradients). `where`, not `clip`: clip's
  # gradient is halved at x == range_max, which would corrupt the log-det's
  # derivative exactly at the bounds.
  xc = jnp.where(inside, x, range_min)
  w, h, x_k, y_k, d_k, d_k1, s = _bin_of(x_knots, xc, x_knots, y_knots, interior)
  xi = (xc - x_k) / w
  xi1 = xi * (1.0 - xi)
  denom = s + (d_k1 + d_k - 2.0 * s) * xi1
  y = y_k + h * (s * xi**2 + d_k * xi1) / denom
  dy = s**2 * (d_k1 * xi**2 + 2.0 * s * xi1 + d_k * (1.0 - xi)**2) / denom**2
  y = jnp.where(inside, y, x)
  log_det = jnp.where(inside, jnp.log(dy), 0.0)
  return y, log_det


def rational_quadratic_inverse(
    y: Array, params: Array, *, num_bins: int, range_min: float,
    range_max: float, min_bin_size: float = DEFAULT_MIN_BIN_SIZE,
    min_derivative: float = DEFAULT_MIN_DERIVATIVE) -> tuple[Array, Array]:
  """Element-wise spline inverse map (closed form, root of a quadratic).

  Args:
    y: outputs `[...]`.
    params: as in `rational_quadratic_forward`.
    num_bins, range_min, range_max, min_bin_size, min_derivative: as there.

  Returns:
    `(x [...], log_det [...])`, element-wise `log dx/dy`.
  """
  x_knots, y_knots, interior = _spline_params(
      *_split_params(params, y, num_bins), range_min, range_max, min_bin_size,
      min_derivative)
  inside = (y >= range_min) & (y <= range_max)
  yc = jnp.where(inside, y, range_min)
  w, h, x_k, y_k, d_k, d_k1, s = _bin_of(y_knots, yc, x_knots, y_knots, interior)
  dy = yc - y_k
  slope_sum = d_k1 + d_k - 2.0 * s
  a = h * (s - d_k) + dy * slope_sum
  b = h * d_k - dy * slope_sum
  c = -s * dy
  discriminant = jnp.maximum(b**2 - 4.0 * a * c, 0.0)
  # The root in the form 2c / (-b - sqrt(disc)) (the paper's eq. 29): the
  # textbook (-b + sqrt(disc)) / 2a divides by a, which vanishes for a bin
  # that is almost linear (e.g. the identity at initialisation).
  # xi is in [0, 1] up to rounding (c = 0 at the left knot gives exactly 0);
  # no clip, for the same gradient reason as in the forward map.
  xi = 2.0 * c / (-b - jnp.sqrt(discriminant))
  x = x_k + xi * w
  xi1 = xi * (1.0 - xi)
  denom = s + slope_sum * xi1
  dy_dx = s**2 * (d_k1 * xi**2 + 2.0 * s * xi1 + d_k * (1.0 - xi)**2) / denom**2
  x = jnp.where(inside, x, y)
  log_det = jnp.where(inside, -jnp.log(dy_dx), 0.0)
  return x, log_det
