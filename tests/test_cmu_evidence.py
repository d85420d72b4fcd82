"""`cmu_evidence`: synthetic evidence (evidence.synth), its TFDS builder and the served pipeline.

One small build (2 clips: a training and a test subject, every 6th frame, 2 views) is shared
by the module.
"""

import os

import ml_collections
import numpy as np
import pytest

from flowpose.data import evidence

# XLA optimisations off: compiling the batched body model dominates this module otherwise.
pytestmark = pytest.mark.usefixtures("fast_compile")

R = 64
CLIPS = ("02.asf.gz", "02_03.amc.gz", "09.asf.gz", "09_11.amc.gz")
LIMB_PARTS = {  # COCO keypoint -> the parts its pixel may show (the joint between two parts).
    "nose": ("head",), "left_eye": ("head",), "right_eye": ("head",),
    "left_elbow": ("left_upper_arm", "left_forearm"),
    "right_elbow": ("right_upper_arm", "right_forearm"),
    "left_wrist": ("left_forearm", "left_hand"), "right_wrist": ("right_forearm", "right_hand"),
    "left_knee": ("left_upper_leg", "left_lower_leg"),
    "right_knee": ("right_upper_leg", "right_lower_leg"),
    "left_ankle": ("left_lower_leg", "left_foot"), "right_ankle": ("right_lower_leg", "right_foot"),
}


@pytest.fixture(scope="module")
def manual_dir(cmu_dir, tmp_path_factory):
  out = tmp_path_factory.mktemp("cmu_two_clips")
  for name in CLIPS:
    os.symlink(cmu_dir / name, out / name)
  return out


def _config(manual_dir, data_dir, **overrides):
  config = evidence.default_config()
  config.update(manual_dir=str(manual_dir), data_dir=str(data_dir), stride=6,
                views_per_pose=2, resolution=R, **overrides)
  return config


@pytest.fixture(scope="module")
def data_config(manual_dir, tmp_path_factory):
  return _config(manual_dir, tmp_path_factory.mktemp("tfds"))


@pytest.fixture(scope="module")
def stored(data_config):
  """{split: list of stored examples (numpy dicts)} of the module's build."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  builder = evidence.prepared_builder(data_config)
  return {split: list(tfds.as_numpy(builder.as_dataset(split=split, shuffle_files=False)))
          for split in builder.info.splits}


@pytest.fixture(scope="module")
def model():
  from flowpose.body.build import assets  # pylint: disable=g-import-not-at-top
  return assets.load_cc0_model()


def _all(stored):
  return [ex for split in sorted(stored) for ex in stored[split]]


def test_splits_and_fields_follow_the_contract(stored, model):
  assert sorted(stored) == ["test", "train"]  # Subject 2 trains, subject 9 tests.
  assert {ex["subject"] for ex in stored["train"]} == {b"02"}
  assert {ex["subject"] for ex in stored["test"]} == {b"09"}
  shapes = {"keypoints": (17, 2), "visible": (17,), "part_map": (R, R), "mask": (R, R),
            "pose_dofs": (50,), "root_rotmat": (3, 3), "betas": (model.num_betas,),
            "transl": (3,), "focal": (), "joints3d": (17, 3)}
  for ex in _all(stored):
    for field, shape in shapes.items():
      assert ex[field].shape == shape, field
    assert ex["part_map"].dtype == np.uint8 and ex["mask"].dtype == np.uint8
    assert ex["part_map"].max() <= len(model.part_names)
    np.testing.assert_array_equal(ex["mask"], ex["part_map"] > 0)
    assert ex["mask"].any()
    # focal 500-2000 px at a 256 px crop.
    assert 500 * R / 256 - 1e-3 <= ex["focal"] <= 2000 * R / 256 + 1e-3


def test_the_fitters_forward_model_explains_the_evidence(stored, model):
  import jax  # pylint: disable=g-import-not-at-top
  from flowpose.evidence import synth  # pylint: disable=g-import-not-at-top
  from flowpose.fitting import reduced_body  # pylint: disable=g-import-not-at-top
  from flowpose.geometry import camera  # pylint: disable=g-import-not-at-top
  body = reduced_body.make_fit_body(model, synth.body_rotmats, vertices_per_part=4)
  points = jax.jit(jax.vmap(lambda *a: reduced_body.pose_points(body, *a,
                                                                with_vertices=False)))
  examples = _all(stored)
  stack = lambda f: np.stack([ex[f] for ex in examples])
  out = points(stack("pose_dofs"), stack("root_rotmat"), stack("betas"), stack("transl"))
  keypoints3d = np.asarray(out.keypoints)
  np.testing.assert_allclose(keypoints3d, stack("joints3d"), atol=1e-4)
  uv = camera.perspective_project_np(keypoints3d, stack("focal")[:, None],
                                     np.full((len(examples), 2), R / 2))
  np.testing.assert_allclose(uv, stack("keypoints"), atol=1e-2)


def test_visible_keypoints_land_on_their_parts(stored, model):
  names = list(model.keypoint_names)
  parts = list(model.part_names)
  hits, total = 0, 0
  for ex in _all(stored):
    for name, allowed in LIMB_PARTS.items():
      k = names.index(name)
      if not ex["visible"][k]:
        continue
      u, v = np.floor(ex["keypoints"][k]).astype(int)
      label = int(ex["part_map"][v, u]) - 1
      total += 1
      hits += label >= 0 and parts[label] in allowed
  assert total > 100
  assert hits / total > 0.85, (hits, total)


def _place_camera(model, eye_side: str):
  """Evidence of the rest pose seen by a camera aimed at the left wrist."""
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from flowpose.body import model as body_lib  # pylint: disable=g-import-not-at-top
  from flowpose.evidence import synth, views  # pylint: disable=g-import-not-at-top
  dofs = np.zeros(50, np.float32)
  out = body_lib.forward(model, synth.body_rotmats(dofs, jnp.eye(3)), jnp.zeros(model.num_betas))
  verts, kps = np.asarray(out.vertices, np.float64), np.asarray(out.keypoints, np.float64)
  wrist = kps[list(model.keypoint_names).index("left_wrist")]
  torso = kps[[5, 6, 11, 12]].mean(0)
  away = (torso - wrist) / np.linalg.norm(torso - wrist)
  # Behind: the camera looks through the torso at the wrist; else from the front of the body.
  eye = torso + 4.0 * away if eye_side == "torso" else wrist + np.array([0.0, 0.0, 4.0])
  # A long lens: the wrist (~6 cm) spans several pixels, the torso fills the crop.
  cam = views.look_at(eye, wrist, focal=R * 6.0, principal_point=(R / 2, R / 2))
  to_cam = lambda x: (x @ cam.rotation.T + cam.translation).astype(np.float32)
  scene = synth.Scene(dofs, np.eye(3, dtype=np.float32), np.zeros(model.num_betas, np.float32),
                      float(cam.focal[0]), 1.0, np.zeros(2), False)
  return synth.Renderer(model, R).render_at(scene, to_cam(verts), to_cam(kps), np.zeros(3))


def test_a_wrist_behind_the_torso_is_not_visible(model):
  k = list(model.keypoint_names).index("left_wrist")
  behind = _place_camera(model, "torso")
  u, v = np.floor(behind["keypoints"][k]).astype(int)
  assert 0 <= u < R and 0 <= v < R
  occluder = model.part_names[behind["part_map"][v, u] - 1]
  assert occluder in ("chest", "abdomen", "pelvis"), occluder
  assert behind["visible"][k] == 0
  in_front = _place_camera(model, "wrist")
  assert in_front["visible"][k] == 1
  u, v = np.floor(in_front["keypoints"][k]).astype(int)
  assert model.part_names[in_front["part_map"][v, u] - 1] in ("left_forearm", "left_hand")


def test_examples_are_a_function_of_their_key(stored, model):
  """Re-rendering a stored example from its key alone gives the same bytes."""
  from flowpose.data.tfds.cmu_evidence import cmu_evidence_dataset_builder as builder_lib  # pylint: disable=g-import-not-at-top
  from flowpose.data.cmu_skeleton import mirror_dofs  # pylint: disable=g-import-not-at-top
  from flowpose.evidence import synth  # pylint: disable=g-import-not-at-top
  config = synth.default_scene_config()
  examples = stored["train"][:3]
  scenes = []
  for ex in examples:
    key = f"{ex['clip'].decode()}/{int(ex['frame']):06d}/{int(ex['view'])}"
    rng = np.random.default_rng(builder_lib.example_seed(key))
    probe = synth.sample_scene(np.random.default_rng(builder_lib.example_seed(key)),
                               ex["pose_dofs"], config, R, model.num_betas)
    # The stored DOFs are the (maybe mirrored) ones; undo to get the source pose back.
    source = mirror_dofs(ex["pose_dofs"]) if probe.mirrored else ex["pose_dofs"]
    scenes.append(synth.sample_scene(rng, source, config, R, model.num_betas))
  for ex, again in zip(examples, synth.Renderer(model, R).render(scenes)):
    for field, value in again.items():
      np.testing.assert_array_equal(value, ex[field], err_msg=field)


def _tiled_batch(stored, size):
  examples = _all(stored)
  picks = [examples[i % len(examples)] for i in range(size)]
  fields = ("keypoints", "visible", "part_map", "mask")
  return {f: np.stack([ex[f] for ex in picks]) for f in fields}


def _corrupt(batch, config, seed=(1, 2)):
  return evidence.corrupt_numpy(batch, seed, config)


def test_corruption_statistics_follow_the_config(stored):
  batch = _tiled_batch(stored, 1024)
  config = evidence.default_config()
  config.update(keypoint_noise_px=2.0, keypoint_drop_prob=0.2, keypoint_swap_prob=0.1,
                part_morph_prob=0.6, mask_morph_prob=0.0, mask_hole_prob=1.0, mask_max_holes=1)
  out = _corrupt(batch, config)
  seen = batch["visible"] > 0
  kept = out["confidence"] > 0
  plain = ~out["swapped"]
  assert abs(out["swapped"].mean() - 0.1) < 0.03
  assert abs(1 - kept[plain][seen[plain]].mean() - 0.2) < 0.02
  assert not kept[plain][~seen[plain]].any()  # Invisible keypoints have no confidence.
  assert np.all(out["confidence"][kept] <= 1) and np.all(out["confidence"][kept] > 0)
  noise = (out["keypoints"] - batch["keypoints"])[plain]
  assert abs(noise.std() - 2.0) < 0.1
  np.testing.assert_array_equal(out["keypoints_clean"], batch["keypoints"])
  # A swap exchanges one left/right pair: those two points trade places (plus noise).
  swapped = np.flatnonzero(out["swapped"])
  far = np.abs(out["keypoints"] - batch["keypoints"]).max(-1) > 12  # > 6 sigma.
  assert far[plain].sum() == 0 and far[swapped].sum() > 0
  # Part maps: ~60% changed (erosion shrinks, dilation grows), the rest untouched.
  before = (batch["part_map"] > 0).sum((1, 2))
  after = (out["part_map"] > 0).sum((1, 2))
  changed = np.any(out["part_map"] != batch["part_map"], (1, 2))
  assert abs(changed.mean() - 0.6) < 0.06
  assert np.all((after < before) | (after > before) | ~changed)
  # Every example gets a hole in its mask, on the person.
  assert np.all((out["mask"] > 0).sum((1, 2)) < (batch["mask"] > 0).sum((1, 2)))
  assert not np.any(out["mask"] > batch["mask"])


def test_pixel_samples_come_from_the_corrupted_maps_evenly_per_part(stored):
  batch = _tiled_batch(stored, 64)
  config = evidence.default_config()
  config.update(num_part_pixels=128)
  out = _corrupt(batch, config)
  for b in range(64):
    valid = out["part_valid"][b]
    cols, rows = np.floor(out["part_pixels"][b][valid]).astype(int).T
    np.testing.assert_array_equal(out["part_map"][b][rows, cols] - 1, out["part_labels"][b][valid])
    assert len(set(zip(rows, cols))) == valid.sum()  # Without replacement.
    assert valid.sum() == min(128, (out["part_map"][b] > 0).sum())
    cols, rows = np.floor(out["mask_pixels"][b][out["mask_valid"][b]]).astype(int).T
    assert np.all(out["mask"][b][rows, cols] > 0)
  # Evenly per part: a part's share of the samples is far above its share of the pixels.
  sizes = np.stack([np.bincount(m.ravel(), minlength=18)[1:] for m in out["part_map"]])
  picks = np.stack([np.bincount(l[v], minlength=17) for l, v in
                    zip(out["part_labels"], out["part_valid"])])
  small = (sizes > 0) & (sizes < np.median(sizes[sizes > 0]))
  assert picks[small].sum() / picks.sum() > 1.5 * sizes[small].sum() / sizes.sum()


def test_no_corruption_is_the_identity(stored):
  batch = _tiled_batch(stored, 16)
  config = evidence.default_config()
  config.update(keypoint_noise_px=0.0, keypoint_drop_prob=0.0, keypoint_swap_prob=0.0,
                part_morph_prob=1.0, mask_morph_prob=1.0, morph_max_px=0, mask_max_holes=0)
  out = _corrupt(batch, config)
  for field in ("keypoints", "part_map", "mask"):
    np.testing.assert_array_equal(out[field], batch[field])
  np.testing.assert_array_equal(out["confidence"] > 0, batch["visible"] > 0)


def test_has_3d_is_a_fixed_subset_of_the_labelled_fraction():
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  n = 4000
  ds = tf.data.Dataset.from_tensor_slices({
      "subject": tf.constant(["%02d" % (i % 7) for i in range(n)]),
      "clip": tf.constant(["%02d_%02d" % (i % 7, i % 13) for i in range(n)]),
      "frame": tf.range(n, dtype=tf.int32), "view": tf.constant([i % 2 for i in range(n)])})
  def flags(fraction):
    out = evidence._with_labels(tf, ds, fraction).batch(n)  # pylint: disable=protected-access
    return next(out.as_numpy_iterator())["has_3d"]
  semi, half = flags(0.05), flags(0.5)
  assert abs(semi.mean() - 0.05) < 0.015 and abs(half.mean() - 0.5) < 0.03
  assert np.all(half[semi])  # Nested: the semi subset is part of every larger one.
  np.testing.assert_array_equal(semi, flags(0.05))
  assert flags(1.0).all() and not flags(0.0).any()


def _batches(ds, count):
  return [evidence.numeric(b) for b in ds.take(count).as_numpy_iterator()]


def _assert_same(a, b):
  assert a.keys() == b.keys()
  for k in a:
    np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_training_batches_are_a_function_of_seed_and_step(data_config):
  full = _batches(evidence.train_dataset(data_config, 0, 1, 8, seed=3), 5)
  resumed = _batches(evidence.train_dataset(data_config, 0, 1, 8, seed=3, start_step=3), 2)
  for a, b in zip(full[3:], resumed):
    _assert_same(a, b)
  other = _batches(evidence.train_dataset(data_config, 0, 1, 8, seed=4), 1)[0]
  assert not np.array_equal(other["keypoints"], full[0]["keypoints"])
  # Epoch 2 revisits examples with a new corruption but the same has_3d.
  assert full[0]["has_3d"].dtype == bool and full[0]["weight"].sum() == 8
  # Two processes read disjoint halves.
  first = _batches(evidence.train_dataset(data_config, 0, 2, 4, seed=3), 2)
  second = _batches(evidence.train_dataset(data_config, 1, 2, 4, seed=3), 2)
  keys = lambda bs: {(int(f), int(v)) for b in bs for f, v in zip(b["frame"], b["view"])}
  assert not keys(first) & keys(second)


def test_labelled_per_batch_puts_that_share_of_labels_in_every_batch(data_config):
  """semi's batches: a fixed count of labelled rows per batch, resumable; too few labels fail."""
  config = data_config.copy_and_resolve_references()
  config.update(labelled_fraction=0.3, labelled_per_batch=0.25)
  full = _batches(evidence.train_dataset(config, 0, 1, 8, seed=3), 4)
  assert [int(b["has_3d"].sum()) for b in full] == [2, 2, 2, 2]
  resumed = _batches(evidence.train_dataset(config, 0, 1, 8, seed=3, start_step=2), 2)
  for a, b in zip(full[2:], resumed):
    _assert_same(a, b)
  # A run saved before the field existed validates and mixes naturally.
  old = data_config.copy_and_resolve_references().to_dict()
  del old["labelled_per_batch"]
  evidence.validate(ml_collections.ConfigDict(old))
  config.labelled_fraction = 0.0
  with pytest.raises(ValueError, match="labelled_per_batch"):
    evidence.train_dataset(config, 0, 1, 8, seed=3)


def test_augmented_training_batches_flip_some_examples_resumably(data_config):
  """augment_flip_prob: the same examples, some mirrored (labels with them), resumable."""
  config = data_config.copy_and_resolve_references()
  config.augment_flip_prob = 0.5
  plain = _batches(evidence.train_dataset(data_config, 0, 1, 8, seed=3), 3)
  full = _batches(evidence.train_dataset(config, 0, 1, 8, seed=3), 3)
  resumed = _batches(evidence.train_dataset(config, 0, 1, 8, seed=3, start_step=1), 2)
  for a, b in zip(full[1:], resumed):
    _assert_same(a, b)
  flipped = unchanged = 0
  for a, b in zip(plain, full):
    np.testing.assert_array_equal(a["frame"], b["frame"])
    for i in range(8):
      if np.array_equal(a["root_rotmat"][i], b["root_rotmat"][i]):
        unchanged += 1
        np.testing.assert_array_equal(a["pose_dofs"][i], b["pose_dofs"][i])
      else:
        flipped += 1
        np.testing.assert_allclose(b["joints3d"][i][:, 0], -a["joints3d"][i][[0, 2, 1, 4, 3, 6,
                                   5, 8, 7, 10, 9, 12, 11, 14, 13, 16, 15], 0], atol=1e-5)
  assert flipped and unchanged
  with pytest.raises(ValueError, match="augment_roll_deg"):
    evidence.validate(ml_collections.ConfigDict({**config.to_dict(), "augment_roll_deg": -1.0}))


def test_eval_batches_are_fixed_and_padded(data_config, stored):
  one = _batches(evidence.eval_dataset(data_config, "test", 8), 100)
  two = _batches(evidence.eval_dataset(data_config, "test", 8), 100)
  assert len(one) == -(-len(stored["test"]) // 8)
  for a, b in zip(one, two):
    _assert_same(a, b)
    assert a["keypoints"].shape == (8, 17, 2)
  assert sum(b["weight"].sum() for b in one) == len(stored["test"])
  assert not one[-1]["part_valid"][one[-1]["weight"] == 0].any()


def test_bad_source_or_config_is_one_clear_error(tmp_path):
  with pytest.raises(ValueError, match="data.manual_dir"):
    evidence.prepared_builder(_config(tmp_path / "missing", tmp_path / "tfds"))
  (tmp_path / "empty").mkdir()
  with pytest.raises(FileNotFoundError, match="no SS_CC.amc"):
    evidence.prepared_builder(_config(tmp_path / "empty", tmp_path / "tfds"))
  assert not list((tmp_path / "tfds").glob("**/dataset_info.json"))  # Nothing prepared.
  with pytest.raises(ValueError, match="data.labelled_fraction"):
    evidence.prepared_builder(_config(tmp_path / "empty", tmp_path / "tfds",
                                      labelled_fraction=1.5))
  bad = _config(tmp_path / "empty", tmp_path / "tfds")
  bad.resolution_px = 64
  with pytest.raises(ValueError, match="resolution_px"):
    evidence.validate(bad)


@pytest.mark.slow
def test_rebuild_is_identical(data_config, stored, tmp_path):
  """A second build of the same source (another cache folder) holds the same bytes."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  config = data_config.copy_and_resolve_references()
  config.data_dir = str(tmp_path)
  builder = evidence.prepared_builder(config)
  for split, examples in stored.items():
    again = {(ex["clip"], int(ex["frame"]), int(ex["view"])): ex for ex in tfds.as_numpy(
        builder.as_dataset(split=split, shuffle_files=False))}
    assert len(again) == len(examples)
    for ex in examples:
      other = again[(ex["clip"], int(ex["frame"]), int(ex["view"]))]
      for field, value in ex.items():
        np.testing.assert_array_equal(value, other[field], err_msg=field)


@pytest.mark.slow
def test_self_regime_evidence_comes_from_the_detector(manual_dir, data_config):
  """`self_` configs: BlazePose on shaded photos of the same scenes finds the person."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  config = data_config.copy_and_resolve_references()
  config.update(evidence_source="detector", stride=12, views_per_pose=1)
  builder = evidence.prepared_builder(config)
  assert builder.info.config_name == "self_r64_s12_v1"
  examples = [ex for split in builder.info.splits for ex in tfds.as_numpy(
      builder.as_dataset(split=split, shuffle_files=False))]
  found = [ex for ex in examples if ex["detected"]]
  assert len(found) >= 0.7 * len(examples)
  errors = np.concatenate([np.linalg.norm(ex["keypoints"] - ex["keypoints_true"], axis=-1)[
      ex["visible_true"] > 0] for ex in found])
  assert np.median(errors) < 1.5  # px at 64 (6 px at the 256 px photo)
  for ex in examples:
    assert not ex["part_map"].any()  # A detector gives no part labels.
    if not ex["detected"]:
      assert not ex["visible"].any() and not ex["mask"].any()


@pytest.mark.slow  # A subprocess start (TF + JAX imports): ~10 s of CPU for a bad-flag check.
def test_preview_cli_bad_input_is_one_line_and_writes_nothing(tmp_path):
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  out = tmp_path / "preview.png"
  result = subprocess.run(
      [sys.executable, "-m", "flowpose.data.tfds.cmu_evidence.preview", f"--out={out}",
       f"--data.manual_dir={tmp_path / 'missing'}", f"--data.data_dir={tmp_path / 'tfds'}"],
      capture_output=True, text=True, cwd=os.path.dirname(os.path.dirname(__file__)),
      check=False)
  assert result.returncode == 1
  assert "data.manual_dir" in result.stderr.strip().splitlines()[-1]
  assert not out.exists()
