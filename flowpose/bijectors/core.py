"""The `Bijector` tuple of pure functions, composition (`chain`) and stacking.

A bijector is a `Bijector` NamedTuple built by a factory (e.g.
`affine_coupling(mask)`). It owns no state: parameters are an explicit pytree
created by `init` and passed to every call, so a whole flow is a pure function
of `(params, x)` that jits, vmaps, differentiates and checkpoints like any
other pytree.

Conventions (shared by every bijector in this package):

* `init(key, event_dim=None) -> params`. `event_dim` is optional because every
  factory already knows its dimension; when given it is checked.
* `forward_and_log_det(params, x [..., D], context=None) -> (y [..., D],
  log_det [...])`, where `log_det = log|det dy/dx|`.
* `inverse_and_log_det(params, y [..., D], context=None) -> (x [..., D],
  log_det [...])`, where `log_det = log|det dx/dy|` (= minus the forward one at
  the corresponding point).
* `context [..., C]` conditions couplings; layers without a conditioner ignore
  it, so one context can be passed to a whole `chain`.
* `data_init(params, x, context=None, direction="forward") -> params` is
  optional (None for layers without data-dependent initialisation, see
  `actnorm`); use the module-level `data_init` helper, which handles chains.

Composition follows distrax: `chain([f, g])(x) = f(g(x))`, i.e. the *last*
bijector is applied first in the forward direction. Params of a chain are the
tuple of the layers' params in the same order as the list.
"""

from typing import Any, Callable, NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp

Array = jax.Array
Params = Any
Context = Optional[Array]

FORWARD = "forward"
INVERSE = "inverse"


class Bijector(NamedTuple):
  """A bijection on `[..., D]` arrays as a tuple of pure functions.

  Attributes:
    init: `(key, event_dim=None) -> params`; a freshly initialised bijector is
      the identity map.
    forward_and_log_det: `(params, x [..., D], context=None) -> (y [..., D],
      log_det [...])`.
    inverse_and_log_det: `(params, y [..., D], context=None) -> (x [..., D],
      log_det [...])`.
    data_init: optional `(params, x [..., D], context=None, direction="forward")
      -> params`; sets parameters from a data batch (see `data_init` below).
  """
  init: Callable[..., Params]
  forward_and_log_det: Callable[..., tuple[Array, Array]]
  inverse_and_log_det: Callable[..., tuple[Array, Array]]
  data_init: Optional[Callable[..., Params]] = None

  def forward(self, params: Params, x: Array, context: Context = None) -> Array:
    """Returns `y [..., D]`, the forward map of `x [..., D]`."""
    return self.forward_and_log_det(params, x, context)[0]

  def inverse(self, params: Params, y: Array, context: Context = None) -> Array:
    """Returns `x [..., D]`, the inverse map of `y [..., D]`."""
    return self.inverse_and_log_det(params, y, context)[0]


def forward(bijector: Bijector, params: Params, x: Array,
            context: Context = None) -> Array:
  """Applies `bijector` forward: `x [..., D] -> y [..., D]`."""
  return bijector.forward_and_log_det(params, x, context)[0]


def inverse(bijector: Bijector, params: Params, y: Array,
            context: Context = None) -> Array:
  """Applies `bijector` in reverse: `y [..., D] -> x [..., D]`."""
  return bijector.inverse_and_log_det(params, y, context)[0]


def invert(bijector: Bijector) -> Bijector:
  """Returns the inverse bijector (forward and inverse swapped, same params).

  `data_init` keeps its meaning with respect to the data: a direction of
  "forward" for the inverted bijector is "inverse" for the original.
  """
  inner_init = bijector.data_init
  if inner_init is None:
    swapped_init = None
  else:
    def swapped_init(params, x, context=None, direction=FORWARD):
      flipped = INVERSE if check_direction(direction) == FORWARD else FORWARD
      return inner_init(params, x, context, direction=flipped)
  return Bijector(
      init=bijector.init,
      forward_and_log_det=bijector.inverse_and_log_det,
      inverse_and_log_det=bijector.forward_and_log_det,
      data_init=swapped_init)


def data_init(bijector: Bijector, params: Params, x: Array,
              context: Context = None, direction: str = FORWARD) -> Params:
  """Data-dependent initialisation (e.g. of every `actnorm` in a flow).

  How a trainer uses it: build `params = flow.init(key)`, then, before the
  first step, `params = data_init(flow, params, first_batch)`. Each `actnorm`
  layer then sets its shift/scale so that *its own output* on the batch has
  zero mean and unit variance per dimension, given everything applied before
  it. For a density model `distrax.Transformed(base, to_distrax(flow, params))`
  the data live on the output side of the flow and are pushed through the
  inverse, so use `direction="inverse"`; for a flow whose forward map goes
  data -> latent (Glow convention) use `direction="forward"`.

  Args:
    bijector: any bijector; layers without `data_init` keep their params.
    params: its params (from `bijector.init`).
    x: data batch `[N, D]` on the input side of the chosen direction.
    context: optional `[N, C]` context for conditional layers.
    direction: "forward" or "inverse".

  Returns:
    The updated params (same structure).
  """
  check_direction(direction)
  if bijector.data_init is None:
    return params
  return bijector.data_init(params, x, context, direction=direction)


def check_direction(direction: str) -> str:
  if direction not in (FORWARD, INVERSE):
    raise ValueError(
        f"direction must be 'forward' or 'inverse', got {direction!r}")
  return direction


def check_event_dim(name: str, expected: int, event_dim: Optional[int]):
  """Raises ValueError when `event_dim` is given and differs from `expected`."""
  if event_dim is not None and int(event_dim) != expected:
    raise ValueError(
        f"{name}: built for event dimension {expected}, init got {event_dim}")


def check_input(name: str, x: Array, dim: int):
  """Raises ValueError unless the trailing (event) dimension of `x` is `dim`."""
  if x.ndim < 1 or x.shape[-1] != dim:
    raise ValueError(
        f"{name}: expected input [..., {dim}], got shape {tuple(x.shape)}")


def zero_log_det(x: Array) -> Array:
  """Log-det of a volume-preserving map: zeros of `x`'s batch shape `[...]`."""
  return jnp.zeros(x.shape[:-1], x.dtype)


def chain(bijectors: Sequence[Bijector]) -> Bijector:
  """Composes bijectors as distrax's `Chain`: `chain([f, g])(x) = f(g(x))`.

  Args:
    bijectors: non-empty list; the last element is applied first in forward.

  Returns:
    A `Bijector` whose params are `tuple(params_i)` aligned with `bijectors`.
  """
  layers = tuple(bijectors)
  if not layers:
    raise ValueError("chain: needs at least one bijector")

  def init(key, event_dim=None):
    keys = jax.random.split(key, len(layers))
    return tuple(b.init(k, event_dim) for b, k in zip(layers, keys))

  def forward_and_log_det(params, x, context=None):
    _check_params(params)
    total = 0.0
    for b, p in zip(reversed(layers), reversed(params)):
      x, log_det = b.forward_and_log_det(p, x, context)
      total = total + log_det
    return x, _as_log_det(total, x)

  def inverse_and_log_det(params, y, context=None):
    _check_params(params)
    total = 0.0
    for b, p in zip(layers, params):
      y, log_det = b.inverse_and_log_det(p, y, context)
      total = total + log_det
    return y, _as_log_det(total, y)

  def chain_data_init(params, x, context=None, direction=FORWARD):
    _check_params(params)
    # Initialise layer by layer in the order the data flows, so that each
    # layer sees the batch as transformed by everything before it.
    order = range(len(layers))
    if direction == FORWARD:
      order = reversed(order)
    new_params = list(params)
    for i in order:
      layer = layers[i]
      new_params[i] = data_init(layer, params[i], x, context, direction)
      step = (layer.forward_and_log_det if direction == FORWARD
              else layer.inverse_and_log_det)
      x = step(new_params[i], x, context)[0]
    return tuple(new_params)

  def _check_params(params):
    if len(params) != len(layers):
      raise ValueError(
          f"chain: expected params for {len(layers)} layers, got {len(params)}")

  return Bijector(init, forward_and_log_det, inverse_and_log_det,
                  chain_data_init)


def _as_log_det(total, x: Array) -> Array:
  return jnp.broadcast_to(jnp.asarray(total, x.dtype), x.shape[:-1])


def stack(bijector: Bijector, num_layers: int, remat: bool = False) -> Bijector:
  """`num_layers` copies of `bijector` with separate params, via `lax.scan`.

  Equivalent to `chain([bijector] * num_layers)` with the i-th layer's params
  at index i of the leading axis (so layer `num_layers - 1` is applied first in
  forward), but traced and compiled once instead of `num_layers` times. Build a
  block with alternating masks, e.g. `chain([coupling(m), coupling(~m),
  actnorm(d)])`, then stack blocks.

  Args:
    bijector: the repeated block; params must have a fixed structure.
    num_layers: number of copies (>= 1).
    remat: rematerialise each block in the backward pass (`jax.checkpoint`),
      trading compute for memory in deep flows.

  Returns:
    A `Bijector` whose params are the block's params with a leading
    `[num_layers]` axis on every leaf.
  """
  if num_layers < 1:
    raise ValueError(f"stack: num_layers must be >= 1, got {num_layers}")
  fwd = bijector.forward_and_log_det
  inv = bijector.inverse_and_log_det
  if remat:
    fwd, inv = jax.checkpoint(fwd), jax.checkpoint(inv)

  def init(key, event_dim=None):
    keys = jax.random.split(key, num_layers)
    per_layer = [bijector.init(k, event_dim) for k in keys]
    return jax.tree.map(lambda *leaves: jnp.stack(leaves), *per_layer)

  def _scan(step, params, x, context, reverse):
    def body(carry, layer_params):
      x, total = carry
      x, log_det = step(layer_params, x, context)
      return (x, total + log_det), None
    total = jnp.zeros(x.shape[:-1], x.dtype)
    (x, total), _ = jax.lax.scan(body, (x, total), params, reverse=reverse)
    return x, total

  def forward_and_log_det(params, x, context=None):
    return _scan(fwd, params, x, context, reverse=True)

  def inverse_and_log_det(params, y, context=None):
    return _scan(inv, params, y, context, reverse=False)

  def stack_data_init(params, x, context=None, direction=FORWARD):
    # Data init runs once, so an unrolled Python loop is fine here.
    order = range(num_layers)
    if direction == FORWARD:
      order = reversed(order)
    layers = [jax.tree.map(lambda p, i=i: p[i], params)
              for i in range(num_layers)]
    for i in order:
      layers[i] = data_init(bijector, layers[i], x, context, direction)
      step = fwd if direction == FORWARD else inv
      x = step(layers[i], x, context)[0]
    return jax.tree.map(lambda *leaves: jnp.stack(leaves), *layers)

  return Bijector(init, forward_and_log_det, inverse_and_log_det,
                  stack_data_init)


def broadcast_context(x: Array, context: Array, context_dim: int,
                      name: str) -> tuple[Array, Array]:
  """Broadcasts `x [..., D]` and `context [..., C]` to common batch dims.

  Returns:
    `(x [B..., D], context [B..., C])` with `B...` the broadcast batch shape.
  """
  context = jnp.asarray(context)
  if context.ndim < 1 or context.shape[-1] != context_dim:
    raise ValueError(f"{name}: expected context [..., {context_dim}], got "
                     f"shape {tuple(context.shape)}")
  batch = jnp.broadcast_shapes(x.shape[:-1], context.shape[:-1])
  x = jnp.broadcast_to(x, batch + x.shape[-1:])
  context = jnp.broadcast_to(context.astype(x.dtype), batch + (context_dim,))
  return x, context


def standard_normal_log_prob(bijector: Bijector, params: Params, x: Array,
                             context: Context = None) -> Array:
  """Log-density (nats) of `x [..., D]` under `bijector` pushed from N(0, I).

  The flow's forward map goes base -> data (distrax's `Transformed`), so
  `log p(x) = log N(f^{-1}(x); 0, I) + log|det d f^{-1}/dx|`.

  Returns:
    `[...]` log-probabilities.
  """
  z, log_det = bijector.inverse_and_log_det(params, x, context)
  base = -0.5 * jnp.sum(z**2, -1) - 0.5 * z.shape[-1] * jnp.log(2.0 * jnp.pi)
  return base + log_det
