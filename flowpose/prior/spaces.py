"""The pose-prior types every registry entry returns (`flowpose.prior.registry` re-exports
them): `PoseSpace` (the fitter's pose variable), `PosePrior`, `EvalContext`, the one error type,
and the decode/penalty pieces entries share. Imports no entry, so entries may live in their own
modules (`flowpose.prior.vae_entry`) without an import cycle."""

from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from flowpose.prior import baseline_cache
from flowpose.prior import charts


class PriorRegistryError(ValueError):
  """Unknown prior name, or a prior that cannot be built/loaded (the message says why)."""


class PoseSpace(NamedTuple):
  """Static description of the pose variable (hashable: a jit key).

  Attributes:
    kind: the registry name.
    dim: D, the pose variable's size.
    decode: `(params, var [D]) -> dofs [50]`.
    penalty: `(params, var [D]) -> scalar`.
    density: `(params, dofs [N, 50]) -> [N]` log-density in nats (jnp), or None (no density).
  """
  kind: str
  dim: int
  decode: Callable[[Any, jax.Array], jax.Array]
  penalty: Callable[[Any, jax.Array], jax.Array]
  density: Optional[Callable[[Any, jax.Array], jax.Array]] = None


class PosePrior(NamedTuple):
  """A `PoseSpace`, its params pytree, the initial pose variable `init [D]` and `log_prob_np`:
  numpy `dofs [N, 50]` -> float64 `[N]` (closes over the float64 fit; `params` are float32)."""
  space: PoseSpace
  params: Any
  init: jax.Array
  log_prob_np: Optional[Callable[[np.ndarray], np.ndarray]] = None

  @property
  def name(self) -> str:
    return self.space.kind

  def log_prob(self, dofs):
    """`[N]` log-density (nats) of `dofs [N, 50]`: numpy in, float64 numpy out; jax in, jnp out."""
    if self.space.density is None:
      raise PriorRegistryError(f"prior {self.space.kind!r} has no density (flat prior)")
    if not isinstance(dofs, jax.Array) and self.log_prob_np is not None:
      return self.log_prob_np(np.asarray(dofs, np.float32))
    return self.space.density(self.params, jnp.asarray(dofs, jnp.float32))


class EvalContext(NamedTuple):
  """What the prior evaluation holds in memory: the trained prior `workdir` (for an entry that
  reads its own files), its `flow` (`FlowPrior`; `flow.chart` is the table's chart) and
  `flow_params`, and the `baselines` (`FittedBaselines`) fitted in the flow's chart."""
  workdir: str
  flow: Any
  flow_params: Any
  baselines: baseline_cache.FittedBaselines


def identity(params, var):
  del params
  return var


def zero_penalty(params, var):
  del params
  return jnp.zeros((), var.dtype)


def latent_norm(params, var):
  del params
  return jnp.sum(jnp.square(var))


def f32_tree(tree):
  return jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), tree)

def in_dofs(chart: str, decode):
  """`decode` followed by the chart -> 50 DOFs map (the identity for Euler DOFs)."""
  if chart == "euler_dofs":
    return decode
  return lambda params, var: charts.to_dofs(chart, decode(params, var))
