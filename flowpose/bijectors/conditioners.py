"""Coupling conditioners: any `(params, x_pass, context) -> raw params` with its own init.

A coupling layer (`coupling.py`) computes the parameters of its element-wise
transform from the passed-through dimensions (and an optional context) with a
*conditioner*. A conditioner is described by a factory, called once per
coupling with the sizes that coupling needs:

  make(in_dim: int, context_dim: int, out_dim: int) -> Conditioner(init, apply)
  init(key) -> params                                   # any pytree
  apply(params, x_pass [..., in_dim], context [..., context_dim] | None)
      -> raw [..., out_dim]

e.g. a linear conditioner:

  def linear(in_dim, context_dim, out_dim):
    def init(key):
      return {"w": jnp.zeros((in_dim, out_dim)), "b": jnp.zeros((out_dim,))}
    def apply(params, x_pass, context=None):
      return x_pass @ params["w"] + params["b"]
    return Conditioner(init, apply)

  bijectors.affine_coupling(mask, conditioner=linear)

To make a freshly initialised flow the identity, `apply` must return zeros at
`init` (every coupling transform is the identity at zero raw parameters).
A conditioner may also give `apply_sections` (the same output cut into per-dimension
sections, one product each; `Conditioner`); the spline coupling uses it when present.
The default, `mlp_conditioner`, is a Flax `linen` MLP whose last layer is
zero-initialised (distrax `examples/flow.py`); its params are the module's
`params` collection, a plain pytree that `stack` scans and optax trains.
"""

from typing import Any, Callable, NamedTuple, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

Array = jax.Array
Params = Any
Activation = Callable[[Array], Array]


class Conditioner(NamedTuple):
  """A coupling's conditioner as a pair of pure functions.

  Attributes:
    init: `(key) -> params`.
    apply: `(params, x_pass [..., in_dim], context [..., C] or None)
      -> [..., out_dim]`; `context` is None for a coupling built without one.
  """
  init: Callable[[Array], Params]
  apply: Callable[[Params, Array, Optional[Array]], Array]
  # Optional `(params, x_pass, context, num_trans, sections) -> tuple` of `[..., num_trans, s]`
  # per `s` in `sections`: `apply`'s output `[..., num_trans * sum(sections)]`, viewed as
  # `[..., num_trans, sum(sections)]` and cut along the last axis, computed as one product per
  # section. A coupling whose transform takes its parameters apart (a spline's widths, heights,
  # derivatives) then never assembles the gradient of the whole output from slices.
  apply_sections: Optional[Callable[..., tuple]] = None


# (in_dim, context_dim, out_dim) -> Conditioner.
ConditionerFactory = Callable[[int, int, int], Conditioner]


class Dense(nn.Module):
  """`h @ w + b`, `h: [..., in] -> [..., features]`.

  `flax.linen.Dense` with the params named `w`, `b` (flowpose's layout before
  the conditioner became a Flax module), so priors trained and exported
  earlier still load.
  """
  features: int
  kernel_init: Callable[..., Array] = nn.initializers.lecun_normal()

  @nn.compact
  def __call__(self, h: Array) -> Array:
    w = self.param("w", self.kernel_init, (h.shape[-1], self.features),
                   jnp.float32)
    b = self.param("b", nn.initializers.zeros, (self.features,), jnp.float32)
    return h @ w + b


class MLP(nn.Module):
  """`[..., in] -> hidden_sizes -> [..., out_dim]`, last layer zero-initialised.

  Hidden kernels are drawn from N(0, 1 / fan_in) (LeCun normal, untruncated),
  biases start at zero.
  """
  hidden_sizes: Sequence[int]
  out_dim: int
  activation: Activation = jax.nn.gelu

  @nn.compact
  def __call__(self, h: Array) -> Array:
    hidden_init = nn.initializers.variance_scaling(1.0, "fan_in", "normal")
    for i, width in enumerate(self.hidden_sizes):
      h = self.activation(Dense(width, hidden_init, name=f"dense_{i}")(h))
    return Dense(self.out_dim, nn.initializers.zeros, name="dense_out")(h)


def mlp_conditioner(hidden_sizes: Sequence[int] = (256, 256),
                    activation: Activation = jax.nn.gelu) -> ConditionerFactory:
  """The default conditioner: an `MLP` on `concat(x_pass, context)`.

  Args:
    hidden_sizes: hidden widths.
    activation: nonlinearity (smooth by default, so that a prior's gradient
      with respect to the pose is smooth during fitting).

  Returns:
    A factory; its params are
    `{"dense_0": {"w": [in, h0], "b": [h0]}, ..., "dense_out": {...}}`.
  """
  hidden_sizes = tuple(int(h) for h in hidden_sizes)

  def make(in_dim: int, context_dim: int, out_dim: int) -> Conditioner:
    module = MLP(hidden_sizes, out_dim, activation)

    def init(key):
      dummy = jnp.zeros((1, in_dim + context_dim), jnp.float32)
      return module.init(key, dummy)["params"]

    def apply(params, x_pass, context=None):
      h = x_pass if context is None else jnp.concatenate([x_pass, context], -1)
      return module.apply({"params": params}, h)

    def apply_sections(params, x_pass, context, num_trans, sections):
      # The MLP's own arithmetic (`Dense`: h @ w + b), with the last layer's columns cut.
      h = x_pass if context is None else jnp.concatenate([x_pass, context], -1)
      for i in range(len(hidden_sizes)):
        h = activation(h @ params[f"dense_{i}"]["w"] + params[f"dense_{i}"]["b"])
      w, b = params["dense_out"]["w"], params["dense_out"]["b"]
      per_dim = sum(sections)
      w = w.reshape(w.shape[0], num_trans, per_dim)
      b = b.reshape(num_trans, per_dim)
      out, start = [], 0
      for size in sections:
        cols = slice(start, start + size)
        ws = w[:, :, cols].reshape(w.shape[0], num_trans * size)
        o = h @ ws + b[:, cols].reshape(-1)
        out.append(o.reshape(o.shape[:-1] + (num_trans, size)))
        start += size
      return tuple(out)

    return Conditioner(init, apply, apply_sections)

  return make
