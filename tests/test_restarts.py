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
