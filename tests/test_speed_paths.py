"""The parts fit's fast paths against their references (issue 15): the CPU nearest-pair kernel,
the part term on its argmins, the rigid subset of a camera-only stage, the threaded z-buffer
visibility with its mesh-box window."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flowpose import geometry
from flowpose.body.build import assets
from flowpose.body.cpu_kernel import nearest
from flowpose.body.cpu_kernel import raster as kernel_raster
from flowpose.evidence import raster
from flowpose.evidence import views
from flowpose.fitting import fit as fitting
from flowpose.fitting import reduced_body
from flowpose.fitting import stage
from flowpose.geometry import camera
from flowpose.losses import part_groups

pytestmark = pytest.mark.usefixtures("fast_compile")  # conftest: XLA optimisations off

needs_kernel = pytest.mark.skipif(not nearest.available(),
                                  reason="CPU nearest-pair kernel unavailable")


def _masked_argmins(verts, pixels, v_ok, p_ok):
  """The reference: jnp.argmin over the masked `[P, Mp, Mv]` distances, 0 without a partner."""
  dist = jnp.sum(jnp.square(pixels[..., :, None, :] - verts[..., None, :, :]), -1)
  mask = p_ok[..., :, None] & v_ok[..., None, :]
  masked = jnp.where(mask, dist, jnp.inf)
  pixel_arg = jnp.where(jnp.any(mask, -1), jnp.argmin(masked, -1), 0)
  vertex_arg = jnp.where(jnp.any(mask, -2), jnp.argmin(masked, -2), 0)
  return pixel_arg, vertex_arg


@needs_kernel
def test_nearest_pair_kernel_equals_masked_argmin():
  """Batched, vmapped and unbatched calls = jnp.argmin's, with exact ties (duplicated points:
  the lower slot wins), invalid slots (never chosen; 0 for themselves), a part without valid
  vertices and one without valid pixels (0), and group sizes that are not multiples of 8."""
  rng = np.random.default_rng(0)
  shape_v, shape_p = (3, 5, 11, 2), (3, 5, 13, 2)
  verts = rng.integers(0, 6, shape_v).astype(np.float32)  # Coarse grid: many exact ties.
  pixels = rng.integers(0, 6, shape_p).astype(np.float32)
  v_ok, p_ok = rng.random(shape_v[:-1]) > 0.3, rng.random(shape_p[:-1]) > 0.2
  v_ok[0, 1], p_ok[1, 2] = False, False
  want = _masked_argmins(verts, pixels, v_ok, p_ok)
  for got in (jax.jit(nearest.nearest_pair_indices)(verts, pixels, v_ok, p_ok),
              jax.vmap(nearest.nearest_pair_indices)(verts, pixels, v_ok, p_ok),
              nearest.nearest_pair_indices(verts[1], pixels[1], v_ok[1], p_ok[1])):
    batch = slice(None) if got[0].ndim == 3 else 1
    for g, w in zip(got, want):
      np.testing.assert_array_equal(g, np.asarray(w)[batch])
  assert np.any(np.asarray(want[0]) > 0) and np.any(np.asarray(want[1]) > 0)


def _no_near_ties(verts, pixels, v_ok, p_ok, gap=1e-5):
  """Whether every point's nearest partner beats the second by `gap` (relative, well above
  float32 rounding): at a tie within rounding the two paths may pick different pairs (both
  valid subgradients)."""
  dist = np.sum(np.square(pixels[:, :, None] - verts[:, None]), -1)
  mask = p_ok[:, :, None] & v_ok[:, None, :]
  masked = np.where(mask, dist, np.inf)
  for axis in (2, 1):
    two = np.sort(masked, axis=axis).take([0, 1], axis=axis)
    first, second = np.moveaxis(two, axis, 0)
    with np.errstate(invalid="ignore"):  # inf - inf where a point has no partner
      close = np.isfinite(second) & (second - first <= gap * np.maximum(first, 1e-6))
    if np.any(close):
      return False
  return True


@needs_kernel
@pytest.mark.parametrize("vertices_grouped", [True, False])
def test_grouped_part_term_on_kernel_argmins_equals_the_xla_path(vertices_grouped):
  """impl="kernel" = impl="xla" (the `[P, Mp, Mv]` tensor and its written-out min VJP): value
  and terms to float rounding, gradients to 1e-4 relative, batched under vmap as the fitter
  runs it, with padded pixel groups, an absent part and part-dependent visibility."""
  rng = np.random.default_rng(3)
  num_parts, per_part, num_pixels, batch = 6, 7, 60, 4
  verts = rng.normal(0, 40, (batch, num_parts * per_part, 2)).astype(np.float32) + 300
  pixels = rng.normal(0, 40, (batch, num_pixels, 2)).astype(np.float32) + 300
  labels = rng.integers(-1, num_parts, (batch, num_pixels))
  labels[labels == 4] = 5  # Part 4: vertices but no pixels.
  valid = rng.random((batch, num_pixels)) > 0.15
  visibility = rng.uniform(0, 1, (batch, num_parts * per_part)).astype(np.float32)
  groups = part_groups.group_by_label(labels, valid, num_parts)
  vertex_labels = np.repeat(np.arange(num_parts), per_part)
  if vertices_grouped:
    v_groups = part_groups.group_by_label(vertex_labels, None, num_parts)
  else:  # Shuffled subset with an unlabelled vertex: gathers, padded vertex groups.
    vertex_labels = rng.permutation(vertex_labels)
    vertex_labels[3] = -1
    v_groups = part_groups.group_by_label(vertex_labels, None, num_parts)
  for b in range(batch):
    assert _no_near_ties(verts[b][v_groups.index], pixels[b][groups.index[b]], v_groups.valid,
                         groups.valid[b])

  def run(impl):
    def loss(v, vis, pix, index, ok):
      return part_groups.grouped_part_alignment_loss(
          v, v_groups.index, v_groups.valid, vis, pix, index, ok, sigma=0.3, scale=80.0,
          vertices_grouped=vertices_grouped, impl=impl)
    return jax.jit(jax.vmap(jax.value_and_grad(loss, has_aux=True)))(
        verts, visibility, pixels, groups.index, groups.valid)

  (want, want_terms), want_grad = run("xla")
  (got, got_terms), got_grad = run("kernel")
  np.testing.assert_allclose(got, want, rtol=1e-6)
  for name, value in want_terms.items():
    np.testing.assert_allclose(got_terms[name], value, rtol=1e-6, err_msg=name)
  np.testing.assert_allclose(got_grad, want_grad, rtol=1e-4,
                             atol=1e-4 * float(jnp.max(jnp.abs(want_grad))))
  assert float(jnp.max(jnp.abs(want_grad))) > 0
  with pytest.raises(ValueError, match="impl"):
    part_groups.grouped_part_alignment_loss(
        verts[0], v_groups.index, v_groups.valid, visibility[0], pixels[0], groups.index[0],
        groups.valid[0], impl="fast")


@pytest.fixture(scope="module")
def fit_body(fast_compile):  # pylint: disable=unused-argument
  model = assets.load_cc0_model()
  # The root composed with a fixed rotation (as `retarget.pose_dofs_to_body_rotmats` does), and
  # pose-dependent non-root joints.
  fixed = geometry.rotation_about_axis(0.4, "X") @ geometry.rotation_about_axis(-0.2, "Z")
  joints = np.array([3, 7, 12, 17])

  def decoder(dofs, root):
    rots = jnp.stack([geometry.rotation_about_axis(dofs[i], "Z") for i in range(len(joints))])
    out = jnp.broadcast_to(jnp.eye(3), (model.num_joints, 3, 3)).at[joints].set(rots)
    return out.at[0].set(root @ fixed)

  return model, reduced_body.make_fit_body(model, decoder, vertices_per_part=4)


def test_rigid_subset_of_a_camera_stage_equals_the_skinned_subset(fit_body):
  """`rooted_subset` + `subset_from_rooted` = `pose_points(...).vertices` (values, and gradients
  w.r.t. the root and transl to 1e-4), and `person_loss` with `aux["rooted_subset"]` (what
  `run_stage` adds when pose and betas are frozen) has the value without it."""
  model, body = fit_body
  rng = np.random.default_rng(5)
  dofs = jnp.asarray(rng.uniform(-0.8, 0.8, 4), jnp.float32)
  betas = jnp.asarray(rng.normal(0, 1, model.num_betas), jnp.float32)
  root = jnp.asarray(reduced_body.facing_camera_rotation(120.0), jnp.float32)
  transl = jnp.asarray([0.2, -0.1, 4.0], jnp.float32)
  # Jitted: eagerly, the FK's hundreds of small ops dominate the test's time.
  rooted = jax.jit(reduced_body.rooted_subset)(body, dofs, betas)
  weights = jnp.asarray(rng.normal(size=(len(body.sub_index), 3)), jnp.float32)
  skinned = lambda r, t: reduced_body.pose_points(body, dofs, r, betas, t).vertices
  rigid = lambda r, t: reduced_body.subset_from_rooted(body, rooted, dofs, r, t)
  np.testing.assert_allclose(jax.jit(rigid)(root, transl), jax.jit(skinned)(root, transl),
                             rtol=1e-5, atol=1e-5)
  want, got = (jax.jit(jax.grad(lambda r, t, f=f: jnp.sum(weights * f(r, t)), (0, 1)))(
      root, transl) for f in (skinned, rigid))
  for g, w in zip(got, want):
    np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-4 * float(jnp.max(jnp.abs(w))))

  variables = {"pose": dofs, "betas": betas, "orient": geometry.matrix_to_rot6d(root),
               "transl": transl, "log_focal": jnp.log(jnp.float32(1000.0))}
  projected = np.asarray(camera.perspective_project(jax.jit(skinned)(root, transl),
                                                    jnp.full(2, 1000.0), jnp.full(2, 500.0)))
  pixels = projected[::2] + rng.normal(0, 4, (len(projected[::2]), 2)).astype(np.float32)
  groups = part_groups.group_by_label(np.asarray(body.sub_labels)[::2], None, body.num_parts)
  num_kp = body.kp_weights.shape[0]
  aux = {"keypoints": jnp.full((num_kp, 2), 500.0), "confidence": jnp.ones(num_kp),
         "keypoint_mask": jnp.ones(num_kp), "focal_aspect": jnp.ones(2),
         "principal_point": jnp.full(2, 500.0), "depth_init": jnp.float32(4.0),
         "log_focal_init": jnp.log(jnp.float32(1000.0)), "pose_dofs": dofs,
         "visibility": jnp.ones(len(projected)), "part_pixels": jnp.asarray(pixels),
         "part_groups": jnp.asarray(groups.index), "part_group_valid": jnp.asarray(groups.valid)}
  loss_weights = {"keypoints": 0.0, "parts": 1.0, "silhouette": 0.0, "pose_prior": 0.0,
                  "keypoints_anchor": 0.0, "shape_prior": 0.0, "depth": 0.0, "focal": 0.0}
  prior = reduced_body.make_pose_prior("none", dim=4)
  loss = jax.jit(lambda v, a: stage.person_loss(v, a, loss_weights, body, prior.space,
                                                prior.params, True, (0.3, 0.3))[0])
  value = loss(variables, aux)
  np.testing.assert_allclose(loss(variables, {**aux, "rooted_subset": tuple(rooted)}), value,
                             rtol=1e-5)
  assert float(value) > 0


def test_threaded_visibility_equals_the_numpy_z_buffer(fit_body):
  """`fit._visibility` (rows rendered on threads, the kernel's mesh-box window) = numpy's
  `vertex_visibility(...)[subset]` per row, including a body that crosses the near plane (the
  window then skips the points in front of it) and one partly outside the image."""
  model, body = fit_body
  if kernel_raster.subset_visibility(np.zeros((3, 3)) + [0, 0, 1], np.zeros((3, 2)),
                                     np.array([[0, 1, 2]]), (4, 4), [1, 1], [2, 2],
                                     [0]) is None:
    pytest.skip("CPU z-buffer kernel unavailable")
  num = 3
  variables = {"pose": jnp.full((num, 4), 0.3),
               "betas": jnp.zeros((num, model.num_betas)),
               "orient": geometry.matrix_to_rot6d(jnp.asarray(np.stack(
                   [reduced_body.facing_camera_rotation(y) for y in (0.0, 70.0, 180.0)]),
                   jnp.float32)),
               "transl": jnp.asarray([[0.1, 0.2, 4.0], [1.5, 0.0, 3.0], [0.0, 0.3, 0.12]]),
               "log_focal": jnp.log(jnp.full(num, 1000.0))}
  aux = {"focal_aspect": jnp.ones((num, 2)), "principal_point": jnp.full((num, 2), 500.0)}
  prior = reduced_body.make_pose_prior("none", dim=4)
  vis = fitting._visibility(model, body, prior, variables, aux, "zbuffer", (1000, 1000))  # pylint: disable=protected-access
  verts = np.asarray(fitting._posed_vertices(model, body, prior.space, prior.params, variables))  # pylint: disable=protected-access
  sub = np.asarray(body.sub_index)
  behind = 0
  for b in range(num):
    cam = raster.PinholeCamera(np.eye(3), np.zeros(3), np.full(2, 1000.0), np.full(2, 500.0))
    want = raster.vertex_visibility(verts[b], np.asarray(model.faces), cam, (1000, 1000))
    np.testing.assert_array_equal(vis[b], want[sub].astype(np.float32), err_msg=f"row {b}")
    behind += np.sum(views.to_camera(verts[b], cam)[0][:, 2] < camera.MIN_DEPTH)
  assert behind > 0 and 0 < vis.mean() < 1
