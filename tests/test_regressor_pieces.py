"""The reconstruction network's pure pieces (issue 12): evidence maps, the weak-perspective camera,
the photo crop and its way back, the in-graph part-pixel grouping. The task (training, resume,
export, has_3d masking) is tested in test_regressor.py."""

import jax.numpy as jnp
import numpy as np
import pytest

from flowpose import geometry
from flowpose.fitting import config as fit_config
from flowpose.fitting import fit as fitting
from flowpose.fitting import reduced_body
from flowpose.geometry import camera
from flowpose.models import predictor
from flowpose.models import regressor as net_lib
from flowpose.models import regressor_body


def test_evidence_maps_follow_the_fields():
  r, parts = 16, 3
  kp = np.zeros((1, 17, 2), np.float32)
  kp[0, 0] = (5.5, 9.5)  # Centre of pixel row 9, column 5.
  conf = np.zeros((1, 17), np.float32)
  conf[0, 0] = 0.5
  part_map = np.zeros((1, r, r), np.uint8)
  part_map[0, 2, 3] = 2  # Part index 1.
  mask = (part_map > 0).astype(np.uint8)
  maps = np.asarray(net_lib.evidence_maps(
      {"keypoints": kp, "confidence": conf, "part_map": part_map, "mask": mask},
      resolution=r, num_parts=parts, inputs=net_lib.INPUTS, heatmap_sigma=1.0))
  assert maps.shape == (1, r, r, net_lib.num_channels(net_lib.INPUTS, 17, parts)) == (
      1, r, r, 21)
  assert np.unravel_index(np.argmax(maps[0, :, :, 0]), (r, r)) == (9, 5)
  assert maps[0, 9, 5, 0] == pytest.approx(0.5)  # Peak = confidence.
  assert np.all(maps[0, :, :, 1:17] == 0)        # Confidence 0: no heatmap.
  assert maps[0, 2, 3, 17 + 1] == 1 and maps[..., 17:20].sum() == 1  # One-hot, bg = zeros.
  assert maps[0, 2, 3, 20] == 1 and maps[..., 20].sum() == 1
  only_mask = net_lib.evidence_maps({"mask": mask}, resolution=r, num_parts=parts,
                                    inputs=("mask",), heatmap_sigma=1.0)
  assert only_mask.shape == (1, r, r, 1)


def test_weak_perspective_camera_and_its_translation_agree():
  r = 64
  cam = jnp.asarray([[np.log(0.8), 0.1, -0.2]])
  focal = jnp.asarray([150.0])
  root = net_lib.camera_to_root(cam, focal, r)
  np.testing.assert_allclose(net_lib.root_to_camera(root, focal, r), cam, atol=1e-6)
  # A point near the root projects where the weak camera puts it: R/2 + R/2 s (X + t).
  offset = jnp.asarray([[[0.01, -0.02, 0.0]]])
  pixel = camera.perspective_project(root[:, None] + offset, jnp.stack([focal] * 2, -1),
                                     jnp.asarray([[r / 2] * 2]))
  weak = r / 2 + r / 2 * 0.8 * (offset[..., :2] + cam[:, None, 1:])
  np.testing.assert_allclose(pixel, weak, atol=1e-3)


def test_photo_crop_maps_back_to_the_image():
  """A root predicted in the crop lands on the same photo pixel at the same depth; a box
  centred on the principal point leaves the orientation unchanged."""
  r = 32
  kp = np.random.default_rng(0).uniform(300, 500, (2, 17, 2)).astype(np.float32)
  kp[1] += 400  # Person 1 far off the optical axis.
  evidence = fitting.Evidence(kp, np.ones((2, 17), np.float32), np.full((2, 2), 1000.0),
                              np.full((2, 2), 400.0))
  crop = predictor.crop_evidence(evidence, r)
  np.testing.assert_allclose(crop["focal"], 1000.0 * r / crop["box"][:, 2], rtol=1e-6)
  root = np.asarray([[0.1, -0.05, 4.0], [0.0, 0.2, 6.0]])
  rot = np.stack([reduced_body.facing_camera_rotation(30.0)] * 2)
  decoded = {"root": root, "root_rotmat": rot, "pose": np.zeros((2, 50)),
             "betas": np.zeros((2, 16))}
  out = predictor.to_image_frame(decoded, crop, evidence, r, np.zeros(3))
  assert set(out) == set(fit_config.VARIABLES)
  in_crop = crop["focal"][:, None] * root[:, :2] / root[:, 2:] + r / 2
  in_image = np.asarray(camera.apply_affine_2d(
      in_crop[:, None], camera.invert_affine_2d(crop["affine"])))[:, 0]
  projected = 1000.0 * out["transl"][:, :2] / out["transl"][:, 2:] + 400.0
  np.testing.assert_allclose(projected, in_image, atol=1e-2)
  np.testing.assert_allclose(out["transl"][:, 2], root[:, 2], rtol=1e-6)
  # Off the axis the orientation turns with the ray to the box; on the axis it does not.
  assert not np.allclose(out["orient"][1], np.asarray(geometry.matrix_to_rot6d(rot[1])),
                         atol=1e-2)
  centred = kp - 0.5 * (kp.max(1, keepdims=True) + kp.min(1, keepdims=True)) + 400.0
  evidence = evidence._replace(keypoints=centred)
  out = predictor.to_image_frame(decoded, predictor.crop_evidence(evidence, r), evidence, r,
                                 np.zeros(3))
  np.testing.assert_allclose(out["orient"], np.asarray(geometry.matrix_to_rot6d(rot)),
                             atol=1e-5)


def test_part_pixels_grouped_in_the_graph_give_the_dense_loss():
  """`group_pixels` + the grouped loss = `losses.part_alignment_loss` on the same points
  while no part overflows its slots; overflowing pixels are left out, never misassigned."""
  from flowpose import losses  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  parts, n, v = 5, 40, 30
  labels = rng.integers(0, parts - 1, n)  # Part 4 has no pixel.
  valid = rng.uniform(size=n) > 0.2
  pixels = rng.uniform(0, 50, (n, 2)).astype(np.float32)
  verts = rng.uniform(0, 50, (v, 2)).astype(np.float32)
  vlabels = np.arange(v) % parts
  vis = rng.uniform(size=v).astype(np.float32)
  vgroups = losses.group_by_label(vlabels, None, parts)
  dense = losses.part_alignment_loss(verts, vlabels, vis, pixels, labels, valid,
                                     num_parts=parts, sigma=3.0)[0]
  index, ok = regressor_body.group_pixels(jnp.asarray(labels), jnp.asarray(valid), parts, n)
  grouped = losses.grouped_part_alignment_loss(verts, vgroups.index, vgroups.valid, vis,
                                               pixels, index, ok, sigma=3.0)[0]
  np.testing.assert_allclose(grouped, dense, rtol=1e-5)
  index, ok = np.asarray(index), np.asarray(ok)
  assert np.all(labels[index[ok]] == np.nonzero(ok)[0]) and np.all(valid[index[ok]])
  assert ok.sum() == valid.sum()
  small_index, small_ok = (np.asarray(x) for x in regressor_body.group_pixels(
      jnp.asarray(labels), jnp.asarray(valid), parts, 3))
  np.testing.assert_array_equal(small_index, index[:, :3])
  np.testing.assert_array_equal(small_ok, ok[:, :3])
