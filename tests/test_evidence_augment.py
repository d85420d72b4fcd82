"""`data.evidence_augment`: the flipped / rolled evidence is the evidence of the flipped / rolled
labels — posed through the body model, projected and rendered again."""

import ml_collections
import numpy as np
import pytest

from flowpose.data import evidence_augment
from flowpose.evidence import synth

pytestmark = pytest.mark.usefixtures("fast_compile")
R = 64


@pytest.fixture(scope="module")
def renderer():
  from flowpose.body.build import assets  # pylint: disable=g-import-not-at-top
  return synth.Renderer(assets.load_cc0_model(), R)


@pytest.fixture(scope="module")
def scene(renderer):
  rng = np.random.default_rng(3)
  dofs = rng.normal(0.0, 0.25, 50).astype(np.float32)
  return synth.sample_scene(rng, dofs, synth.default_scene_config(), R,
                            renderer.model.num_betas)._replace(offset=np.array([0.08, -0.05]))


def _render(renderer, scene):
  (verts,), (kps,) = renderer.pose_bodies([scene])
  return renderer.render_posed(scene, verts, kps)


def _augment(renderer, example, flip, roll_deg, copies=4):
  """`copies` augmentations of `example` (one batch, one draw each), as numpy dicts."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  config = ml_collections.ConfigDict(dict(augment_flip_prob=flip, augment_roll_deg=roll_deg))
  batch = {k: tf.constant(np.repeat(np.asarray(v)[None], copies, 0)) for k, v in example.items()}
  out = evidence_augment.augment_batch(batch, tf.constant([5, 7], tf.int64), config,
                                       evidence_augment.root_joint_basis(renderer.model))
  return [{k: np.asarray(v)[i] for k, v in out.items()} for i in range(copies)]


def _rerender(renderer, scene, labels):
  """The evidence of the augmented labels: posed, placed at their `transl`, rendered."""
  moved = scene._replace(pose_dofs=labels["pose_dofs"], root_rotmat=labels["root_rotmat"])
  (verts,), (kps,) = renderer.pose_bodies([moved])
  transl = labels["transl"]
  return renderer.render_at(moved, verts + transl, kps + transl, transl), kps + transl


@pytest.mark.parametrize("flip,roll_deg", [(1.0, 0.0), (0.0, 25.0), (1.0, 25.0)])
def test_augmented_evidence_is_the_evidence_of_the_augmented_labels(renderer, scene, flip,
                                                                    roll_deg):
  example = _render(renderer, scene)
  outs = _augment(renderer, example, flip, roll_deg)
  # The in-plane angle of each draw: out root = Rz F root F (F = diag(-1, 1, 1) if flipped).
  f = np.diag([-1.0, 1.0, 1.0]) if flip else np.eye(3)
  turns = [np.rad2deg(np.arccos(np.clip(
      (np.trace(o["root_rotmat"] @ f @ example["root_rotmat"].T @ f) - 1) / 2, -1, 1)))
           for o in outs]
  assert max(turns) > (10.0 if roll_deg else -1.0) and max(turns) <= roll_deg + 0.1, turns
  assert not np.array_equal(outs[int(np.argmax(turns))]["part_map"], example["part_map"])
  for out in outs:
    _check_one(renderer, scene, example, out, flip, roll_deg)


def _check_one(renderer, scene, example, out, flip, roll_deg):
  again, joints = _rerender(renderer, scene, out)
  # 3D labels: the re-posed body's keypoints (the shape space is symmetric to a few mm).
  np.testing.assert_allclose(out["joints3d"], joints, atol=6e-3)
  # 2D: the moved keypoints are the projections of the moved labels.
  np.testing.assert_allclose(out["keypoints"], again["keypoints"], atol=0.1)
  # Maps: a flip is exact up to the shape's asymmetry; a rotation is resampled by nearest
  # pixel, so boundary pixels differ (25 degrees: ~92% / ~87% of mask / part pixels agree;
  # a 1 px shift of the right answer: ~77% of the mask).
  for field, min_agree in (("mask", 0.88), ("part_map", 0.84)):
    min_agree = 0.99 if not roll_deg else min_agree
    person = (out["mask"] > 0) | (again["mask"] > 0)
    agree = np.mean(out[field][person] == again[field][person])
    assert agree > min_agree, (field, agree)
  # Flipped: a left part's pixels now carry the right part's label (same count).
  if flip and not roll_deg:
    np.testing.assert_array_equal(out["mask"], example["mask"][:, ::-1])
    assert np.sum(out["part_map"] == 6) == np.sum(example["part_map"] == 9)
  # Visibility: inside the crop and as the render says (occlusion flags may differ on a
  # keypoint sitting on the occlusion threshold only).
  inside = np.all((out["keypoints"] >= 0) & (out["keypoints"] < R), -1)
  assert not np.any(out["visible"][~inside])
  assert np.mean(out["visible"] == again["visible"]) >= 15 / 17


def test_no_augmentation_returns_the_batch_itself(renderer, scene):
  example = _render(renderer, scene)
  config = ml_collections.ConfigDict(dict(augment_flip_prob=0.0, augment_roll_deg=0.0))
  assert evidence_augment.augment_batch(example, None, config) is example


def test_part_and_keypoint_tables_are_involutions(renderer):
  # The hard-coded part pairs are the model's left/right parts (its part order).
  names = renderer.model.part_names
  assert len(names) == evidence_augment.NUM_PARTS
  for a, b in evidence_augment.PART_LR_PAIRS:
    assert names[a].startswith("left_") and names[b] == "right_" + names[a][len("left_"):]
  table = evidence_augment.part_label_table()
  np.testing.assert_array_equal(table[table], np.arange(evidence_augment.NUM_PARTS + 1))
  perm = evidence_augment.keypoint_permutation()
  np.testing.assert_array_equal(perm[perm], np.arange(17))
  assert perm[5] == 6 and perm[15] == 16 and perm[0] == 0


def test_training_flip_of_evidence_matches_the_label_exact_flip(renderer, scene):
  """The regressor's `flip_consistency` mirrors evidence on device (`models.regressor_body.
  flip_evidence`) and its 3D prediction back (`mirror_keypoints3d`): both are this module's
  flip of a rendered scene, exactly."""
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from flowpose.models import regressor_body  # pylint: disable=g-import-not-at-top
  example = _render(renderer, scene)
  flipped = _augment(renderer, example, 1.0, 0.0, copies=1)[0]
  batch = {k: jnp.asarray(np.asarray(example[k])[None])
           for k in ("keypoints", "part_map", "mask")}
  batch["confidence"] = jnp.asarray(np.asarray(example["visible"], np.float32)[None])
  ours = {k: np.asarray(v)[0] for k, v in regressor_body.flip_evidence(batch, R).items()}
  np.testing.assert_allclose(ours["keypoints"], flipped["keypoints"], atol=1e-4)
  np.testing.assert_array_equal(ours["confidence"], flipped["visible"])
  np.testing.assert_array_equal(ours["part_map"], flipped["part_map"])
  np.testing.assert_array_equal(ours["mask"], flipped["mask"])
  joints = np.asarray(regressor_body.mirror_keypoints3d(jnp.asarray(example["joints3d"])[None]))[0]
  np.testing.assert_allclose(joints, flipped["joints3d"], atol=1e-5)
