"""Tests for flowpose.evidence.raster (rasterizer), flowpose.viz.images (PNG helpers) and launch.render_body."""

import pathlib

import numpy as np
import pytest
from PIL import Image

from flowpose.evidence import raster as render
from flowpose.viz import images as viz


def _identity_camera(focal=100.0, principal=(64.0, 64.0)):
  return render.PinholeCamera(np.eye(3), np.zeros(3), np.array([focal, focal]),
                              np.asarray(principal, np.float64))


def _cube(center=(0.0, 0.0, 5.0), half=1.0):
  """A closed cube, triangles wound counter-clockwise seen from outside."""
  corners = np.array([[x, y, z] for x in (-1, 1) for y in (-1, 1) for z in (-1, 1)], float)
  quads = [(0, 1, 3, 2), (4, 6, 7, 5), (0, 4, 5, 1), (2, 3, 7, 6), (0, 2, 6, 4), (1, 5, 7, 3)]
  faces = []
  for a, b, c, d in quads:
    faces += [(a, b, c), (a, c, d)]
  faces = np.array(faces)
  # Orient outward rather than trusting the hand-written quads.
  normal = np.cross(corners[faces[:, 1]] - corners[faces[:, 0]],
                    corners[faces[:, 2]] - corners[faces[:, 0]])
  inward = np.einsum("fi,fi->f", normal, corners[faces].mean(1)) < 0
  faces[inward] = faces[inward][:, ::-1]
  return corners * half + np.asarray(center), faces


# --- camera helpers -----------------------------------------------------------------------


def test_look_at_front_view_is_not_mirrored():
  cam = render.look_at((0, 0, 3), (0, 0, 0), focal=100, principal_point=(50, 50))
  uv, depth = render.project(np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0]], float), cam)
  np.testing.assert_allclose(uv[0], [50, 50])
  np.testing.assert_allclose(depth, [3, 3, 3])
  assert uv[1, 0] > 50  # World +X (a body's left) on the image's right.
  assert uv[2, 1] < 50  # World +Y up in the image.
  np.testing.assert_allclose(cam.center, [0, 0, 3], atol=1e-12)


def test_fit_camera_frames_points():
  points = np.random.default_rng(0).normal(size=(200, 3)) * [0.3, 0.9, 0.2]
  cam = render.fit_camera(points, (1, 0, 0), (120, 80), margin=0.1)
  uv, depth = render.project(points, cam)
  assert np.all(depth > 0)
  assert uv[:, 0].min() >= 0.1 * 40 - 1e-6 and uv[:, 0].max() <= 80 - 0.1 * 40 + 1e-6
  assert uv[:, 1].min() >= 0.1 * 60 - 1e-6 and uv[:, 1].max() <= 120 - 0.1 * 60 + 1e-6
  # Tight: the extreme point touches the margin in one of the two axes.
  assert (np.isclose(np.abs(uv[:, 0] - 40).max(), 36) or
          np.isclose(np.abs(uv[:, 1] - 60).max(), 54))


def test_as_pinhole_accepts_duck_typed_camera():

  class Other:
    R = np.eye(3)
    t = np.zeros(3)
    focal = (100.0, 90.0)
    principal_point = (5.0, 6.0)

  cam = render.as_pinhole(Other())
  np.testing.assert_allclose(cam.focal, [100, 90])
  np.testing.assert_allclose(cam.principal_point, [5, 6])
  cam = render.as_pinhole((np.eye(3), np.zeros(3), 50.0, (1.0, 2.0)))
  np.testing.assert_allclose(cam.focal, [50, 50])
  with pytest.raises(ValueError, match="camera"):
    render.as_pinhole(object())


# --- rasterizer ---------------------------------------------------------------------------


def test_single_triangle_coverage_and_depth():
  # Projects to the pixel-space right triangle (10, 10), (60, 10), (10, 60).
  vertices = np.array([[0, 0, 2], [1, 0, 2], [0, 1, 2]], float)
  cam = _identity_camera(100.0, (10.0, 10.0))
  raster = render.rasterize(vertices, np.array([[0, 1, 2]]), cam, (100, 100))
  covered = raster.face_index >= 0
  # Pixel centres (j + .5, i + .5) with j, i >= 10 and (j - 10) + (i - 10) + 1 <= 50.
  rows, cols = np.mgrid[:100, :100]
  expected = (rows >= 10) & (cols >= 10) & ((rows - 10) + (cols - 10) <= 49)
  np.testing.assert_array_equal(covered, expected)
  assert expected.sum() == 1275
  np.testing.assert_allclose(raster.depth[covered], 2.0)
  assert np.all(np.isinf(raster.depth[~covered]))
  np.testing.assert_allclose(raster.barycentric[covered].sum(-1), 1.0, atol=1e-6)
  # Pixel (row 10, col 35): centre (35.5, 10.5) = v0 + 0.51 (v1 - v0) + 0.01 (v2 - v0).
  np.testing.assert_allclose(raster.barycentric[10, 35], [0.48, 0.51, 0.01], atol=1e-6)


def test_depth_is_perspective_correct():
  # A slanted plane z = 3 + x: the depth at every pixel must be the ray-plane intersection.
  vertices = np.array([[-1, -1, 2], [1, -1, 4], [1, 1, 4], [-1, 1, 2]], float)
  faces = np.array([[0, 1, 2], [0, 2, 3]])
  cam = _identity_camera(50.0, (32.0, 32.0))
  raster = render.rasterize(vertices, faces, cam, (64, 64))
  rows, cols = np.mgrid[:64, :64]
  ray_x = (cols + 0.5 - 32) / 50  # x/z of the ray through each pixel centre.
  expected = 3 / (1 - ray_x)  # z = 3 + x = 3 + z * ray_x.
  covered = raster.face_index >= 0
  assert covered.sum() > 500
  np.testing.assert_allclose(raster.depth[covered], expected[covered], rtol=1e-5)


def test_cube_coverage_depth_and_no_cracks():
  vertices, faces = _cube()
  cam = _identity_camera()
  raster = render.rasterize(vertices, faces, cam, (128, 128))
  # The front face z = 4 spans u, v in [39, 89): pixel centres 39.5 ... 88.5.
  covered = raster.face_index >= 0
  expected = np.zeros((128, 128), bool)
  expected[39:89, 39:89] = True
  np.testing.assert_array_equal(covered, expected)
  np.testing.assert_allclose(raster.depth[expected], 4.0, rtol=1e-6)
  # Only the two front triangles (z = 4) are visible, both of them.
  front = np.nonzero(np.all(vertices[faces][:, :, 2] == 4.0, axis=1))[0]
  assert set(np.unique(raster.face_index[expected])) == set(front)


def test_backface_culling_keeps_closed_mesh_image():
  vertices, faces = _cube()
  cam = _identity_camera()
  culled = render.rasterize(vertices, faces, cam, (128, 128), cull_backfaces=True)
  plain = render.rasterize(vertices, faces, cam, (128, 128))
  np.testing.assert_array_equal(culled.face_index, plain.face_index)
  inside_out = render.rasterize(vertices, faces[:, ::-1], cam, (128, 128), cull_backfaces=True)
  # Inside-out, the near face is culled: the far face and the side walls show from inside.
  covered = inside_out.face_index >= 0
  np.testing.assert_array_equal(covered, plain.face_index >= 0)
  assert np.all(inside_out.depth[covered] > 4.0 + 1e-3)
  np.testing.assert_allclose(inside_out.depth[64, 64], 6.0, rtol=1e-6)


@pytest.mark.parametrize("near_first", [True, False])
def test_nearer_triangle_wins(near_first):
  near = np.array([[-1, -1, 3], [1, -1, 3], [0, 1, 3]], float)
  far = near * [2, 2, 1] + [0, 0, 2]  # Bigger (covers `near` on screen) and 2 units behind.
  vertices = np.concatenate([near, far] if near_first else [far, near])
  faces = np.array([[0, 1, 2], [3, 4, 5]])
  near_id = 0 if near_first else 1
  raster = render.rasterize(vertices, faces, _identity_camera(), (128, 128))
  assert raster.face_index[64, 64] == near_id
  np.testing.assert_allclose(raster.depth[64, 64], 3.0)
  covered_near = raster.face_index == near_id
  covered_far = raster.face_index == 1 - near_id
  assert covered_near.sum() > 100 and covered_far.sum() > 100
  np.testing.assert_allclose(raster.depth[covered_far], 5.0)


def test_triangles_behind_camera_or_outside_image_are_dropped():
  vertices = np.array([[-1, -1, -3], [1, -1, -3], [0, 1, -3],
                       [100, 100, 3], [101, 100, 3], [100, 101, 3]], float)
  raster = render.rasterize(vertices, np.array([[0, 1, 2], [3, 4, 5]]), _identity_camera(),
                            (128, 128))
  assert np.all(raster.face_index == -1) and np.all(np.isinf(raster.depth))


def test_face_labels_majority_then_first_vertex():
  faces = np.array([[0, 1, 2], [1, 2, 3], [3, 4, 5], [0, 0, 0]])
  vertex_labels = np.array([7, 7, 2, 2, 5, 9])
  np.testing.assert_array_equal(render.face_labels(faces, vertex_labels), [7, 2, 2, 7])


def test_part_label_image_matches_faces():
  # Two triangles side by side, labelled 3 (left) and 8 (right).
  vertices = np.array([[-1, -1, 4], [0, -1, 4], [-1, 1, 4],
                       [0.2, -1, 4], [1, -1, 4], [1, 1, 4]], float)
  faces = np.array([[0, 1, 2], [3, 4, 5]])
  labels = np.array([3, 3, 3, 8, 8, 8])
  out = render.render(vertices, faces, _identity_camera(), (128, 128), vertex_labels=labels,
                      label_colors=viz.part_palette(10))
  expected = np.where(out.face_index == 0, 3, np.where(out.face_index == 1, 8, -1))
  np.testing.assert_array_equal(out.part_labels, expected)
  assert (out.part_labels == 3).sum() > 100 and (out.part_labels == 8).sum() > 100
  assert out.part_labels[64, 40] == 3 and out.part_labels[64, 80] == 8
  assert out.part_labels[5, 5] == -1
  # Shaded colours follow the palette; background stays white.
  np.testing.assert_array_equal(out.rgb[5, 5], [255, 255, 255])
  left, right = out.rgb[64, 40].astype(int), out.rgb[64, 80].astype(int)
  palette = viz.part_palette(10).astype(int)
  assert np.argmax(left) == np.argmax(palette[3]) and np.argmax(right) == np.argmax(palette[8])


def test_shade_lambert_facing_light_is_brighter():
  vertices, faces = _cube()
  cam = render.look_at((4, 3, 5), (0, 0, 0), focal=120, principal_point=(64, 64))
  vertices = vertices - [0, 0, 5]
  raster = render.rasterize(vertices, faces, cam, (128, 128))
  flat = render.shade(vertices, faces, raster, cam, light_dir=(0, 0, -1), ambient=0.0)
  # Three faces visible; a headlight makes each a uniform grey whose value is cos(angle).
  values = {int(f): flat[raster.face_index == f][:, 0] for f in np.unique(raster.face_index)
            if f >= 0}
  assert len(values) == 6  # 3 faces x 2 triangles.
  for v in values.values():
    assert np.ptp(v) <= 1
  normals = render.face_normals(vertices, faces) @ cam.rotation.T
  for f, v in values.items():
    assert abs(v[0] - 0.8 * 255 * max(0, -normals[f, 2])) <= 1.0


@pytest.mark.parametrize("scale", [0.01, 1.0, 100.0])
def test_vertex_visibility_cube(scale):
  vertices, faces = _cube((0, 0, 5 * scale), scale)
  visible = render.vertex_visibility(vertices, faces, _identity_camera(), (128, 128))
  # Front 4 visible, back 4 hidden.
  np.testing.assert_array_equal(visible, vertices[:, 2] < 5 * scale)
  # From a corner direction 7 vertices are visible (6 on the silhouette), the far one is not.
  centred = vertices - [0, 0, 5 * scale]
  cam = render.fit_camera(centred, (1, 1.3, 0.8), (96, 96))
  visible = render.vertex_visibility(centred, faces, cam, (96, 96))  # Default tol.
  far = np.argmin(centred @ np.array([1, 1.3, 0.8]))
  np.testing.assert_array_equal(visible, np.arange(8) != far)


def test_vertex_visibility_outside_image_is_hidden():
  vertices, faces = _cube()
  visible = render.vertex_visibility(vertices, faces, _identity_camera(principal=(0, 0)),
                                     (128, 128))
  # Principal point at the corner: vertices with x < 0 or y < 0 project outside.
  inside = (vertices[:, 0] > 0) & (vertices[:, 1] > 0) & (vertices[:, 2] < 5)
  np.testing.assert_array_equal(visible, inside)


def test_rasterize_many_small_triangles_fast():
  # A finely tessellated sphere of ~20k triangles: watertight silhouette, sensible speed.
  nu, nv = 120, 85
  theta = np.linspace(0, np.pi, nv)[:, None]
  phi = np.linspace(0, 2 * np.pi, nu, endpoint=False)[None]
  vertices = np.stack([np.sin(theta) * np.cos(phi), np.cos(theta) + 0 * phi,
                       np.sin(theta) * np.sin(phi)], -1).reshape(-1, 3)
  i, j = np.mgrid[:nv - 1, :nu]
  a, b = i * nu + j, i * nu + (j + 1) % nu
  c, d = a + nu, b + nu
  faces = np.concatenate([np.stack([a, c, b], -1), np.stack([b, c, d], -1)]).reshape(-1, 3)
  cam = render.look_at((0, 0, 4), (0, 0, 0), focal=400, principal_point=(128, 128))
  raster = render.rasterize(vertices, faces, cam, (256, 256))
  rows, cols = np.mgrid[:256, :256]
  # Silhouette radius of a unit sphere at distance 4: f * tan(asin(1/4)).
  radius = 400 * np.tan(np.arcsin(0.25))
  dist = np.hypot(rows + 0.5 - 128, cols + 0.5 - 128)
  covered = raster.face_index >= 0
  assert np.all(covered[dist < radius - 1.5])
  assert not np.any(covered[dist > radius + 0.5])
  np.testing.assert_allclose(raster.depth[128, 128], 3.0, atol=2e-3)


# --- viz ----------------------------------------------------------------------------------


def test_save_png_roundtrip_and_atomic(tmp_path):
  image = np.random.default_rng(0).integers(0, 256, (20, 30, 3), dtype=np.uint8)
  path = viz.save_png(tmp_path / "sub" / "a.png", image)
  np.testing.assert_array_equal(np.asarray(Image.open(path)), image)
  viz.save_png(path, np.zeros((5, 6)))  # Float grey overwrites in place.
  assert np.asarray(Image.open(path)).shape == (5, 6)
  assert sorted(p.name for p in path.parent.iterdir()) == ["a.png"]  # No temp files left.
  with pytest.raises(ValueError, match="a.png"):
    viz.save_png(path, np.zeros((5, 6, 2)))


def test_part_palette_distinct_and_deterministic():
  palette = viz.part_palette(60)
  assert palette.shape == (60, 3) and palette.dtype == np.uint8
  assert len({tuple(c) for c in palette}) == 60
  np.testing.assert_array_equal(palette[:7], viz.part_palette(7))
  diffs = np.abs(palette[:, None].astype(int) - palette[None].astype(int)).sum(-1)
  assert diffs[~np.eye(60, dtype=bool)].min() >= 20


def test_draw_keypoints_and_skeleton_touch_expected_pixels():
  background = np.full((64, 64, 3), 255, np.uint8)
  keypoints = np.full((17, 2), np.nan)
  keypoints[5] = (40.5, 20.5)  # left_shoulder, on the image's right as in a front view.
  keypoints[7] = (40.5, 50.5)  # left_elbow
  out = viz.draw_keypoints(background, keypoints)
  assert tuple(out[35, 40]) == viz.LEFT_COLOR  # On the limb.
  assert tuple(out[20, 40]) == viz.LEFT_COLOR  # On a dot.
  assert tuple(out[35, 10]) == (255, 255, 255)
  assert np.all(background == 255)  # Input untouched.
  joints = np.array([[10.5, 10.5], [10.5, 50.5], [50.5, 50.5]])
  out = viz.draw_skeleton(background, joints, parents=(-1, 0, 1), color=(255, 0, 0))
  assert tuple(out[30, 10]) == (255, 0, 0) and tuple(out[50, 30]) == (255, 0, 0)
  assert tuple(out[30, 30]) == (255, 255, 255)
  assert viz.skeleton_from_names(("left_hip", "nose", "left_knee")) == ((2, 0),)


def test_overlay_and_grid():
  photo = np.zeros((8, 10, 3), np.uint8)
  top = np.full((8, 10, 3), 200, np.uint8)
  mask = np.zeros((8, 10), bool)
  mask[:4] = True
  out = viz.overlay(photo, top, alpha=0.5, mask=mask)
  assert np.all(out[:4] == 100) and np.all(out[4:] == 0)
  grid = viz.image_grid([photo, top, np.ones((4, 4))], captions=["a", "b", "c"], num_cols=2,
                        pad=2)
  assert grid.dtype == np.uint8 and grid.ndim == 3
  assert grid.shape[1] == 2 * (10 + 2) + 2
  assert grid.shape[0] > 2 * (8 + 2)  # Caption rows add height.


def test_legend_and_side_colors():
  image = viz.legend(["head", "left_hand", "right_hand"], viz.part_palette(3), num_cols=2)
  assert image.dtype == np.uint8 and image.shape[2] == 3
  assert {tuple(c) for c in image.reshape(-1, 3)} >= {tuple(c) for c in viz.part_palette(3)}
  assert viz.side_color("LHipJoint") == viz.LEFT_COLOR
  assert viz.side_color("RightForeArm") == viz.RIGHT_COLOR
  assert viz.side_color("right_ankle") == viz.RIGHT_COLOR
  assert viz.side_color("LowerBack") == viz.CENTER_COLOR
  assert viz.side_color("nose") == viz.CENTER_COLOR


# --- launch/render_body -------------------------------------------------------------------


def _toy_body():
  """A box figure (torso, head, 2 arms, 2 legs) standing on y = 0, facing +Z, left at +X."""
  import types  # pylint: disable=g-import-not-at-top
  boxes = [((0, 1.2, 0), (0.18, 0.3, 0.1)), ((0, 1.65, 0), (0.1, 0.12, 0.1)),
           ((0.3, 1.2, 0), (0.05, 0.3, 0.05)), ((-0.3, 1.2, 0), (0.05, 0.3, 0.05)),
           ((0.1, 0.45, 0), (0.07, 0.45, 0.07)), ((-0.1, 0.45, 0), (0.07, 0.45, 0.07))]
  vertices, faces, labels = [], [], []
  for part, (center, half) in enumerate(boxes):
    v, f = _cube(center, 1.0)
    faces.append(f + 8 * part)
    vertices.append((v - center) * half + center)
    labels += [part] * 8
  joints = np.array([[0, 0.9, 0], [0, 1.5, 0], [0.25, 1.45, 0], [-0.25, 1.45, 0]])
  keypoints = np.random.default_rng(1).uniform([-0.3, 0, 0], [0.3, 1.7, 0.1], (17, 3))
  model = types.SimpleNamespace(
      faces=np.concatenate(faces), part_labels=np.array(labels),
      part_names=("torso", "head", "left_arm", "right_arm", "left_leg", "right_leg"),
      joint_names=("Hips", "Neck", "LeftArm", "RightArm"), parents=(-1, 0, 1, 1),
      keypoint_names=viz.COCO17_KEYPOINT_NAMES, shapedirs=np.zeros((48, 3, 4)))
  rest = np.concatenate(vertices)

  def pose(unused_model, betas=None):
    scale = 1.0 if betas is None else 1.0 + 0.05 * float(np.asarray(betas)[0])
    return types.SimpleNamespace(vertices=rest * scale, joints=joints * scale,
                                 keypoints=keypoints * scale)

  return model, pose


_PNG_NAMES = ("rest_front", "rest_side", "parts_legend", "shapes", "joints_keypoints",
              "overview")


def test_render_body_pngs_on_toy_model(tmp_path, monkeypatch):
  from launch import render_body  # pylint: disable=g-import-not-at-top
  model, pose = _toy_body()
  monkeypatch.setattr(render_body, "_pose", pose)
  written = render_body.render_body_pngs(model, tmp_path, num_shapes=2, size=64)
  assert sorted(written) == sorted(_PNG_NAMES)
  front = np.asarray(Image.open(written["rest_front"]))
  assert front.shape == (64, 64, 3)
  # The left arm (part 2, +X) is on the image's right; the head is at the top.
  palette = viz.part_palette(6).astype(int)
  left_arm = np.all(np.abs(front.astype(int) - palette[2]) < 60, -1)
  assert left_arm.sum() > 5 and np.nonzero(left_arm)[1].mean() > 40
  head_rows = np.nonzero(np.all(np.abs(front.astype(int) - palette[1]) < 60, -1))[0]
  assert head_rows.size > 5 and head_rows.mean() < 20
  assert np.asarray(Image.open(written["shapes"])).shape[1] > 2 * 64


def test_render_body_command_on_cc0_model(tmp_path):
  """Runs `python -m launch.render_body` (flags + main) on the real model, small size."""
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  from flowpose.body.build import assets  # pylint: disable=g-import-not-at-top
  if not assets.default_model_path().is_file():
    pytest.skip(f"CC0 body model not built ({assets.default_model_path()}); run "
                "`python -m flowpose.body.build.assets`")
  repo = pathlib.Path(__file__).resolve().parents[1]
  result = subprocess.run(
      [sys.executable, "-m", "launch.render_body", f"--out_dir={tmp_path}", "--size=96",
       "--num_shapes=2"], cwd=repo, capture_output=True, text=True, timeout=120, check=False)
  assert result.returncode == 0, result.stderr[-3000:]
  for name in _PNG_NAMES:
    image = np.asarray(Image.open(tmp_path / f"{name}.png"))
    assert image.ndim == 3 and image.shape[0] >= 32, name
    assert len(np.unique(image.reshape(-1, 3), axis=0)) > 8, name  # Not blank.
  front = np.asarray(Image.open(tmp_path / "rest_front.png"))
  assert front.shape == (96, 96, 3)
  body = np.any(front < 250, axis=-1)
  rows, cols = np.nonzero(body)
  assert rows.min() < 10 and rows.max() > 85  # Fills the height (5 % margin).
  assert np.ptp(rows) > 1.5 * np.ptp(cols[np.abs(rows - 70) < 3])  # Upright: legs are narrow.


def test_render_body_refuses_zero_shapes(tmp_path):
  """Issue 10 (8): `--num_shapes=0` used to skip shapes.png without a word."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  from launch import render_body  # pylint: disable=g-import-not-at-top
  flag_values = flags.FlagValues()
  render_body.define_flags(flag_values)
  with pytest.raises(flags.IllegalFlagValueError, match="num_shapes"):
    flag_values(["render_body", f"--out_dir={tmp_path}", "--num_shapes=0"])
  with pytest.raises(ValueError, match="num_shapes"):
    render_body.render_body_pngs(None, tmp_path, num_shapes=0)
  with pytest.raises(ValueError, match="num_shapes"):
    render_body.run(tmp_path, num_shapes=0)
  assert not list(tmp_path.iterdir())


def test_render_body_checks_out_dir_first(tmp_path):
  from flowpose import io_utils  # pylint: disable=g-import-not-at-top
  from launch import render_body  # pylint: disable=g-import-not-at-top
  (tmp_path / "a_file").write_text("x")
  for out_dir in ("", tmp_path / "a_file"):
    with pytest.raises(io_utils.OutputPathError, match="--out_dir"):
      render_body.run(out_dir)
