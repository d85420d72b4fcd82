"""`fit(initial=[start, start, ...])`: several given starts (e.g. a network's two reads of the
evidence, `network_refine.refine` from a list of outputs), one restart each, before the yaws."""

import pathlib
import sys

import numpy as np
import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
# pylint: disable=g-import-not-at-top,wrong-import-position,unused-import
from test_reconstruct import model
from test_reconstruct import scene

from flowpose.fitting import fit as fitting

pytestmark = pytest.mark.usefixtures("fast_compile")


def test_each_given_start_is_a_restart_and_the_one_at_the_truth_wins(model, scene):
  args = (scene["config"], model, scene["body"], scene["prior"], scene["evidence"])
  off = dict(scene["truth"], pose=scene["truth"]["pose"] + 0.4)
  result = fitting.fit(*args, initial=[off, scene["truth"]])
  assert result.restart_labels == ("initial0", "initial1", 0.0, 180.0)
  assert result.restart_losses.shape == (2, 4)
  np.testing.assert_array_equal(result.restart, 1)
  # 5 small steps: only the start at the truth ends there.
  assert np.all(result.restart_losses[:, [0, 2, 3]] > 100 * result.restart_losses[:, 1:2])
  np.testing.assert_allclose(result.pose_dofs, scene["truth"]["pose"], atol=1e-2)
  # The same two starts in the other order: the same fit, the winner's label moves.
  swapped = fitting.fit(*args, initial=(scene["truth"], off))
  np.testing.assert_array_equal(swapped.restart, 0)
  np.testing.assert_allclose(swapped.pose_dofs, result.pose_dofs, atol=1e-5)
  # One start in a list is the single-start fit.
  single, listed = fitting.fit(*args, initial=off), fitting.fit(*args, initial=[off])
  assert single.restart_labels == ("initial", 0.0, 180.0) == listed.restart_labels
  np.testing.assert_allclose(listed.pose_dofs, single.pose_dofs, atol=1e-6)


def test_bad_starts_are_named(model, scene):
  args = (scene["config"], model, scene["body"], scene["prior"], scene["evidence"])
  for bad in ([], "pose", [scene["truth"], np.zeros(3)]):
    with pytest.raises(fitting.FitInputError, match="fit initial: expected a dict"):
      fitting.fit(*args, initial=bad)
  with pytest.raises(fitting.FitInputError, match=r"initial\['pose'\].*shape"):
    fitting.fit(*args, initial=[scene["truth"], {"pose": scene["truth"]["pose"][:1]}])
