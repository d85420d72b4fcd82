"""Tests for flowpose.prior.evaluate and launch.evaluate_prior (tiny trained workdir)."""

import os

# LU layers run LAPACK on tiny matrices; OpenBLAS threads only slow them down.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

# pylint: disable=g-import-not-at-top,wrong-import-position
import gzip
import json
import math
import re
import shutil

from absl import flags
import jax
import numpy as np
import pytest

from flowpose.prior import evaluate as prior_eval  # pylint: disable=g-bad-import-order
from flowpose.prior import baseline_cache
from flowpose.prior import io as prior_io
from flowpose.prior import pictures
from flowpose.prior import registry
from flowpose.data import cmu_skeleton
from flowpose.data import poses as pose_data
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
  # The row labels readers of nll_table.json use (registry `gaussian` keeps `gaussian_full`).
  assert prior_eval.MODELS == ("flow", "gaussian_diag", "gaussian_full", "gmm8")
  assert list(table["splits"]["test"]["nats_per_pose"]) == list(prior_eval.MODELS)
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
  # Labelled as what it is: every clip of that folder, not a dataset split.
  assert result["headline_split"] == f"folder {name}" and result["selection"] == "all clips"
  assert result["num_clips"] == len(CLIPS) and result["folder"] == str(clip_folder.resolve())


def test_evaluate_folder_without_clips_fails_clearly(workdir, tmp_path):
  (tmp_path / "notes.txt").write_text("no mocap here")
  with pytest.raises(prior_eval.PriorEvalError, match="no clips"):
    prior_eval.evaluate_folder(workdir, tmp_path)


def test_missing_workdir_files_fail_clearly(tmp_path):
  with pytest.raises(prior_io.PriorLoadError, match="prior_params.msgpack.*not found"):
    prior_eval.evaluate_nll(str(tmp_path))
  with pytest.raises(prior_eval.PriorEvalError, match="baselines.npz"):
    prior_eval.load_baselines(str(tmp_path))


def test_pictures(workdir):
  prior, params, config = prior_eval.load_trained_prior(workdir)
  poses = prior_eval.load_split_dofs(config, "test")
  ends = pictures.interpolate_latent(prior, params, poses[0], poses[1], num_steps=3)
  np.testing.assert_allclose(ends[[0, -1]], poses[:2], atol=1e-3)
  paths = pictures.render_pictures(workdir, prior, params, poses, num_samples=2,
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


def test_launcher_folder_only_leaves_the_split_table(workdir, table, clip_folder):
  del table
  from launch import evaluate_prior  # pylint: disable=g-import-not-at-top
  with open(os.path.join(workdir, "nll_table.json")) as f:
    before = f.read()
  argv = ["evaluate_prior", f"--workdir={workdir}", "--splits=", f"--mocap_dir={clip_folder}",
          "--no_pictures"]
  flags.FLAGS(argv)
  try:
    assert evaluate_prior.main(argv[:1]) == 0
  finally:
    flags.FLAGS.unparse_flags()
  with open(os.path.join(workdir, "nll_table.json")) as f:
    assert f.read() == before
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


# --- The numbers are what they claim (issue 10: tests that let bugs through). ---


def _expected_nats(prior, params, fitted, dofs):
  """-mean log-density per model, computed without flowpose.prior.evaluate: the flow in one
  jitted call, the baselines with scipy on angles wrapped around the flow's chart center."""
  from scipy import special, stats  # pylint: disable=g-import-not-at-top
  flow = np.asarray(jax.jit(prior.log_prob)(params, jax.numpy.asarray(dofs)), np.float64)
  center = np.asarray(params["stats"]["center"], np.float64)
  x = center + np.angle(np.exp(1j * (dofs.astype(np.float64) - center)))
  diag, full, gmm = (fitted.models[n] for n in ("gaussian_diag", "gaussian_full", "gmm8"))
  components = [np.log(w) + stats.multivariate_normal.logpdf(x, m, c)
                for w, m, c in zip(gmm.weights, gmm.means, gmm.covariances)]
  return {
      "flow": -flow.mean(),
      "gaussian_diag": -stats.norm.logpdf(x, diag.mean, diag.std).sum(1).mean(),
      "gaussian_full": -stats.multivariate_normal.logpdf(x, full.mean, full.covariance).mean(),
      "gmm8": -special.logsumexp(np.stack(components), axis=0).mean(),
  }


def test_nats_per_pose_is_minus_mean_log_prob_per_model(workdir, table):
  prior, params, config = prior_io.load_trained_prior(workdir)
  fitted = prior_eval.load_baselines(workdir)
  for split in ("validation", "test"):
    dofs = pose_data.read_split(config.data, split, 50)
    expected = _expected_nats(prior, params, fitted, dofs)
    for model in prior_eval.MODELS:
      got = table["splits"][split]["nats_per_pose"][model]
      assert got == pytest.approx(expected[model], rel=1e-5, abs=1e-4), (split, model)


def _write_amc(path, frames):
  """An AMC of subject 02's skeleton whose chart DOFs are `frames [T, 50]` (radians)."""
  column = {dof: i for i, dof in enumerate(cmu_skeleton.POSE_DOFS)}
  lines = [":FULLY-SPECIFIED", ":DEGREES"]
  for t, row in enumerate(np.asarray(frames, np.float64), start=1):
    lines += [str(t), "root 0 0 0 0 0 0"]
    for bone in cmu_skeleton.AMC_BONE_ORDER:
      values = [np.degrees(row[column[bone, d]]) if (bone, d) in column else 0.0
                for d in cmu_skeleton.BONE_DOFS[bone]]
      if values:
        lines.append(bone + " " + " ".join(repr(float(v)) for v in values))
  path.write_text("\n".join(lines) + "\n")


def test_folder_of_split_clips_reproduces_the_split(workdir, table, tmp_path, cmu_dir):
  _, _, config = prior_io.load_trained_prior(workdir)
  test = pose_data.read_split(config.data, "test", 50)
  assert len(test) == 96
  # The test split as two clips: 59 poses at 120 fps (every 4th frame is a pose) and 37 at
  # 100 fps (nearest frames of the 30 fps times, not a stride); other frames are decoys.
  folder = tmp_path / "test"  # Named like the split: must still be labelled as a folder.
  folder.mkdir()
  (folder / "02.asf.gz").symlink_to(cmu_dir / "02.asf.gz")
  for name, poses, fps in (("02_01", test[:59], 120.0), ("02_02", test[59:], 100.0)):
    picks = np.floor(np.arange(len(poses)) * (fps / 30.0) + 0.5).astype(int)
    frames = np.full((picks[-1] + 1, 50), 1.0)
    frames[picks] = poses
    _write_amc(folder / f"{name}.amc", frames)
  (folder / "02_01.amc.gz").write_bytes(gzip.compress((folder / "02_01.amc").read_bytes()))
  (folder / "index.csv").write_text("file,subject,clip,frames,fps,description\n"
                                    "02_01.amc,2,1,233,120,a\n02_02.amc,2,2,121,100,b\n")
  result = prior_eval.evaluate_folder(workdir, folder)
  assert result["headline_split"] == "folder test" and result["num_clips"] == 2  # .gz twin once.
  got, want = result["splits"]["folder test"], table["splits"]["test"]
  assert got["num_poses"] == want["num_poses"] == 96
  for model in prior_eval.MODELS:
    assert got["nats_per_pose"][model] == pytest.approx(want["nats_per_pose"][model], rel=1e-6)
  with open(os.path.join(workdir, "nll_table.json")) as f:
    assert json.load(f)["splits"]["test"] == want  # The split table is untouched.


def test_validation_run_keeps_the_headline_test_numbers(workdir, table, tmp_path):
  after = prior_eval.evaluate_nll(workdir, splits=("validation",))
  assert after["headline_split"] == "test"
  for model in prior_eval.MODELS:
    assert after[model] == table[model]
  assert after["splits"] == table["splits"]
  with open(os.path.join(workdir, "nll_table.json")) as f:
    assert json.load(f) == after
  # Entries computed for another prior are dropped, not mixed in.
  other = shutil.copytree(workdir, tmp_path / "other")
  stale = dict(table, prior_params_sha256="0" * 64)
  (other / "nll_table.json").write_text(json.dumps(stale))
  fresh = prior_eval.evaluate_nll(str(other), splits=("validation",))
  assert set(fresh["splits"]) == {"validation"} and fresh["headline_split"] == "validation"


def test_a_registered_prior_is_a_row(workdir_copy, table, monkeypatch):
  """One registry for fitting and evaluation: a prior registered with `eval_kwargs` (here a
  wider diagonal Gaussian) is a row of the table, scored by its `log_prob`; the
  other rows keep their numbers, and earlier splits without that row are dropped, not mixed."""
  # pylint: disable-next=protected-access
  monkeypatch.setattr(registry, "_ENTRIES", dict(registry._ENTRIES))
  fitted = prior_eval.load_baselines(workdir_copy)
  wide = fitted.models["gaussian_diag"].replace(std=3 * fitted.models["gaussian_diag"].std)
  kwargs = {"gaussian": wide, "center": fitted.center}
  registry.register("wide", make=registry.make_gaussian_diag, load=lambda workdir: None,
                    description="stand-in", eval_kwargs=lambda context: kwargs)
  after = prior_eval.evaluate_nll(workdir_copy, splits=("test",))
  assert set(after["splits"]) == {"test"}  # The validation entry lacks the row: dropped.
  _, _, config = prior_io.load_trained_prior(workdir_copy)
  dofs = pose_data.read_split(config.data, "test", 50)
  want = -np.mean(registry.make("wide", **kwargs).log_prob(dofs))
  assert after["wide"] == after["splits"]["test"]["nats_per_pose"]["wide"] == want
  assert want > table["gaussian_diag"]  # A 3x wider Gaussian: a worse fit of the same data.
  for model in prior_eval.MODELS:
    assert after[model] == table[model]
  assert "| wide |" in open(os.path.join(workdir_copy, "nll_table.md")).read()


# --- Damaged workdir files (issue 10.4): refitted, or one error naming the file. ---


def _damage(path, how):
  data = open(path, "rb").read()
  damaged = {"empty": b"", "truncated": data[:len(data) // 2],
             "garbage": np.random.default_rng(0).bytes(len(data)),
             "flipped": data[:len(data) // 2] + bytes([data[len(data) // 2] ^ 0x10]) +
                        data[len(data) // 2 + 1:]}[how]
  with open(path, "wb") as f:
    f.write(damaged)


@pytest.fixture
def workdir_copy(workdir, table, tmp_path):
  del table  # baselines.npz and nll_table.json are in the copy.
  return str(shutil.copytree(workdir, tmp_path / "copy"))


@pytest.mark.parametrize("name, how", [
    (prior_io.PARAMS_FILE, "empty"), (prior_io.PARAMS_FILE, "truncated"),
    (prior_io.PARAMS_FILE, "garbage"), (prior_io.PARAMS_FILE, "flipped"),
    (prior_io.CONFIG_FILE, "empty"), (prior_io.CONFIG_FILE, "truncated"),
    (prior_io.CONFIG_FILE, "garbage")])
def test_unreadable_prior_files_name_the_file(workdir_copy, name, how):
  path = os.path.join(workdir_copy, name)
  _damage(path, how)
  with pytest.raises(prior_io.PriorLoadError, match=re.escape(path)) as info:
    prior_io.load_exported_prior(workdir_copy)
  assert "delete it" in str(info.value)


@pytest.mark.parametrize("how", ["truncated", "garbage"])
def test_unreadable_params_without_checksum_name_the_file(workdir_copy, how):
  # Workdirs exported before prior_params.sha256 existed: the decoder's errors are caught too.
  os.remove(os.path.join(workdir_copy, prior_io.CHECKSUM_FILE))
  path = os.path.join(workdir_copy, prior_io.PARAMS_FILE)
  _damage(path, how)
  with pytest.raises(prior_io.PriorLoadError, match=re.escape(path) + ".*delete it"):
    prior_io.load_exported_prior(workdir_copy)


@pytest.mark.parametrize("how", ["truncated", "garbage", "flipped"])
def test_damaged_baselines_are_reported_or_refitted(workdir_copy, table, how, monkeypatch):
  path = os.path.join(workdir_copy, "baselines.npz")
  _damage(path, how)
  with pytest.raises(prior_eval.PriorEvalError, match=re.escape(path) + ".*delete it"):
    prior_eval.load_baselines(workdir_copy)  # No training data at hand: say what to delete.
  warnings = []
  monkeypatch.setattr(baseline_cache.logging, "warning",
                      lambda msg, *args: warnings.append(msg % args))
  refitted = prior_eval.evaluate_nll(workdir_copy, splits=("test",))  # Training data at hand.
  assert any(path in w for w in warnings), warnings
  assert refitted["gmm8"] == pytest.approx(table["gmm8"], rel=1e-9)  # Same seed, same fit.
  prior_eval.load_baselines(workdir_copy)  # Rewritten intact.


def test_launcher_reports_damage_and_exits_nonzero(workdir_copy, capsys):
  from launch import evaluate_prior  # pylint: disable=g-import-not-at-top
  _damage(os.path.join(workdir_copy, prior_io.CONFIG_FILE), "truncated")
  argv = ["evaluate_prior", f"--workdir={workdir_copy}", "--no_pictures"]
  flags.FLAGS(argv)
  try:
    assert evaluate_prior.main(argv[:1]) == 2
  finally:
    flags.FLAGS.unparse_flags()
  assert os.path.join(workdir_copy, prior_io.CONFIG_FILE) in capsys.readouterr().err


def test_vae_rows_when_a_vae_is_trained_beside_the_flow(workdir, tmp_path):
  """A VAE in W/vae adds the rows `vae` (IS NLL, K = 1000) and `vae_elbo` (-ELBO, >= it)."""
  from experiments import prior_vae  # pylint: disable=g-import-not-at-top
  work = tmp_path / "prior"
  shutil.copytree(workdir, work, ignore=shutil.ignore_patterns("checkpoints", "nll_table*"))
  config = prior_vae.get_config("runlocal,synthetic")
  config.update_from_flattened_dict({
      "num_train_steps": 20, "kl_anneal_steps": 10, "batch_size": 32, "eval_batch_size": 64,
      "init_examples": 128, "data.num_train": 512, "data.num_eval": 96, "log_every": 10,
      "eval_every": 20, "checkpoint_every": 20, "optimizer.warmup_steps": 1})
  trainer.train_and_evaluate(config, str(work / "vae"))
  table = prior_eval.evaluate_nll(str(work), splits=("validation",))
  nats = table["splits"]["validation"]["nats_per_pose"]
  assert list(nats)[:4] == list(prior_eval.MODELS) and list(nats)[4:] == ["vae", "vae_elbo"]
  assert math.isfinite(nats["vae"]) and nats["vae_elbo"] >= nats["vae"]
  assert table["vae_params_sha256"]
  assert registry.load("vae", str(work)).name == "vae"  # The benchmark's path.
