"""Shared pytest fixtures: paths to ../shared/data and the built CC0 body model."""

import os
import pathlib

# Tiny LAPACK solves (LU flow layers) are ~100x slower with OpenBLAS threads on 2 shared cores.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import pytest  # pylint: disable=g-import-not-at-top

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]


def shared_data_dir() -> pathlib.Path:
  """Returns `../shared/data` beside the repo (or `$FLOWPOSE_SHARED_DATA`)."""
  env = os.environ.get("FLOWPOSE_SHARED_DATA")
  return pathlib.Path(env) if env else REPO_ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> pathlib.Path:
  path = shared_data_dir()
  if not path.is_dir():
    pytest.fail(f"shared data not found at {path}; set FLOWPOSE_SHARED_DATA")
  return path


@pytest.fixture(scope="session")
def cmu_dir(shared_data) -> pathlib.Path:
  return shared_data / "cmu"


@pytest.fixture(scope="module")
def fast_compile():
  """Turns XLA's optimisation passes off for one test module, then restores the flag.

  Compile time dominates the small programs of unit tests (flax's imagenet train_test does the
  same); use it with `pytestmark = pytest.mark.usefixtures("fast_compile")`.
  """
  import jax  # pylint: disable=g-import-not-at-top
  previous = jax.config.read("jax_disable_most_optimizations")
  jax.config.update("jax_disable_most_optimizations", True)
  yield
  jax.config.update("jax_disable_most_optimizations", previous)
