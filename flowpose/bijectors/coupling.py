"""Coupling layers (RealNVP affine, rational-quadratic spline).

A coupling layer splits `x [..., D]` with a static boolean `mask [D]`:
`mask[i] == True` means dimension i is *passed through unchanged* and fed to the
conditioner; the other dimensions are transformed element-wise with parameters
the conditioner computes from the passed-through dimensions (and an optional
`context [..., C]`). Because the transformed dimensions never influence their
own parameters the Jacobian is triangular and the inverse is exact.

The conditioner is any `conditioners.ConditionerFactory` (default: a Flax MLP
with a zero-initialised last layer, so a freshly initialised coupling is the
identity -- its element-wise transform is the identity at zero parameters --
and a deep flow starts as the identity too).

Params: `{"conditioner": <the conditioner's params>}`.
"""

from typing import Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from flowpose.bijectors import conditioners
from flowpose.bijectors import core
from flowpose.bijectors import spline

Array = jax.Array
Activation = Callable[[Array], Array]


# ---------------------------------------------------------------------------
# Generic masked coupling.
# ---------------------------------------------------------------------------

# (x_transformed [..., T], conditioner_out [..., T, P])
#   -> (y_transformed [..., T], log_det per dim [..., T])
ElementwiseFn = Callable[[Array, Array], tuple[Array, Array]]


SPLITS = ("gather", "slices")


def _coupling(name: str, mask, context_dim: int, params_per_dim: int,
              transform: ElementwiseFn, inverse_transform: ElementwiseFn,
              conditioner: conditioners.ConditionerFactory,
              split: str = "gather", sections: Optional[tuple] = None) -> core.Bijector:
  """Builds a coupling bijector around an element-wise transform (`split`: see the factories).

  With `sections` (ints summing to `params_per_dim`) the transform gets the conditioner output
  as a tuple `([..., T, s] for s in sections)`, from `Conditioner.apply_sections` when the
  conditioner has it (else cut from `apply`'s output).
  """
  mask = np.asarray(mask)
  if mask.ndim != 1 or mask.dtype != np.bool_:
    raise ValueError(f"{name}: mask must be a 1-D boolean array, got "
                     f"{mask.dtype} {mask.shape}")
  if mask.all():
    raise ValueError(f"{name}: mask passes every dimension through; nothing "
                     "to transform")
  if context_dim < 0:
    raise ValueError(f"{name}: context_dim must be >= 0, got {context_dim}")
  if split not in SPLITS:
    raise ValueError(f"{name}: split must be one of {SPLITS}, got {split!r}")
  if sections is not None and sum(sections) != params_per_dim:
    raise ValueError(f"{name}: sections {sections} must sum to {params_per_dim}")
  dim = mask.size
  pass_idx = np.flatnonzero(mask)
  trans_idx = np.flatnonzero(~mask)
  num_trans = trans_idx.size
  # Re-interleave [passed, transformed] back into the original order.
  unsplit = np.argsort(np.concatenate([pass_idx, trans_idx]))
  if split == "slices":
    # No gathers on the batch: XLA's CPU gather, its transpose (a scatter-add) and the copies
    # around them cost ~20% of a prior's train step (profile in benchmarks/flow_train.py).
    take_pass, take_trans = _strided_take(pass_idx), _strided_take(trans_idx)
    merge = _merge(pass_idx, trans_idx)
  else:
    take_pass = lambda x: x[..., pass_idx]
    take_trans = lambda x: x[..., trans_idx]
    merge = lambda x_pass, y_trans: jnp.concatenate([x_pass, y_trans], -1)[..., unsplit]
  out_dim = num_trans * params_per_dim
  cond = conditioner(pass_idx.size, context_dim, out_dim)

  def init(key, event_dim=None):
    core.check_event_dim(name, dim, event_dim)
    return {"conditioner": cond.init(key)}

  def _split(params, x, context):
    core.check_input(name, x, dim)
    if context_dim:
      if context is None:
        raise ValueError(f"{name}: built with context_dim={context_dim} but "
                         "called without context")
      x, context = core.broadcast_context(x, context, context_dim, name)
    else:
      context = None
    x_pass, x_trans = take_pass(x), take_trans(x)
    if sections is not None and cond.apply_sections is not None:
      return x_pass, x_trans, cond.apply_sections(params["conditioner"], x_pass, context,
                                                  num_trans, sections)
    out = cond.apply(params["conditioner"], x_pass, context)
    if out.shape[-1] != out_dim:
      raise ValueError(f"{name}: conditioner returned [..., {out.shape[-1]}], "
                       f"expected [..., {out_dim}] ({num_trans} transformed "
                       f"dims x {params_per_dim} params)")
    out = out.reshape(out.shape[:-1] + (num_trans, params_per_dim))
    if sections is not None:
      out = tuple(jnp.split(out, np.cumsum(sections)[:-1], axis=-1))
    return x_pass, x_trans, out

  def _apply(fn, params, x, context):
    x_pass, x_trans, out = _split(params, x, context)
    y_trans, log_det = fn(x_trans, out)
    return merge(x_pass, y_trans), jnp.sum(log_det, -1)

  def forward_and_log_det(params, x, context=None):
    return _apply(transform, params, x, context)

  def inverse_and_log_det(params, y, context=None):
    return _apply(inverse_transform, params, y, context)

  return core.Bijector(init, forward_and_log_det, inverse_and_log_det)


def _merge(pass_idx: np.ndarray, trans_idx: np.ndarray):
  """`(x_pass [..., P], y_trans [..., T]) -> y [..., D]` with each part back at its indices.

  Alternating masks interleave (a stack and a reshape, whose transpose is as cheap); other
  masks take strided slices of the concatenation.
  """
  first, second = (pass_idx, trans_idx) if pass_idx[0] == 0 else (trans_idx, pass_idx)
  dim = pass_idx.size + trans_idx.size
  if (np.array_equal(first, np.arange(0, dim, 2))
      and np.array_equal(second, np.arange(1, dim, 2))):
    n = second.size

    def interleave(x_pass, y_trans):
      a, b = (x_pass, y_trans) if pass_idx[0] == 0 else (y_trans, x_pass)
      pairs = jnp.stack([a[..., :n], b], -1).reshape(b.shape[:-1] + (2 * n,))
      return pairs if a.shape[-1] == n else jnp.concatenate([pairs, a[..., n:]], -1)
    return interleave
  # Output position i is entry order[i] of concat([x_pass, y_trans]).
  take = _strided_take(np.argsort(np.concatenate([pass_idx, trans_idx])))
  return lambda x_pass, y_trans: take(jnp.concatenate([x_pass, y_trans], -1))


def _strided_take(indices: np.ndarray) -> Callable[[Array], Array]:
  """`x -> x[..., indices]` as a concatenation of strided slices (no gather).

  `indices` is cut greedily into arithmetic progressions: an alternating mask is one slice
  `x[..., p::2]`, a kinematic group mask a few runs.
  """
  runs, start = [], 0
  while start < indices.size:
    stop = start + 1
    step = int(indices[stop] - indices[start]) if stop < indices.size else 1
    while stop < indices.size and indices[stop] - indices[stop - 1] == step:
      stop += 1
    end = int(indices[stop - 1]) + (1 if step > 0 else -1)
    runs.append(slice(int(indices[start]), None if end < 0 else end, step))
    start = stop

  def take(x):
    parts = [x[..., r] for r in runs]
    return parts[0] if len(parts) == 1 else jnp.concatenate(parts, -1)
  return take


# ---------------------------------------------------------------------------
# Public factories.
# ---------------------------------------------------------------------------


def affine_coupling(
    mask, hidden_sizes: Sequence[int] = (256, 256), context_dim: int = 0,
    scale_bound: Optional[float] = 3.0, activation: Activation = jax.nn.gelu,
    conditioner: Optional[conditioners.ConditionerFactory] = None,
    split: str = "gather",
) -> core.Bijector:
  """RealNVP affine coupling: `y_t = x_t * exp(log_scale) + shift`.

  Args:
    mask: bool `[D]`; True = passed through unchanged (conditioner input).
    hidden_sizes: hidden widths of the default MLP conditioner.
    context_dim: C, size of the optional `context [..., C]` (0 = none).
    scale_bound: the log-scale is soft-clamped to `(-bound, bound)` as
      `bound * tanh(raw / bound)`; near zero this is the identity, and it
      keeps a single layer from blowing up early in training. None = unbounded.
    activation: nonlinearity of the default MLP conditioner.
    conditioner: any `ConditionerFactory` (then `hidden_sizes` and
      `activation` are unused); it must emit 2 values (log-scale, shift) per
      transformed dim, interleaved: `[..., T * 2]`.
    split: how the passed/transformed dims are taken apart and put back. "gather" (default:
      the values of earlier releases bit for bit) or "slices" (strided slices and an
      interleave, no gathers: the same map up to float rounding, ~20% less CPU per training
      step of the default-sized prior on XLA CPU; what `flowpose.prior.flow` uses).

  Returns:
    A `Bijector`; params `{"conditioner": conditioner params}`.
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

  if conditioner is None:
    conditioner = conditioners.mlp_conditioner(hidden_sizes, activation)
  return _coupling("affine_coupling", mask, context_dim, 2, transform,
                   inverse_transform, conditioner, split)


def spline_coupling(mask, num_bins: int = 8, range_min: float = -5.0,
                    range_max: float = 5.0,
                    hidden_sizes: Sequence[int] = (256, 256),
                    context_dim: int = 0,
                    min_bin_size: float = spline.DEFAULT_MIN_BIN_SIZE,
                    min_derivative: float = spline.DEFAULT_MIN_DERIVATIVE,
                    activation: Activation = jax.nn.gelu,
                    conditioner: Optional[conditioners.ConditionerFactory] = None,
                    split: str = "gather") -> core.Bijector:
  """Rational-quadratic spline coupling (Durkan et al. 2019), linear tails.

  Transformed dimensions go through a monotonic spline on
  `[range_min, range_max]` and the identity outside it (so any input is
  valid; standardise the data, e.g. with `actnorm`, so most of it falls
  inside the range).

  Args:
    mask: bool `[D]`; True = passed through unchanged (conditioner input).
    num_bins: K, bins per spline.
    range_min, range_max: the spline interval `[-B, B]` (any interval works).
    hidden_sizes: hidden widths of the default MLP conditioner.
    context_dim: C, size of the optional `context [..., C]` (0 = none).
    min_bin_size: smallest bin width/height as a fraction of the range.
    min_derivative: smallest knot derivative.
    activation: nonlinearity of the default MLP conditioner.
    conditioner: any `ConditionerFactory` (then `hidden_sizes` and
      `activation` are unused); it must emit `3K - 1` values per transformed
      dim, `[..., T * (3K - 1)]`.
    split: "gather" or "slices", as in `affine_coupling`; "slices" also takes the widths,
      heights and derivatives from the conditioner apart (`Conditioner.apply_sections`).

  Returns:
    A `Bijector`; params `{"conditioner": conditioner params}`.
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

  if conditioner is None:
    conditioner = conditioners.mlp_conditioner(hidden_sizes, activation)
  # "slices": the conditioner's output comes as (widths, heights, derivatives), so the
  # backward pass assembles no [..., T * (3K - 1)] gradient from slices (~25% of the fitter's
  # flow decode forward + backward; WORKSPACE.md, issue 15).
  sections = (num_bins, num_bins, num_bins - 1) if split == "slices" else None
  return _coupling("spline_coupling", mask, context_dim,
                   spline.num_spline_params(num_bins), transform,
                   inverse_transform, conditioner, split, sections)


def alternating_mask(dim: int, parity: int = 0) -> np.ndarray:
  """`[D]` bool mask, True on even (parity 0) or odd (parity 1) indices."""
  return np.arange(dim) % 2 == parity


def half_mask(dim: int, first: bool = True) -> np.ndarray:
  """`[D]` bool mask: True on the first `ceil(D/2)` dims (or the rest)."""
  m = np.arange(dim) < (dim + 1) // 2
  return m if first else ~m
