"""Tests for flowpose.bijectors: invertibility, log-dets vs. autodiff Jacobians.

Compilation dominates the runtime on CPU, so every case compiles a single
`_check` function (forward, inverse, Jacobian log-det) once and the tests share
its cached results.
"""

import functools
import subprocess
import sys
import textwrap

from absl.testing import parameterized
import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flowpose import bijectors as fb

D = 5
C = 3
N = 16
MASK = fb.alternating_mask(D)  # True = passed through.
RANGE = 3.0  # Spline interval [-RANGE, RANGE] in the tests.


pytestmark = pytest.mark.usefixtures("fast_compile")  # conftest: XLA optimisations off


def _affine(mask=MASK, context_dim=0, conditioner=None):
  return fb.affine_coupling(mask, hidden_sizes=(8,), context_dim=context_dim,
                            conditioner=conditioner)


def _spline(mask=MASK, context_dim=0, conditioner=None):
  return fb.spline_coupling(mask, num_bins=4, range_min=-RANGE,
                            range_max=RANGE, hidden_sizes=(8,),
                            context_dim=context_dim, conditioner=conditioner)


def _linear_conditioner(in_dim, context_dim, out_dim):
  """A custom conditioner: one affine map of `concat(x_pass, context)`."""
  def init(key):
    del key
    return {"w": jnp.zeros((in_dim + context_dim, out_dim)),
            "b": jnp.zeros((out_dim,))}

  def apply(params, x_pass, context=None):
    h = x_pass if context is None else jnp.concatenate([x_pass, context], -1)
    return h @ params["w"] + params["b"]

  return fb.Conditioner(init, apply)


def _linear_couplings():
  return fb.chain([_affine(MASK, C, _linear_conditioner),
                   _spline(~MASK, C, _linear_conditioner)])


def _full_chain():
  return fb.chain([
      fb.actnorm(D),
      _affine(MASK, context_dim=C),
      fb.lu_linear(D, perm=[1, 3, 0, 4, 2]),
      fb.reverse(D),
      _spline(~MASK),
      fb.permutation([2, 0, 4, 1, 3]),
      _affine(~MASK),
      _spline(MASK, context_dim=C),
  ])


def _stack_block():
  return fb.chain([_affine(MASK, C), fb.lu_linear(D), fb.actnorm(D)])


# name -> (bijector factory, identity at init?, params perturbation scale).
# Deep compositions get smaller perturbations: random layers compound into
# maps so contracting that float32 round trips lose digits.
CASES = {
    # Both coupling types without context, in one compiled case.
    "couplings": (lambda: fb.chain([_affine(MASK), _spline(~MASK)]), True,
                  0.3),
    "affine_context": (lambda: _affine(~MASK, context_dim=C), True, 0.3),
    "spline_context": (lambda: _spline(~MASK, context_dim=C), True, 0.3),
    "permutation": (lambda: fb.permutation([2, 0, 4, 1, 3]), False, 0.3),
    "reverse": (lambda: fb.reverse(D), False, 0.3),
    "lu_linear": (lambda: fb.lu_linear(D), True, 0.3),
    "actnorm": (lambda: fb.actnorm(D), True, 0.3),
    "chain": (_full_chain, False, 0.1),
    "stack": (lambda: fb.stack(_stack_block(), 3), True, 0.1),
    # A custom (linear) conditioner in both coupling types, with context.
    "linear_conditioner": (_linear_couplings, True, 0.3),
}
CONTEXT_CASES = ("affine_context", "spline_context", "chain",
                 "linear_conditioner")


def _perturb(params, key, scale=0.3):
  """Random non-zero params, so the checks are not trivially the identity."""
  leaves, treedef = jax.tree.flatten(params)
  keys = jax.random.split(key, max(len(leaves), 1))
  leaves = [p + scale * jax.random.normal(k, p.shape, p.dtype)
            for p, k in zip(leaves, keys)]
  return jax.tree.unflatten(treedef, leaves)


def _inputs():
  x = 1.5 * jax.random.normal(jax.random.key(1), (N, D))
  # Some entries in the spline tails (outside [-RANGE, RANGE]).
  x = x.at[0].set(jnp.array([4.0, -5.0, 6.0, -3.5, 7.0]))
  x = x.at[1, 0].set(-RANGE).at[1, 2].set(RANGE)
  context = jax.random.normal(jax.random.key(2), (N, C))
  return x, context


def _check(bijector, params, x, context):
  """Everything the tests compare, in one compiled function."""
  y, ld_fwd = bijector.forward_and_log_det(params, x, context)
  x_rec, ld_inv = bijector.inverse_and_log_det(params, y, context)
  jac = jax.vmap(jax.jacfwd(lambda xi, ci: bijector.forward(params, xi, ci)))(
      x, context)
  return dict(y=y, ld_fwd=ld_fwd, x_rec=x_rec, ld_inv=ld_inv,
              jac_log_det=jnp.linalg.slogdet(jac)[1])


@functools.cache
def _case(name):
  factory, identity_at_init, scale = CASES[name]
  bijector = factory()
  params0 = bijector.init(jax.random.key(0), D)
  params = _perturb(params0, jax.random.key(3), scale)
  check = jax.jit(functools.partial(_check, bijector))
  x, context = _inputs()
  return dict(bijector=bijector, params0=params0, params=params, check=check,
              identity_at_init=identity_at_init, x=x, context=context,
              out=check(params, x, context))


@pytest.mark.parametrize("name", list(CASES))
def test_round_trip_and_log_dets(name):
  case = _case(name)
  out = jax.tree.map(np.asarray, case["out"])
  # Non-trivial: the perturbed bijector moves the points.
  if name != "actnorm":
    assert np.abs(out["y"] - case["x"]).max() > 1e-2
  np.testing.assert_allclose(out["x_rec"], case["x"], atol=2e-4)
  np.testing.assert_allclose(out["ld_fwd"], -out["ld_inv"], atol=2e-4)
  np.testing.assert_allclose(out["ld_fwd"], out["jac_log_det"], atol=1e-3)
  assert out["ld_fwd"].shape == (N,)


@pytest.mark.parametrize("name", list(CASES))
def test_identity_at_init(name):
  case = _case(name)
  if not case["identity_at_init"]:
    pytest.skip("a fixed permutation is not the identity")
  out = case["check"](case["params0"], case["x"], case["context"])
  np.testing.assert_allclose(out["y"], case["x"], atol=1e-6)
  np.testing.assert_allclose(out["ld_fwd"], 0.0, atol=1e-6)


@pytest.mark.parametrize("name", CONTEXT_CASES)
def test_context_changes_output(name):
  case = _case(name)
  out2 = case["check"](case["params"], case["x"], case["context"] + 1.0)
  assert np.abs(np.asarray(out2["y"] - case["out"]["y"])).max() > 1e-3
  np.testing.assert_allclose(out2["x_rec"], case["x"], atol=2e-4)


def test_coupling_requires_context_when_built_with_it():
  case = _case("affine_context")
  with pytest.raises(ValueError, match="context"):
    case["bijector"].forward(case["params"], case["x"])


def test_context_broadcasts_over_batch():
  case = _case("affine_context")
  b, p, x = case["bijector"], case["params"], case["x"]
  y_shared, _ = jax.jit(b.forward_and_log_det)(p, x, case["context"][0])
  y_tiled, _ = jax.jit(b.forward_and_log_det)(
      p, x, jnp.broadcast_to(case["context"][0], (N, C)))
  np.testing.assert_allclose(y_shared, y_tiled, atol=1e-6)


def test_coupling_masked_dims_pass_through():
  for name in ("affine_context", "spline_context"):  # Both pass ~MASK.
    mask = ~MASK
    case = _case(name)
    np.testing.assert_array_equal(case["out"]["y"][:, mask], case["x"][:, mask])


def test_spline_tails_are_identity():
  case = _case("spline_context")  # Passes ~MASK, transforms dims 0, 2, 4.
  x, y = np.asarray(case["x"]), np.asarray(case["out"]["y"])
  transformed = MASK
  tails = (np.abs(x) > RANGE) & transformed
  assert tails.sum() >= 3
  np.testing.assert_array_equal(y[tails], x[tails])
  inside = (np.abs(x) < RANGE) & transformed
  assert np.abs(y[inside] - x[inside]).max() > 1e-2


def test_spline_gradients_finite_in_tails_and_at_bounds():
  bijector = _spline()
  params = _perturb(bijector.init(jax.random.key(0)), jax.random.key(3))
  x = jnp.array([[0.0, 10.0, 0.0, -10.0, 0.0],
                 [0.0, RANGE, 0.0, -RANGE, 0.0],
                 [0.0, 0.5, 0.0, -0.5, 0.0]])
  loss = lambda p, x: jnp.sum(fb.standard_normal_log_prob(bijector, p, x))
  grads = jax.jit(jax.grad(loss, argnums=(0, 1)))(params, x)
  for g in jax.tree.leaves(grads):
    assert np.all(np.isfinite(g))


def test_spline_math_monotone_and_matches_derivative():
  k = 6
  params = 0.8 * jax.random.normal(jax.random.key(4), (3 * k - 1,))
  kw = dict(num_bins=k, range_min=-2.0, range_max=2.0)
  xs = jnp.linspace(-3.0, 3.0, 601)

  @jax.jit
  def run(xs):
    y, ld = fb.rational_quadratic_forward(xs, params, **kw)
    x_rec, ld_inv = fb.rational_quadratic_inverse(y, params, **kw)
    dy = jax.vmap(jax.grad(
        lambda x: fb.rational_quadratic_forward(x, params, **kw)[0]))(xs)
    return y, ld, x_rec, ld_inv, dy

  y, ld, x_rec, ld_inv, dy = map(np.asarray, run(xs))
  xs = np.asarray(xs)
  assert np.all(np.diff(y) > 0)
  np.testing.assert_allclose(x_rec, xs, atol=1e-5)
  np.testing.assert_allclose(ld, -ld_inv, atol=1e-4)
  np.testing.assert_allclose(ld, np.log(dy), atol=1e-4)
  np.testing.assert_allclose(y[[0, -1]], xs[[0, -1]])  # Tails.


def test_chain_order_is_distrax_order():
  f = fb.actnorm(D)
  g = fb.permutation([1, 2, 3, 4, 0])
  pf = {"shift": jnp.arange(D, dtype=jnp.float32),
        "log_scale": jnp.full((D,), 0.5)}
  x = jnp.arange(D, dtype=jnp.float32)[None]
  y = fb.forward(fb.chain([f, g]), (pf, {}), x)
  np.testing.assert_allclose(y, f.forward(pf, g.forward({}, x)))
  np.testing.assert_allclose(
      fb.inverse(fb.chain([f, g]), (pf, {}), y), x, atol=1e-6)
  inv = fb.invert(f)
  np.testing.assert_allclose(inv.forward(pf, y), f.inverse(pf, y))


def test_stack_matches_unrolled_chain():
  case = _case("stack")
  block = _stack_block()
  layers = tuple(jax.tree.map(lambda p, i=i: p[i], case["params"])
                 for i in range(3))
  y, ld = jax.jit(fb.chain([block] * 3).forward_and_log_det)(
      layers, case["x"], case["context"])
  np.testing.assert_allclose(y, case["out"]["y"], atol=1e-5)
  np.testing.assert_allclose(ld, case["out"]["ld_fwd"], atol=1e-5)


def test_actnorm_data_init_standardises_batch():
  x = 3.0 + 2.5 * jax.random.normal(jax.random.key(5), (256, D))
  b = fb.actnorm(D)
  p = fb.actnorm_data_init(b.init(None), x, direction="forward")
  y = np.asarray(b.forward(p, x))
  np.testing.assert_allclose(y.mean(0), 0.0, atol=1e-5)
  np.testing.assert_allclose(y.std(0), 1.0, atol=1e-4)
  p = fb.actnorm_data_init(b.init(None), x, direction="inverse")
  z = np.asarray(b.inverse(p, x))
  np.testing.assert_allclose(z.mean(0), 0.0, atol=1e-5)
  np.testing.assert_allclose(z.std(0), 1.0, atol=1e-4)


@pytest.mark.parametrize("direction", ["forward", "inverse"])
def test_data_init_through_chain_and_stack(direction):
  # Each actnorm must standardise the batch *as it reaches that layer*; the
  # stacked actnorms come last on the data path, so the output is standardised
  # and the second one to see the data stays the identity.
  lu = fb.lu_linear(D)
  lu_params = _perturb(lu.init(None), jax.random.key(6), 0.5)
  norms = fb.stack(fb.actnorm(D), 2)
  x = 2.0 + 3.0 * jax.random.normal(jax.random.key(7), (512, D))
  if direction == "forward":  # lu, then stack layer 1, then stack layer 0.
    flow, lu_index, second_norm = fb.chain([norms, lu]), 1, 0
  else:  # lu inverse, then stack layer 0 inverse, then layer 1 inverse.
    flow, lu_index, second_norm = fb.chain([lu, norms]), 0, 1
  params = list(flow.init(jax.random.key(0)))
  params[lu_index] = lu_params
  new = fb.data_init(flow, tuple(params), x, direction=direction)
  np.testing.assert_array_equal(new[lu_index]["lower"], lu_params["lower"])
  apply = fb.forward if direction == "forward" else fb.inverse
  h = np.asarray(apply(flow, new, x))
  np.testing.assert_allclose(h.mean(0), 0.0, atol=1e-4)
  np.testing.assert_allclose(h.std(0), 1.0, atol=1e-3)
  norm_params = new[1 - lu_index]
  np.testing.assert_allclose(norm_params["log_scale"][second_norm], 0.0,
                             atol=1e-3)
  assert np.abs(norm_params["log_scale"][1 - second_norm]).max() > 0.5


def test_invert_flips_data_init_direction():
  x = 3.0 + 2.5 * jax.random.normal(jax.random.key(5), (64, D))
  b = fb.actnorm(D)
  p_inv = fb.data_init(fb.invert(b), b.init(None), x, direction="forward")
  p_ref = fb.actnorm_data_init(b.init(None), x, direction="inverse")
  chex.assert_trees_all_close(p_inv, p_ref)


def test_custom_conditioner_params_are_its_own():
  case = _case("linear_conditioner")
  affine_params = case["params0"][0]["conditioner"]
  assert set(affine_params) == {"w", "b"}
  # 3 passed-through dims + C context -> 2 transformed dims x 2 (affine).
  assert affine_params["w"].shape == (3 + C, 2 * 2)


def test_conditioner_output_size_is_checked():
  def wrong(in_dim, context_dim, out_dim):
    return _linear_conditioner(in_dim, context_dim, out_dim + 1)
  b = _affine(MASK, conditioner=wrong)
  with pytest.raises(ValueError, match=r"conditioner returned \[\.\.\., 5\]"):
    b.forward(b.init(jax.random.key(0)), jnp.zeros((2, D)))


def test_mlp_conditioner_is_a_flax_module_with_zero_last_layer():
  cond = fb.mlp_conditioner((8, 4))(3, C, 6)
  params = cond.init(jax.random.key(0))
  assert params["dense_0"]["w"].shape == (3 + C, 8)
  assert params["dense_out"]["w"].shape == (4, 6)
  np.testing.assert_array_equal(params["dense_out"]["w"], 0.0)
  assert np.abs(params["dense_0"]["w"]).max() > 0
  out = cond.apply(params, jnp.ones((2, 3)), jnp.ones((2, C)))
  np.testing.assert_array_equal(out, 0.0)
  via_module = fb.MLP((8, 4), 6).apply({"params": params}, jnp.ones((2, 3 + C)))
  np.testing.assert_array_equal(out, via_module)


def test_stack_scans_custom_conditioner_params():
  block = fb.chain([_affine(MASK, C, _linear_conditioner), fb.actnorm(D)])
  stacked = fb.stack(block, 2)
  params = stacked.init(jax.random.key(0))
  assert params[0]["conditioner"]["w"].shape == (2, 3 + C, 4)
  params = _perturb(params, jax.random.key(3), 0.3)
  x, context = _inputs()
  y, ld = jax.jit(stacked.forward_and_log_det)(params, x, context)
  x_rec, ld_inv = jax.jit(stacked.inverse_and_log_det)(params, y, context)
  np.testing.assert_allclose(x_rec, x, atol=2e-4)
  np.testing.assert_allclose(ld, -ld_inv, atol=2e-4)


def _spline_pair(params, x, y, dtype):
  """flowpose's and distrax's spline on the same params: forward at x, inverse at y."""
  from flowpose.bijectors import distrax_adapter  # pylint: disable=g-import-not-at-top
  kw = dict(range_min=-RANGE, range_max=RANGE)
  params, x, y = (jnp.asarray(v, dtype) for v in (params, x, y))
  k = (params.shape[-1] + 1) // 3

  @jax.jit  # One compiled program: distrax op by op took most of the test's time.
  def both(params, x, y):
    ours = (fb.rational_quadratic_forward(x, params, num_bins=k, **kw),
            fb.rational_quadratic_inverse(y, params, num_bins=k, **kw))
    theirs = distrax_adapter.rational_quadratic_spline(params, **kw)
    return ours, (theirs.forward_and_log_det(x), theirs.inverse_and_log_det(y))
  return both(params, x, y)


@pytest.mark.parametrize("precision", ["float32", "float64"])
def test_spline_matches_distrax_rational_quadratic_spline(precision):
  # distrax's spline with boundary_slopes="identity" is the same map: compare
  # values and log-dets, forward and inverse, inside the range, exactly at its
  # bounds and in the identity tails. float64 shows the math is identical
  # (float32 differs by rounding, amplified where a bin is steep).
  k, n = 6, 400
  params = 0.5 * np.asarray(jax.random.normal(jax.random.key(9), (n, 3 * k - 1)))
  x = np.linspace(-1.6 * RANGE, 1.6 * RANGE, n)
  x[:4] = [-RANGE, RANGE, -RANGE - 1e-3, RANGE + 1e-3]
  x = x.astype(precision)
  y = x[::-1].copy()
  with jax.enable_x64(precision == "float64"):
    ours, theirs = _spline_pair(params, x, y, getattr(jnp, precision))
    ours, theirs = jax.tree.map(np.asarray, (ours, theirs))
  tails = np.abs(x) > RANGE
  assert 100 < tails.sum() < n - 100
  atol = 1e-5 if precision == "float32" else 1e-9
  for (value, log_det), (value_d, log_det_d) in zip(ours, theirs):
    np.testing.assert_allclose(value, value_d, atol=atol, rtol=0)
    np.testing.assert_allclose(log_det, log_det_d, atol=5 * atol, rtol=0)
  (y_fwd, ld_fwd), (x_inv, ld_inv) = ours
  np.testing.assert_array_equal(y_fwd[tails], x[tails])   # Identity tails.
  np.testing.assert_array_equal(ld_fwd[tails], 0.0)
  np.testing.assert_allclose(y_fwd[:2], [-RANGE, RANGE], atol=atol)
  assert np.abs(y_fwd[~tails] - x[~tails]).max() > 0.1  # Not the identity inside.
  tails_y = np.abs(y) > RANGE
  np.testing.assert_array_equal(x_inv[tails_y], y[tails_y])
  np.testing.assert_array_equal(ld_inv[tails_y], 0.0)


def test_distrax_transformed_log_prob():
  # The cached pure-function results give the expected value: inverse(y) = x
  # with inverse log-det `ld_inv`.
  from flowpose.bijectors import distrax_adapter  # pylint: disable=g-import-not-at-top
  distrax = distrax_adapter.distrax
  case = _case("chain")
  bijector, out = case["bijector"], case["out"]
  base = distrax.MultivariateNormalDiag(jnp.zeros(D), jnp.ones(D))
  expected = base.log_prob(case["x"]) + out["ld_inv"]

  @jax.jit
  def log_prob(params, y, context):
    dist = distrax.Transformed(
        base, distrax_adapter.to_distrax(bijector, params, context))
    return dist.log_prob(y)

  lp = log_prob(case["params"], out["y"], case["context"])
  np.testing.assert_allclose(lp, expected, rtol=1e-4, atol=1e-4)
  pure = jax.jit(functools.partial(fb.standard_normal_log_prob, bijector))(
      case["params"], out["y"], case["context"])
  np.testing.assert_allclose(pure, expected, rtol=1e-4, atol=1e-4)


def test_distrax_sampling_uses_forward():
  from flowpose.bijectors import distrax_adapter  # pylint: disable=g-import-not-at-top
  distrax = distrax_adapter.distrax
  case = _case("affine_context")
  b, params = case["bijector"], case["params"]
  dist = distrax.Transformed(
      distrax.MultivariateNormalDiag(jnp.zeros(D), jnp.ones(D)),
      distrax_adapter.to_distrax(b, params, case["context"][0]))
  samples, lp = jax.jit(lambda k: dist.sample_and_log_prob(
      seed=k, sample_shape=(8,)))(jax.random.key(8))
  chex.assert_shape((samples, lp), ((8, D), (8,)))
  np.testing.assert_allclose(
      lp, fb.standard_normal_log_prob(b, params, samples, case["context"][0]),
      rtol=1e-4, atol=1e-4)


def test_distrax_is_lazy_and_imports_after_tensorflow():
  # Building a prior imports neither distrax nor TFP; distrax_adapter then
  # imports distrax even though TensorFlow came first (the import order that
  # fails with a bare `import distrax`: TFP wants tf_keras).
  script = textwrap.dedent("""
      import sys
      from flowpose.prior import flow
      flow.make_prior(flow.default_flow_config())
      assert "distrax" not in sys.modules, "distrax imported eagerly"
      assert "tensorflow_probability" not in sys.modules, "TFP imported eagerly"
      import tensorflow
      from flowpose.bijectors import distrax_adapter
      import jax.numpy as jnp
      spline = distrax_adapter.rational_quadratic_spline(
          jnp.zeros((3, 23)), range_min=-5.0, range_max=5.0)
      assert float(spline.forward(jnp.ones(3))[0]) == 1.0
      print("OK")
      """)
  result = subprocess.run([sys.executable, "-c", script], capture_output=True,
                          text=True, timeout=300, check=False)
  assert result.returncode == 0 and "OK" in result.stdout, result.stderr[-2000:]


def test_bad_inputs_raise():
  with pytest.raises(ValueError, match="permutation"):
    fb.permutation([0, 0, 1])
  with pytest.raises(ValueError, match="nothing"):
    fb.affine_coupling(np.ones(3, bool))
  with pytest.raises(ValueError, match="event dimension"):
    fb.lu_linear(3).init(jax.random.key(0), 4)
  with pytest.raises(ValueError, match=r"\[\.\.\., 3\]"):
    fb.actnorm(3).forward({"shift": jnp.zeros(3), "log_scale": jnp.zeros(3)},
                          jnp.zeros((2, 4)))


class JitConsistencyTest(chex.TestCase):
  """jit and no-jit agree (chex variants) on the layer types with MLPs."""

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.named_parameters(("affine_context", "affine_context"),
                                  ("spline_context", "spline_context"))
  def test_variants_agree_with_cached_jit(self, name):
    case = _case(name)
    b = case["bijector"]
    fwd = self.variant(b.forward_and_log_det)
    inv = self.variant(b.inverse_and_log_det)
    y, ld = fwd(case["params"], case["x"], case["context"])
    x_rec, ld_inv = inv(case["params"], y, case["context"])
    np.testing.assert_allclose(y, case["out"]["y"], atol=1e-5)
    np.testing.assert_allclose(ld, case["out"]["ld_fwd"], atol=1e-5)
    np.testing.assert_allclose(x_rec, case["x"], atol=2e-4)
    np.testing.assert_allclose(ld_inv, -ld, atol=2e-4)


def test_lu_linear_is_its_dense_matrix():
  # Forward must be y = P L U x + bias with P on the output side: a permutation applied on the
  # wrong side (or not at all) keeps the round trip and |det| exact, so only this catches it.
  perm = [1, 3, 0, 4, 2]
  b = fb.lu_linear(D, perm=perm)
  params = _perturb(b.init(jax.random.key(0)), jax.random.key(4))
  x, _ = _inputs()
  y, ld = jax.jit(b.forward_and_log_det)(params, x)
  matrix = np.asarray(fb.lu_linear_matrix(params, perm), np.float64)
  expected = np.asarray(x, np.float64) @ matrix.T + np.asarray(params["bias"])
  np.testing.assert_allclose(y, expected, atol=1e-5)
  np.testing.assert_allclose(ld, np.log(abs(np.linalg.det(matrix))), atol=1e-5)
  x_rec = jax.jit(b.inverse)(params, y)
  np.testing.assert_allclose(x_rec, x, atol=1e-4)


@pytest.mark.parametrize("dim,mask_kind", [(5, "even"), (6, "odd"), (12, "random")])
def test_slices_split_is_the_gather_split(dim, mask_kind):
  # split="slices" (what the prior uses) must be the same map as the gather split on any mask:
  # alternating masks of odd and even D take the interleave, others the strided-slice runs.
  mask = {"even": fb.alternating_mask(dim, 0), "odd": fb.alternating_mask(dim, 1),
          "random": np.random.default_rng(0).random(dim) < 0.5}[mask_kind]
  x = jax.random.normal(jax.random.key(1), (N, dim))
  context = jax.random.normal(jax.random.key(2), (N, C))
  for make in (fb.affine_coupling, fb.spline_coupling):
    gather = make(mask, hidden_sizes=(8,), context_dim=C)
    slices = make(mask, hidden_sizes=(8,), context_dim=C, split="slices")
    params = _perturb(gather.init(jax.random.key(0)), jax.random.key(3))
    chex.assert_trees_all_equal_shapes(params, slices.init(jax.random.key(0)))

    @jax.jit
    def both(params, x, context, gather=gather, slices=slices):
      return (gather.forward_and_log_det(params, x, context),
              slices.forward_and_log_det(params, x, context),
              gather.inverse_and_log_det(params, x, context),
              slices.inverse_and_log_det(params, x, context))
    fwd_g, fwd_s, inv_g, inv_s = both(params, x, context)
    chex.assert_trees_all_close(fwd_s, fwd_g, atol=1e-5)
    chex.assert_trees_all_close(inv_s, inv_g, atol=1e-5)
  with pytest.raises(ValueError, match="split must be one of"):
    fb.affine_coupling(mask, split="scatter")

