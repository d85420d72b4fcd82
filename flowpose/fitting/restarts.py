"""Restart bookkeeping of the per-person fitter (`flowpose.fitting.fit`).

Every person is fitted from R restarts, stacked restart-major: row `r * B + b` is restart `r` of
person `b`. `config.restart_pruning`, `((step, keep), ...)`, drops restarts early inside the
stage `config.select_restart_after`: after that stage's `step`-th step only each person's `keep`
lowest-loss restarts go on (their Adam state and schedule continue), so the stage's later steps
run on `keep * B` rows instead of `R * B`. The stage's end keeps the best one, as without
pruning. Validation (`sequence_init.per_frame_config`, WORKSPACE.md) measured how often the
early ranking keeps the restart that would have won. `config.restart_mean_temperature` T > 0
replaces the best's pose latent and betas by the restarts' mean, weighted by exp(-evidence loss
/ T) (`restart_mean`).
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np


class Alive(NamedTuple):
  """The restarts still running.

  Attributes:
    restart: [R', B] int, the original restart index of each row (row `r' * B + b`).
    losses: [B, R] each original restart's loss when it was dropped or chosen (inf until then).
  """
  restart: np.ndarray
  losses: np.ndarray


def start(num_restarts: int, num: int) -> Alive:
  return Alive(np.repeat(np.arange(num_restarts)[:, None], num, 1),
               np.full((num, num_restarts), np.inf, np.float32))


def keep_best(alive: Alive, final, keep: int) -> tuple:
  """Each person's `keep` lowest-loss rows (`final [R' * B]`; NaN never wins).

  Returns `(index [keep * B] rows to take, restart-major, best first; the new Alive)`; the
  dropped restarts' losses are recorded.
  """
  count, num = alive.restart.shape
  per = np.asarray(final, np.float32).reshape(count, num)
  per = np.where(np.isfinite(per), per, np.inf)
  order = np.argsort(per, axis=0, kind="stable")[:keep]  # [keep, B]
  losses = alive.losses.copy()
  cols = np.arange(num)
  losses[cols[None], alive.restart] = per
  return (order * num + cols).reshape(-1), Alive(alive.restart[order, cols], losses)


def take_rows(tree, index: np.ndarray, rows: int):
  """Every leaf with a leading `rows` axis indexed by `index` (an optimiser state's step
  counts and other scalars are kept)."""
  return jax.tree.map(lambda x: x[index] if np.ndim(x) and x.shape[0] == rows else x, tree)


def segments(steps: int, cuts) -> list:
  """`[(start, stop, keep or None)]` covering `0 .. steps`: a segment ends at each cut
  `(step, keep)` below `steps`, then keeps `keep` restarts; the last one keeps all."""
  out, begin = [], 0
  for step, keep in cuts:
    if step < steps:
      out.append((begin, int(step), int(keep)))
      begin = int(step)
  return out + [(begin, steps, None)]


# The evidence terms: what every restart of a person shares (the regularisers differ by restart:
# `pose_anchor` pulls each towards its own start).
EVIDENCE_TERMS = ("keypoints", "parts", "silhouette")


def mean_weights(terms: dict, weights: dict, num: int, temperature: float) -> np.ndarray:
  """`[R, B]` weights of each person's restarts, `exp(-(E_r - min E) / temperature)` normalised,
  where `E_r` is restart r's weighted evidence loss (`EVIDENCE_TERMS`; rows restart-major,
  `terms[name]: [R * B]`); a non-finite E gets weight 0 (every E non-finite: uniform)."""
  energy = sum(float(weights[t]) * np.asarray(terms[t], np.float64) for t in EVIDENCE_TERMS)
  energy = energy.reshape(-1, num)
  energy = np.where(np.isfinite(energy), energy, np.inf)
  best = np.min(energy, axis=0, keepdims=True)
  out = np.exp(-(energy - np.where(np.isfinite(best), best, 0.0)) / temperature)
  out = np.where(np.isfinite(best), out, 1.0)
  return (out / np.sum(out, axis=0, keepdims=True)).astype(np.float32)


def mean_articulation(variables: dict, best_rows: np.ndarray, restart_weights: np.ndarray,
                      names=("pose", "betas")) -> dict:
  """Each person's `names` (pose latent, shape) averaged over its restarts with
  `restart_weights [R, B]` (`mean_weights`), the rest (orientation, translation, focal) of its
  `best_rows [B]` row: the articulated body's posterior mean over the modes the restarts found
  (the estimate of least expected squared error; the best mode alone is the MAP), placed as the
  best mode. `variables`: `{name: [R * B, ...]}` restart-major. Returns `{name: [B, ...]}`."""
  count, num = restart_weights.shape
  out = {}
  for name, value in variables.items():
    if name in names:
      w = jnp.reshape(jnp.asarray(restart_weights), (count, num) + (1,) * (value.ndim - 1))
      out[name] = jnp.sum(w * jnp.reshape(value, (count, num) + value.shape[1:]), axis=0)
    else:
      out[name] = value[best_rows]
  return out


def restart_mean(variables: dict, terms: dict, weights: dict, best_rows: np.ndarray, num: int,
                 temperature: float):
  """`mean_articulation` of `num` persons' restarts at `temperature` (`mean_weights`); None at
  temperature 0 (the best restart is kept)."""
  if temperature <= 0:
    return None
  return mean_articulation(variables, best_rows, mean_weights(terms, weights, num, temperature))
