"""The `self` regime: BlazePose evidence on shaded photos, no labels of any kind in the loss.

One tiny real build (`self_` cmu_evidence config of a training clip and a validation clip,
every 8th frame, 2 views: ~28 photos through the detector) is shared by the module; the
network is the runlocal one on a tiny untrained prior.
"""

import os
import pathlib
import sys

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

# pylint: disable=g-import-not-at-top,wrong-import-position
import jax
import jax.numpy as jnp
import numpy as np
import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from test_regressor import make_tiny_prior

from flowpose.data import evidence
from flowpose.train import trainer

pytestmark = pytest.mark.usefixtures("fast_compile")

CLIPS = ("16.asf.gz", "16_49.amc.gz", "13.asf.gz", "13_40.amc.gz")  # Train / validation.
LABELS = ("pose_dofs", "root_rotmat", "betas", "transl", "joints3d")


@pytest.fixture(scope="module")
def config(cmu_dir, tmp_path_factory):
  """The runlocal `self` config on the two clips (its data built on first use)."""
  from experiments import regressor_self  # pylint: disable=g-import-not-at-top
  folder = tmp_path_factory.mktemp("cmu_self")
  for name in CLIPS:
    os.symlink(cmu_dir / name, folder / name)
  config = regressor_self.get_config("runlocal")
  config.model.prior_workdir = make_tiny_prior(tmp_path_factory.mktemp("prior"))
  config.data.update(manual_dir=str(folder), data_dir=str(tmp_path_factory.mktemp("tfds")),
                     stride=8, views_per_pose=2)
  config.batch_size, config.eval_batch_size = 4, 4
  return config


@pytest.fixture(scope="module")
def batch(config):
  """The first training batch of the served `self` pipeline (numpy)."""
  return next(evidence.train_dataset(config.data, 0, 1, config.batch_size, 0)
              .as_numpy_iterator())


def test_self_data_is_the_detectors_evidence_with_no_labels_for_training(config, batch):
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  builder = evidence.prepared_builder(config.data)
  assert builder.info.config_name == "self_r32_s8_v2"
  stored = list(tfds.as_numpy(builder.as_dataset(split="train", shuffle_files=False)))
  assert len(stored) == 8 and all(not ex["part_map"].any() for ex in stored)
  assert sum(ex["detected"] for ex in stored) >= 6  # The detector finds the shaded body.
  # Training: nobody labelled, the confidence is the detector's score of its visible
  # keypoints, and the truth is only in the evaluation fields.
  assert not batch["has_3d"].any()
  np.testing.assert_allclose(batch["confidence"], batch["keypoint_score"] * (
      batch["keypoint_score"] >= 0.5), rtol=1e-6)
  np.testing.assert_array_equal(batch["keypoints_clean"], batch["keypoints_true"])
  np.testing.assert_array_equal(batch["visible"], batch["visible_true"])
  assert batch["detected"].all()
  found = batch["keypoint_score"] >= 0.5
  error = np.linalg.norm(batch["keypoints"] - batch["keypoints_true"], axis=-1)
  assert np.median(error[found & (batch["visible_true"] > 0)]) < 2.0  # px at 32 px.


def test_frames_without_a_detection_are_dropped_and_counted():
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  ds = tf.data.Dataset.from_tensor_slices({"detected": [True, False, True, False, False],
                                           "frame": [0, 1, 2, 3, 4]})
  kept, num = evidence._detected_only(tf, ds, 5, "toy")  # pylint: disable=protected-access
  assert num == 2 and [int(ex["frame"]) for ex in kept.as_numpy_iterator()] == [0, 2]


@pytest.mark.slow  # One more compile of the loss' gradient (~45 s loaded); the trainer test
def test_the_self_loss_cannot_see_the_3d_labels(config, batch):  # below covers it by NaN labels.
  """Garbage (NaN) 3D labels change neither the loss nor its gradient; the 3D terms are 0."""
  from flowpose.tasks import regressor as task  # pylint: disable=g-import-not-at-top
  assert all(config.loss_weights[k] > 0 for k in ("joints3d", "joints3d_body", "dofs", "betas"))
  fields = {k: jnp.asarray(batch[k]) for k in task.BATCH_FIELDS if k in batch}
  params = task.init(config, jax.random.key(0), jax.tree.map(np.asarray, fields))
  grad_fn = jax.jit(jax.value_and_grad(
      lambda p, b: task.loss(p, b, jax.random.key(1), config), has_aux=True))
  (total, terms), grads = grad_fn(params, fields)
  assert np.isfinite(float(total)) and float(terms["keypoints"]) > 0
  for key in ("joints3d", "joints3d_body", "dofs", "betas", "parts"):
    assert float(terms[key]) == 0.0, key
  spoiled = {**fields, **{k: jnp.full_like(fields[k], jnp.nan) for k in LABELS}}
  (total2, _), grads2 = grad_fn(params, spoiled)
  assert float(total2) == float(total)
  for x, y in zip(jax.tree.leaves(grads), jax.tree.leaves(grads2)):
    np.testing.assert_array_equal(x, y)


@pytest.mark.slow  # A training compile (~50 s of CPU); the default suite checks has_3d above.
def test_runlocal_self_trains_on_nan_labels_and_evaluates_against_the_truth(
    config, tmp_path, monkeypatch):
  """Training batches with NaN 3D labels: a label reaching the loss or its gradient would stop
  the trainer (`NonFiniteLossError`); evaluation then scores against the (real) labels."""
  original = trainer._train_batches  # pylint: disable=protected-access

  def spoiled(task, config, start_step):
    for batch in original(task, config, start_step):
      yield {k: np.full_like(v, np.nan) if k in LABELS else v for k, v in batch.items()}

  monkeypatch.setattr(trainer, "_train_batches", spoiled)
  result = trainer.train_and_evaluate(config, str(tmp_path / "run"))
  assert result.step == config.num_train_steps
  for key in ("mpjpe_mm", "pa_mpjpe_mm", "pve_mm", "keypoint_px"):
    assert np.isfinite(result.eval_metrics[key]) and result.eval_metrics[key] > 0, key
  for key in ("parts", "joints3d", "joints3d_body", "dofs", "betas"):
    assert result.train_metrics[f"train/{key}"] == 0.0, key


def test_benchmark_scores_self_on_the_rendered_frames_of_every_regime(config):
  from benchmarks import regressor as bench  # pylint: disable=g-import-not-at-top
  from experiments import regressor_weak  # pylint: disable=g-import-not-at-top
  assert "self" in bench.REGIMES
  frames = bench.render_data_config(config.data)
  weak = regressor_weak.get_config("runlocal").data
  weak.update(manual_dir=config.data.manual_dir, data_dir=config.data.data_dir, stride=8,
              views_per_pose=2)
  assert frames.to_dict() == weak.to_dict()  # The weak run's frames and corruption.
  assert bench.render_data_config(weak).to_dict() == weak.to_dict()
