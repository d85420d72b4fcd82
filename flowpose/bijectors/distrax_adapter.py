"""Bridges to distrax: a pure-function `Bijector` as a `distrax.Bijector`, and
flowpose's spline parameters as a `distrax.RationalQuadraticSpline`.

Lets a flow plug into the distrax/TFP ecosystem, e.g.

  flow = distrax.Transformed(
      distrax.MultivariateNormalDiag(jnp.zeros(d), jnp.ones(d)),
      to_distrax(bijector, params))
  flow.log_prob(x)   # = base.log_prob(inverse(x)) + inverse log-det

This is the only flowpose module that imports distrax (through
`lazy_distrax.import_distrax`, so TensorFlow may already be loaded); import it
where a distrax object is built, not at package level.
"""

from typing import Any, Optional

import jax
import jax.numpy as jnp

from flowpose.bijectors import core
from flowpose.bijectors import lazy_distrax
from flowpose.bijectors import spline

distrax = lazy_distrax.import_distrax()

Array = jax.Array


class PureFunctionBijector(distrax.Bijector):
  """A `distrax.Bijector` (event_ndims_in=1) delegating to pure functions.

  The object is a pytree (distrax's `Jittable`): params and context are its
  array leaves, so it can be built inside or passed into a jitted function.
  """

  def __init__(self, bijector: core.Bijector, params: Any,
               context: Optional[Array] = None, name: str = "flowpose"):
    super().__init__(event_ndims_in=1)
    self._bijector = bijector
    self._params = params
    self._context = context
    self._bijector_name = name

  @property
  def params(self) -> Any:
    return self._params

  @property
  def context(self) -> Optional[Array]:
    return self._context

  @property
  def name(self) -> str:
    return self._bijector_name

  def forward_and_log_det(self, x: Array) -> tuple[Array, Array]:
    """`x [..., D] -> (y [..., D], log|det dy/dx| [...])`."""
    return self._bijector.forward_and_log_det(self._params, x, self._context)

  def inverse_and_log_det(self, y: Array) -> tuple[Array, Array]:
    """`y [..., D] -> (x [..., D], log|det dx/dy| [...])`."""
    return self._bijector.inverse_and_log_det(self._params, y, self._context)

  def same_as(self, other: distrax.Bijector) -> bool:
    return self is other


def to_distrax(bijector: core.Bijector, params: Any,
               context: Optional[Array] = None,
               name: str = "flowpose") -> distrax.Bijector:
  """Wraps `bijector` with fixed `params` (and `context [..., C]`) for distrax.

  Args:
    bijector: a flowpose `Bijector`.
    params: its params pytree.
    context: optional context, broadcast against the inputs' batch dims.
    name: the distrax bijector name.

  Returns:
    A `distrax.Bijector` with `event_ndims_in == event_ndims_out == 1`.
  """
  return PureFunctionBijector(bijector, params, context, name)


def rational_quadratic_spline(
    params: Array, *, range_min: float, range_max: float,
    min_bin_size: float = spline.DEFAULT_MIN_BIN_SIZE,
    min_derivative: float = spline.DEFAULT_MIN_DERIVATIVE):
  """flowpose's element-wise spline as a `distrax.RationalQuadraticSpline`.

  Same map as `spline.rational_quadratic_forward(x, params, ...)`: distrax's
  `boundary_slopes="identity"` fixes the two boundary derivatives to 1 (the
  identity tails), so flowpose's `K - 1` interior derivatives are padded with
  two ignored zeros; flowpose's `min_bin_size` is a fraction of the range,
  distrax's an absolute size.

  Args:
    params: `[..., 3K - 1]` unconstrained spline parameters (flowpose layout:
      widths, heights, interior derivatives).
    range_min, range_max: the spline interval; identity outside.
    min_bin_size: smallest bin size as a fraction of the range.
    min_derivative: smallest knot derivative.

  Returns:
    An element-wise (`event_ndims_in=0`) `distrax.RationalQuadraticSpline`.
  """
  num_bins = (params.shape[-1] + 1) // 3
  if params.shape[-1] != spline.num_spline_params(num_bins):
    raise ValueError("rational_quadratic_spline: expected [..., 3K - 1] params, "
                     f"got {params.shape}")
  pad = jnp.zeros(params.shape[:-1] + (1,), params.dtype)
  distrax_params = jnp.concatenate(
      [params[..., :2 * num_bins], pad, params[..., 2 * num_bins:], pad], -1)
  return distrax.RationalQuadraticSpline(
      distrax_params, range_min=range_min, range_max=range_max,
      boundary_slopes="identity",
      min_bin_size=min_bin_size * (range_max - range_min),
      min_knot_slope=min_derivative)
