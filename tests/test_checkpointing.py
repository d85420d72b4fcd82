"""Checkpoint integrity: checksums written with every save, corrupt steps skipped, clear errors."""

import logging
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flowpose.train import checkpointing

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]


def tiny_state(step: int) -> dict:
  """A train-state-like pytree: params, optimizer moments and the step counter."""
  rng = np.random.default_rng(step)
  params = {"dense": {"kernel": rng.standard_normal((64, 16)).astype(np.float32),
                      "bias": rng.standard_normal(16).astype(np.float32)},
            "scale": np.float32(rng.standard_normal())}
  return jax.tree.map(jnp.asarray, {
      "step": np.int32(step), "params": params,
      "opt": {"mu": jax.tree.map(lambda x: x * 0.5, params), "count": np.int64(step)}})


def abstract(state):
  return jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state)


def assert_bit_exact(restored, expected):
  assert jax.tree.structure(restored) == jax.tree.structure(expected)
  for got, want in zip(jax.tree.leaves(restored), jax.tree.leaves(expected)):
    got, want = np.asarray(got), np.asarray(want)
    assert got.dtype == want.dtype and got.shape == want.shape
    assert got.tobytes() == want.tobytes()


def save_steps(workdir, steps, keep=5):
  manager = checkpointing.create_manager(str(workdir), keep)
  for step in steps:
    checkpointing.save(manager, step, tiny_state(step))
  manager.wait_until_finished()
  manager.close()


@pytest.fixture(scope="module")
def template(tmp_path_factory):
  """A workdir with checkpoints 10 and 20 (saved once; tests corrupt copies)."""
  workdir = tmp_path_factory.mktemp("template")
  save_steps(workdir, [10, 20])
  return workdir


@pytest.fixture
def workdir(template, tmp_path):
  shutil.copytree(template, tmp_path / "run")
  return tmp_path / "run"


def step_dir(workdir, step) -> pathlib.Path:
  return workdir / checkpointing.CHECKPOINT_DIR / str(step)


def largest_array_file(folder: pathlib.Path) -> pathlib.Path:
  """The biggest TensorStore/OCDBT data file of a step (holds the kernel and its moments)."""
  files = [p for p in folder.rglob("*") if p.is_file() and p.parent.name == "d"]
  return max(files, key=lambda p: p.stat().st_size)


def restore(workdir, keep=5):
  manager = checkpointing.create_manager(str(workdir), keep)
  state = checkpointing.restore_latest(manager, abstract(tiny_state(0)))
  return manager, state


def test_every_saved_step_has_a_manifest_that_verifies(workdir):
  for step in (10, 20):
    folder = step_dir(workdir, step)
    assert (folder / checkpointing.MANIFEST_FILE).is_file()
    assert checkpointing.verify_step(folder) is None
  assert sorted(os.listdir(workdir / checkpointing.CHECKPOINT_DIR)) == ["10", "20"]


def test_intact_checkpoint_restores_bit_exactly(workdir):
  manager, state = restore(workdir)
  assert_bit_exact(state, tiny_state(20))
  assert manager.all_steps() == [10, 20]
  assert not (workdir / checkpointing.CORRUPT_DIR).exists()


def test_no_checkpoint_restores_none(tmp_path):
  assert restore(tmp_path)[1] is None


def truncate(folder):
  path = largest_array_file(folder)
  data = path.read_bytes()
  path.write_bytes(data[:len(data) // 2])


def flip_a_byte(folder):
  path = largest_array_file(folder)
  data = bytearray(path.read_bytes())
  data[len(data) // 2] ^= 0x01
  path.write_bytes(bytes(data))


CORRUPTIONS = {
    "truncated_array_file": (truncate, "truncated"),
    "empty_METADATA": (lambda f: (f / "default" / "_METADATA").write_bytes(b""),
                       "default/_METADATA is 0 bytes"),
    "flipped_bytes": (flip_a_byte, "does not match its sha256"),
    "missing_manifest": (lambda f: (f / checkpointing.MANIFEST_FILE).unlink(),
                         "no flowpose_checksums.json"),
    "garbled_manifest": (lambda f: (f / checkpointing.MANIFEST_FILE).write_bytes(b"{\x00garb"),
                         "unreadable flowpose_checksums.json"),
    "missing_item_folder": (lambda f: shutil.rmtree(f / "default"), "missing file default/"),
}


@pytest.mark.parametrize("corruption", sorted(CORRUPTIONS))
def test_corrupt_newest_falls_back_to_the_previous_step(workdir, corruption, caplog):
  corrupt, reason = CORRUPTIONS[corruption]
  corrupt(step_dir(workdir, 20))
  with caplog.at_level(logging.WARNING):
    manager, state = restore(workdir)
  assert_bit_exact(state, tiny_state(10))
  warning = next(r.getMessage() for r in caplog.records if "is corrupt" in r.getMessage())
  assert str(step_dir(workdir, 20)) in warning and reason in warning
  # The bad step is set aside, so the resumed run can write step 20 again.
  assert manager.all_steps() == [10]
  assert (workdir / checkpointing.CORRUPT_DIR / "20").is_dir()
  checkpointing.save(manager, 20, tiny_state(20), wait=True)
  manager.close()
  assert_bit_exact(restore(workdir)[1], tiny_state(20))


def test_stray_step_folder_is_skipped(workdir, caplog):
  (workdir / checkpointing.CHECKPOINT_DIR / "30").mkdir()  # e.g. an interrupted `cp -r`.
  with caplog.at_level(logging.WARNING):
    _, state = restore(workdir)
  assert_bit_exact(state, tiny_state(20))
  assert any(str(step_dir(workdir, 30)) in r.getMessage() for r in caplog.records)


def test_files_orbax_rewrites_after_the_manifest_do_not_matter(workdir):
  # Not covered by the manifest (see the module docstring): restoring must not depend on them.
  (step_dir(workdir, 20) / "_CHECKPOINT_METADATA").write_bytes(b"")
  (step_dir(workdir, 20) / "commit_success.txt").unlink()
  assert checkpointing.verify_step(step_dir(workdir, 20)) is None
  assert_bit_exact(restore(workdir)[1], tiny_state(20))


def test_none_intact_raises_naming_each_folder_and_the_fix(workdir):
  truncate(step_dir(workdir, 20))
  (step_dir(workdir, 10) / "default" / "_METADATA").write_bytes(b"")
  with pytest.raises(checkpointing.CheckpointError) as error:
    restore(workdir)
  message = str(error.value)
  assert isinstance(error.value, ValueError)
  assert f"{step_dir(workdir, 20)}: " in message and f"{step_dir(workdir, 10)}: " in message
  assert f"Delete {workdir / checkpointing.CHECKPOINT_DIR}" in message
  assert not (workdir / checkpointing.CORRUPT_DIR).exists()  # Nothing moved without a fallback.


def test_intact_but_other_config_raises_without_falling_back(workdir):
  other = tiny_state(0)
  other["params"]["dense"]["kernel"] = jnp.zeros((64, 32), jnp.float32)
  manager = checkpointing.create_manager(str(workdir), 5)
  with pytest.raises(checkpointing.CheckpointError, match="passed its checksums.*config"):
    checkpointing.restore_latest(manager, abstract(other))
  assert manager.all_steps() == [10, 20]


def test_write_manifest_vouches_for_an_old_checkpoint(workdir):
  (step_dir(workdir, 20) / checkpointing.MANIFEST_FILE).unlink()
  checkpointing.write_manifest(step_dir(workdir, 20))
  assert_bit_exact(restore(workdir)[1], tiny_state(20))


def test_max_to_keep_removes_whole_steps_with_their_manifests(tmp_path):
  save_steps(tmp_path, [1, 2, 3, 4, 5], keep=2)
  folder = tmp_path / checkpointing.CHECKPOINT_DIR
  assert sorted(os.listdir(folder)) == ["4", "5"]  # No orphan manifest or tmp folder.
  manager, state = restore(tmp_path, keep=2)
  assert manager.all_steps() == [4, 5]
  assert_bit_exact(state, tiny_state(5))
  for step in (4, 5):
    assert checkpointing.verify_step(folder / str(step)) is None


_SAVE_FOREVER = """
import sys
from tests import test_checkpointing as t
from flowpose.train import checkpointing
manager = checkpointing.create_manager(sys.argv[1], 3)
step = 0
while True:
  step += 1
  checkpointing.save(manager, step, t.tiny_state(step))
"""


@pytest.mark.slow
def test_kill_9_during_async_saves_never_leaves_an_unverified_step(tmp_path):
  folder = tmp_path / checkpointing.CHECKPOINT_DIR
  for delay in (0.3, 0.7, 1.1):
    proc = subprocess.Popen([sys.executable, "-c", _SAVE_FOREVER, str(tmp_path)], cwd=REPO_ROOT,
                            env=dict(os.environ, JAX_PLATFORMS="cpu"))
    deadline = time.monotonic() + 120
    while not any(p.name.isdigit() for p in folder.glob("*")) and time.monotonic() < deadline:
      time.sleep(0.01)
    time.sleep(delay)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    steps = [p for p in folder.glob("*") if p.name.isdigit()]
    assert steps
    for step in steps:
      assert checkpointing.verify_step(step) is None, step
    _, state = restore(tmp_path, keep=3)
    assert_bit_exact(state, tiny_state(int(state["step"])))
