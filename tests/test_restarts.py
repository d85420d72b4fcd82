"""Restart pruning of the per-person fitter (`flowpose.fitting.restarts`, `config.restart_pruning`).

The scene is `tests/test_fitting.py`'s: 8 in-plane DOFs, three persons, the third showing its back,
noiseless keypoints, fitted from 4 yaws.
"""

import numpy as np
import pytest

from flowpose.fitting import config as config_lib
from flowpose.fitting import fit as fitting
from flowpose.fitting import restarts
from tests.test_fitting import setup  # pylint: disable=unused-import  (the scene's fixture)

pytestmark = pytest.mark.usefixtures("fast_compile")  # conftest: XLA optimisations off


@pytest.fixture(scope="module")
def fits(setup):  # pylint: disable=redefined-outer-name
  config = setup["config"].copy_and_resolve_references()
  config.restart_yaws_deg = (0.0, 90.0, 180.0, 270.0)
  config.stages[1].update(steps=120)
  run = lambda c: fitting.fit(c, setup["model"], setup["body"], setup["prior"],
                              setup["evidence"])
  full = run(config)
  # Split at steps 30 and 70 but keeping every restart: segments alone.
  split = config.copy_and_resolve_references()
  split.restart_pruning = ((30, 4), (70, 4))
  pruned = config.copy_and_resolve_references()
  pruned.restart_pruning = ((30, 2), (70, 1))
  return dict(setup=setup, full=full, split=run(split), pruned=run(pruned))


def test_segments_continue_the_schedule_and_adam_state(fits):
  # The same steps in three segments (the state carried) are the one-segment run.
  full, split = fits["full"], fits["split"]
  np.testing.assert_array_equal(split.restart, full.restart)
  np.testing.assert_allclose(split.loss, full.loss, rtol=1e-5)
  np.testing.assert_allclose(split.pose_dofs, full.pose_dofs, atol=1e-5)
  np.testing.assert_allclose(split.history[1], full.history[1], rtol=1e-5)


def test_pruning_follows_the_ranking_and_keeps_trajectories(fits):
  # Rows are independent, so the unpruned run says what pruning must do: its loss history row
  # i is every restart's loss after i steps (row r * B + b: restart r of person b).
  full, pruned = fits["full"], fits["pruned"]
  num, hist = 3, full.history[1].reshape(-1, 4, 3)  # [steps, R, B]
  persons = np.arange(num)
  top2 = np.argsort(hist[30], 0)[:2]  # After 30 steps: each person's 2 best go on.
  winner = top2[np.argmin(np.take_along_axis(hist[70], top2, 0), 0), persons]
  np.testing.assert_array_equal(pruned.restart, winner)
  # Not a trivial cut here: the 70-step ranking differs from the final one for some person.
  assert np.any(winner != full.restart), (winner, full.restart)
  # The kept restart moved exactly as without pruning.
  np.testing.assert_allclose(pruned.history[1], full.history[1][:, winner * num + persons],
                             rtol=1e-4)
  np.testing.assert_allclose(pruned.loss, full.restart_losses[persons, winner], rtol=1e-4)
  # Every restart's loss is recorded, a dropped one's when it was dropped.
  for b in persons:
    for r in range(4):
      when = -1 if r == winner[b] else 70 if r in top2[:, b] else 30
      expected = full.restart_losses[b, r] if when == -1 else hist[when, r, b]
      np.testing.assert_allclose(pruned.restart_losses[b, r], expected, rtol=1e-4)


def test_keep_best_orders_and_records():
  alive = restarts.start(3, 2)
  final = np.array([5.0, 1.0,   # restart 0 of persons 0, 1
                    np.nan, 2.0,  # restart 1: NaN never wins
                    4.0, 3.0])
  index, alive = restarts.keep_best(alive, final, 2)
  np.testing.assert_array_equal(alive.restart, [[2, 0], [0, 1]])
  np.testing.assert_array_equal(index, [4, 1, 0, 3])
  assert alive.losses[0, 1] == np.inf and alive.losses[1, 2] == 3.0
  index, alive = restarts.keep_best(alive, np.array([0.5, 7.0, 0.1, 6.0]), 1)
  np.testing.assert_array_equal(alive.restart, [[0, 1]])
  np.testing.assert_array_equal(index, [2, 3])


def test_segments():
  assert restarts.segments(100, ()) == [(0, 100, None)]
  assert restarts.segments(100, ((30, 2), (70, 1))) == [(0, 30, 2), (30, 70, 1), (70, 100, None)]
  assert restarts.segments(50, ((30, 2), (70, 1))) == [(0, 30, 2), (30, 50, None)]


@pytest.mark.parametrize("value", [((30, 2), (20, 1)), ((30, 1), (70, 2)), ((0, 2),),
                                   ((30, 2.5),), (30, 2)])
def test_bad_pruning_is_named(value):
  config = config_lib.default_fit_config()
  config.restart_pruning = value
  with pytest.raises(config_lib.FitInputError, match="restart_pruning"):
    config_lib.validate_fit_config(config)


def test_pruning_needs_an_adam_stage():
  config = config_lib.default_fit_config()
  config.restart_pruning = ((30, 1),)
  config_lib.validate_fit_config(config)
  config.stages[-1]["optimizer"] = "lbfgs"
  with pytest.raises(config_lib.FitInputError, match="adam"):
    config_lib.validate_fit_config(config)


def test_mean_weights_use_the_evidence_terms_only():
  weights = dict(keypoints=10.0, parts=1.0, silhouette=2.0, pose_anchor=1e6)
  terms = {  # Rows restart-major: 2 restarts of 3 persons.
      "keypoints": np.array([0.1, 0.1, np.nan, 0.3, 0.1, np.nan]),
      "parts": np.zeros(6), "silhouette": np.zeros(6),
      "pose_anchor": np.array([9.0, 0.0, 0.0, 0.0, 0.0, 0.0])}  # Differs by start: ignored.
  w = restarts.mean_weights(terms, weights, 3, temperature=1.0)
  np.testing.assert_allclose(w.sum(0), 1.0, rtol=1e-6)
  np.testing.assert_allclose(w[:, 0], [np.exp(2) / (1 + np.exp(2)), 1 / (1 + np.exp(2))],
                             rtol=1e-5)  # Energies 1 and 3.
  np.testing.assert_allclose(w[:, 1], [0.5, 0.5])
  np.testing.assert_allclose(w[:, 2], [0.5, 0.5])  # Every energy non-finite: uniform.
  w = restarts.mean_weights({**terms, "keypoints": np.array([0.1, 0.1, np.nan, 0.3, 0.1, 0.2])},
                            weights, 3, temperature=1e-3)
  np.testing.assert_allclose(w, [[1, 0.5, 0], [0, 0.5, 1]], atol=1e-6)  # NaN weighs nothing.


def test_mean_articulation_averages_pose_and_shape_places_as_the_best():
  rng = np.random.default_rng(0)
  variables = {k: rng.normal(size=(2 * 3,) + s).astype(np.float32)
               for k, s in dict(pose=(4,), betas=(2,), orient=(6,), transl=(3,)).items()}
  w = np.array([[0.25, 1.0, 0.5], [0.75, 0.0, 0.5]], np.float32)
  best = np.array([3, 1, 2])  # Rows: restart 1 of person 0, restart 0 of persons 1 and 2.
  out = restarts.mean_articulation(variables, best, w)
  for name in ("pose", "betas"):
    stacked = variables[name].reshape(2, 3, -1)
    np.testing.assert_allclose(out[name], np.einsum("rb,rbd->bd", w, stacked), rtol=1e-6)
  for name in ("orient", "transl"):
    np.testing.assert_array_equal(out[name], variables[name][best])


def test_bad_mean_temperature_is_named():
  config = config_lib.default_fit_config()
  for value in (-1.0, float("inf")):
    config.restart_mean_temperature = value
    with pytest.raises(config_lib.FitInputError, match="restart_mean_temperature"):
      config_lib.validate_fit_config(config)


def test_restart_mean_in_fit(fits):
  # A cold temperature is the best restart; a hot one the plain mean of the restarts' latents,
  # each as the restart alone reaches it (rows are independent), placed as the best.
  setup, full = fits["setup"], fits["full"]
  config = setup["config"].copy_and_resolve_references()
  config.stages[1].update(steps=120)
  run = lambda c: fitting.fit(c, setup["model"], setup["body"], setup["prior"],
                              setup["evidence"])
  alone = []
  for yaw in (0.0, 90.0, 180.0, 270.0):
    config.restart_yaws_deg = (yaw,)
    alone.append(run(config))
  config.restart_yaws_deg = (0.0, 90.0, 180.0, 270.0)
  config.restart_mean_temperature = 1e-6
  cold = run(config)
  np.testing.assert_allclose(cold.pose_dofs, full.pose_dofs, atol=1e-5)
  np.testing.assert_allclose(cold.loss, full.loss, rtol=1e-4)
  config.restart_mean_temperature = 1e9
  hot = run(config)
  persons = np.arange(3)
  for name in ("pose", "betas"):
    mean = np.mean([a.variables[name] for a in alone], 0)
    np.testing.assert_allclose(hot.variables[name], mean, atol=1e-4)
  best = np.array([alone[r].variables["transl"][b] for b, r in zip(persons, full.restart)])
  np.testing.assert_allclose(hot.variables["transl"], best, atol=1e-5)
  # The loss reported is the mean's own: where the restarts disagree it fits worse than the best.
  assert np.all(hot.loss >= full.loss * (1 - 1e-4)), (hot.loss, full.loss)
  assert np.any(hot.loss > full.loss * 1.01), (hot.loss, full.loss)
