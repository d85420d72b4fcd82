"""`benchmarks.matmul_ceiling.flow_matmul_bound`: the flow's matmuls, all of them, nothing else."""

import ml_collections
import numpy as np


def test_flow_matmul_bound_has_the_flows_matmuls():
  """The bound's FLOPs (XLA's count) = every coupling MLP product and LU mixing of the flow:
  forward `2 B (sum of m n) L + 2 D^3 L` (the LU matrix formed once), and the train step about
  3x the forward products (backward: two per product). A bound that dropped a layer or a
  backward product would be a bound of a smaller flow."""
  from benchmarks import matmul_ceiling  # pylint: disable=g-import-not-at-top
  flow = ml_collections.ConfigDict({"event_dim": 7, "num_layers": 3, "hidden_sizes": (16, 12)})
  shapes = matmul_ceiling._flow_matmul_shapes(flow)  # pylint: disable=protected-access
  assert shapes == [(3, 16), (16, 12), (12, 8), (7, 7)]
  (train, log_prob), flops = matmul_ceiling.flow_matmul_bound(flow, train_batch=32,
                                                              eval_batch=64)
  per_row = sum(m * n for m, n in shapes)
  forward = 2 * 64 * per_row * 3 + 2 * 7**3 * 3
  np.testing.assert_allclose(flops["log_prob"], forward, rtol=0.05)
  train_products = 3 * 2 * 32 * per_row * 3
  assert train_products <= flops["train"] <= 1.3 * train_products + 4 * 7**3 * 3 * 3
  train()
  log_prob()
