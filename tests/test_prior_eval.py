"""Tests for flowpose.prior.evaluate and launch.evaluate_prior (tiny trained workdir)."""

import os

# LU layers run LAPACK on tiny matrices; OpenBLAS threads only slow them down.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

# pylint: disable=g-import-not-at-top,wrong-import-position
import json
import math

from absl import flags
import jax
import numpy as np
import pytest

from flowpose.prior import evaluate as prior_eval  # pylint: disable=g-bad-import-order
from flowpose.train import trainer
from experiments import prior_cmu

# A tiny flow trained for a few steps on the synthetic source (fields on top of
# runlocal,synthetic): the evaluation code is what is under test, not the fit.
TINY = {
    "flow.num_layers": 2, "flow.hidden_sizes": (16, 16), "batch_size": 32,
    "eval_batch_size": 64, "num_train_steps": 10, "init_examples": 128,
    "optimizer.warmup_steps": 1, "optimizer.learning_rate": 3e-3,
    "data.num_train": 512, "data.num_eval": 96, "log_every": 5,
    "eval_every": 100, "checkpoint_every": 10, "keep_checkpoints": 1,
}
CLIPS = ("02_01.amc.gz", "02_02.amc.gz")


def _tiny_config():
  config = prior_cmu.get_config("runlocal,synthetic")
  config.update_from_flattened_dict(TINY)
  return config


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, fast_compile):  # pylint: disable=unused-argument
  path = tmp_path_factory.mktemp("prior_eval")
  trainer.train_and_evaluate(_tiny_config(), str(path))
  return str(path)


@pytest.fixture(scope="module")
def table(workdir):
  return prior_eval.evaluate_nll(workdir)


@pytest.fixture
def clip_folder(tmp_path, cmu_dir):
  for name in ("02.asf.gz",) + CLIPS:
    (tmp_path / name).symlink_to(cmu_dir / name)
  return tmp_path


def test_nll_table_has_models_and_finite_values(workdir, table):
  with open(os.path.join(workdir, "nll_table.json")) as f:
    on_disk = json.load(f)
  assert on_disk == table
  assert table["headline_split"] == "test"
  for model in prior_eval.MODELS:
    assert math.isfinite(table[model])
    assert table[model] == table["splits"]["test"]["nats_per_pose"][model]
    for split in ("validation", "test"):
      stats = table["splits"][split]
      assert stats["num_poses"] == TINY["data.num_eval"]
      np.testing.assert_allclose(stats["bits_per_dof"][model],
                                 stats["nats_per_pose"][model] / (50 * math.log(2)))
  markdown = open(os.path.join(workdir, "nll_table.md")).read()
  assert "| gmm8 |" in markdown and "test nats/pose" in markdown


def test_baselines_cached_in_flow_chart(workdir, table):
  del table  # Fitted and cached by evaluate_nll.
  fitted = prior_eval.load_baselines(workdir)
  _, params, config = prior_eval.load_trained_prior(workdir)
  np.testing.assert_allclose(fitted.center, np.asarray(params["stats"]["center"]), atol=1e-6)
  assert set(fitted.models) == {"gaussian_diag", "gaussian_full", "gmm8"}
  test = prior_eval.load_split_dofs(config, "test")
  # The cache reproduces the table, and a 2 pi shift of any angle changes nothing.
  nll = -np.mean(fitted.log_prob("gmm8", test))
  assert nll == pytest.approx(prior_eval.evaluate_nll(workdir)["gmm8"])
  shifted = test + 2 * np.pi * np.random.default_rng(0).integers(-1, 2, test.shape)
  np.testing.assert_allclose(fitted.log_prob("gaussian_full", shifted),
                             fitted.log_prob("gaussian_full", test), rtol=1e-6)


def test_baselines_on_real_dofs(cmu_dir):
  train = np.concatenate([prior_eval.read_clip_dofs(cmu_dir / n) for n in CLIPS])
  assert train.shape[1] == 50 and train.shape[0] > 100  # 120 -> 30 fps: ~1/4 of the frames.
  center = np.arctan2(np.sin(train).mean(0), np.cos(train).mean(0))
  fitted = prior_eval.fit_baselines(train, center)
  nll = {n: -np.mean(fitted.log_prob(n, train)) for n in fitted.models}
  assert all(np.isfinite(v) for v in nll.values())
  assert nll["gaussian_full"] <= nll["gaussian_diag"]
  assert nll["gmm8"] <= nll["gaussian_full"] + 1e-6  # EM starts no worse than one Gaussian.


def test_evaluate_folder_real_clips(workdir, table, clip_folder):
  del table  # Baselines cached.
  result = prior_eval.evaluate_folder(workdir, clip_folder)
  assert set(result["clips"]) == set(CLIPS)
  for model in prior_eval.MODELS:
    assert math.isfinite(result[model])
  name = clip_folder.name
  assert os.path.isfile(os.path.join(workdir, f"nll_table_{name}.json"))


def test_evaluate_folder_without_clips_fails_clearly(workdir, tmp_path):
  (tmp_path / "notes.txt").write_text("no mocap here")
  with pytest.raises(prior_eval.PriorEvalError, match="no clips"):
    prior_eval.evaluate_folder(workdir, tmp_path)


def test_missing_workdir_files_fail_clearly(tmp_path):
  with pytest.raises(prior_eval.PriorEvalError, match="prior_params.msgpack"):
    prior_eval.evaluate_nll(str(tmp_path))
  with pytest.raises(prior_eval.PriorEvalError, match="baselines.npz"):
    prior_eval.load_baselines(str(tmp_path))


def test_pictures(workdir):
  prior, params, config = prior_eval.load_trained_prior(workdir)
  poses = prior_eval.load_split_dofs(config, "test")
  ends = prior_eval.interpolate_latent(prior, params, poses[0], poses[1], num_steps=3)
  np.testing.assert_allclose(ends[[0, -1]], poses[:2], atol=1e-3)
  paths = prior_eval.render_pictures(workdir, prior, params, poses, num_samples=2,
                                     num_steps=2, size=48)
  assert all(os.path.getsize(p) > 0 for p in paths)


def test_launcher(workdir, table, clip_folder, capsys):
  del table
  from launch import evaluate_prior  # pylint: disable=g-import-not-at-top
  argv = ["evaluate_prior", f"--workdir={workdir}", f"--mocap_dir={clip_folder}",
          "--no_pictures"]
  flags.FLAGS(argv)
  try:
    evaluate_prior.main(argv[:1])
  finally:
    flags.FLAGS.unparse_flags()
  assert "| flow |" in capsys.readouterr().out
  assert os.path.isfile(os.path.join(workdir, f"nll_table_{clip_folder.name}.json"))


def test_axis_angle_chart_trains_and_evaluates(tmp_path):
  config = _tiny_config()
  config.flow.chart, config.flow.event_dim = "axis_angle", 72
  trainer.train_and_evaluate(config, str(tmp_path))
  table = prior_eval.evaluate_nll(str(tmp_path))
  assert table["chart"] == "axis_angle" and table["event_dim"] == 72
  for model in prior_eval.MODELS:
    assert math.isfinite(table[model])
  assert not prior_eval.load_baselines(str(tmp_path)).periodic
