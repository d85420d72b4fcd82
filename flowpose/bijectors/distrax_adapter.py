"""Adapter from a pure-function `Bijector` (+ params) to a `distrax.Bijector`.

Lets a flow plug into the distrax/TFP ecosystem, e.g.

  flow = distrax.Transformed(
      distrax.MultivariateNormalDiag(jnp.zeros(d), jnp.ones(d)),
      to_distrax(bijector, params))
  flow.log_prob(x)   # = base.log_prob(inverse(x)) + inverse log-det

Note the import-order trap: import distrax (this module) before tensorflow.
"""

from typing import Any, Optional

import distrax
import jax

from flowpose.bijectors import core

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
