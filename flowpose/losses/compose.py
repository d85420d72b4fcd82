"""Composing loss terms with one weights dict (`config.loss_weights`)."""

from __future__ import annotations

from collections.abc import Mapping

import jax


def weighted_sum(
    terms: Mapping[str, jax.Array], weights: Mapping[str, float | jax.Array]
) -> tuple[jax.Array, Mapping[str, jax.Array]]:
  """Composes loss terms with one weights dict (`config.loss_weights`).

  Args:
    terms: name -> unweighted value (scalars, or arrays that broadcast).
    weights: name -> weight (a dict or ConfigDict); must name exactly the
      terms (use 0.0 to switch a term off), so a typo in a config cannot
      silently drop a term.

  Returns:
    (sum_k weights[k] * terms[k], terms unchanged for logging).

  Raises:
    KeyError: if a term has no weight or a weight names no term.
  """
  missing = sorted(set(terms) - set(weights))
  unknown = sorted(set(weights) - set(terms))
  if missing:
    raise KeyError(f"loss weights: no weight for terms {missing}")
  if unknown:
    raise KeyError(f"loss weights: weights {unknown} name no loss term; "
                   f"terms are {sorted(terms)}")
  total = sum(weights[name] * terms[name] for name in sorted(terms))
  return total, terms
