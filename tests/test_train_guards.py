"""The trainer's workdir guards: one run per workdir, a resume keeps its config, corrupt
checkpoints are skipped (flowpose.train.workdir + checkpointing wired into train_and_evaluate)."""

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

# pylint: disable=g-import-not-at-top,wrong-import-position
import pytest

from flowpose.train import checkpointing
from flowpose.train import trainer
from flowpose.train import workdir as workdir_lib
import test_train  # The tiny config and the batch-patching helpers.

pytestmark = pytest.mark.usefixtures("fast_compile")


def test_workdir_is_locked_and_a_resume_must_keep_the_config(tmp_path):
  tiny = test_train.tiny_config
  workdir = str(tmp_path / "run")
  with workdir_lib.WorkdirLock(workdir):
    with pytest.raises(workdir_lib.WorkdirLockedError):
      trainer.train_and_evaluate(tiny(), workdir)
  assert not (tmp_path / "run" / checkpointing.CHECKPOINT_DIR).exists()
  trainer.train_and_evaluate(tiny(), workdir)
  with pytest.raises(workdir_lib.ConfigMismatchError, match="input_noise: stored 0.0, new 0.1"):
    trainer.train_and_evaluate(tiny(input_noise=0.1), workdir)
  # Extending a run and changing only logging are allowed; --override allows the rest.
  assert trainer.train_and_evaluate(tiny(num_train_steps=40, log_every=10), workdir).step == 40
  trainer.train_and_evaluate(tiny(num_train_steps=40, input_noise=0.1), workdir, override=True)
  assert not (tmp_path / "run" / ".lock").exists()


def test_corrupt_newest_checkpoint_resumes_exactly_from_the_previous(tmp_path, monkeypatch):
  straight = trainer.train_and_evaluate(test_train.tiny_config(), str(tmp_path / "a"))

  def die(poses):
    raise test_train.Killed()
  with monkeypatch.context() as patch:
    test_train.patch_batches(patch, 23, die)
    with pytest.raises(test_train.Killed):
      trainer.train_and_evaluate(test_train.tiny_config(), str(tmp_path / "b"))
  step20 = tmp_path / "b" / checkpointing.CHECKPOINT_DIR / "20"
  data = max((p for p in step20.rglob("*") if p.parent.name == "d"),
             key=lambda p: p.stat().st_size)
  data.write_bytes(data.read_bytes()[:-7])  # Truncated array file.
  resumed = trainer.train_and_evaluate(test_train.tiny_config(), str(tmp_path / "b"))
  assert resumed.step == 30
  test_train.assert_trees_equal(straight.params, resumed.params)
  assert (tmp_path / "b" / checkpointing.CORRUPT_DIR / "20").is_dir()
