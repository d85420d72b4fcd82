"""Tests for flowpose.losses: robustifier, keypoints, part alignment, priors."""

import importlib.util

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from flowpose import losses
from flowpose.losses import part_groups

NUM_PARTS = 4
IMAGE_SIZE = 64
SIGMA = 10.0  # Pixels; well above the discretisation error, below the body.

# Synthetic 2D "body": labelled ellipses (cx, cy, semi-axis x, semi-axis y,
# angle rad) that do not overlap: torso, two arms, a leg.
ELLIPSES = (
    (32.0, 28.0, 8.0, 12.0, 0.0),
    (15.0, 24.0, 3.0, 10.0, 0.3),
    (49.0, 24.0, 3.0, 10.0, -0.3),
    (32.0, 50.0, 4.0, 7.0, 0.0),
)


def _inside(x, y, ellipse):
  cx, cy, ax, ay, angle = ellipse
  c, s = np.cos(angle), np.sin(angle)
  u = c * (x - cx) + s * (y - cy)
  v = -s * (x - cx) + c * (y - cy)
  return (u / ax)**2 + (v / ay)**2 <= 1.0


def _synthetic_vertices():
  """Points on a 0.8 px grid, offset from the pixel grid, inside each part."""
  grid = np.arange(0.3, IMAGE_SIZE, 0.8)
  x, y = [a.ravel() for a in np.meshgrid(grid, grid)]
  points, labels = [], []
  for part, ellipse in enumerate(ELLIPSES):
    keep = _inside(x, y, ellipse)
    points.append(np.stack([x[keep], y[keep]], -1))
    labels.append(np.full(keep.sum(), part))
  return (np.concatenate(points).astype(np.float32),
          np.concatenate(labels).astype(np.int32))


def _label_image():
  """Rasterises the ellipses at pixel centres (column + 0.5, row + 0.5)."""
  y, x = np.mgrid[:IMAGE_SIZE, :IMAGE_SIZE] + 0.5
  image = np.full((IMAGE_SIZE, IMAGE_SIZE), -1, np.int32)
  for part, ellipse in enumerate(ELLIPSES):
    image[_inside(x, y, ellipse)] = part
  return image


VERTICES, VERTEX_LABELS = _synthetic_vertices()
VISIBILITY = np.ones(len(VERTICES), np.float32)
CENTROID = VERTICES.mean(0)
PIXELS, PIXEL_LABELS, PIXEL_VALID = losses.sample_part_pixels(
    _label_image(), 256, np.random.default_rng(0))


def _transform(params, vertices=VERTICES):
  """2D similarity about the centroid; params = (tx, ty, angle, log_scale)."""
  tx, ty, angle, log_scale = params
  c, s = jnp.cos(angle), jnp.sin(angle)
  rot = jnp.array([[c, -s], [s, c]]) * jnp.exp(log_scale)
  return (vertices - CENTROID) @ rot.T + CENTROID + jnp.stack([tx, ty])


pytestmark = pytest.mark.usefixtures("fast_compile")  # conftest: XLA optimisations off


def _align_fn(vertices, vertex_labels=VERTEX_LABELS, visibility=VISIBILITY,
              pixel_valid=PIXEL_VALID, temperature=None, vertex_subset=None,
              chunk_size=None):
  return losses.part_alignment_loss(
      vertices, vertex_labels, visibility, PIXELS, PIXEL_LABELS, pixel_valid,
      num_parts=NUM_PARTS, sigma=SIGMA, temperature=temperature,
      chunk_size=chunk_size, vertex_subset=vertex_subset)


# `temperature` is traced (None vs a value is the only retrace), so one
# compile serves every temperature.
_align = jax.jit(_align_fn, static_argnames="chunk_size")
_align_grad = jax.jit(
    jax.value_and_grad(lambda *a, **k: _align_fn(*a, **k)[0]),
    static_argnames="chunk_size")


def _align_at(params, **kwargs):
  return _align(_transform(jnp.asarray(params, jnp.float32)), **kwargs)[0]


# gmof and keypoints ###########################################################


def test_gmof_hand_values():
  np.testing.assert_allclose(losses.gmof(jnp.array(4.0), 2.0), 2.0)
  np.testing.assert_allclose(losses.gmof(jnp.array(0.0), 3.0), 0.0)
  np.testing.assert_allclose(losses.gmof(jnp.array(1.0), 1.0), 0.5)
  # Quadratic near zero, saturating at sigma^2.
  np.testing.assert_allclose(losses.gmof(jnp.array(1e-4), 10.0), 1e-4,
                             rtol=1e-5)
  np.testing.assert_allclose(losses.gmof(jnp.array(1e12), 10.0), 100.0,
                             rtol=1e-6)


def _keypoints():
  target = jnp.array([[10.0, 20.0], [30.0, 40.0], [50.0, 5.0], [7.0, 70.0]])
  confidence = jnp.array([1.0, 0.5, 0.8, 0.9])
  return target, confidence


def test_keypoint_loss_zero_at_target_and_grows_with_offset():
  target, confidence = _keypoints()
  assert losses.keypoint_reprojection_loss(target, target, confidence) == 0.0
  loss_fn = jax.jit(losses.keypoint_reprojection_loss)
  values = [
      loss_fn(target + d, target, confidence)
      for d in (1.0, 5.0, 20.0, 100.0, 1000.0)
  ]
  assert np.all(np.diff(values) > 0)
  assert values[-1] < 100.0**2  # Saturates below sigma^2.


def test_keypoint_loss_ignores_missing_keypoints_with_finite_gradients():
  target, confidence = _keypoints()
  pred = target + jnp.array([[1.0, 2.0], [3.0, -1.0], [0.5, 0.5], [2.0, 0.0]])
  reference = losses.keypoint_reprojection_loss(pred[:2], target[:2],
                                                confidence[:2])
  # Keypoint 2 has zero confidence (and a wild target), 3 a NaN target.
  bad_target = target.at[2].set(1e6).at[3].set(jnp.nan)
  bad_confidence = confidence.at[2].set(0.0)
  loss_and_grad = jax.jit(jax.value_and_grad(
      losses.keypoint_reprojection_loss))
  value, grad = loss_and_grad(pred, bad_target, bad_confidence)
  np.testing.assert_allclose(value, reference, rtol=1e-6)
  assert np.all(np.isfinite(grad))
  np.testing.assert_array_equal(grad[2:], 0.0)
  # Nothing valid: 0, finite gradient.
  value, grad = loss_and_grad(pred, jnp.full_like(target, jnp.nan),
                              confidence)
  assert value == 0.0 and np.all(grad == 0.0)


def test_keypoint_loss_normalisation_and_resolution_independence():
  target, confidence = _keypoints()
  pred = target + 3.0
  value = losses.keypoint_reprojection_loss(pred, target, confidence)
  np.testing.assert_allclose(
      losses.keypoint_reprojection_loss(pred, target, 7.0 * confidence),
      value, rtol=1e-6)
  scale = losses.person_scale_from_keypoints(target, confidence)
  np.testing.assert_allclose(scale, 65.0)  # max(50 - 7, 70 - 5)
  # The same person imaged at 4x the resolution gives the same loss.
  kwargs = dict(sigma=0.2)
  low = losses.keypoint_reprojection_loss(pred, target, confidence,
                                          scale=scale, **kwargs)
  high = losses.keypoint_reprojection_loss(
      4 * pred, 4 * target, confidence,
      scale=losses.person_scale_from_keypoints(4 * target, confidence),
      **kwargs)
  np.testing.assert_allclose(low, high, rtol=1e-5)


# Part alignment ###############################################################


def test_sample_part_pixels_is_even_across_parts():
  image = np.full((40, 50), -1, np.int32)
  image[:20, :50] = 0  # 1000 px
  image[30:32, :5] = 1  # 10 px
  image[25:35, 20:40] = 2  # 200 px
  pixels, labels, valid = losses.sample_part_pixels(image, 121, 0)
  assert pixels.shape == (121, 2) and pixels.dtype == np.float32
  assert valid.all()
  # The small part gives all it has; the others share the rest equally.
  counts = np.bincount(labels)
  assert counts[1] == 10 and sorted(counts[[0, 2]]) == [55, 56]
  xy = np.floor(pixels).astype(int)
  np.testing.assert_array_equal(pixels - xy, 0.5)  # Pixel centres.
  np.testing.assert_array_equal(image[xy[:, 1], xy[:, 0]], labels)
  assert len(np.unique(xy, axis=0)) == 121  # Without replacement.
  again = losses.sample_part_pixels(image, 121, np.random.default_rng(0))
  np.testing.assert_array_equal(again[0], pixels)


def test_sample_part_pixels_pads_and_skips_background():
  image = np.full((8, 8), -1, np.int32)
  image[2:4, 2:4] = 3
  pixels, labels, valid = losses.sample_part_pixels(image, 10, 1)
  assert valid.sum() == 4 and np.all(labels[valid] == 3)
  centres = {(2.5, 2.5), (2.5, 3.5), (3.5, 2.5), (3.5, 3.5)}
  assert set(map(tuple, pixels[valid].tolist())) == centres
  assert np.all(labels[~valid] == -1) and np.all(pixels[~valid] == 0)
  _, labels, valid = losses.sample_part_pixels(np.full((4, 4), -1), 5, 1)
  assert not valid.any() and np.all(labels == -1)
  with pytest.raises(ValueError, match="label_image"):
    losses.sample_part_pixels(np.zeros((2, 2, 2)), 5, 1)


def test_part_alignment_small_at_truth():
  total, terms = _align(VERTICES)
  # Non-zero from discretisation (sampled integer pixels vs a 0.8 px vertex
  # grid), but well below a pixel squared.
  assert 0.0 < total < 1.0
  assert terms["part_pixel_to_vertex"] < 0.5
  assert terms["part_present_pixel_to_vertex"].all()
  assert terms["part_present_vertex_to_pixel"].all()


@pytest.mark.parametrize("axis,steps", [
    (0, (0.0, 1.0, 2.0, 4.0, 8.0)),  # tx, pixels
    (1, (0.0, -1.0, -2.0, -4.0, -8.0)),  # ty, pixels
    (2, np.deg2rad([0.0, 3.0, 6.0, 12.0, 24.0])),  # rotation
    (3, np.log([1.0, 1.05, 1.1, 1.2, 1.4])),  # grow
    (3, np.log([1.0, 0.95, 0.9, 0.8, 0.7])),  # shrink
])
def test_part_alignment_grows_away_from_truth(axis, steps):
  values = []
  for step in steps:
    params = np.zeros(4, np.float32)
    params[axis] = step
    values.append(float(_align_at(params)))
  assert np.all(np.diff(values) > 0), values


def test_part_alignment_minimal_at_truth_among_subpixel_shifts():
  truth = float(_align_at(np.zeros(4)))
  for dx, dy in [(0.3, 0.0), (0.0, 0.3), (-0.3, 0.3), (0.5, -0.5)]:
    assert truth <= float(_align_at([dx, dy, 0.0, 0.0])) + 0.05


def test_part_alignment_swapped_labels_cost_more():
  swapped = VERTEX_LABELS.copy()
  swapped[VERTEX_LABELS == 1] = 2
  swapped[VERTEX_LABELS == 2] = 1
  truth = float(_align(VERTICES)[0])
  assert float(_align(VERTICES, vertex_labels=swapped)[0]) > 10 * truth + 5.0


def test_part_alignment_gradient_descent_recovers_pose():
  truth = np.zeros(4, np.float32)
  # Angle and log-scale in units of ~20 px of motion at the body's radius,
  # so one Adam step size suits every parameter.
  units = np.array([1.0, 1.0, 1 / 20, 1 / 20], np.float32)
  start = np.array([3.0, -2.5, 2.0, 1.5], np.float32)  # (3 px, -2.5 px, ...)
  optimizer = optax.adam(0.25)

  @jax.jit
  def step(x, state):
    grad = jax.grad(lambda x: _align_at(x * units))(x)
    updates, state = optimizer.update(grad, state)
    return optax.apply_updates(x, updates), state, grad

  x, state = jnp.asarray(start), optimizer.init(start)
  for i in range(60):
    x, state, grad = step(x, state)
    assert np.all(np.isfinite(grad))
    if i == 0:  # The first gradient already points back toward the truth.
      assert np.dot(-np.asarray(grad), truth - start) > 0
  assert np.linalg.norm(x - truth) < 0.2 * np.linalg.norm(start - truth)


def test_part_alignment_soft_min_bounds_and_gradients():
  shifted = _transform(jnp.array([2.0, 1.0, 0.05, 0.0]))
  hard = _align(shifted)[0]
  near_hard, _ = _align_grad(shifted, temperature=1e-3)
  soft, grad = _align_grad(shifted, temperature=4.0)
  np.testing.assert_allclose(near_hard, hard, rtol=1e-3)
  assert soft > hard  # A weighted mean of distances is >= their min.
  # Shifted by +2 px in x: the gradient pushes the vertices back (-x).
  assert np.all(np.isfinite(grad)) and grad[:, 0].sum() > 0


def test_part_alignment_absent_part_and_invisible_vertices_contribute_nothing():
  no_leg = PIXEL_VALID & (PIXEL_LABELS != 3)
  leg = VERTEX_LABELS == 3
  moved = VERTICES.copy()
  moved[leg] += 10.0
  base, terms = _align(VERTICES, pixel_valid=no_leg)
  np.testing.assert_allclose(_align(moved, pixel_valid=no_leg)[0], base)
  assert not terms["part_present_vertex_to_pixel"][3]
  assert not terms["part_present_pixel_to_vertex"][3]
  # Far-off vertices of the torso with zero visibility: only pixel->vertex
  # could see them, and they are never the nearest.
  extra = np.concatenate([VERTICES, np.full((5, 2), 200.0, np.float32)])
  labels = np.concatenate([VERTEX_LABELS, np.zeros(5, np.int32)])
  visibility = np.concatenate([VISIBILITY, np.zeros(5, np.float32)])
  np.testing.assert_allclose(
      _align(extra, vertex_labels=labels, visibility=visibility)[0],
      _align(VERTICES)[0], rtol=1e-6)
  # Visibility is a weight, not an optimisation target.
  grad = jax.jit(jax.grad(lambda w: _align_fn(VERTICES + 1.0,
                                               visibility=w)[0]))(VISIBILITY)
  np.testing.assert_array_equal(grad, 0.0)


def test_part_alignment_chunking_subset_and_vmap_agree():
  shifted = _transform(jnp.array([1.5, -1.0, 0.1, 0.05]))
  value, grad = _align_grad(shifted)
  chunked_value, chunked_grad = _align_grad(shifted, chunk_size=100)
  np.testing.assert_allclose(chunked_value, value, rtol=1e-6)
  np.testing.assert_allclose(chunked_grad, grad, rtol=1e-5, atol=1e-7)
  subset = np.arange(0, len(VERTICES), 3)
  np.testing.assert_allclose(
      _align(shifted, vertex_subset=subset)[0],
      _align(shifted[subset], vertex_labels=VERTEX_LABELS[subset],
             visibility=VISIBILITY[subset])[0], rtol=1e-6)
  batched = jax.vmap(lambda v: _align(v)[0])(jnp.stack([VERTICES, shifted]))
  np.testing.assert_allclose(batched, [_align(VERTICES)[0], value], rtol=1e-6)


@pytest.mark.parametrize("temperature", [None, 4.0])
def test_grouped_part_alignment_equals_the_ungrouped_loss(temperature):
  """losses.part_groups: same value, terms and gradient on the same points,
  with invalid pixels, an absent part, unlabelled vertices and part-dependent
  visibility (what the fitter relies on when it swaps one for the other).
  Point 0 (the index of padding slots) is in no group but sits on a point of
  another part, so padding that leaked into a min would change the value."""
  rng = np.random.default_rng(1)
  shifted = _transform(jnp.array([1.5, -1.0, 0.1, 0.05]))
  arm_pixel = PIXELS[np.flatnonzero(PIXEL_LABELS == 1)[0]]
  vertices = jnp.concatenate([jnp.asarray(arm_pixel)[None], shifted])
  labels = np.concatenate([[-1], VERTEX_LABELS])
  labels[1::7] = -1  # unlabelled vertices
  visibility = rng.uniform(0.0, 1.0, len(labels)).astype(np.float32)
  pixels = np.concatenate([VERTICES[VERTEX_LABELS == 0][:1] + 1.0, PIXELS])
  pixel_labels = np.concatenate([[3], PIXEL_LABELS])
  pixel_valid = np.concatenate([[False], PIXEL_VALID & (PIXEL_LABELS != 2) &
                                (rng.random(len(PIXELS)) > 0.1)])
  vertex_groups = part_groups.group_by_label(labels, None, NUM_PARTS)
  pixel_groups = part_groups.group_by_label(pixel_labels, pixel_valid, NUM_PARTS)
  assert not vertex_groups.valid.all() and not pixel_groups.valid.all()  # padded

  def grouped(v):
    return part_groups.grouped_part_alignment_loss(
        v, vertex_groups.index, vertex_groups.valid, visibility, pixels,
        pixel_groups.index, pixel_groups.valid, sigma=SIGMA,
        temperature=temperature)

  def plain(v):
    return losses.part_alignment_loss(
        v, labels, visibility, pixels, pixel_labels, pixel_valid, num_parts=NUM_PARTS,
        sigma=SIGMA, temperature=temperature)
  (want, want_terms), want_grad = jax.jit(jax.value_and_grad(plain, has_aux=True))(vertices)
  (got, got_terms), got_grad = jax.jit(jax.value_and_grad(grouped, has_aux=True))(vertices)
  np.testing.assert_allclose(got, want, rtol=1e-6)
  for name, value in want_terms.items():
    np.testing.assert_allclose(got_terms[name], value, rtol=1e-6, err_msg=name)
  assert not got_terms["part_present_pixel_to_vertex"][2]
  np.testing.assert_allclose(got_grad, want_grad, rtol=1e-5,
                             atol=1e-6 * float(jnp.abs(want_grad).max()))


def test_grouped_part_alignment_on_vertices_in_group_order():
  """`vertices_grouped=True` (the fitter's subset, `make_fit_body`: a reshape, not gathers) = the
  ungrouped loss on the same points: value, terms and gradient (the hand-written min VJP)."""
  counts = np.bincount(VERTEX_LABELS[VERTEX_LABELS >= 0], minlength=NUM_PARTS)
  size = int(counts.min())
  order = np.concatenate([np.flatnonzero(VERTEX_LABELS == p)[:size] for p in range(NUM_PARTS)])
  vertices = _transform(jnp.array([1.5, -1.0, 0.1, 0.05]))[order]
  labels = VERTEX_LABELS[order]
  visibility = np.random.default_rng(2).uniform(size=len(order)).astype(np.float32)
  vertex_groups = part_groups.group_by_label(labels, None, NUM_PARTS)
  np.testing.assert_array_equal(vertex_groups.index.ravel(), np.arange(len(order)))
  pixel_groups = part_groups.group_by_label(PIXEL_LABELS, PIXEL_VALID, NUM_PARTS)

  def grouped(v):
    return part_groups.grouped_part_alignment_loss(
        v, vertex_groups.index, vertex_groups.valid, visibility, PIXELS, pixel_groups.index,
        pixel_groups.valid, sigma=SIGMA, scale=3.0, vertices_grouped=True)

  def plain(v):
    return losses.part_alignment_loss(v, labels, visibility, PIXELS, PIXEL_LABELS, PIXEL_VALID,
                                      num_parts=NUM_PARTS, sigma=SIGMA, scale=3.0)
  (want, want_terms), want_grad = jax.jit(jax.value_and_grad(plain, has_aux=True))(vertices)
  (got, got_terms), got_grad = jax.jit(jax.value_and_grad(grouped, has_aux=True))(vertices)
  np.testing.assert_allclose(got, want, rtol=1e-6)
  for name, value in want_terms.items():
    np.testing.assert_allclose(got_terms[name], value, rtol=1e-6, err_msg=name)
  np.testing.assert_allclose(got_grad, want_grad, rtol=1e-5,
                             atol=1e-6 * float(jnp.abs(want_grad).max()))


def test_group_by_label_groups_pads_and_batches():
  labels = np.array([[2, 0, 2, -1, 5, 0, 2], [1, 1, 1, 1, 0, 0, 0]])
  valid = np.array([[1, 1, 1, 1, 1, 0, 1], [1, 1, 1, 1, 1, 1, 1]], bool)
  groups = part_groups.group_by_label(labels, valid, 3)
  assert groups.index.shape == (2, 3, 4)  # the largest group: row 1, part 1
  members = lambda b, p: list(groups.index[b, p][groups.valid[b, p]])
  assert members(0, 0) == [1] and members(0, 1) == [] and members(0, 2) == [0, 2, 6]
  assert members(1, 1) == [0, 1, 2, 3] and members(1, 0) == [4, 5, 6]
  assert np.all(groups.index[~groups.valid] == 0)
  assert part_groups.group_by_label(labels[0], None, 3, size=5).index.shape == (3, 5)
  with pytest.raises(ValueError, match="size"):
    part_groups.group_by_label(labels, valid, 3, size=2)


def _uv_sphere(center, radius=1.0, rings=10, segments=16):
  """Sphere mesh with faces wound so the right-hand normal points outward."""
  theta = np.linspace(0, np.pi, rings + 1)[1:-1]
  phi = np.linspace(0, 2 * np.pi, segments, endpoint=False)
  t, p = [a.ravel() for a in np.meshgrid(theta, phi, indexing="ij")]
  body = np.stack([np.sin(t) * np.cos(p), np.cos(t), np.sin(t) * np.sin(p)], -1)
  vertices = np.concatenate([[[0, 1, 0]], body, [[0, -1, 0]]]) * radius
  index = lambda r, s: 1 + r * segments + s % segments
  faces = []
  for s in range(segments):
    faces.append([0, index(0, s), index(0, s + 1)])
    faces.append([len(vertices) - 1, index(rings - 2, s),
                  index(rings - 2, s + 1)])
    for r in range(rings - 2):
      faces.append([index(r, s), index(r + 1, s), index(r + 1, s + 1)])
      faces.append([index(r, s), index(r + 1, s + 1), index(r, s + 1)])
  faces = np.array(faces)
  tri = vertices[faces]
  normal = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
  inward = np.sum(normal * tri.mean(1), -1) < 0
  faces[inward] = faces[inward][:, ::-1]
  return (vertices + center).astype(np.float32), faces.astype(np.int32)


def test_part_alignment_of_a_rendered_mesh_is_minimal_at_the_rendering_pose():
  render = pytest.importorskip("flowpose.evidence.raster")
  # A sphere split into 4 parts by the signs of its x and y, seen from +Z.
  vertices, faces = _uv_sphere(np.zeros(3), rings=40, segments=64)
  labels = (vertices[:, 0] > 0).astype(np.int32) + 2 * (vertices[:, 1] > 0)
  camera = render.look_at((0.0, 0.0, 4.0), (0.0, 0.0, 0.0), focal=80.0,
                          principal_point=(32.0, 32.0))
  rendering = render.render(vertices, faces, camera, (64, 64),
                            vertex_labels=labels)
  # 1500 > the 1340 labelled pixels: all of them, so the vertex->pixel term
  # sees no sampling gaps.
  pixels, pixel_labels, valid = losses.sample_part_pixels(
      rendering.part_labels, 1500, 0)
  visible = render.vertex_visibility(vertices, faces, camera, (64, 64))
  uv = render.project(vertices, camera)[0].astype(np.float32)
  loss_fn = jax.jit(lambda uv: losses.part_alignment_loss(
      uv, labels, visible.astype(np.float32), pixels, pixel_labels, valid,
      num_parts=4, sigma=SIGMA)[0])
  at_pose = float(loss_fn(uv))
  assert at_pose < 0.6  # px^2: discretisation only.
  shifted = [float(loss_fn(uv + np.float32(d))) for d in (0.5, 1.0, 2.0, 4.0)]
  assert np.all(np.diff([at_pose] + shifted) > 0.03), (at_pose, shifted)
  # Rotating the sphere about the view axis moves the part boundaries.
  c, s = np.cos(0.2), np.sin(0.2)
  rotated = uv - 32.0
  rotated = np.stack([c * rotated[:, 0] - s * rotated[:, 1],
                      s * rotated[:, 0] + c * rotated[:, 1]], -1) + 32.0
  assert float(loss_fn(rotated.astype(np.float32))) > at_pose + 0.5
  # On a convex mesh (no self-occlusion) the normal-based estimate agrees
  # with the z-buffer away from the silhouette (the sphere's rim, z ~ 0.25),
  # where the z-buffer test is deliberately generous.
  soft = losses.soft_visibility_from_normals(
      vertices @ camera.rotation.T + camera.translation, faces)
  clear = np.abs(vertices[:, 2]) > 0.3
  # render.vertex_visibility also counts a vertex visible when any of its 4 nearest pixel
  # centres is uncovered (generous at the rim), so demand agreement on >= 95% of these vertices.
  agreement = np.mean((np.asarray(soft) > 0.5)[clear] == visible[clear])
  assert agreement >= 0.95, agreement


def test_soft_visibility_from_normals_front_back():
  vertices, faces = _uv_sphere(np.array([0.0, 0.0, 5.0]))
  visibility_fn = jax.jit(losses.soft_visibility_from_normals,
                          static_argnames="sharpness")
  visibility = visibility_fn(vertices, faces, sharpness=20.0)
  depth = vertices[:, 2] - 5.0
  assert np.all(visibility[depth < -0.5] > 0.9)
  assert np.all(visibility[depth > 0.5] < 0.1)
  # The winding convention matters: flipped faces flip the answer.
  flipped = visibility_fn(vertices, faces[:, ::-1], sharpness=20.0)
  np.testing.assert_allclose(flipped, 1.0 - visibility, atol=1e-5)
  # Differentiable, also for a vertex in no face (zero normal).
  with_isolated = np.concatenate([vertices, [[0.0, 0.0, 3.0]]]).astype(
      np.float32)
  grad = jax.jit(jax.grad(lambda v: losses.soft_visibility_from_normals(
      v, faces).sum()))(with_isolated)
  assert np.all(np.isfinite(grad))


# Priors and composition ######################################################


def test_priors():
  z = jnp.array([[1.0, 2.0], [0.0, -3.0]])
  np.testing.assert_allclose(losses.latent_prior(z), [5.0, 9.0])
  np.testing.assert_allclose(losses.shape_prior(z[None]), [[5.0, 9.0]])
  np.testing.assert_allclose(losses.neg_log_prob_prior(jnp.array([-2.0])),
                             [2.0])


def test_weighted_sum():
  terms = {"a": jnp.array(2.0), "b": jnp.array(3.0)}
  total, logged = losses.weighted_sum(terms, {"a": 0.5, "b": 2.0})
  np.testing.assert_allclose(total, 7.0)
  assert logged is terms
  with pytest.raises(KeyError, match="no weight for terms \\['b'\\]"):
    losses.weighted_sum(terms, {"a": 1.0})
  with pytest.raises(KeyError, match="'c'"):
    losses.weighted_sum(terms, {"a": 1.0, "b": 1.0, "c": 1.0})
  total, _ = jax.jit(losses.weighted_sum)(terms, {"a": 1.0, "b": 0.0})
  np.testing.assert_allclose(total, 2.0)
