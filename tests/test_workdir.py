"""One run per workdir (`WorkdirLock`) and resume only with the stored config."""

import json
import logging
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time

import ml_collections
import pytest

from flowpose.train import workdir as workdir_lib

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]

_HOLD = """
import sys
from flowpose.train import workdir
with workdir.WorkdirLock(sys.argv[1]):
  print("held", flush=True)
  sys.stdin.readline()
print("released", flush=True)
"""


def hold_lock(path):
  """A subprocess holding the lock on `path` until its stdin closes (or it is killed)."""
  proc = subprocess.Popen([sys.executable, "-c", _HOLD, str(path)], cwd=REPO_ROOT, text=True,
                          stdin=subprocess.PIPE, stdout=subprocess.PIPE)
  assert proc.stdout.readline() == "held\n"
  return proc


def read_lock(path) -> dict:
  return json.loads((path / workdir_lib.LOCK_FILE).read_text())


def dead_pid() -> int:
  proc = subprocess.Popen([sys.executable, "-c", "pass"])
  proc.wait()
  return proc.pid


def write_lock(path, **fields):
  info = {"pid": dead_pid(), "host": socket.gethostname(), "started": "2026-01-01T00:00:00",
          "process": None, "token": "t", "command": "old run", **fields}
  path.mkdir(parents=True, exist_ok=True)
  (path / workdir_lib.LOCK_FILE).write_text(json.dumps(info))
  return info


# ---------------------------------------------------------------------------
# WorkdirLock
# ---------------------------------------------------------------------------


def test_lock_records_the_holder_and_is_released(tmp_path):
  run = tmp_path / "run"
  with workdir_lib.WorkdirLock(run) as lock:
    info = read_lock(run)
    assert info["pid"] == os.getpid() and info["host"] == socket.gethostname()
    assert info["started"] and lock.path == run / ".lock"
  assert list(run.iterdir()) == []  # Released; no temp file left.


def test_lock_is_released_on_exceptions(tmp_path):
  with pytest.raises(KeyError):
    with workdir_lib.WorkdirLock(tmp_path):
      raise KeyError("boom")
  assert not (tmp_path / ".lock").exists()
  with workdir_lib.WorkdirLock(tmp_path):  # Can be taken again.
    pass


def test_a_second_run_fails_at_once_naming_the_holder(tmp_path):
  proc = hold_lock(tmp_path)
  try:
    start = time.monotonic()
    with pytest.raises(workdir_lib.WorkdirLockedError) as error:
      with workdir_lib.WorkdirLock(tmp_path):
        pytest.fail("two runs hold one workdir")
    assert time.monotonic() - start < 1.0
    message = str(error.value)
    assert f"PID {proc.pid} on host {socket.gethostname()}" in message
    assert str(tmp_path / ".lock") in message
    assert read_lock(tmp_path)["pid"] == proc.pid  # The holder's lock is untouched.
  finally:
    proc.stdin.close()
  assert proc.stdout.read() == "released\n" and proc.wait() == 0
  with workdir_lib.WorkdirLock(tmp_path):
    assert read_lock(tmp_path)["pid"] == os.getpid()


def test_stale_lock_of_a_killed_run_is_taken_over_with_a_warning(tmp_path, caplog):
  proc = hold_lock(tmp_path)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  assert read_lock(tmp_path)["pid"] == proc.pid  # kill -9 left the lock behind.
  with caplog.at_level(logging.WARNING):
    with workdir_lib.WorkdirLock(tmp_path):
      assert read_lock(tmp_path)["pid"] == os.getpid()
  assert any("stale lock" in r.getMessage() and f"PID {proc.pid}" in r.getMessage()
             for r in caplog.records)
  assert not (tmp_path / ".lock").exists()


def test_a_reused_pid_does_not_keep_a_stale_lock(tmp_path):
  # The PID is alive (our parent) but the recorded process identity is not its.
  write_lock(tmp_path, pid=os.getppid(), process="other-boot:123")
  with workdir_lib.WorkdirLock(tmp_path):
    assert read_lock(tmp_path)["pid"] == os.getpid()
  # With its real identity, the same PID holds the lock.
  write_lock(tmp_path, pid=os.getppid(), process=workdir_lib._process_identity(os.getppid()))
  with pytest.raises(workdir_lib.WorkdirLockedError, match=f"PID {os.getppid()}"):
    workdir_lib.WorkdirLock(tmp_path).acquire()


def test_a_lock_of_another_host_is_never_presumed_dead(tmp_path):
  write_lock(tmp_path, host="gpu-node-7")
  with pytest.raises(workdir_lib.WorkdirLockedError, match="on host gpu-node-7"):
    workdir_lib.WorkdirLock(tmp_path).acquire()
  assert read_lock(tmp_path)["host"] == "gpu-node-7"


def test_an_unreadable_lock_is_reported_not_taken(tmp_path):
  (tmp_path / ".lock").write_bytes(b"")
  with pytest.raises(workdir_lib.WorkdirLockedError, match="unreadable.*delete that file"):
    workdir_lib.WorkdirLock(tmp_path).acquire()
  assert (tmp_path / ".lock").read_bytes() == b""


def test_nested_lock_in_one_process_fails(tmp_path):
  with workdir_lib.WorkdirLock(tmp_path):
    with pytest.raises(workdir_lib.WorkdirLockedError, match="this process"):
      workdir_lib.WorkdirLock(tmp_path).acquire()
  assert not (tmp_path / ".lock").exists()


def test_release_leaves_a_replaced_lock_alone(tmp_path):
  lock = workdir_lib.WorkdirLock(tmp_path)
  lock.acquire()
  info = write_lock(tmp_path, pid=os.getppid(), token="someone-else")
  lock.release()
  assert read_lock(tmp_path)["token"] == info["token"]


def test_a_takeover_that_lost_the_race_leaves_the_winners_lock(tmp_path, monkeypatch):
  # Q read the stale lock, then P took it over before Q acted: Q must not remove P's lock.
  write_lock(tmp_path)
  stale = (tmp_path / ".lock").read_bytes()
  late = workdir_lib.WorkdirLock(tmp_path)
  reads = iter([stale])
  real_read = late._read
  monkeypatch.setattr(late, "_read", lambda: next(reads, None) or real_read())
  with workdir_lib.WorkdirLock(tmp_path):  # P.
    with pytest.raises(workdir_lib.WorkdirLockedError, match="this process"):
      late.acquire()
    assert read_lock(tmp_path)["pid"] == os.getpid()
  assert not (tmp_path / ".lock").exists()


_RACE = """
import sys, time
from flowpose.train import workdir
go = float(sys.argv[2])
while time.time() < go:
  pass
try:
  with workdir.WorkdirLock(sys.argv[1]):
    print("won", flush=True)
    time.sleep(1.0)
except workdir.WorkdirLockedError:
  print("lost", flush=True)
"""


def test_racing_takeovers_of_a_stale_lock_admit_one_run(tmp_path):
  write_lock(tmp_path)
  go = time.time() + 1.5  # All start their takeover at the same instant.
  procs = [subprocess.Popen([sys.executable, "-c", _RACE, str(tmp_path), str(go)],
                            cwd=REPO_ROOT, text=True, stdout=subprocess.PIPE)
           for _ in range(4)]
  results = sorted(p.communicate(timeout=60)[0].strip() for p in procs)
  assert results == ["lost", "lost", "lost", "won"]


# ---------------------------------------------------------------------------
# check_resume_config
# ---------------------------------------------------------------------------


def make_config(**overrides) -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict({
      "seed": 0, "num_train_steps": 600, "log_every": 100, "eval_every": 200,
      "checkpoint_every": 200, "keep_checkpoints": 3, "batch_size": 512,
      "eval_batch_size": 4096, "input_noise": 0.05,
      "flow": {"num_layers": 8, "hidden_sizes": (64, 64), "coupling": "spline"},
      "optimizer": {"learning_rate": 1e-3, "warmup_steps": 100},
      "data": {"manual_dir": "/data/cmu", "data_dir": "", "augment_mirror": True},
  })
  config.update_from_flattened_dict(overrides)
  return config


def store(path, config):
  (path / workdir_lib.CONFIG_FILE).write_text(config.to_json_best_effort(indent=2))


def test_no_stored_config_means_a_fresh_run(tmp_path):
  assert workdir_lib.check_resume_config(tmp_path, make_config()) == []


def test_same_config_resumes(tmp_path):
  store(tmp_path, make_config())
  assert workdir_lib.check_resume_config(tmp_path, make_config()) == []


def test_the_experiment_config_round_trips(tmp_path):
  # `store` writes as `flowpose.prior.io.write_config` does (not imported: it loads TensorFlow).
  from experiments import prior_cmu  # pylint: disable=g-import-not-at-top
  store(tmp_path, prior_cmu.get_config("runlocal,synthetic"))
  assert workdir_lib.check_resume_config(tmp_path, prior_cmu.get_config("runlocal,synthetic")) == []
  with pytest.raises(workdir_lib.ConfigMismatchError, match="flow.num_layers: stored 4, new 8"):
    workdir_lib.check_resume_config(tmp_path, prior_cmu.get_config("synthetic"))


def test_tuples_and_lists_are_the_same_value(tmp_path):
  stored = json.loads(make_config().to_json_best_effort())
  assert stored["flow"]["hidden_sizes"] == [64, 64]  # JSON has no tuples.
  (tmp_path / "config.json").write_text(json.dumps(stored))
  assert workdir_lib.check_resume_config(
      tmp_path, make_config(**{"flow.hidden_sizes": (64, 64)})) == []
  assert workdir_lib.check_resume_config(
      tmp_path, make_config(**{"flow.hidden_sizes": [64, 64]})) == []


def test_every_differing_field_is_listed(tmp_path):
  store(tmp_path, make_config())
  new = make_config(**{"seed": 1, "flow.hidden_sizes": (64, 128), "optimizer.learning_rate": 3e-4,
                       "data.augment_mirror": False})
  new.flow.mask = "kinematic"  # A field the stored run did not have.
  with pytest.raises(workdir_lib.ConfigMismatchError) as error:
    workdir_lib.check_resume_config(tmp_path, new)
  message = str(error.value)
  for line in ("seed: stored 0, new 1",
               "flow.hidden_sizes: stored [64, 64], new [64, 128]",
               "optimizer.learning_rate: stored 0.001, new 0.0003",
               "data.augment_mirror: stored true, new false",
               'flow.mask: stored <missing>, new "kinematic"'):
    assert f"\n  {line}\n" in message + "\n"
  assert str(tmp_path / "config.json") in message and "--override" in message
  assert "flow.num_layers" not in message


def test_bool_is_not_an_int_but_int_equals_float(tmp_path):
  store(tmp_path, make_config(**{"data.augment_mirror": True, "input_noise": 1.0}))

  def with_values(noise, mirror):  # A fresh ConfigDict: type-safe updates would cast them.
    values = make_config().to_dict()
    values["input_noise"], values["data"]["augment_mirror"] = noise, mirror
    return ml_collections.ConfigDict(values)
  assert workdir_lib.check_resume_config(tmp_path, with_values(1, True)) == []
  with pytest.raises(workdir_lib.ConfigMismatchError,
                     match="data.augment_mirror: stored true, new 1"):
    workdir_lib.check_resume_config(tmp_path, with_values(1.0, 1))


def test_fields_that_do_not_change_the_result_may_change(tmp_path):
  store(tmp_path, make_config())
  allowed = workdir_lib.check_resume_config(tmp_path, make_config(
      log_every=10, eval_every=20, checkpoint_every=50, keep_checkpoints=10,
      eval_batch_size=1024, num_train_steps=2000))
  assert sorted(allowed) == [
      "checkpoint_every: stored 200, new 50", "eval_batch_size: stored 4096, new 1024",
      "eval_every: stored 200, new 20", "keep_checkpoints: stored 3, new 10",
      "log_every: stored 100, new 10", "num_train_steps: stored 600, new 2000"]


def test_num_train_steps_may_grow_not_shrink(tmp_path):
  store(tmp_path, make_config())
  with pytest.raises(workdir_lib.ConfigMismatchError, match="num_train_steps: stored 600, new 300"):
    workdir_lib.check_resume_config(tmp_path, make_config(num_train_steps=300))


def test_paths_to_the_same_folder_are_the_same(tmp_path):
  data = tmp_path / "data" / "cmu"
  data.mkdir(parents=True)
  (tmp_path / "link").symlink_to(tmp_path / "data")
  run = tmp_path / "run"
  run.mkdir()
  store(run, make_config(**{"data.manual_dir": str(data)}))
  for same in (f"{data}/", str(tmp_path / "data" / ".." / "data" / "cmu"),
               str(tmp_path / "link" / "cmu")):
    assert workdir_lib.check_resume_config(run, make_config(**{"data.manual_dir": same}))
  with pytest.raises(workdir_lib.ConfigMismatchError, match="data.manual_dir"):
    workdir_lib.check_resume_config(run, make_config(**{"data.manual_dir": str(tmp_path)}))
  with pytest.raises(workdir_lib.ConfigMismatchError, match="data.manual_dir"):  # "" = default.
    workdir_lib.check_resume_config(run, make_config(**{"data.manual_dir": ""}))


def test_override_continues_and_reports_the_changes(tmp_path, caplog):
  store(tmp_path, make_config())
  with caplog.at_level(logging.WARNING):
    changes = workdir_lib.check_resume_config(tmp_path, make_config(seed=3), override=True)
  assert changes == ["seed: stored 0, new 3"]
  assert any("seed: stored 0, new 3" in r.getMessage() for r in caplog.records)


def test_unreadable_stored_config_is_named(tmp_path):
  (tmp_path / "config.json").write_bytes(b'{"seed": 0, "flow": {')
  with pytest.raises(workdir_lib.ConfigMismatchError, match=r"config\.json is unreadable"):
    workdir_lib.check_resume_config(tmp_path, make_config())
  assert workdir_lib.check_resume_config(tmp_path, make_config(), override=True) == []
