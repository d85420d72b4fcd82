"""The one trainer runs any task: a linear-regression task defined here, plugged in by name."""

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

# pylint: disable=g-import-not-at-top,wrong-import-position
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from flowpose import losses
from flowpose import tasks
from flowpose.data import poses
from flowpose.train import checkpointing
from flowpose.train import trainer

TRUE_W = np.asarray([[1.5], [-2.0], [0.5]], np.float32)
TRUE_B = 0.25


def _data(num: int, seed: int) -> dict:
  """`{"x": [num, 3], "y": [num, 1]}`: y = x W + b + small noise."""
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(num, 3)).astype(np.float32)
  y = x @ TRUE_W + TRUE_B + 0.01 * rng.normal(size=(num, 1))
  return {"x": x, "y": y.astype(np.float32)}


# --- The task: only the functions flowpose.tasks asks for. ---------------------------------


def validate_config(config):
  if not config.model.l2 >= 0:
    raise ValueError(f"config model.l2: expected >= 0, got {config.model.l2!r}")


def init(config, rng, example_batch):
  del config, rng
  return {"w": jnp.zeros((example_batch["x"].shape[-1], 1)), "b": jnp.zeros((1,))}


def loss(params, batch, rng, config):
  del rng
  pred = batch["x"] @ params["w"] + params["b"]
  terms = {"mse": jnp.mean(jnp.square(pred - batch["y"])),
           "l2": config.model.l2 * jnp.sum(jnp.square(params["w"]))}
  total, terms = losses.weighted_sum(terms, dict(config.loss_weights))
  return total, dict(terms)


def evaluate(params, dataset, config):
  del config
  errors = [np.asarray(jnp.square(b["x"] @ params["w"] + params["b"] - b["y"]))
            for b in dataset]
  return {"mse": float(np.mean(np.concatenate(errors)))}


def input_pipeline(config, split, process_index, process_count, start_step=0):
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  if split == "train":
    data = _data(config.data.num_train, 0)
    ds = tf.data.Dataset.from_tensor_slices(data)
    return poses.epoch_batches(ds, config.data.num_train, config.batch_size // process_count,
                               poses.process_seed(config.seed, process_index), start_step)
  data = _data(config.data.num_eval, 1)
  return tf.data.Dataset.from_tensor_slices(data).batch(config.eval_batch_size,
                                                        drop_remainder=True)


LINEAR = tasks.namespace(
    LOSS_TERMS=("mse", "l2"), CONFIG_FIELDS=("model",), validate_config=validate_config,
    init=init, loss=loss, evaluate=evaluate, input_pipeline=input_pipeline)


@pytest.fixture(autouse=True)
def linear_task(fast_compile):  # pylint: disable=unused-argument
  tasks.register("linear_test", LINEAR)
  yield
  tasks.unregister("linear_test")


def linear_config(**overrides) -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict(dict(
      task="linear_test", seed=0, num_train_steps=150, batch_size=32, eval_batch_size=64,
      init_examples=32, log_every=50, eval_every=50, checkpoint_every=50, keep_checkpoints=5,
      optimizer=dict(learning_rate=0.1, warmup_steps=5, end_lr_factor=0.1, grad_clip_norm=10.0),
      loss_weights=dict(mse=1.0, l2=1.0), data=dict(num_train=256, num_eval=128),
      model=dict(l2=0.0)))
  config.update_from_flattened_dict(overrides)
  return config


def test_linear_task_trains_with_the_same_trainer(tmp_path):
  result = trainer.train_and_evaluate(linear_config(), str(tmp_path))
  assert result.step == 150 and result.eval_step == 150 and not result.preempted
  assert result.initial_eval_metrics["mse"] > 1.0
  assert result.eval_metrics["mse"] < 1e-3, result.eval_metrics
  np.testing.assert_allclose(result.params["w"], TRUE_W, atol=0.02)
  np.testing.assert_allclose(result.params["b"], [TRUE_B], atol=0.02)
  assert {"train/mse", "train/l2", "train/loss"} <= set(result.train_metrics)
  assert (tmp_path / trainer.CONFIG_FILE).is_file()
  assert checkpointing.create_manager(str(tmp_path), 5).latest_step() == 150


def test_linear_task_resume_is_exact(tmp_path, monkeypatch):
  straight = trainer.train_and_evaluate(linear_config(), str(tmp_path / "a"))
  original = trainer._train_batches  # pylint: disable=protected-access

  def dying(task, config, start_step):
    for step, batch in enumerate(original(task, config, start_step), start_step):
      if step == 77:
        raise KeyboardInterrupt  # Stands in for kill -9 (no final checkpoint).
      yield batch

  with monkeypatch.context() as patch:
    patch.setattr(trainer, "_train_batches", dying)
    with pytest.raises(KeyboardInterrupt):
      trainer.train_and_evaluate(linear_config(), str(tmp_path / "b"))
  resumed = trainer.train_and_evaluate(linear_config(), str(tmp_path / "b"))
  for x, y in zip(jax.tree.leaves(straight.params), jax.tree.leaves(resumed.params)):
    np.testing.assert_array_equal(x, y)


def test_task_fields_are_validated_by_the_task(tmp_path):
  with pytest.raises(ValueError, match=r"model\.l2"):
    trainer.train_and_evaluate(linear_config(**{"model.l2": -1.0}), str(tmp_path / "run"))
  config = linear_config()
  config.loss_weights = {"mse": 1.0}
  with pytest.raises(ValueError, match="loss_weights"):
    trainer.train_and_evaluate(config, str(tmp_path / "run"))
  assert not (tmp_path / "run").exists()


def test_registry_lists_and_checks_tasks():
  assert {"prior", "linear_test"} <= set(tasks.available())
  assert tasks.get_task("prior").LOSS_TERMS == ("nll", "weight_l2")
  with pytest.raises(ValueError, match="lacks"):
    tasks.register("broken", tasks.namespace(LOSS_TERMS=()))
