"""The CPU kernels (flowpose.body.cpu_kernel) vs the XLA reference (body.lbs).

When the kernel cannot be built these tests FAIL (they do not skip), so CI
goes red on a broken compiler; `FLOWPOSE_LBS_KERNEL=0` is the explicit opt-out
that skips them (platforms without a C++ compiler). The `broken_compiler`
tests check that contract with `CXX=false`.
"""

import functools
import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flowpose import geometry
from flowpose.body import lbs
from flowpose.body import model as bm
from flowpose.body import model_io
from flowpose.body.cpu_kernel import build
from flowpose.body.cpu_kernel import ffi

if jax.default_backend() != "cpu":
  pytest.skip("the kernel runs on CPU only", allow_module_level=True)

pytestmark = pytest.mark.usefixtures("fast_compile")
REPO = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def require_kernel(request):
  """Fails (not skips) a kernel test when the kernel is unavailable."""
  if "broken_compiler" in request.fixturenames:
    return  # These tests build with a broken compiler on purpose.
  if build.disabled():
    pytest.skip(f"{build.ENV_VAR}=0: the CPU kernel is opted out")
  if not build.available():
    pytest.fail(f"CPU skinning kernel unavailable: {build.info()}; set-up "
                "must build it (`python -m flowpose.body.cpu_kernel.build`) "
                f"or opt out with {build.ENV_VAR}=0")

SMPL_PARENTS = (-1, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 9, 9, 12, 13, 14, 16,
                17, 18, 19, 20, 21)
NUM_VERTS, NUM_BETAS, TOP_K, NUM_KP = 203, 10, 4, 7  # V not a multiple of 8


def make_model(with_posedirs, seed=0, num_verts=NUM_VERTS):
  """Random SMPL-tree model; some vertices have fewer than K weights."""
  rng = np.random.default_rng(seed)
  nj = len(SMPL_PARENTS)
  dense = rng.random((num_verts, nj)) * (rng.random((num_verts, nj)) < 0.08)
  dense[np.arange(num_verts), rng.integers(0, nj, num_verts)] += 1.0
  idx, weights, _ = model_io.sparsify_skin_weights(
      dense / dense.sum(1, keepdims=True), TOP_K)
  assert np.any(weights == 0)  # zero-padded rows take the kernel's skip
  j_reg = rng.random((nj, num_verts)) * (rng.random((nj, num_verts)) < 0.1)
  j_reg[np.arange(nj), rng.integers(0, num_verts, nj)] += 1.0
  kp_reg = np.zeros((NUM_KP, num_verts))
  for k in range(NUM_KP):
    kp_reg[k, rng.choice(num_verts, 5, replace=False)] = rng.normal(size=5)
  names = np.asarray([f"j{i}" for i in range(nj)])
  num_p = 9 * (nj - 1) if with_posedirs else 0
  return model_io.model_from_arrays({
      "v_template": rng.normal(size=(num_verts, 3)),
      "shapedirs": 0.05 * rng.normal(size=(num_verts, 3, NUM_BETAS)),
      "posedirs": 0.01 * rng.normal(size=(num_p, num_verts * 3)),
      "j_regressor": j_reg / j_reg.sum(1, keepdims=True),
      "skin_indices": idx, "skin_weights": weights,
      "keypoint_regressor": kp_reg,
      "faces": rng.integers(0, num_verts, (20, 3)),
      "part_labels": dense.argmax(1), "parents": np.asarray(SMPL_PARENTS),
      "joint_names": names, "part_names": names,
      "keypoint_names": np.asarray([f"k{i}" for i in range(NUM_KP)]),
  })


@pytest.fixture(scope="module", params=[False, True], ids=["lbs", "posedirs"])
def model(request):
  return make_model(request.param)


@pytest.fixture(scope="module")
def cc0_model():
  from flowpose.body.build import assets  # pylint: disable=g-import-not-at-top
  return model_io.load_model(assets.ensure_body_model())


def inputs(model, batch, seed=0):
  """`(rotmats [B, J, 3, 3], betas [B, S], transl [B, 3])`."""
  rng = np.random.default_rng(seed)
  pose = jnp.asarray(0.7 * rng.normal(size=(batch, model.num_joints, 3)),
                     jnp.float32)
  return (jax.vmap(geometry.axis_angle_to_matrix)(pose),
          jnp.asarray(rng.normal(size=(batch, model.num_betas)), jnp.float32),
          jnp.asarray(rng.normal(size=(batch, 3)), jnp.float32))


def batched_forward(skinning):
  return jax.jit(jax.vmap(
      functools.partial(bm.forward, skinning=skinning), (None, 0, 0, 0)))


def assert_outputs_close(got, want, model):
  np.testing.assert_allclose(got.vertices, want.vertices, atol=1e-5)
  # Joints ~1 m: the kernel's FK and XLA's round differently by up to ~12 float32 ulps on
  # some CPUs (session 19's AMD EPYC machine: 1.4e-6).
  np.testing.assert_allclose(got.joints, want.joints, atol=3e-6)
  # Keypoints: the kernel sums sparse regressor rows; XLA's dense GEMM rounds
  # differently (on cc0 by ~2e-5), so compare both with float64 arithmetic.
  reg = np.asarray(model.keypoint_regressor, np.float64)
  exact = np.einsum("kv,...vc->...kc", reg, np.asarray(got.vertices, np.float64))
  np.testing.assert_allclose(got.keypoints, exact, atol=1e-5)
  np.testing.assert_allclose(want.keypoints, exact, atol=5e-5)


@pytest.mark.parametrize("batch", [1, 5, 21])  # XLA, 8 lanes, 16 + 8 lanes
def test_batched_matches_xla(model, batch):
  args = inputs(model, batch)
  assert_outputs_close(batched_forward("kernel")(model, *args),
                       batched_forward("xla")(model, *args), model)


def test_cc0_matches_xla_and_uses_the_kernel(cc0_model):
  args = inputs(cc0_model, 37, seed=3)  # > 16 bodies: worker threads run
  fwd = batched_forward("auto")
  hlo = fwd.lower(cc0_model, *args).as_text()
  assert "flowpose_lbs" in hlo and "flowpose_fk" in hlo
  assert_outputs_close(fwd(cc0_model, *args),
                       batched_forward("xla")(cc0_model, *args), cc0_model)


def model_args(model, batch, seed=0):
  """Random kernel inputs `(betas, transforms, features, *model arrays)`."""
  rng = np.random.default_rng(seed)
  f32 = lambda x: jnp.asarray(x, jnp.float32)
  features, posedirs = None, None
  if model.has_posedirs:
    features = f32(rng.normal(size=(batch, model.posedirs.shape[0])))
    posedirs = model.posedirs
  return (f32(rng.normal(size=(batch, model.num_betas))),
          f32(rng.normal(size=(batch, model.num_joints, 3, 4))), features,
          posedirs, model.v_template, model.shapedirs, model.skin_indices,
          model.skin_weights, model.keypoint_regressor)


@pytest.mark.parametrize("batch", [1, 2, 3, 8, 9])
def test_raw_kernel_matches_reference(model, batch):
  # Batches below MIN_KERNEL_BATCH take XLA inside `forward`; check the
  # custom call itself on them too (and on exactly one and one-plus lanes).
  args = model_args(model, batch, seed=batch)
  got = jax.jit(ffi.lbs_call)(*args)
  want = jax.jit(lbs.pose_vertices_batched)(*args)
  np.testing.assert_allclose(got[0], want[0], atol=1e-5)
  np.testing.assert_allclose(got[1], want[1], atol=1e-5)


def test_threaded_pose_blend_matches_reference():
  # Several vertex chunks and 4-block units: the worker threads run.
  model = make_model(True, seed=1, num_verts=2003)
  args = model_args(model, 70, seed=7)
  got = jax.jit(ffi.lbs_call)(*args)
  want = jax.jit(lbs.pose_vertices_batched)(*args)
  np.testing.assert_allclose(got[0], want[0], atol=1e-5)
  np.testing.assert_allclose(got[1], want[1], atol=2e-5)


def backward_args(model, batch, seed=0, with_vertices=True):
  """Inputs of `ffi.lbs_backward_call`: the forward's plus cotangents."""
  betas, transforms, features, *arrays = model_args(model, batch, seed)
  rng = np.random.default_rng(seed + 100)
  d_vertices = (jnp.asarray(rng.normal(size=(batch, model.num_vertices, 3)),
                            jnp.float32) if with_vertices else None)
  d_keypoints = jnp.asarray(rng.normal(size=(batch, model.num_keypoints, 3)),
                            jnp.float32)
  return (betas, transforms, features, d_vertices, d_keypoints, *arrays)


def reference_backward(*args):
  axes = tuple(None if x is None else 0 for x in args[:5]) + (None,) * 6
  return jax.jit(jax.vmap(ffi.backward_reference, axes))(*args)


def test_raw_fk_backward_kernel_matches_reference():
  # Every cotangent of the FK (transforms, joints, global rotations) at once.
  model, batch = make_model(False), 6
  rot, betas, transl = inputs(model, batch, seed=batch + 20)
  parents = np.asarray(model.parents, np.int32)
  fk = jax.jit(lambda r, b, t: ffi.fk_call(r, b, t, parents, model.j_regressor,
                                           model.v_template, model.shapedirs))
  basis = fk(rot, betas, transl)[3]
  rng = np.random.default_rng(batch)
  cts = tuple(jnp.asarray(rng.normal(size=(batch, model.num_joints) + tail), jnp.float32)
              for tail in ((3, 4), (3,), (3, 3)))
  got = jax.jit(lambda *a: ffi.fk_backward_call(*a, parents))(rot, betas, basis, *cts)
  ref = functools.partial(ffi.fk_backward_reference, model.parents, "levels")
  want = jax.jit(jax.vmap(ref))(rot, betas, basis, *cts)
  for name, g, w in zip(("d_rot", "d_betas", "d_transl", "d_rest"), got, want):
    np.testing.assert_allclose(g, w, atol=1e-5 * float(jnp.abs(w).max()), err_msg=name)


@pytest.mark.parametrize("cotangents,batch", [
    *(("all", b) for b in (1, 5, 9, 21)), *(("kp", b) for b in (1, 5, 9, 21)),
    ("vertices", 21)])
def test_raw_backward_kernel_matches_reference(model, batch, cotangents):
  # "kp": no vertex cotangent, only the regressor's vertices are visited;
  # "vertices": no keypoint cotangent, the regressor is not read.
  args = backward_args(model, batch, seed=batch,
                       with_vertices=cotangents != "kp")
  if cotangents == "vertices":
    args = args[:4] + (None,) + args[5:]
  got = jax.jit(ffi.lbs_backward_call)(*args)
  want = reference_backward(*args)
  for name, g, w in zip(("d_betas", "d_transforms", "d_features"), got, want):
    scale = float(jnp.abs(w).max()) or 1.0
    np.testing.assert_allclose(g, w, atol=1e-5 * scale, err_msg=name)


def test_threaded_backward_with_pose_blend_matches_reference():
  # Several vertex chunks and body blocks: the worker threads run.
  model = make_model(True, seed=1, num_verts=2003)
  args = backward_args(model, 70, seed=7)
  got = jax.jit(ffi.lbs_backward_call)(*args)
  want = reference_backward(*args)
  for name, g, w in zip(("d_betas", "d_transforms", "d_features"), got, want):
    np.testing.assert_allclose(g, w, atol=1e-5 * float(jnp.abs(w).max()),
                               err_msg=name)


def test_cc0_gradients_use_the_backward_kernel_and_match_xla(cc0_model):
  # The benchmark's gradient (benchmarks/body_model.py) on the CC0 model.
  rot, betas, transl = inputs(cc0_model, 37, seed=6)

  def loss(skinning, rot, betas, transl):
    out = jax.vmap(functools.partial(bm.forward, skinning=skinning),
                   (None, 0, 0, 0))(cc0_model, rot, betas, transl)
    return jnp.sum(out.vertices**2) + jnp.sum(out.keypoints)
  grads = {s: jax.jit(jax.grad(functools.partial(loss, s), argnums=(0, 1, 2)))
           for s in ("auto", "xla")}
  hlo = grads["auto"].lower(rot, betas, transl).as_text()
  assert "flowpose_lbs_bwd" in hlo and "flowpose_fk_bwd" in hlo
  got, want = (grads[s](rot, betas, transl) for s in ("auto", "xla"))
  for name, g, w in zip(("rotmats", "betas", "transl"), got, want):
    np.testing.assert_allclose(g, w, rtol=1e-4,
                               atol=1e-4 * float(jnp.abs(w).max()),
                               err_msg=name)


def test_unbatched_and_eager_match_xla(model):
  rot, betas, transl = inputs(model, 5, seed=1)
  want = batched_forward("xla")(model, rot, betas, transl)
  single = bm.forward(model, rot[0], betas[0], transl[0])
  assert_outputs_close(single, jax.tree_util.tree_map(lambda x: x[0], want),
                       model)
  with jax.disable_jit():  # op by op, the custom call run eagerly
    got = jax.vmap(functools.partial(bm.forward, skinning="kernel"),
                   (None, 0, 0, 0))(model, rot, betas, transl)
  assert_outputs_close(got, want, model)


def test_vmap_variants_match_xla(model):
  rot, betas, transl = inputs(model, 6, seed=2)

  @functools.partial(jax.jit, static_argnums=0)
  def variants(skinning, model, rot, betas, transl):
    """Shared shape, batch axis not leading, nested vmap, per-body models."""
    fwd = functools.partial(bm.forward, skinning=skinning)
    shared = jax.vmap(fwd, (None, 0, None, 0))(model, rot, betas[0], transl)
    moved = jax.vmap(fwd, (None, 2, 1, 1))(
        model, jnp.moveaxis(rot, 0, 2), betas.T, transl.T)
    nested = jax.vmap(jax.vmap(fwd, (None, 0, 0, 0)), (None, 0, 0, 0))(
        model, rot.reshape((2, 3) + rot.shape[1:]), betas.reshape(2, 3, -1),
        transl.reshape(2, 3, 3))
    models = jax.tree_util.tree_map(lambda x: jnp.stack([x, x]), model)
    per_model = jax.vmap(fwd)(models, rot[:2], betas[:2], transl[:2])
    return (shared.vertices, moved.vertices,
            nested.vertices.reshape(rot.shape[0], -1, 3), per_model.vertices,
            nested.keypoints.reshape(rot.shape[0], -1, 3))
  got = variants("kernel", model, rot, betas, transl)
  want = variants("xla", model, rot, betas, transl)
  for g, w in zip(got, want):
    np.testing.assert_allclose(g, w, atol=1e-5)


def test_empty_batch(model):
  rot, betas, transl = inputs(model, 0)
  out = batched_forward("kernel")(model, rot, betas, transl)
  assert out.vertices.shape == (0, NUM_VERTS, 3)
  assert out.keypoints.shape == (0, NUM_KP, 3)


@pytest.mark.parametrize("terms", ["all", "vertices", "keypoints"])
def test_gradients_match_xla(model, terms):
  # "vertices"/"keypoints": the other output's cotangent is a symbolic zero.
  rot, betas, transl = inputs(model, 9, seed=4)
  target = jax.random.normal(jax.random.PRNGKey(0), (9, NUM_VERTS, 3))

  def loss(skinning, rot, betas, transl):
    out = jax.vmap(functools.partial(bm.forward, skinning=skinning),
                   (None, 0, 0, 0))(model, rot, betas, transl)
    v_term = jnp.sum((out.vertices - target)**2)
    kp_term = jnp.sum(jnp.sin(out.keypoints))
    return {"all": v_term + kp_term + jnp.sum(out.joints**2) +
                   jnp.sum(jnp.cos(3 * out.joint_rotmats)),
            "vertices": v_term, "keypoints": kp_term}[terms]
  grads = {s: jax.jit(jax.grad(functools.partial(loss, s), argnums=(0, 1, 2)))(
      rot, betas, transl) for s in ("kernel", "xla")}
  for got, want in zip(grads["kernel"], grads["xla"]):
    scale = float(jnp.abs(want).max())
    np.testing.assert_allclose(got, want, atol=2e-5 * scale, rtol=1e-4)


def test_gradients_wrt_model_arrays_match_xla(model):
  rot, betas, transl = inputs(model, 3, seed=5)

  def loss(skinning, model):
    out = jax.vmap(functools.partial(bm.forward, skinning=skinning),
                   (None, 0, 0, 0))(model, rot, betas, transl)
    return jnp.sum(out.vertices**2) + jnp.sum(out.keypoints**2)
  got, want = (jax.jit(jax.grad(functools.partial(loss, s), allow_int=True))(
      model)
               for s in ("kernel", "xla"))
  for name in ("v_template", "shapedirs", "posedirs", "skin_weights",
               "keypoint_regressor", "j_regressor"):
    g, w = getattr(got, name), getattr(want, name)
    scale = float(jnp.abs(w).max()) if w.size else 1.0
    np.testing.assert_allclose(g, w, atol=1e-5 * scale, rtol=1e-4,
                               err_msg=name)


def test_bad_impl_raises(model):
  rot, betas, transl = (x[0] for x in inputs(model, 1))
  with pytest.raises(ValueError, match="impl"):
    bm.forward(model, rot, betas, transl, skinning="fast")


def test_build_is_cached_and_keyed(tmp_path, monkeypatch):
  path = build.build()
  assert path == build.library_path() and path.exists()
  assert build.cpu_level() in path.name
  monkeypatch.setenv("FLOWPOSE_CACHE", str(tmp_path))
  fresh = build.build()  # a real compile, into the temp cache
  assert fresh.parent == tmp_path / "kernels" and fresh.name == path.name
  assert [p.name for p in fresh.parent.iterdir()] == [fresh.name]  # no temps


def test_cpu_level_cap(monkeypatch):
  best = build.cpu_level()
  monkeypatch.setenv(build.LEVEL_VAR, "generic")
  assert build.cpu_level() == "generic"
  assert "-march" not in " ".join(build._compile_flags())  # pylint: disable=protected-access
  monkeypatch.setenv(build.LEVEL_VAR, "x86-64-v4")  # a cap, never above the CPU
  assert build.cpu_level() == best
  monkeypatch.setenv(build.LEVEL_VAR, "avx9")
  with pytest.raises(ValueError, match=build.LEVEL_VAR):
    build.cpu_level()


@pytest.mark.slow
def test_avx2_build_matches_xla_on_an_avx512_machine(monkeypatch):
  # Where the default build holds 16 bodies per 512-bit register, the AVX2 one (two 256-bit
  # halves) must stay right too: the forward, backward and gradient tests with it.
  if build.cpu_level() != "x86-64-v4":
    pytest.skip("the default build is already the AVX2 (or generic) one here")
  env = dict(os.environ, **{build.LEVEL_VAR: "x86-64-v3"})
  keyword = "batched_matches or raw_ or threaded or gradients"
  proc = _run(["-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "not slow", "-k", keyword,
               f"tests/{pathlib.Path(__file__).name}"], env)
  assert proc.returncode == 0 and " passed" in proc.stdout, proc.stdout[-3000:]
  monkeypatch.setenv(build.LEVEL_VAR, "x86-64-v3")
  assert build.library_path().exists()  # the subprocess built (or found) the AVX2 build


# ---------------------------------------------------------------------------
# A broken compiler fails set-up and the kernel tests, unless opted out
# ---------------------------------------------------------------------------


@pytest.fixture
def broken_compiler(tmp_path):
  """The environment of a machine whose compiler fails (`CXX=false`)."""
  env = dict(os.environ, CXX="false", FLOWPOSE_CACHE=str(tmp_path / "cache"))
  env.pop(build.ENV_VAR, None)
  return env


def _run(args, env):
  return subprocess.run([sys.executable, *args], cwd=REPO, env=env,
                        capture_output=True, text=True, check=False,
                        timeout=300)


def test_build_cli_fails_on_a_broken_compiler(broken_compiler):
  # launch/setup.sh runs this CLI and stops when it exits non-zero.
  proc = _run(["-m", "flowpose.body.cpu_kernel.build"], broken_compiler)
  assert proc.returncode == 1, proc.stdout + proc.stderr
  assert "false" in proc.stderr and "failed" in proc.stderr, proc.stderr
  assert build.ENV_VAR + "=0" in proc.stderr  # names the opt-out
  cache = pathlib.Path(broken_compiler["FLOWPOSE_CACHE"])
  assert not list((cache / "kernels").glob("*"))  # no partial library


def test_build_cli_opt_out_and_bad_value(broken_compiler, monkeypatch, capsys):
  monkeypatch.setenv(build.ENV_VAR, "0")
  assert build.main(["build"]) == 0
  assert "XLA path" in capsys.readouterr().out
  monkeypatch.setenv(build.ENV_VAR, "yes")
  assert build.main(["build"]) == 1
  assert build.ENV_VAR in capsys.readouterr().err
  with pytest.raises(ValueError, match=build.ENV_VAR):
    build.disabled()


def _pytest_one_kernel_test(env):
  test = f"tests/{pathlib.Path(__file__).name}::test_bad_impl_raises"
  return _run(["-m", "pytest", "-q", "-p", "no:cacheprovider", test], env)


def test_kernel_tests_fail_not_skip_on_a_broken_compiler(broken_compiler):
  proc = _pytest_one_kernel_test(broken_compiler)
  # pytest.fail in the fixture reports each test as an error: exit 1.
  assert proc.returncode == 1 and "2 errors" in proc.stdout, proc.stdout[-3000:]
  assert "CPU skinning kernel unavailable" in proc.stdout
  assert "skipped" not in proc.stdout


@pytest.mark.slow
def test_kernel_tests_skip_when_opted_out(broken_compiler):
  opted_out = dict(broken_compiler, **{build.ENV_VAR: "0"})
  proc = _pytest_one_kernel_test(opted_out)
  assert proc.returncode == 0 and "2 skipped" in proc.stdout, proc.stdout[-3000:]


@pytest.mark.parametrize("size", [1000, 333])
def test_zbuffer_kernel_equals_the_numpy_rasterizer(cc0_model, size):
  """cpu_kernel.raster (the fitter's visibility renders) = evidence.zbuffer exactly: depth, face
  index, barycentrics and the resulting vertex visibility; a body partly off the image."""
  from flowpose.body.cpu_kernel import raster as kernel_raster  # pylint: disable=g-import-not-at-top
  from flowpose.evidence import raster, views, zbuffer  # pylint: disable=g-import-not-at-top
  from flowpose.geometry import camera  # pylint: disable=g-import-not-at-top
  rot, betas, _ = inputs(cc0_model, 2, seed=8)
  rot = rot.at[:, 0].set(jnp.asarray(np.diag([1.0, -1.0, -1.0]), jnp.float32))
  verts = np.asarray(bm.forward(cc0_model, rot[0], betas[0],
                                jnp.array([1.2, 0.2, 3.0])).vertices)
  faces = np.asarray(cc0_model.faces)
  cam = raster.PinholeCamera(np.eye(3), np.zeros(3), np.array([1.0, 1.01]) * size,
                             np.array([0.5, 0.48]) * size)
  want = zbuffer.rasterize(verts, faces, cam, (size, size + 7))
  x_cam, uv = views.to_camera(verts, cam)
  got = kernel_raster.rasterize(uv, x_cam[:, 2], faces, (size, size + 7), camera.MIN_DEPTH)
  assert 0 < np.sum(want.face_index >= 0) and np.any(uv[:, 0] > size + 7)  # partly off-image
  np.testing.assert_array_equal(got[1], want.face_index)
  np.testing.assert_array_equal(got[0], want.depth)
  np.testing.assert_array_equal(got[2], want.barycentric)
  np.testing.assert_array_equal(
      raster.vertex_visibility(verts, faces, cam, (size, size + 7),
                               raster=zbuffer.Rasterization(*got)),
      raster.vertex_visibility(verts, faces, cam, (size, size + 7)))
  with pytest.raises(ValueError, match="face index"):
    kernel_raster.rasterize(uv, x_cam[:, 2], faces + len(verts), (8, 8), 0.01)


def test_subset_visibility_kernel_equals_numpy_visibility(cc0_model):
  """cpu_kernel.raster.subset_visibility = evidence vertex_visibility(...)[subset] exactly (the
  fitter's part-term visibility): every vertex, on bodies inside, partly off and near the image
  edge, with the z-buffer drawn only in the mesh's box."""
  from flowpose.body.cpu_kernel import raster as kernel_raster  # pylint: disable=g-import-not-at-top
  from flowpose.evidence import raster, views  # pylint: disable=g-import-not-at-top
  from flowpose.geometry import camera  # pylint: disable=g-import-not-at-top
  rot, betas, _ = inputs(cc0_model, 3, seed=9)
  rot = rot.at[:, 0].set(jnp.asarray(np.diag([1.0, -1.0, -1.0]), jnp.float32))
  faces = np.asarray(cc0_model.faces)
  everything = np.arange(cc0_model.num_vertices)
  hidden = 0
  for b, transl in enumerate(([0.1, 0.2, 4.0], [1.2, 0.2, 3.0], [-0.4, -1.1, 2.5])):
    verts = np.asarray(bm.forward(cc0_model, rot[b], betas[b], jnp.array(transl)).vertices)
    cam = raster.PinholeCamera(np.eye(3), np.zeros(3), np.array([1000.0, 1010.0]),
                               np.array([500.0, 480.0]))
    want = raster.vertex_visibility(verts, faces, cam, (1000, 1007))
    x_cam, uv = views.to_camera(verts, cam)
    got = kernel_raster.subset_visibility(x_cam, uv, faces, (1000, 1007), cam.focal,
                                          cam.principal_point, everything,
                                          near=camera.MIN_DEPTH)
    np.testing.assert_array_equal(got, want)
    hidden += np.sum(~want)
    sub = np.random.default_rng(b).choice(len(verts), 300, replace=False)
    np.testing.assert_array_equal(kernel_raster.subset_visibility(
        x_cam, uv, faces, (1000, 1007), cam.focal, cam.principal_point, sub), want[sub])
  assert hidden > 3000  # Occluded and off-image vertices both occur.
  with pytest.raises(ValueError, match="subset index"):
    kernel_raster.subset_visibility(x_cam, uv, faces, (8, 8), cam.focal, cam.principal_point,
                                    [len(verts)])
