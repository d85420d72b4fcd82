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
from flowpose.data import cmu_skeleton
from flowpose import io_utils
from flowpose.tasks import prior as prior_task
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
  """Makes the trainer's batch of step `at_step` go through `action(batch)` (which may raise)."""
  original = trainer._train_batches  # pylint: disable=protected-access

  def batches(task, config, start_step):
    for step, poses in enumerate(original(task, config, start_step), start_step):
      yield action(poses) if step == at_step else poses

  monkeypatch.setattr(trainer, "_train_batches", batches)


def assert_trees_equal(a, b):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_tiny_run_reduces_nll_and_exports(tmp_path, monkeypatch):
  # The trainer's absl log lines, captured whatever handlers earlier tests left on absl's logger.
  lines = []
  real_info = trainer.logging.info
  monkeypatch.setattr(trainer.logging, "info",
                      lambda msg, *args, **kw: (lines.append(msg % args if args else msg),
                                                real_info(msg, *args, **kw)))
  result = trainer.train_and_evaluate(tiny_config(), str(tmp_path))
  assert result.step == 30 and not result.preempted
  # The final line reports the final step's own evaluation.
  assert result.eval_step == 30
  assert f"Finished at step 30; eval at step 30: nll={result.eval_nll:.4f}." in lines
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
  # The checkpoint of the preempted step is on disk (not just a returned step).
  manager = checkpointing.create_manager(str(tmp_path / "c"), 10)
  assert manager.latest_step() == 14
  assert (tmp_path / "c" / checkpointing.CHECKPOINT_DIR / "14").is_dir()
  # Its eval metrics say which step they belong to (the start), not the preempted one.
  assert preempted.eval_step == 0
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
    ("flow.event_dim", 1, "flow.event_dim"),
    ("flow.num_layers", 0, "flow.num_layers"),
    ("data.source", "files", "data.source"),
    ("eval_batch_size", 0, "eval_batch_size"),
    ("data.num_train", 10, "data.num_train"),
    ("optimizer.warmup_steps", 30, "optimizer.warmup_steps"),
    ("optimizer.learning_rate", -1.0, "optimizer.learning_rate"),
    ("data.shuffle_buffer", 0, "data.shuffle_buffer"),
])
def test_bad_config_raises_before_training(tmp_path, field, value, message):
  config = tiny_config(**{field: value})
  with pytest.raises(ValueError, match=message.replace(".", r"\.")):
    trainer.train_and_evaluate(config, str(tmp_path / "run"))
  assert not (tmp_path / "run").exists()


def test_typed_data_fields_refuse_wrong_types_when_set():
  # `data` derives from poses.default_config(): a field's type is fixed when it is set.
  with pytest.raises(TypeError, match="skip_bad_files"):
    tiny_config(**{"data.skip_bad_files": "yes"})


def test_mirror_augmentation_needs_the_cmu_chart(tmp_path):
  config = tiny_config(**{"data.augment_mirror": True, "flow.event_dim": 12})
  with pytest.raises(ValueError, match=r"data\.augment_mirror"):
    trainer.train_and_evaluate(config, str(tmp_path / "run"))
  assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("section, key, closest", [
    ("data", "agment_mirror", "data.augment_mirror"),
    ("optimizer", "learning_rat", "optimizer.learning_rate"),
    ("flow", "num_layer", "flow.num_layers"),
    ("", "num_train_step", "num_train_steps"),
])
def test_unknown_config_key_names_the_closest(tmp_path, section, key, closest):
  config = tiny_config()
  (config[section] if section else config)[key] = 1
  with pytest.raises(ValueError, match=rf"unknown field; did you mean .*{closest}"):
    trainer.train_and_evaluate(config, str(tmp_path / "run"))
  assert not (tmp_path / "run").exists()


def test_unknown_task_lists_the_valid_ones(tmp_path):
  config = tiny_config()
  config.task = "priorr"
  with pytest.raises(ValueError, match=r"unknown task 'priorr'; valid tasks: \[.*'prior'"):
    trainer.train_and_evaluate(config, str(tmp_path / "run"))


@pytest.mark.parametrize("workdir", ["", "  "])
def test_empty_workdir_is_refused(tmp_path, monkeypatch, workdir):
  monkeypatch.chdir(tmp_path)
  with pytest.raises(io_utils.OutputPathError, match="--workdir"):
    trainer.train_and_evaluate(tiny_config(), workdir)
  assert not list(tmp_path.iterdir())  # Nothing trained into the current folder.


def test_launcher_refuses_unknown_key_and_empty_workdir(tmp_path):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  base = [sys.executable, "-m", "launch.main",
          "--config=experiments/prior_cmu.py:runlocal,synthetic"]
  for args, expected in (
      ([f"--workdir={tmp_path / 'w'}", "--config.flow.num_layer=3"], "flow.num_layers"),
      (["--workdir="], "--workdir")):
    proc = subprocess.run(base + args, cwd=REPO_ROOT, env=env, capture_output=True,
                          text=True, timeout=300, check=False)
    assert proc.returncode == 2, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("launch.main:") and expected in last, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
  assert not (tmp_path / "w").exists()


def test_loss_weights_must_name_the_terms(tmp_path):
  config = tiny_config()
  config.loss_weights.nlll = 1.0
  with pytest.raises(ValueError, match="loss_weights"):
    trainer.train_and_evaluate(config, str(tmp_path))


def _first(ds, n):
  return [np.asarray(b) for _, b in zip(range(n), ds.as_numpy_iterator())]


def test_batches_are_a_function_of_seed_and_step():
  config = tiny_config(**{"data.num_train": 100, "batch_size": 16})
  batches = lambda seed, start: pose_data.train_batches(config.data, 3, 16, seed, start)
  # 100 poses, 16 per batch: 6 steps per epoch, 4 poses left out per epoch.
  sequential = _first(batches(3, 0), 14)
  # Random access (a resumed run) equals sequential reads, also across an epoch boundary.
  np.testing.assert_array_equal(_first(batches(3, 13), 1)[0], sequential[13])
  np.testing.assert_array_equal(_first(batches(3, 5), 2)[1], sequential[6])
  epoch = np.concatenate(sequential[:6])
  assert len({tuple(row) for row in epoch}) == 96  # No repeats within an epoch.
  assert not np.array_equal(sequential[0], sequential[6])  # Reshuffled per epoch.
  assert not np.array_equal(_first(batches(4, 0), 1)[0], sequential[0])  # Seeded.
  # Sharded per process: disjoint halves of the split.
  shards = [np.concatenate(_first(pose_data.train_batches(config.data, 3, 8, 3, 0, p, 2), 6))
            for p in range(2)]
  assert not {tuple(r) for r in shards[0]} & {tuple(r) for r in shards[1]}


def test_mirror_augmentation_streams_each_pose_and_its_mirror():
  config = tiny_config(**{"data.num_train": 64, "batch_size": 32})
  config.data.augment_mirror = True
  poses = pose_data.synthetic_poses(64, 50, 0, "train")
  epoch = np.concatenate(_first(pose_data.train_batches(config.data, 50, 32, 0), 4))
  expected = np.concatenate([poses, cmu_skeleton.mirror_dofs(poses)])
  np.testing.assert_array_equal(np.unique(epoch, axis=0), np.unique(expected, axis=0))


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
  # 400 steps: long enough that the kill lands mid-run (asserted below), short enough
  # that the two in-process runs stay cheap.
  overrides = {"num_train_steps": 400, "checkpoint_every": 20,
               "log_every": 20, "optimizer.warmup_steps": 10}
  workdir = tmp_path / "killed"
  proc = _launch(workdir, **overrides)
  _wait_for_checkpoint(proc, workdir, 0)
  proc.send_signal(signal.SIGTERM)
  _, stderr = proc.communicate(timeout=120)
  # Non-zero (128 + SIGTERM) so that launch/run.sh stops instead of evaluating.
  assert proc.returncode == 143, stderr[-3000:]
  assert "SIGTERM (preempted): saved checkpoint" in stderr
  saved = re.search(r"saved checkpoint (\d+)", stderr).group(1)
  assert (workdir / checkpointing.CHECKPOINT_DIR / saved).is_dir()

  proc = _launch(workdir, **overrides)
  step = _wait_for_checkpoint(proc, workdir, 40)
  proc.kill()
  proc.communicate(timeout=60)
  assert proc.returncode == -signal.SIGKILL
  assert step < 400

  resumed = trainer.train_and_evaluate(tiny_config(**overrides), str(workdir))
  straight = trainer.train_and_evaluate(tiny_config(**overrides),
                                        str(tmp_path / "straight"))
  assert resumed.step == straight.step == 400
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
  np.testing.assert_array_equal(
      np.sort(pose_data.read_split(config.data, "validation", 50), 0),
      np.sort(pose_data.synthetic_poses(128, 50, 0, "validation"), 0))
  train = pose_data.synthetic_poses(512, 50, 0, "train")
  epoch = np.concatenate(_first(prior_task.input_pipeline(config, "train", 0, 1), 16))
  np.testing.assert_array_equal(np.unique(epoch, axis=0), np.unique(train, axis=0))
  config.data.augment_mirror = True
  mirrored = np.concatenate(_first(prior_task.input_pipeline(config, "train", 0, 1), 32))
  expected = np.concatenate([train, cmu_skeleton.mirror_dofs(train)])
  np.testing.assert_array_equal(np.unique(mirrored, axis=0), np.unique(expected, axis=0))
  config.data.augment_mirror = False
  result = trainer.train_and_evaluate(config, str(tmp_path / "run"))
  assert result.step == 30 and np.isfinite(result.eval_nll)
  config.data.fps = 25
  with pytest.raises(ValueError, match="data.fps"):
    pose_data.read_split(config.data, "train", 50)


def _write_fake_source(folder, seed, num=512):
  folder.mkdir(parents=True, exist_ok=True)
  for split, n in (("train", num), ("validation", 128)):
    np.save(folder / f"poses_{split}.npy", pose_data.synthetic_poses(n, 50, seed, split))
  return folder


def _fake_tfds_config(tmp_path):
  """The tiny config on the stand-in builder, data prepared under `tmp_path/tfds` from `a/`."""
  _fake_cmu_builder()
  config = tiny_config(**{"data.source": "tfds", "data.tfds_name": "fake_cmu_mocap",
                          "data.data_dir": str(tmp_path / "tfds"),
                          "data.augment_mirror": False})
  config.data.manual_dir = str(_write_fake_source(tmp_path / "a", seed=1))
  return config


def test_prepared_data_follow_the_source_folder(tmp_path):
  """Issue 10 (1): another or a changed manual_dir must not reuse the old examples."""
  config = _fake_tfds_config(tmp_path)
  first = pose_data.read_split(config.data, "train", 50)
  assert first.shape == (512, 50)
  config.data.manual_dir = str(_write_fake_source(tmp_path / "b", seed=2, num=256))
  other = pose_data.read_split(config.data, "train", 50)
  np.testing.assert_array_equal(
      np.sort(other, 0), np.sort(pose_data.synthetic_poses(256, 50, 2, "train"), 0))
  # A file of the first folder rewritten in place: prepared anew, not reused.
  changed = pose_data.synthetic_poses(300, 50, 3, "train")
  np.save(tmp_path / "a" / "poses_train.npy", changed)
  os.utime(tmp_path / "a" / "poses_train.npy", ns=(1, 1))
  config.data.manual_dir = str(tmp_path / "a")
  np.testing.assert_array_equal(np.sort(pose_data.read_split(config.data, "train", 50), 0),
                                np.sort(changed, 0))
  sources = sorted((tmp_path / "tfds" / "sources").iterdir())
  assert len(sources) == 3
  recorded = {json.loads((s / pose_data.FINGERPRINT_FILE).read_text())["manual_dir"]
              for s in sources}
  assert recorded == {str(tmp_path / "a"), str(tmp_path / "b")}


def test_a_killed_preparation_leaves_nothing_behind(tmp_path):
  """Issue 10 (6): TFDS `incomplete.*` folders of a killed build are removed on the next run."""
  config = _fake_tfds_config(tmp_path)
  pose_data.read_split(config.data, "train", 50)
  (source,) = (tmp_path / "tfds" / "sources").iterdir()
  killed = source / "fake_cmu_mocap" / "fps30" / "incomplete.ABC123_1.0.0"
  killed.mkdir(parents=True)
  (killed / "fake_cmu_mocap-train.tfrecord-00000-of-00001").write_bytes(b"partial")
  assert pose_data.read_split(config.data, "train", 50).shape == (512, 50)
  assert not list(source.glob("**/incomplete.*"))


def test_experiment_config_modes():
  default = prior_cmu.get_config()
  assert default.data.source == "tfds" and default.data.fps == 30
  assert set(default.loss_weights) == set(prior_task.LOSS_TERMS)
  assert config_lib.validate_config(default) is prior_task
  small = prior_cmu.get_config("runlocal")
  assert small.flow.num_layers < default.flow.num_layers
  assert small.data.source == "tfds"
  with pytest.raises(ValueError, match="unknown modes"):
    prior_cmu.get_config("runlcoal")
