"""Tests for flowpose.train: training, sharding, resume, preemption, divergence, config."""

import os

# LU layers run LAPACK on tiny matrices; OpenBLAS threads only slow them down
# (badly so on a loaded machine). Takes effect before the first LAPACK call.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

# pylint: disable=g-import-not-at-top,wrong-import-position
import functools
import json
import pathlib
import re
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from flowpose.prior import io as prior_io
from flowpose.prior import flow as prior_lib  # pylint: disable=g-bad-import-order
from flowpose.data import cmu_skeleton
from flowpose.train import checkpointing
from flowpose.train import config_lib
from flowpose.data import poses as pose_data
from flowpose.train import trainer
from experiments import prior_cmu

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]

# A tiny flow and few steps: fields overridden on top of runlocal,synthetic
# (also passed on the command line to the launcher).
TINY = {
    "flow.num_layers": 2, "flow.hidden_sizes": (16, 16), "batch_size": 32,
    "eval_batch_size": 64, "num_train_steps": 30, "init_examples": 128,
    "optimizer.warmup_steps": 1, "optimizer.learning_rate": 3e-3,
    "data.num_train": 512, "data.num_eval": 128, "log_every": 5,
    "eval_every": 100, "checkpoint_every": 10, "keep_checkpoints": 10,
}


def tiny_config(**overrides):
  config = prior_cmu.get_config("runlocal,synthetic")
  config.update_from_flattened_dict({**TINY, **overrides})
  return config


pytestmark = pytest.mark.usefixtures("fast_compile")  # conftest: XLA optimisations off


class Killed(Exception):
  """Stands in for the process dying (no final checkpoint)."""


def patch_batches(monkeypatch, at_step, action):
  """Makes `EpochBatches.batch(at_step)` call `action(batch)` (which may raise)."""
  original = pose_data.EpochBatches.batch

  def batch(self, step):
    poses = original(self, step)
    return action(poses) if step == at_step else poses

  monkeypatch.setattr(pose_data.EpochBatches, "batch", batch)


def assert_trees_equal(a, b):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_tiny_run_reduces_nll_and_exports(tmp_path):
  result = trainer.train_and_evaluate(tiny_config(), str(tmp_path))
  assert result.step == 30 and not result.preempted
  assert result.eval_nll < result.initial_eval_nll - 2.0, result
  assert np.isfinite(result.train_metrics["train/nll"])
  # The exported prior reproduces the trained params and the eval NLL.
  prior, params, saved = prior_io.load_exported_prior(str(tmp_path))
  assert saved.flow.num_layers == 2
  assert_trees_equal(params, result.params)
  poses = pose_data.synthetic_poses(128, 50, 0, "validation")
  nll = -np.mean(prior.log_prob(params, poses))
  np.testing.assert_allclose(nll, result.eval_nll, rtol=1e-4)


def test_one_step_same_on_1_and_8_devices(tmp_path):
  """In-process run vs the launcher on 8 forced CPU devices (a subprocess)."""
  overrides = {"num_train_steps": 1, "optimizer.warmup_steps": 0,
               "log_every": 1}
  local = trainer.train_and_evaluate(tiny_config(**overrides),
                                     str(tmp_path / "one"))
  flags = [f"--config.{k}={v}".replace(" ", "")
           for k, v in {**TINY, **overrides}.items()]
  env = dict(os.environ,
             XLA_FLAGS="--xla_force_host_platform_device_count=8",
             JAX_PLATFORMS="cpu", JAX_DISABLE_MOST_OPTIMIZATIONS="1")
  proc = subprocess.run(
      [sys.executable, "-m", "launch.main",
       "--config=experiments/prior_cmu.py:runlocal,synthetic",
       f"--workdir={tmp_path / 'eight'}", *flags],
      cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300,
      check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "devices: [CpuDevice(id=0)" in proc.stderr
  assert "CpuDevice(id=7)" in proc.stderr
  logged = re.search(r"\[1\] .*train/loss=([-+.\deE]+)", proc.stderr)
  assert logged, proc.stderr[-3000:]
  np.testing.assert_allclose(float(logged.group(1)),
                             local.train_metrics["train/loss"], rtol=1e-5)
  _, params, _ = prior_io.load_exported_prior(str(tmp_path / "eight"))
  for x, y in zip(jax.tree.leaves(local.params), jax.tree.leaves(params),
                  strict=True):
    np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-5)
  eight = json.loads((tmp_path / "eight" / "config.json").read_text())
  assert eight["flow"]["hidden_sizes"] == [16, 16]


def test_resume_after_kill_and_preemption_is_exact(tmp_path, monkeypatch):
  straight = trainer.train_and_evaluate(tiny_config(), str(tmp_path / "a"))

  # Dies during step 13: the newest checkpoint is step 10, 10-13 are redone.
  def die(poses):
    raise Killed()
  with monkeypatch.context() as patch:
    patch_batches(patch, 13, die)
    with pytest.raises(Killed):
      trainer.train_and_evaluate(tiny_config(), str(tmp_path / "b"))
  manager = checkpointing.create_manager(str(tmp_path / "b"), 10)
  assert manager.latest_step() == 10
  resumed = trainer.train_and_evaluate(tiny_config(), str(tmp_path / "b"))
  assert resumed.step == 30
  assert_trees_equal(straight.params, resumed.params)

  # SIGTERM during step 13: checkpoints step 14 (between the periodic ones)
  # and returns; the rerun resumes there.
  def sigterm(poses):
    os.kill(os.getpid(), signal.SIGTERM)
    return poses
  with monkeypatch.context() as patch:
    patch_batches(patch, 13, sigterm)
    preempted = trainer.train_and_evaluate(tiny_config(), str(tmp_path / "c"))
  assert preempted.preempted and preempted.step == 14
  resumed = trainer.train_and_evaluate(tiny_config(), str(tmp_path / "c"))
  assert_trees_equal(straight.params, resumed.params)


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path, monkeypatch):
  patch_batches(monkeypatch, 13, lambda poses: poses * np.nan)
  with pytest.raises(trainer.NonFiniteLossError, match="at step 13"):
    trainer.train_and_evaluate(tiny_config(), str(tmp_path))
  manager = checkpointing.create_manager(str(tmp_path), 10)
  assert manager.all_steps() == [10]
  restored = manager.restore(10)
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(restored))
  assert not (tmp_path / prior_io.PARAMS_FILE).exists()


@pytest.mark.parametrize("field, value, message", [
    ("flow.coupling", "afine", "flow.coupling"),
    ("flow.chart", "quaternion", "flow.chart"),
    ("flow.chart", "axis_angle", "flow.event_dim"),  # D = 72 in that chart.
    ("flow.num_layers", 0, "flow.num_layers"),
    ("data.source", "files", "data.source"),
    ("eval_batch_size", 0, "eval_batch_size"),
    ("data.num_train", 10, "data.num_train"),
    ("optimizer.warmup_steps", 30, "optimizer.warmup_steps"),
    ("optimizer.learning_rate", -1.0, "optimizer.learning_rate"),
])
def test_bad_config_raises_before_training(tmp_path, field, value, message):
  config = tiny_config(**{field: value})
  with pytest.raises(ValueError, match=message.replace(".", r"\.")):
    trainer.train_and_evaluate(config, str(tmp_path / "run"))
  assert not (tmp_path / "run").exists()


def test_mirror_augmentation_needs_the_cmu_chart(tmp_path):
  config = tiny_config(**{"data.augment_mirror": True, "flow.event_dim": 12})
  with pytest.raises(ValueError, match=r"data\.augment_mirror"):
    trainer.train_and_evaluate(config, str(tmp_path / "run"))
  assert not (tmp_path / "run").exists()


def test_loss_weights_must_name_the_terms(tmp_path):
  config = tiny_config()
  config.loss_weights.nlll = 1.0
  with pytest.raises(ValueError, match="loss_weights"):
    trainer.train_and_evaluate(config, str(tmp_path))


def test_batches_are_a_function_of_seed_and_step():
  data = np.arange(100, dtype=np.float32)[:, None] * np.ones((1, 3), np.float32)
  batches = pose_data.EpochBatches(data, 16, seed=3)
  again = pose_data.EpochBatches(data, 16, seed=3)
  assert batches.steps_per_epoch == 6
  # Random access (a resumed run) equals sequential reads.
  np.testing.assert_array_equal(again.batch(13), batches.batch(13))
  epoch = np.concatenate([batches.batch(s) for s in range(6)])[:, 0]
  assert len(set(epoch)) == 96  # No repeats within an epoch.
  assert not np.array_equal(batches.batch(0), batches.batch(6))
  other_seed = pose_data.EpochBatches(data, 16, seed=4)
  assert not np.array_equal(other_seed.batch(0), batches.batch(0))


def _launch(workdir, **overrides):
  flags = [f"--config.{k}={v}".replace(" ", "")
           for k, v in {**TINY, **overrides}.items()]
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             JAX_DISABLE_MOST_OPTIMIZATIONS="1")
  return subprocess.Popen(
      [sys.executable, "-m", "launch.main",
       "--config=experiments/prior_cmu.py:runlocal,synthetic",
       f"--workdir={workdir}", *flags],
      cwd=REPO_ROOT, env=env, stdout=subprocess.DEVNULL,
      stderr=subprocess.PIPE, text=True)


def _wait_for_checkpoint(proc, workdir, after_step, timeout=240):
  """Polls `workdir/checkpoints` until a step > `after_step` exists."""
  folder = pathlib.Path(workdir) / checkpointing.CHECKPOINT_DIR
  deadline = time.monotonic() + timeout
  while time.monotonic() < deadline and proc.poll() is None:
    steps = [int(p.name) for p in folder.glob("*") if p.name.isdigit()]
    if steps and max(steps) > after_step:
      return max(steps)
    time.sleep(0.05)
  raise AssertionError(f"no checkpoint after step {after_step} "
                       f"(process exit code {proc.poll()})")


@pytest.mark.slow
def test_sigterm_and_kill_9_of_the_launcher_then_resume_is_exact(tmp_path):
  """A real preemption (SIGTERM) and crash (SIGKILL) of `launch.main`."""
  overrides = {"num_train_steps": 1000, "checkpoint_every": 20,
               "log_every": 20, "optimizer.warmup_steps": 10}
  workdir = tmp_path / "killed"
  proc = _launch(workdir, **overrides)
  _wait_for_checkpoint(proc, workdir, 0)
  proc.send_signal(signal.SIGTERM)
  _, stderr = proc.communicate(timeout=120)
  assert proc.returncode == 0, stderr[-3000:]
  assert "SIGTERM (preempted): saved checkpoint" in stderr

  proc = _launch(workdir, **overrides)
  step = _wait_for_checkpoint(proc, workdir, 40)
  proc.kill()
  proc.communicate(timeout=60)
  assert proc.returncode == -signal.SIGKILL
  assert step < 1000

  resumed = trainer.train_and_evaluate(tiny_config(**overrides), str(workdir))
  straight = trainer.train_and_evaluate(tiny_config(**overrides),
                                        str(tmp_path / "straight"))
  assert resumed.step == straight.step == 1000
  assert_trees_equal(straight.params, resumed.params)


@functools.lru_cache
def _fake_cmu_builder():
  """Registers `fake_cmu_mocap`: the cmu_mocap contract (dofs [50], fps configs)."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  class FakeCmuConfig(tfds.core.BuilderConfig):

    def __init__(self, *, fps, **kwargs):
      super().__init__(**kwargs)
      self.fps = fps

  class FakeCmuMocap(tfds.core.GeneratorBasedBuilder):
    VERSION = tfds.core.Version("1.0.0")
    BUILDER_CONFIGS = [FakeCmuConfig(name="fps30", fps=30),
                       FakeCmuConfig(name="fps120", fps=120)]
    MANUAL_DOWNLOAD_INSTRUCTIONS = "Synthetic poses in poses_<split>.npy."
    # TFDS looks for metadata beside a builder's module; tests/ is no package.
    pkg_dir_path = pathlib.Path(__file__).parent

    def _info(self):
      return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict(
          {"dofs": tfds.features.Tensor(shape=(50,), dtype=np.float32)}))

    def _split_generators(self, dl_manager):
      return {split: self._generate_examples(
          dl_manager.manual_dir / f"poses_{split}.npy")
              for split in ("train", "validation")}

    def _generate_examples(self, path):
      for i, pose in enumerate(np.load(path)):
        yield i, {"dofs": pose}

  return FakeCmuMocap


def test_tfds_source_reads_the_cmu_mocap_contract(tmp_path):
  """The tfds path end to end, on a stand-in builder with the same features."""
  _fake_cmu_builder()
  manual = tmp_path / "cmu"
  manual.mkdir()
  for split, num in (("train", 512), ("validation", 128)):
    np.save(manual / f"poses_{split}.npy",
            pose_data.synthetic_poses(num, 50, 0, split))
  config = tiny_config(**{"data.source": "tfds",
                          "data.tfds_name": "fake_cmu_mocap",
                          "data.data_dir": str(tmp_path / "tfds"),
                          "data.manual_dir": str(manual),
                          "data.augment_mirror": False})
  data = pose_data.load_data(config.data, 50)
  np.testing.assert_array_equal(
      np.sort(data.eval, 0),
      np.sort(pose_data.synthetic_poses(128, 50, 0, "validation"), 0))
  assert data.train.shape == (512, 50)
  config.data.augment_mirror = True
  mirrored = pose_data.load_data(config.data, 50).train
  assert mirrored.shape == (1024, 50)
  np.testing.assert_array_equal(mirrored[512:], cmu_skeleton.mirror_dofs(mirrored[:512]))
  config.data.augment_mirror = False
  result = trainer.train_and_evaluate(config, str(tmp_path / "run"))
  assert result.step == 30 and np.isfinite(result.eval_nll)
  config.data.fps = 25
  with pytest.raises(ValueError, match="data.fps"):
    pose_data.load_data(config.data, 50)


def test_experiment_config_modes():
  default = prior_cmu.get_config()
  assert default.flow == prior_lib.default_flow_config()  # No drift.
  assert default.data.source == "tfds" and default.data.fps == 30
  assert set(default.loss_weights) == set(config_lib.LOSS_TERMS)
  config_lib.validate_config(default)
  small = prior_cmu.get_config("runlocal")
  assert small.flow.num_layers < default.flow.num_layers
  assert small.data.source == "tfds"
  with pytest.raises(ValueError, match="unknown modes"):
    prior_cmu.get_config("runlcoal")
