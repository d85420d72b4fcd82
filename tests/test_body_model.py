"""Tests for flowpose.body.model (posing vs a plain-numpy LBS reference),
flowpose.body.lbs (skinning's custom VJP, FK methods) and
flowpose.body.model_io (files, weight layout)."""

import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flowpose import geometry
from flowpose.body import lbs
from flowpose.body import model as bm
from flowpose.body import model_io

# A small tree: chain (root-spine-chest-head) with two 2-joint arms off the
# chest and a leg off the root; depths 0..4.
PARENTS = (-1, 0, 1, 2, 2, 4, 2, 6, 0, 8)
NUM_VERTS, NUM_BETAS, TOP_K, NUM_KP = 200, 5, 3, 4


def make_arrays(seed=0, with_posedirs=False):
  """Random but well-formed model arrays in the file layout (float64 inputs)."""
  rng = np.random.default_rng(seed)
  nj = len(PARENTS)
  joints = rng.normal(size=(nj, 3))
  owner = rng.integers(0, nj, NUM_VERTS)
  v_template = joints[owner] + 0.1 * rng.normal(size=(NUM_VERTS, 3))
  dense = np.zeros((NUM_VERTS, nj))
  for v in range(NUM_VERTS):
    others = rng.choice(nj, TOP_K - 1, replace=False)
    dense[v, others] = rng.random(TOP_K - 1)
    dense[v, owner[v]] += 1.0
  dense /= dense.sum(1, keepdims=True)
  idx, weights, dropped = model_io.sparsify_skin_weights(dense, TOP_K)
  assert dropped == 0.0
  j_regressor = np.zeros((nj, NUM_VERTS))
  for j in range(nj):
    members = np.flatnonzero(owner == j)
    members = members if members.size else rng.choice(NUM_VERTS, 3)
    j_regressor[j, members] = 1.0 / members.size
  kp_reg = np.zeros((NUM_KP, NUM_VERTS))
  for k in range(NUM_KP):
    kp_reg[k, rng.choice(NUM_VERTS, 3, replace=False)] = 1.0 / 3
  num_p = 9 * (nj - 1) if with_posedirs else 0
  return {
      "v_template": v_template,
      "shapedirs": 0.05 * rng.normal(size=(NUM_VERTS, 3, NUM_BETAS)),
      "posedirs": 0.01 * rng.normal(size=(num_p, NUM_VERTS * 3)),
      "j_regressor": j_regressor,
      "skin_indices": idx, "skin_weights": weights,
      "keypoint_regressor": kp_reg,
      "faces": rng.integers(0, NUM_VERTS, (50, 3)).astype(np.int32),
      "part_labels": dense.argmax(1).astype(np.int32),
      "parents": np.asarray(PARENTS, np.int32),
      "joint_names": np.asarray([f"j{i}" for i in range(nj)]),
      "part_names": np.asarray([f"p{i}" for i in range(nj)]),
      "keypoint_names": np.asarray([f"k{i}" for i in range(NUM_KP)]),
  }


forward = bm.forward  # The posing entry points are jitted.
forward_aa = bm.forward_axis_angle
aa_to_matrix = jax.jit(geometry.axis_angle_to_matrix)


@pytest.fixture(scope="module", params=[False, True], ids=["lbs", "posedirs"])
def any_model(request):
  return model_io.model_from_arrays(make_arrays(with_posedirs=request.param))


@pytest.fixture(scope="module")
def tiny_model():
  """The model with pose correctives (a superset of the plain LBS path)."""
  return model_io.model_from_arrays(make_arrays(with_posedirs=True))


def reference_forward(model, rotmats, betas, transl):
  """Plain numpy float64 LBS: per-joint Python loop, dense weights."""
  p = lambda x: np.asarray(x, np.float64)
  rotmats, betas = p(rotmats), p(betas)
  v_shaped = p(model.v_template) + np.einsum("vcs,s->vc", p(model.shapedirs),
                                             betas)
  rest = p(model.j_regressor) @ v_shaped
  v_posed = v_shaped
  if model.posedirs.shape[0]:
    feat = (rotmats[1:] - np.eye(3)).reshape(-1)
    v_posed = v_shaped + (feat @ p(model.posedirs)).reshape(-1, 3)
  nj = len(model.parents)
  world = np.zeros((nj, 4, 4))
  for j, parent in enumerate(model.parents):
    local = np.eye(4)
    local[:3, :3] = rotmats[j]
    local[:3, 3] = rest[j] - (rest[parent] if parent >= 0 else 0.0)
    world[j] = local if parent < 0 else world[parent] @ local
  rel = world.copy()
  for j in range(nj):
    rel[j, :3, 3] -= world[j, :3, :3] @ rest[j]
  dense = bm.dense_skin_weights(model).astype(np.float64)
  blended = np.einsum("vj,jab->vab", dense, rel)
  homog = np.concatenate([v_posed, np.ones((len(v_posed), 1))], 1)
  verts = np.einsum("vab,vb->va", blended, homog)[:, :3] + transl
  return verts, world[:, :3, 3] + transl, world[:, :3, :3]


def random_inputs(seed, model, scale=0.8):
  rng = np.random.default_rng(seed)
  pose = scale * rng.normal(size=(model.num_joints, 3))
  betas = rng.normal(size=model.num_betas)
  transl = rng.normal(size=3)
  return tuple(jnp.asarray(x, jnp.float32) for x in (pose, betas, transl))


def test_rest_pose_reproduces_template(any_model):
  tiny_model = any_model
  rot = jnp.broadcast_to(jnp.eye(3), (tiny_model.num_joints, 3, 3))
  out = forward(tiny_model, rot, jnp.zeros(NUM_BETAS))
  np.testing.assert_allclose(out.vertices, tiny_model.v_template, atol=1e-6)
  rest_joints = tiny_model.j_regressor @ tiny_model.v_template
  np.testing.assert_allclose(out.joints, rest_joints, atol=1e-6)
  np.testing.assert_allclose(
      out.keypoints, tiny_model.keypoint_regressor @ tiny_model.v_template,
      atol=1e-6)


@pytest.mark.parametrize("fk_method", ["levels", "doubling"])
def test_matches_numpy_reference(any_model, fk_method):
  tiny_model = any_model
  for seed in range(3):
    pose, betas, transl = random_inputs(seed, tiny_model)
    rot = aa_to_matrix(pose)
    out = forward(tiny_model, rot, betas, transl, fk_method=fk_method)
    verts, joints, joint_rot = reference_forward(tiny_model, rot, betas,
                                                 transl)
    np.testing.assert_allclose(out.vertices, verts, atol=1e-5)
    np.testing.assert_allclose(out.joints, joints, atol=1e-5)
    np.testing.assert_allclose(out.joint_rotmats, joint_rot, atol=1e-5)
    np.testing.assert_allclose(
        out.keypoints, np.asarray(tiny_model.keypoint_regressor) @ verts,
        atol=1e-5)
    np.testing.assert_allclose(
        jax.jit(bm.regress_joints)(tiny_model, betas),
        np.asarray(tiny_model.j_regressor) @ jax.jit(bm.shape_blend)(
            tiny_model, betas), atol=1e-5)


def test_global_rotation_and_translation_are_rigid(tiny_model):
  pose, betas, _ = random_inputs(7, tiny_model)
  rot = aa_to_matrix(pose)
  base = forward(tiny_model, rot, betas, jnp.zeros(3))
  g = aa_to_matrix(jnp.array([0.3, -1.2, 0.5]))
  t = jnp.array([0.5, -0.2, 2.0])
  moved = forward(tiny_model, rot.at[0].set(g @ rot[0]), betas, t)
  root = bm.regress_joints(tiny_model, betas)[0]
  expected = (base.vertices - root) @ g.T + root + t
  np.testing.assert_allclose(moved.vertices, expected, atol=1e-5)
  np.testing.assert_allclose(moved.joints, (base.joints - root) @ g.T +
                             root + t, atol=1e-5)


def test_gradients_are_finite(tiny_model):
  def loss(pose, betas):
    out = bm.forward_axis_angle(tiny_model, pose, betas)
    return jnp.sum(out.vertices**2) + jnp.sum(out.keypoints**2)
  grad = jax.jit(jax.grad(loss, argnums=(0, 1)))
  for pose in (jnp.zeros((tiny_model.num_joints, 3)),
               random_inputs(3, tiny_model)[0]):
    g_pose, g_betas = grad(pose, jnp.ones(NUM_BETAS))
    assert np.all(np.isfinite(g_pose)) and np.all(np.isfinite(g_betas))
    assert np.any(g_pose != 0) and np.any(g_betas != 0)


def test_skin_custom_vjp_matches_autodiff(tiny_model):
  rng = np.random.default_rng(4)
  verts = jnp.asarray(rng.normal(size=(NUM_VERTS, 3)), jnp.float32)
  transforms = jnp.asarray(rng.normal(size=(len(PARENTS), 3, 4)), jnp.float32)
  weights = tiny_model.skin_weights
  target = jnp.asarray(rng.normal(size=(NUM_VERTS, 3)), jnp.float32)

  def loss(skin_fn):
    return lambda v, t, w: jnp.sum(
        (skin_fn(v, t, tiny_model.skin_indices, w) - target)**2)
  args = (verts, transforms, weights)
  got = jax.jit(jax.grad(loss(lbs.skin), argnums=(0, 1, 2)))(*args)
  want = jax.jit(jax.grad(loss(lbs.skin_autodiff), argnums=(0, 1, 2)))(*args)
  for g, w in zip(got, want):
    np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-4)


def test_jit_vmap_and_eager_agree(tiny_model):
  poses = jnp.stack([random_inputs(s, tiny_model)[0] for s in range(4)])
  betas = jax.random.normal(jax.random.PRNGKey(9), (4, NUM_BETAS))
  batched = jax.jit(jax.vmap(bm.forward_axis_angle, (None, 0, 0)))(
      tiny_model, poses, betas)
  for i, no_jit in ((0, False), (2, True)):
    rot = aa_to_matrix(poses[i])
    with jax.disable_jit(no_jit):  # op by op
      single = bm.forward(tiny_model, rot, betas[i])
    for name in ("vertices", "joints", "keypoints", "joint_rotmats"):
      np.testing.assert_allclose(getattr(batched, name)[i],
                                 getattr(single, name), atol=1e-5)


def test_rotation_parameterisations_agree(tiny_model):
  pose, betas, transl = random_inputs(11, tiny_model)
  rot = aa_to_matrix(pose)
  ref = forward(tiny_model, rot, betas, transl).vertices
  got_aa = forward_aa(tiny_model, pose, betas, transl).vertices
  got_6d = bm.forward_rot6d(
      tiny_model, jax.jit(geometry.matrix_to_rot6d)(rot), betas,
      transl).vertices
  angles = jax.jit(geometry.matrix_to_euler, static_argnums=(1, 2))(
      rot, "ZXY", True)
  got_eu = bm.forward_euler(
      tiny_model, angles, betas, transl, order="ZXY", degrees=True).vertices
  for got in (got_aa, got_6d, got_eu):
    np.testing.assert_allclose(got, ref, atol=1e-5)


def test_forward_kinematics_methods_agree():
  parents = (-1, 0, 1, 2, 3, 4, 5, 6, 1, 8, 0, 10, 11, 2, 13)  # depth 7
  rng = np.random.default_rng(0)
  rot = aa_to_matrix(jnp.asarray(rng.normal(size=(15, 3)),
                                                  jnp.float32))
  rest = jnp.asarray(rng.normal(size=(15, 3)), jnp.float32)
  fk = jax.jit(lbs.forward_kinematics, static_argnums=(0, 3))
  r1, p1 = fk(parents, rot, rest, "levels")
  r2, p2 = fk(parents, rot, rest, "doubling")
  np.testing.assert_allclose(r1, r2, atol=1e-5)
  np.testing.assert_allclose(p1, p2, atol=1e-5)


def test_cc0_model_matches_reference():
  from flowpose.body.build import assets  # pylint: disable=g-import-not-at-top
  model = model_io.load_model(assets.ensure_body_model())
  assert model.num_vertices > 10000 and model.num_joints == 31
  pose, betas, transl = random_inputs(5, model, scale=0.5)
  rot = aa_to_matrix(pose)
  out = forward(model, rot, betas, transl)
  verts, joints, _ = reference_forward(model, rot, betas, transl)
  np.testing.assert_allclose(out.vertices, verts, atol=1e-5)
  np.testing.assert_allclose(out.joints, joints, atol=1e-5)


# ---------------------------------------------------------------------------
# Files
# ---------------------------------------------------------------------------


def test_save_load_round_trip_is_deterministic(tmp_path):
  model = model_io.model_from_arrays(make_arrays(with_posedirs=True))
  meta = json.dumps({"source": "synthetic"})
  path_a = model_io.save_model(model, tmp_path / "a.npz", metadata_json=meta,
                         joint_tails=np.zeros((len(PARENTS), 3)))
  path_b = model_io.save_model(model, tmp_path / "b.npz", metadata_json=meta,
                         joint_tails=np.zeros((len(PARENTS), 3)))
  assert pathlib.Path(path_a).read_bytes() == pathlib.Path(path_b).read_bytes()
  assert sorted(p.name for p in tmp_path.iterdir()) == ["a.npz", "b.npz"]
  loaded = model_io.load_model(path_a)
  for leaf_a, leaf_b in zip(jax.tree.leaves(model), jax.tree.leaves(loaded)):
    np.testing.assert_array_equal(leaf_a, leaf_b)
  assert loaded.parents == PARENTS and loaded.joint_names == model.joint_names
  extras = model_io.load_extras(path_a)
  assert extras["metadata_json"] == meta and set(extras) == {
      "metadata_json", "joint_tails"}


def _corrupt(arrays, field, kind):
  arrays = dict(arrays)
  if kind == "missing":
    del arrays[field]
  elif kind == "shape":
    arrays[field] = arrays[field][..., :-1]
  elif kind == "nan":
    arrays[field] = arrays[field].copy()
    arrays[field].flat[3] = np.nan
  elif kind == "dtype":
    arrays[field] = arrays[field].astype(np.float32)
  elif kind == "range":
    arrays[field] = arrays[field].copy()
    arrays[field].flat[5] = 10_000
  elif kind == "weights":
    arrays[field] = arrays[field] * 1.5
  elif kind == "order":
    arrays[field] = np.asarray((-1, 0, 3, 1, 2, 4, 2, 6, 0, 8))
  return arrays


@pytest.mark.parametrize("field,kind", [
    ("shapedirs", "missing"), ("j_regressor", "shape"), ("v_template", "nan"),
    ("posedirs", "shape"), ("skin_indices", "dtype"), ("parents", "order"),
    ("skin_indices", "range"), ("faces", "range"), ("skin_weights", "weights"),
    ("keypoint_names", "missing"), ("skin_weights", "nan"),
])
def test_bad_files_raise_naming_the_field(tmp_path, field, kind):
  arrays = _corrupt(make_arrays(with_posedirs=True), field, kind)
  arrays["format_version"] = np.asarray(1)
  path = tmp_path / "bad.npz"
  np.savez(path, **arrays)
  with pytest.raises(model_io.BodyModelError, match=f"bad.npz.*'{field}'"):
    model_io.load_model(path)


def test_unreadable_and_pickled_files(tmp_path):
  with pytest.raises(model_io.BodyModelError, match="no such"):
    model_io.load_model(tmp_path / "missing.npz")
  path = tmp_path / "chumpy.npz"
  np.savez(path, v_template=np.asarray([object()], dtype=object))
  with pytest.raises(model_io.BodyModelError, match="pickled"):
    model_io.load_model(path)
  path = tmp_path / "noversion.npz"
  np.savez(path, **make_arrays())
  with pytest.raises(model_io.BodyModelError, match="format_version"):
    model_io.load_model(path)


def test_sparsify_skin_weights_reports_dropped_weight():
  dense = np.array([[0.5, 0.3, 0.2, 0.0], [1.0, 0.0, 0.0, 0.0]])
  idx, weights, dropped = model_io.sparsify_skin_weights(dense, 2)
  np.testing.assert_array_equal(idx, [[0, 1], [0, 0]])
  np.testing.assert_allclose(weights, [[0.625, 0.375], [1.0, 0.0]])
  assert dropped == pytest.approx(0.2)


def test_benchmark_interleaves_rounds_and_records_load(monkeypatch):
  # benchmarks/body_model.py: both sides alternate call by call, each round gets its own ratio
  # and load reading, and the ratio is the baseline's median over flowpose's.
  from benchmarks import body_model as bench  # pylint: disable=g-import-not-at-top
  calls, clock = [], [0.0]
  monkeypatch.setattr(bench.time, "perf_counter", lambda: clock[0])
  monkeypatch.setattr(bench.time, "process_time", lambda: clock[0] / 2)
  loads = iter([1.0, 2.0, 3.0])
  monkeypatch.setattr(bench.os, "getloadavg", lambda: (next(loads), 0.0, 0.0))

  def timed(name, seconds):
    def fn():
      calls.append(name)
      clock[0] += seconds[len([c for c in calls if c == name]) % len(seconds)]
    return fn
  ours, theirs = timed("ours", [0.001]), timed("theirs", [0.010, 0.030])
  entry = bench._entry(  # pylint: disable=protected-access
      "m", "fwd", 4, (ours, theirs, None), 2, False, rounds=3)
  assert calls == ["ours", "theirs"] * 7  # one warm-up each, then A B A B
  assert entry["loads"] == [1.0, 2.0, 3.0] and len(entry["round_ratios"]) == 3
  assert entry["flowpose_ms"] == pytest.approx(1.0)
  assert entry["smplx_ms"] == pytest.approx(20.0) and entry["ratio"] == pytest.approx(20.0)
  assert entry["cpu_ratio"] == pytest.approx(20.0)
