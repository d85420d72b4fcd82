"""The spline's fast formulation and the coupling's sectioned conditioner vs their references.

`bijectors.spline` selects a bin by a one-hot sum and forms the knots by a product (for XLA:CPU
speed, WORKSPACE.md issue 15); the spline coupling with `split="slices"` takes widths, heights
and derivatives from the MLP as three products (`Conditioner.apply_sections`). Values are
checked against distrax in tests/test_bijectors.py; these check the gradients.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flowpose import bijectors as fb

RANGE = 3.0  # Spline interval [-RANGE, RANGE].


@pytest.mark.slow  # ~10 s of CPU (distrax + four gradient programs): benchmarks/slow_tests.sh.
def test_spline_gradients_match_distrax():
  # The one-hot bin selection, the cumsum as a product and the stopped softmax shift
  # (spline.py) change how the gradient is formed, not its value: d(y, log_det)/d(x, params)
  # of both directions equal distrax's (float64, inside the range and in the tails).
  from flowpose.bijectors import distrax_adapter  # pylint: disable=g-import-not-at-top
  k, n = 5, 64
  kw = dict(range_min=-RANGE, range_max=RANGE)

  def ours(p, v):
    return (fb.rational_quadratic_forward(v, p, num_bins=k, **kw),
            fb.rational_quadratic_inverse(v, p, num_bins=k, **kw))

  def theirs(p, v):
    spline = distrax_adapter.rational_quadratic_spline(p, **kw)
    return spline.forward_and_log_det(v), spline.inverse_and_log_det(v)

  def scalar(fn):  # Weights make every output and log-det matter.
    return lambda p, v: sum(jnp.sum(y * jnp.cos(v)) + jnp.sum(ld * jnp.sin(v))
                            for y, ld in fn(p, v))

  with jax.enable_x64(True):
    params = 0.7 * jax.random.normal(jax.random.key(3), (n, 3 * k - 1), jnp.float64)
    x = jnp.linspace(-1.3 * RANGE, 1.3 * RANGE, n, dtype=jnp.float64)
    # Jitted: distrax op by op is slow.
    g_ours, g_theirs = (jax.jit(jax.grad(scalar(fn), (0, 1)))(params, x) for fn in (ours, theirs))
    for a, b in zip(g_ours, g_theirs):
      assert np.abs(np.asarray(b)).max() > 1e-3  # Not trivially zero.
      np.testing.assert_allclose(a, b, rtol=1e-7, atol=1e-9)


def test_spline_coupling_sections_equal_the_sliced_output():
  # split="slices" takes widths, heights and derivatives from the MLP as three products
  # (`Conditioner.apply_sections`); "gather" slices the one output. Same params, same map,
  # same gradients w.r.t. input and params (a wrong column cut would differ).
  mask = fb.alternating_mask(7, 1)
  kw = dict(num_bins=4, range_min=-RANGE, range_max=RANGE, hidden_sizes=(8,))
  sliced, gathered = fb.spline_coupling(mask, split="slices", **kw), fb.spline_coupling(
      mask, split="gather", **kw)
  params = sliced.init(jax.random.key(0))
  # A non-zero last layer, so the spline is not the identity.
  params = jax.tree.map(lambda p: p + 0.3 * jax.random.normal(jax.random.key(p.size), p.shape),
                        params)
  x = 1.5 * jax.random.normal(jax.random.key(1), (5, 7))

  def run(b):
    def loss(p, v):  # The forward map (the fitter's direction); log_prob runs the same code.
      y, log_det = b.forward_and_log_det(p, v)
      return jnp.sum(jnp.sin(y)) + jnp.sum(log_det), y
    return jax.jit(jax.grad(loss, (0, 1), has_aux=True))(params, x)

  (g_sliced, y), (g_gathered, y_gathered) = run(sliced), run(gathered)
  np.testing.assert_allclose(y, y_gathered, atol=1e-6)
  assert np.abs(y - x).max() > 1e-2
  for a, b in zip(jax.tree.leaves(g_sliced), jax.tree.leaves(g_gathered)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
