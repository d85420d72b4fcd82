"""Tests for the `cmu_mocap` TFDS builder and the pose loader reading it (small subset)."""

import gzip
import json
import os
import pathlib

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
import tensorflow_datasets as tfds

from flowpose import geometry
from flowpose.data import poses
from flowpose.data import retarget
from flowpose.data.tfds.cmu_mocap import cmu_mocap_dataset_builder as builder_lib
from flowpose.data.tfds.cmu_mocap import splits
from flowpose.data.motion import MocapFormatError

# Short clips of 3 subjects, one per split: 02 -> train, 13 -> validation, 09 -> test.
CLIPS = {"02_01": "02", "13_39": "13", "09_11": "09"}


def _subset(cmu_dir: pathlib.Path, out: pathlib.Path, extra=()) -> pathlib.Path:
  out.mkdir(parents=True, exist_ok=True)
  for clip, subject in CLIPS.items():
    for name in (f"{clip}.amc.gz", f"{subject}.asf.gz"):
      if not (out / name).exists():
        os.symlink(cmu_dir / name, out / name)
  rows = [line for line in (cmu_dir / "index.csv").read_text().splitlines()
          if line.startswith("file,") or line.split(".", 1)[0] in CLIPS]
  (out / "index.csv").write_text("\n".join(rows) + "\n")
  for name, data in extra:
    (out / name).write_bytes(data)
  return out


def _build(manual_dir, data_dir, config="fps30", skip_bad_files=False):
  builder = builder_lib.Builder(config=config, data_dir=str(data_dir),
                                skip_bad_files=skip_bad_files)
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(manual_dir=str(manual_dir)))
  return builder


def _examples(builder, split):
  return list(tfds.as_numpy(builder.as_dataset(split=split, shuffle_files=False)))


@pytest.fixture(scope="module")
def manual_dir(cmu_dir, tmp_path_factory):
  return _subset(cmu_dir, tmp_path_factory.mktemp("cmu_subset"))


@pytest.fixture(scope="module")
def built(manual_dir, tmp_path_factory):
  return _build(manual_dir, tmp_path_factory.mktemp("tfds_a"))


def test_split_rule():
  assert [splits.split_of_subject(s) for s in (2, 5, 9, 13, 14, 16, 49, 105)] == [
      "train", "train", "test", "validation", "train", "train", "test", "train"]


def test_splits_disjoint_by_subject_and_features(built):
  subjects = {}
  for split in ("train", "validation", "test"):
    examples = _examples(built, split)
    assert examples, split
    subjects[split] = {int(e["subject"]) for e in examples}
    assert all(splits.split_of_subject(s) == split for s in subjects[split])
  assert subjects == {"train": {2}, "validation": {13}, "test": {9}}
  # 30 fps from 120 by stride: 02_01 has 343 frames -> frames 0, 4, ..., 340.
  train = sorted(_examples(built, "train"), key=lambda e: int(e["frame"]))
  assert [int(e["frame"]) for e in train] == list(range(0, 343, 4))
  ex = train[10]
  assert ex["clip"] == b"02_01" and ex["description"] == b"walk"
  shapes = {k: np.shape(v) for k, v in ex.items()}
  assert shapes == {"dofs": (50,), "rot6d": (31, 6), "root_orient": (3,), "root_transl": (3,),
                    "joints3d": (31, 3), "subject": (), "clip": (), "description": (),
                    "frame": ()}
  # Features agree with each other: rot6d = chart -> body rotations, joints3d = FK of them.
  rotmats = np.asarray(geometry.rot6d_to_matrix(jnp.asarray(ex["rot6d"])))
  expected = retarget.pose_dofs_to_body_rotmats(ex["dofs"], rotmats[0])
  np.testing.assert_allclose(rotmats, expected, atol=1e-5)
  np.testing.assert_allclose(geometry.axis_angle_to_matrix(jnp.asarray(ex["root_orient"])),
                             rotmats[0], atol=1e-5)
  joints = retarget.body_joints(rotmats[None], ex["root_transl"][None], batch=512)[0]
  np.testing.assert_allclose(ex["joints3d"], joints, atol=1e-4)


def test_rebuild_is_identical(built, manual_dir, tmp_path):
  again = _build(manual_dir, tmp_path / "tfds_b")
  for split in ("train", "validation", "test"):
    first, second = _examples(built, split), _examples(again, split)
    assert len(first) == len(second)
    for a, b in zip(first, second):
      assert a.keys() == b.keys()
      for key in a:
        np.testing.assert_array_equal(a[key], b[key])


def test_window_config(manual_dir, tmp_path):
  builder = _build(manual_dir, tmp_path, config="fps30_win32")
  examples = _examples(builder, "validation")  # 13_39: 351 frames -> 88 at 30 fps.
  assert len(examples) == (88 - 32) // 16 + 1
  ex = examples[0]
  assert ex["dofs"].shape == (32, 50) and ex["joints3d"].shape == (32, 31, 3)
  assert np.all(np.diff(ex["frame"]) == 4)


def _data_config(manual_dir, data_dir, **overrides):
  config = poses.default_config()
  config.update(manual_dir=str(manual_dir), data_dir=str(data_dir), **overrides)
  return config


@pytest.fixture(scope="module")
def data_config(manual_dir, tmp_path_factory):
  return _data_config(manual_dir, tmp_path_factory.mktemp("tfds_keyed"))


def test_feature_batches_feed_jit(data_config):
  batches = poses.feature_batches(data_config, "train", batch_size=16).as_numpy_iterator()

  @jax.jit
  def step(batch):
    return jnp.mean(batch["dofs"]) + jnp.mean(batch["joints3d"])

  first = [next(batches) for _ in range(8)]  # 86 examples: crosses an epoch.
  assert all(b["dofs"].shape == (16, 50) and b["rot6d"].shape == (16, 31, 6) for b in first)
  assert "clip" not in first[0]
  values = [float(step(b)) for b in first]
  assert np.all(np.isfinite(values))
  again = poses.feature_batches(data_config, "train", batch_size=16).as_numpy_iterator()
  np.testing.assert_array_equal(next(again)["frame"], first[0]["frame"])  # Seeded.


def test_training_stream_reads_the_built_dofs(data_config, built):
  train = np.stack([e["dofs"] for e in _examples(built, "train")])  # 86 poses of 02_01.
  np.testing.assert_array_equal(poses.read_split(data_config, "train", 50), train)
  config = ml_collections.ConfigDict(data_config.to_dict())
  config.augment_mirror = True
  stream = poses.train_batches(config, 50, batch_size=43, seed=0).as_numpy_iterator()
  epoch = np.concatenate([next(stream) for _ in range(4)])  # 2 x 86 poses, mirrored.
  np.testing.assert_array_equal(
      np.unique(epoch, axis=0), np.unique(poses.augment_train(config, train), axis=0))


def _bad_manual_dir(cmu_dir, root):
  truncated = gzip.decompress((cmu_dir / "02_02.amc.gz").read_bytes())[:5000]
  return _subset(cmu_dir, root, extra=[
      ("02_02.amc.gz", gzip.compress(truncated + b"\nlowerback 1 2 oops\n")),
      ("16_02.amc.gz", (cmu_dir / "16_02.amc.gz").read_bytes()),  # No 16.asf beside it.
  ])


def test_bad_files_fail_the_build_listing_all(cmu_dir, tmp_path):
  manual = _bad_manual_dir(cmu_dir, tmp_path / "manual")
  data_dir = tmp_path / "data"
  with pytest.raises(MocapFormatError) as info:
    _build(manual, data_dir)
  message = str(info.value)
  assert "2 bad file(s)" in message and "02_02.amc.gz" in message and "16_02.amc.gz" in message
  assert "without its ASF" in message
  # Nothing prepared: no version folder, no dataset_info.json anywhere.
  assert not (data_dir / "cmu_mocap" / "fps30" / str(builder_lib.Builder.VERSION)).exists()
  assert not list(data_dir.rglob("dataset_info.json"))
  assert not list(data_dir.rglob("*.tfrecord*"))


def test_skip_bad_files_from_the_config(cmu_dir, tmp_path):
  """`config.data.skip_bad_files` reaches the builder (launch.main's path)."""
  manual = _bad_manual_dir(cmu_dir, tmp_path / "manual")
  config = _data_config(manual, tmp_path / "data")
  with pytest.raises(MocapFormatError, match=r"--config\.data\.skip_bad_files=True"):
    poses.read_split(config, "train", 50)
  config.skip_bad_files = True
  train = poses.read_split(config, "train", 50)
  assert train.shape == (86, 50)  # 02_01 only.
  assert list((tmp_path / "data").rglob("bad_files.json"))


def test_skip_bad_files(cmu_dir, tmp_path):
  manual = _bad_manual_dir(cmu_dir, tmp_path / "manual")
  builder = _build(manual, tmp_path / "data", skip_bad_files=True)
  report = json.loads((pathlib.Path(builder.data_dir) / "bad_files.json").read_text())
  assert sorted(pathlib.Path(r["file"]).name for r in report) == ["02_02.amc.gz",
                                                                  "16_02.amc.gz"]
  clips = {e["clip"] for e in _examples(builder, "train")}
  assert clips == {b"02_01"}


# --- More subjects: several folders, CRLF/commented ASF/AMC, CMU-skeleton BVH ---

def _more_dir(shared_data, root: pathlib.Path) -> pathlib.Path:
  """Subject 35 (GPmat ASF/AMC, CRLF) and the first 41 frames of the
  BVH clip 01_03 (frame 0 = the converter T-pose) in one folder."""
  more = shared_data / "cmu_more"
  (root / "bvh").mkdir(parents=True, exist_ok=True)
  for name in ("35.asf.gz", "35_01.amc.gz"):
    os.symlink(more / "asfamc" / name, root / name)
  lines = gzip.decompress((more / "bvh" / "01" / "01_03.bvh.gz").read_bytes()).decode()
  lines = lines.splitlines()
  start = next(n for n, l in enumerate(lines) if l.lower().startswith("frame time")) + 1
  head = [("Frames: 41" if l.lower().startswith("frames:") else l) for l in lines[:start]]
  (root / "bvh" / "01_03.bvh").write_text("\n".join(head + lines[start:start + 41]) + "\n")
  return root


def test_crlf_and_comment_asf_amc(shared_data):
  from flowpose.data import asf_amc  # pylint: disable=g-import-not-at-top
  more = shared_data / "cmu_more" / "asfamc"
  raw = gzip.decompress((more / "11.asf.gz").read_bytes())
  assert b"\r\n" in raw and b"# Copyright" in raw  # What the reader must cope with.
  motion = asf_amc.load_asf_amc(more / "11_01.amc.gz")
  assert motion.num_frames == 597
  dofs = retarget.motion_to_pose_dofs(motion)
  assert dofs.shape == (597, 50) and np.isfinite(dofs).all() and dofs.std(0).max() > 0.1


def test_several_manual_folders(manual_dir, shared_data, tmp_path):
  more = _more_dir(shared_data, tmp_path / "more")
  joined = f"{manual_dir},{more}"
  config = _data_config(joined, tmp_path / "data")
  builder = poses.prepared_builder(config)
  train = _examples(builder, "train")
  by_clip = {}
  for e in train:
    by_clip.setdefault(e["clip"].decode(), []).append(int(e["frame"]))
  assert sorted(by_clip) == ["01_03", "02_01", "35_01"]
  assert {int(e["subject"]) for e in train} == {1, 2, 35}  # New subjects: train (rule).
  # 01_03: 40 captured frames at 120 fps (T-pose dropped) -> frames 0, 4, ..., 36 at 30 fps.
  assert sorted(by_clip["01_03"]) == list(range(0, 40, 4))
  assert len(by_clip["35_01"]) == 90  # 358 frames at 120 fps.
  # Validation/test are the first folder's, unchanged.
  assert len(_examples(builder, "validation")) == 88
  # The BVH clip's DOFs are those of clips.read_clip + retargeting (frame 4 = captured frame 5).
  from flowpose.data import clips  # pylint: disable=g-import-not-at-top
  motion = clips.read_clip(more / "bvh" / "01_03.bvh")
  ex = next(e for e in train if e["clip"] == b"01_03" and int(e["frame"]) == 4)
  np.testing.assert_allclose(ex["dofs"], retarget.motion_to_pose_dofs(motion)[4], atol=1e-6)
  # Keyed by every folder: the joined source is not the first folder's cache.
  single = poses.source_fingerprint(str(manual_dir), "x")["fingerprint"]
  both = poses.source_fingerprint([str(manual_dir), str(more)], "x")["fingerprint"]
  assert single != both
  with pytest.raises(ValueError, match="not found"):
    poses.prepared_builder(_data_config(f"{manual_dir},{tmp_path / 'nope'}", tmp_path / "d2"))


def test_a_clip_in_two_folders_is_taken_once(manual_dir, tmp_path):
  second = _subset(pathlib.Path(os.path.realpath(manual_dir / "02_01.amc.gz")).parent,
                   tmp_path / "copy")
  clips = splits.list_clips_in([manual_dir, second])
  assert [c.name for c in clips] == sorted(CLIPS, key=lambda n: (int(n.split("_")[0]), n))
  assert all(c.amc_path.parent == manual_dir for c in clips)
