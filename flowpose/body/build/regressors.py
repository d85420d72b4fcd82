"""Numerical pieces of the body-model build: PCA of a linear family of meshes, sparse affine
vertex regressors, top-k skinning weights."""

from typing import Tuple

import numpy as np


def pca_of_linear_family(weights: np.ndarray, directions: np.ndarray,
                         num_components: int) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
  """PCA of meshes `x_n = base + weights[n] @ directions`, without forming the [N, D] data.

  The sample meshes span at most T dimensions (T = number of targets), so the PCA is done in the
  T-dimensional coordinates of an orthonormal basis of the span of `directions`, which is exact
  and avoids an [N, D] matrix (N ~ 2000 samples, D ~ 40k coordinates).

  Args:
    weights: [N, T] target weights of the N samples.
    directions: [T, D] target offsets, flattened.
    num_components: S, number of components kept.

  Returns:
    mean_offset: [D], mean of `weights @ directions` (add `base` for the mean mesh).
    components: [S, D], principal directions scaled to one standard deviation, by decreasing
      variance; the sign of each is fixed so its largest-magnitude coordinate is positive
      (deterministic output).
    explained: [S], fraction of the total variance along each component.
  """
  mean_w = weights.mean(axis=0)
  # directions = u diag(sqrt(lam)) b^T with b = directions^T u / sqrt(lam) orthonormal [D, T'];
  # the eigendecomposition of the small Gram matrix is cheaper than a QR of [D, T].
  lam, u = np.linalg.eigh(directions @ directions.T)
  keep = lam > lam.max() * 1e-12  # Empty or dependent targets span nothing.
  lam, u = lam[keep], u[:, keep]
  coords = (weights - mean_w) @ (u * np.sqrt(lam))  # Sample offsets in the b basis: [N, T'].
  _, sing, vt = np.linalg.svd(coords, full_matrices=False)
  n = weights.shape[0]
  std = sing / np.sqrt(n - 1)
  # Component i = vt[i] @ b^T = (vt[i] / sqrt(lam)) @ u^T @ directions.
  components = ((vt[:num_components] / np.sqrt(lam)) @ u.T) @ directions
  components *= std[:num_components, None]
  for i, comp in enumerate(components):
    if comp[np.argmax(np.abs(comp))] < 0:
      components[i] = -comp
  explained = sing[:num_components] ** 2 / np.sum(sing ** 2)
  return mean_w @ directions, components, explained


def shell_candidates(vertices: np.ndarray, centre: np.ndarray, num_directions: int = 200,
                     cos_cone: float = 0.95, max_ratio: float = 5.0) -> np.ndarray:
  """Body vertices surrounding an interior point, one per direction.

  The nearest vertices to a joint inside a limb or the trunk lie on one side of it; for the
  joint to follow the whole cross-section when the body changes shape we take, for each of
  `num_directions` (Fibonacci sphere) directions, the nearest vertex within a cone around it,
  and drop hits farther than `max_ratio` times the nearest one (open directions).

  Args:
    vertices: [V, 3] mesh vertices.
    centre: [3] the interior point.

  Returns:
    Sorted unique vertex indices.
  """
  i = np.arange(num_directions) + 0.5
  polar = np.arccos(1 - 2 * i / num_directions)
  azimuth = np.pi * (1 + 5 ** 0.5) * i
  dirs = np.stack([np.cos(azimuth) * np.sin(polar), np.sin(azimuth) * np.sin(polar),
                   np.cos(polar)], axis=1)
  rel = vertices - centre
  dist = np.maximum(np.linalg.norm(rel, axis=1), 1e-12)
  # Only vertices within max_ratio of the nearest can survive the final cut: skip the rest.
  near = np.nonzero(dist <= max_ratio * dist.min())[0]
  in_cone = (rel[near] / dist[near, None]) @ dirs.T > cos_cone  # [V', num_directions]
  masked = np.where(in_cone, dist[near, None], np.inf)
  hits = near[np.unique(np.argmin(masked, axis=0)[np.isfinite(masked.min(axis=0))])]
  return hits[dist[hits] <= max_ratio * dist[hits].min()]


def fit_affine_regressor(candidates: np.ndarray, targets: np.ndarray,
                         anchor: Tuple[np.ndarray, np.ndarray],
                         ridge: float = 1e-2) -> np.ndarray:
  """Affine weights (summing to 1) of candidate vertices that best reproduce a point.

  With `sum(w) = 1`, `candidates[n].T @ w - targets[n] = rel[n].T @ w` where
  `rel = candidates - targets[:, None]`, so we solve
  `min_w sum_n |rel[n].T @ w|^2 + lam * |w - 1/k|^2` with `lam = ridge * trace(rel^T rel) / k`,
  subject to `sum(w) = 1` and reproducing the anchor exactly (`anchor_candidates.T @ w =
  anchor_target`, the mean shape). The ridge towards uniform weights keeps the weights moderate
  (sum |w| ~ 2-5 at the default strength): near-collinear vertex motions otherwise buy small
  residuals with weights of +-30 that would amplify any non-rigid motion of the vertices, and
  part of the residual is not fitting error at all: some MakeHuman targets move a joint cube
  differently from the skin around it (e.g. the knee cube moves 0.56 dm under a full
  `minheight` target while the knee's skin moves 1.26 dm), and there the joint should follow
  the skin.

  Args:
    candidates: [N, k, 3] candidate vertex positions over N shape samples.
    targets: [N, 3] the point to reproduce in each sample.
    anchor: ([k, 3] candidate positions, [3] point) reproduced exactly.
    ridge: relative ridge strength.

  Returns:
    [k] weights summing to 1.
  """
  n, k, _ = candidates.shape
  # Rows: one per (sample, axis); columns: candidate vertices.
  rel = (candidates - targets[:, None, :]).transpose(0, 2, 1).reshape(n * 3, k)
  ata = rel.T @ rel
  lam = ridge * np.trace(ata) / k
  cons = np.vstack([np.ones((1, k)), (anchor[0] - anchor[1]).T])  # [4, k] @ w = [1, 0, 0, 0].
  # KKT system of the equality-constrained least squares.
  kkt = np.zeros((k + 4, k + 4))
  kkt[:k, :k] = ata + lam * np.eye(k)
  kkt[:k, k:] = cons.T
  kkt[k:, :k] = cons
  rhs = np.concatenate([np.full(k, lam / k), [1.0, 0.0, 0.0, 0.0]])
  w = np.linalg.lstsq(kkt, rhs, rcond=None)[0][:k]
  return w / w.sum()


def top_k_weights(dense: np.ndarray, k: int) -> Tuple[np.ndarray, np.ndarray]:
  """The k largest weights per row, renormalised to sum to 1.

  Args:
    dense: [V, J] non-negative weights; every row must have a positive sum.
    k: weights kept per vertex.

  Returns:
    indices [V, k] int (by decreasing weight, ties by lower joint index), weights [V, k].
  """
  # Stable sort on -w gives a deterministic order on ties.
  order = np.argsort(-dense, axis=1, kind="stable")[:, :k]
  w = np.take_along_axis(dense, order, axis=1)
  w = w / w.sum(axis=1, keepdims=True)
  # Unused slots (fewer than k influences) point at the dominant joint with weight 0.
  order = np.where(w > 0, order, order[:, :1])
  return order, w


def point_segment_distance(points: np.ndarray, heads: np.ndarray,
                           tails: np.ndarray) -> np.ndarray:
  """Distances [P, J] from points [P, 3] to the segments heads[j] -> tails[j] ([J, 3] each)."""
  seg = tails - heads  # [J, 3]
  rel = points[:, None, :] - heads[None]  # [P, J, 3]
  denom = np.maximum(np.sum(seg * seg, axis=-1), 1e-12)
  t = np.clip(np.sum(rel * seg[None], axis=-1) / denom, 0.0, 1.0)
  closest = heads[None] + t[..., None] * seg[None]
  return np.linalg.norm(points[:, None, :] - closest, axis=-1)
