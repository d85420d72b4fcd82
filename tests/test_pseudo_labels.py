"""Pseudo 3D labels (`data.pseudo_labels`, `flowpose.data.evidence_pseudo`): the lookup that
gives found training examples the file's labels and `has_3d`, and the checks on a bad file."""

import ml_collections
import numpy as np
import pytest

from flowpose.data import evidence
from flowpose.data import evidence_pseudo

BUILDER = "r64_s8_v2"


def _config(path):
  config = evidence.default_config()
  config.pseudo_labels = str(path)
  return config


def _labels(keys, builder=BUILDER, seed=0):
  rng = np.random.default_rng(seed)
  n = len(keys)
  return dict(key=np.array(keys), builder=np.array(builder),
              pose_dofs=rng.normal(size=(n, 50)).astype(np.float32),
              root_rotmat=np.tile(np.eye(3, dtype=np.float32), (n, 1, 1)),
              betas=rng.normal(size=(n, 10)).astype(np.float32),
              transl=rng.normal(size=(n, 3)).astype(np.float32),
              joints3d=rng.normal(size=(n, 17, 3)).astype(np.float32))


def _examples(num=3):
  rng = np.random.default_rng(1)
  return dict(subject=np.array([b"07", b"07", b"08"][:num]),
              clip=np.array([b"07_01", b"07_01", b"08_02"][:num]),
              frame=np.array([0, 8, 16][:num], np.int64), view=np.array([0, 1, 0][:num], np.int64),
              has_3d=np.array([False, False, True][:num]),
              pose_dofs=rng.normal(size=(num, 50)).astype(np.float32),
              root_rotmat=rng.normal(size=(num, 3, 3)).astype(np.float32),
              betas=rng.normal(size=(num, 10)).astype(np.float32),
              transl=rng.normal(size=(num, 3)).astype(np.float32),
              joints3d=rng.normal(size=(num, 17, 3)).astype(np.float32))


def test_found_examples_get_the_files_labels_and_has_3d(tmp_path):
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  path = tmp_path / "p.npz"
  labels = _labels(["08/08_02/16/0", "07/07_01/0/0", "99/99_01/0/0"])
  np.savez(path, **labels)
  loaded = evidence.load_pseudo_labels(_config(path))
  examples = _examples()
  ds = tf.data.Dataset.from_tensor_slices(examples)
  out = list(evidence_pseudo.with_labels(tf, ds, loaded).as_numpy_iterator())
  assert [bool(o["has_3d"]) for o in out] == [True, False, True]
  for i, row in ((0, 1), (2, 0)):  # Example i is the file's row `row`.
    for field in evidence_pseudo.PSEUDO_FIELDS:
      np.testing.assert_array_equal(out[i][field], labels[field][row])
  for field in evidence_pseudo.PSEUDO_FIELDS:  # Not in the file: untouched.
    np.testing.assert_array_equal(out[1][field], examples[field][1])


def test_a_bad_file_is_named_before_training(tmp_path):
  path = tmp_path / "p.npz"
  with pytest.raises(ValueError, match="data.pseudo_labels: .*p.npz: not a readable"):
    evidence.load_pseudo_labels(_config(path))
  labels = _labels(["07/07_01/0/0"])
  np.savez(path, **{k: v for k, v in labels.items() if k != "joints3d"})
  with pytest.raises(ValueError, match=r"missing arrays \['joints3d'\]"):
    evidence.load_pseudo_labels(_config(path))
  np.savez(path, **_labels(["07/07_01/0/0"], builder="r32_s8_v2"))
  with pytest.raises(ValueError, match="made for cmu_evidence/r32_s8_v2"):
    evidence.load_pseudo_labels(_config(path))
  np.savez(path, **{**labels, "root_rotmat": np.zeros((1, 3, 4), np.float32)})
  with pytest.raises(ValueError, match="root_rotmat has shape"):
    evidence.load_pseudo_labels(_config(path))
  np.savez(path, **{**labels, "betas": np.full((1, 10), np.nan, np.float32)})
  with pytest.raises(ValueError, match="betas holds non-finite"):
    evidence.load_pseudo_labels(_config(path))
  config = ml_collections.ConfigDict({**_config(path).to_dict(), "pseudo_labels": 3})
  with pytest.raises(ValueError, match="data.pseudo_labels"):
    evidence.validate(config)


def test_every_regime_has_a_config_and_its_bases_are_regimes():
  """`bash launch/train_regressors.sh` trains experiments/regressor_<regime>.py for each regime,
  bases first (INIT_FROM, PSEUDO_LABEL_ROUNDS); a base must itself be a regime."""
  import importlib  # pylint: disable=g-import-not-at-top
  from experiments import regressor_base  # pylint: disable=g-import-not-at-top
  for regime in regressor_base.REGIMES:
    module = importlib.import_module(f"experiments.regressor_{regime}")
    assert (module.get_config("runlocal").to_dict() ==
            regressor_base.regime_config(regime, "runlocal").to_dict()), regime
  bases = list(regressor_base.INIT_FROM.values()) + [
      base for base, _ in regressor_base.PSEUDO_LABEL_ROUNDS.values()]
  assert set(bases) <= set(regressor_base.REGIMES)
  every = regressor_base.PSEUDO_LABEL_EVERY  # launch.pseudo_labels --every: an int >= 1.
  assert isinstance(every, int) and every >= 1, every
  for regime, (_, rounds) in regressor_base.PSEUDO_LABEL_ROUNDS.items():
    assert regime in regressor_base.REGIMES and rounds >= 1
    config = regressor_base.regime_config(regime)
    assert config.data.labelled_fraction == 0.0  # Only the pseudo-labels carry 3D.
    assert config.loss_weights.joints3d > 0 and config.loss_weights.joints3d_body > 0


def test_the_labels_refinements_are_the_named_fitter_settings():
  """`regressor_pseudo.label_refine_config`: "labels" = one yaw-0 restart, no anchors; "benchmark"
  = the benchmark's weak_refined settings; anything else is an error naming the choice. The
  rounds that switch to "benchmark" exist (`BENCHMARK_LABELS_FROM_ROUND`)."""
  from experiments import regressor_base  # pylint: disable=g-import-not-at-top
  from flowpose.fitting import network_refine  # pylint: disable=g-import-not-at-top
  from flowpose.tasks import regressor_pseudo  # pylint: disable=g-import-not-at-top
  labels = regressor_pseudo.label_refine_config(40, "labels")
  assert tuple(labels.restart_yaws_deg) == (0.0,)
  assert labels.loss_weights["pose_anchor"] == 0.0 == labels.loss_weights["keypoints_anchor"]
  assert labels.restart_mean_temperature == 0.0  # The lowest-loss restart, as measured.
  bench = regressor_pseudo.label_refine_config(40, "benchmark")
  assert bench.to_dict() == network_refine.refine_config(40).to_dict()
  assert bench.loss_weights["pose_anchor"] > 0 and 180.0 in tuple(bench.restart_yaws_deg)
  assert labels.stages[0]["steps"] == bench.stages[0]["steps"] == 40
  with pytest.raises(ValueError, match="refinement"):
    regressor_pseudo.label_refine_config(40, "anchored")
  assert set(regressor_pseudo.REFINEMENTS) == {"labels", "benchmark"}
  for _, rounds in regressor_base.PSEUDO_LABEL_ROUNDS.values():
    assert 1 <= regressor_base.BENCHMARK_LABELS_FROM_ROUND <= rounds


def test_a_bad_labelling_stride_is_named_before_any_work(tmp_path):
  """`make_pseudo_labels(every=)` (`launch.pseudo_labels --every`) must be >= 1; the error comes
  before the run is read (here there is none)."""
  from flowpose.tasks import regressor_pseudo  # pylint: disable=g-import-not-at-top
  with pytest.raises(ValueError, match="every: expected an int >= 1, got 0"):
    regressor_pseudo.make_pseudo_labels(str(tmp_path / "no_run"), every=0)
