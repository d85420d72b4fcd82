"""Prior terms: flow latent norm, shape coefficients, -log p; any leading batch dims."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def latent_prior(z: jax.Array) -> jax.Array:
  """||z||^2 of a flow latent (a standard-normal -log p up to constants).

  Args:
    z: [..., D] latent.

  Returns:
    [...] per-example values.
  """
  return jnp.sum(jnp.square(z), axis=-1)


def shape_prior(betas: jax.Array) -> jax.Array:
  """||beta||^2 (shape coefficients are ~N(0, I) in the PCA shape space).

  Args:
    betas: [..., S] shape coefficients.

  Returns:
    [...] per-example values.
  """
  return jnp.sum(jnp.square(betas), axis=-1)


def neg_log_prob_prior(log_prob: jax.Array) -> jax.Array:
  """-log p(pose) from a prior's log_prob (nats).

  Args:
    log_prob: [...] log-densities, e.g. `prior.log_prob(params, pose)`.

  Returns:
    [...] per-example values.
  """
  return -log_prob
