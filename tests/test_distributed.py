"""Multi-process training (`flowpose.train.distributed`, `launch.main --coordinator_address ...`).

The slow tests start real `jax.distributed` runs: 2 processes on 127.0.0.1, each with 2 forced
CPU devices and gloo collectives, through `launch.main`, and compare them with 1 process of 4
devices. Run as a script, this file is that launcher with one extra task registered,
"prior_global": the prior task whose training stream is the one-process stream split by rows
(each process takes its share of the same global batch), so 1 and 2 processes must train on
identical batches and every difference is the trainer's. (The prior task itself gives each
process its own TFDS shard and seed, as clu's deterministic_data does: the same distribution,
other batches.)
"""

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

# pylint: disable=g-import-not-at-top,wrong-import-position
import pathlib
import re
import shutil
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from flowpose.train import distributed

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
STEPS = 6
TINY = {
    "task": "prior_global", "flow.num_layers": 2, "flow.hidden_sizes": (16, 16),
    "batch_size": 32, "eval_batch_size": 64, "num_train_steps": STEPS, "init_examples": 128,
    "optimizer.warmup_steps": 1, "optimizer.learning_rate": 3e-3, "data.num_train": 512,
    "data.num_eval": 128, "log_every": 1, "eval_every": 100, "checkpoint_every": 3,
    "keep_checkpoints": 10,
}


# ---------------------------------------------------------------------------
# Which start-up applies (pure, default suite).
# ---------------------------------------------------------------------------

SLURM_STEP = {"SLURM_JOB_ID": "4242", "SLURM_STEP_NODELIST": "node[01-02]", "SLURM_NTASKS": "8",
              "SLURM_PROCID": "3", "SLURM_LOCALID": "3"}


@pytest.mark.parametrize("cluster, kwargs, environ, expected", [
    ("auto", {}, {}, "single"),
    ("auto", {}, SLURM_STEP, "slurm"),
    ("auto", {}, {**SLURM_STEP, "SLURM_NTASKS": "1"}, "single"),  # One task: nothing to join.
    ("auto", {}, {"SLURM_JOB_ID": "1", "SLURM_NTASKS": "4"}, "single"),  # sbatch shell, no srun.
    ("auto", {}, {"TPU_WORKER_HOSTNAMES": "t-w0,t-w1"}, "tpu"),
    ("auto", {}, {"TPU_WORKER_HOSTNAMES": "t-w0"}, "single"),
    ("tpu", {}, {}, "tpu"),
    ("none", {}, SLURM_STEP, "single"),
    ("auto", dict(coordinator_address="h:1234", num_processes=2, process_id=1), SLURM_STEP,
     "explicit"),
])
def test_resolve(cluster, kwargs, environ, expected):
  assert distributed.resolve(cluster, environ=environ, **kwargs) == expected


@pytest.mark.parametrize("cluster, kwargs, environ, named", [
    ("auto", dict(coordinator_address="h:1234", num_processes=2), {}, "--process_id"),
    ("explicit", {}, {}, "--coordinator_address"),
    ("auto", dict(coordinator_address="h", num_processes=2, process_id=0), {}, "host:port"),
    ("auto", dict(coordinator_address="h:1", num_processes=2, process_id=2), {}, "--process_id"),
    ("slurm", {}, {}, "srun"),
    ("none", dict(process_id=0), {}, "--process_id"),
    ("cloud", {}, {}, "--cluster"),
    ("auto", {}, {**SLURM_STEP, "SLURM_NTASKS": "x"}, "SLURM_NTASKS"),
])
def test_bad_distributed_settings_name_the_flag(cluster, kwargs, environ, named):
  with pytest.raises(distributed.DistributedConfigError, match=re.escape(named)):
    distributed.resolve(cluster, environ=environ, **kwargs)


def test_agreements_are_identities_in_one_process():
  batch = {"poses": np.arange(6.0).reshape(3, 2)}
  assert distributed.global_batch(batch) is batch
  assert distributed.any_process(True) and not distributed.any_process(False)
  assert distributed.stop_agreed(True, 7, 10)  # One process stops at once.
  entered = []

  class Context:
    def __enter__(self):
      entered.append("in")

    def __exit__(self, *exc):
      entered.append("out")

  with distributed.all_processes_enter(Context(), RuntimeError):
    assert entered == ["in"]
  assert entered == ["in", "out"]


# ---------------------------------------------------------------------------
# Real multi-process runs (slow).
# ---------------------------------------------------------------------------


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _launch(workdir, devices: int, extra=(), stderr=subprocess.PIPE, **overrides):
  """Starts this file as `launch.main` (with the "prior_global" task) on `devices` CPU devices."""
  flags = [f"--config.{k}={v}".replace(" ", "") for k, v in {**TINY, **overrides}.items()]
  env = dict(os.environ, JAX_PLATFORMS="cpu", JAX_DISABLE_MOST_OPTIMIZATIONS="1",
             XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
             PYTHONPATH=str(REPO_ROOT))  # A script's folder, not the repo, is on sys.path.
  return subprocess.Popen(
      [sys.executable, __file__, "--config=experiments/prior_cmu.py:runlocal,synthetic",
       f"--workdir={workdir}", *flags, *extra],
      cwd=REPO_ROOT, env=env, stdout=subprocess.DEVNULL, stderr=stderr, text=True)


def _launch_two(workdir, stderr=(subprocess.PIPE,) * 2, **overrides):
  port = _free_port()
  return [_launch(workdir, 2, [f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2",
                               f"--process_id={i}"], stderr[i], **overrides) for i in range(2)]


def _finish(procs, timeout=400):
  """Waits for all; returns their stderr texts (each must exit 0)."""
  logs = []
  for proc in procs:
    _, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err[-4000:]
    logs.append(err)
  return logs


def _losses(log: str) -> dict:
  """`{step: train/loss}` from the launcher's metric log lines."""
  return {int(step): float(loss) for step, loss in
          re.findall(r"\[(\d+)\] .*?train/loss=([-+.\deE]+)", log)}


def _params(workdir):
  from flowpose.prior import io as prior_io  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  return jax.tree.leaves(prior_io.load_exported_prior(str(workdir))[1])


@pytest.mark.slow
def test_two_processes_train_as_one_and_their_checkpoint_resumes_in_one(tmp_path):
  two, one, resumed = tmp_path / "two", tmp_path / "one", tmp_path / "resumed"
  # The 2-process run and the 1-process reference side by side (the machine has 2 cores).
  procs = _launch_two(two) + [_launch(one, 4, ["--cluster=none"])]
  log0, log1, log_one = _finish(procs)
  assert "JAX process 0 / 2 (explicit start)" in log0, log0[-3000:]
  assert "JAX process 1 / 2 (explicit start)" in log1, log1[-3000:]
  assert "CpuDevice(id=2049)" in log0  # The mesh's devices are both processes' 2 + 2.
  assert "JAX process 0 / 1 (single start)" in log_one

  # Same loss trajectory and parameters as 1 process with 4 devices.
  loss_two, loss_one = _losses(log0), _losses(log_one)
  assert sorted(loss_one) == list(range(1, STEPS + 1)), log_one[-3000:]
  assert sorted(loss_two) == sorted(loss_one), log0[-3000:]
  np.testing.assert_allclose([loss_two[s] for s in loss_one], list(loss_one.values()),
                             rtol=1e-5, atol=1e-5)
  for x, y in zip(_params(two), _params(one), strict=True):
    np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-5)
  # Only process 0 wrote the summaries (one TensorBoard events file, as the 1-process run).
  assert len(list(two.glob("events.out.tfevents.*"))) == 1
  assert sorted(p.name for p in (two / "checkpoints").iterdir()) == ["3", str(STEPS)]

  # The 2-process checkpoint of step 3 resumes in 1 process and ends as the reference.
  shutil.copytree(two, resumed)
  shutil.rmtree(resumed / "checkpoints" / str(STEPS))
  (resumed / "prior_params.msgpack").unlink()
  (log_resumed,) = _finish([_launch(resumed, 4)])
  assert "Resumed from checkpoint step 3" in log_resumed, log_resumed[-3000:]
  loss_resumed = _losses(log_resumed)
  assert sorted(loss_resumed) == list(range(4, STEPS + 1))
  np.testing.assert_allclose([loss_resumed[s] for s in sorted(loss_resumed)],
                             [loss_one[s] for s in sorted(loss_resumed)], rtol=1e-5, atol=1e-5)
  for x, y in zip(_params(resumed), _params(one), strict=True):
    np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_a_locked_workdir_stops_every_process(tmp_path):
  """Process 0 cannot lock the workdir: both processes exit at once (none waits in a collective)."""
  from flowpose.train import workdir as workdir_lib  # pylint: disable=g-import-not-at-top
  with workdir_lib.WorkdirLock(tmp_path / "w"):  # Held by this (live) test process.
    procs = _launch_two(tmp_path / "w")
    errors = [proc.communicate(timeout=240)[1] for proc in procs]
  assert [p.returncode for p in procs] == [1, 1], errors[1][-3000:]
  assert "is in use by another run" in errors[0].splitlines()[-1], errors[0][-2000:]
  assert "process 0 could not take the lock" in errors[1].splitlines()[-1], errors[1][-2000:]
  assert not list((tmp_path / "w").glob("checkpoints/*"))


@pytest.mark.slow
def test_sigterm_to_one_process_stops_both_at_one_checkpoint(tmp_path):
  """Preemption reaching one process: both stop at the same agreed step, checkpoint, exit 143."""
  from flowpose.train import trainer  # pylint: disable=g-import-not-at-top
  logs = [tmp_path / f"process{i}.log" for i in range(2)]
  files = [open(path, "w") for path in logs]  # pylint: disable=consider-using-with
  procs = _launch_two(tmp_path / "w", files, num_train_steps=100_000, checkpoint_every=100_000)
  try:
    deadline = time.monotonic() + 300
    while len(_losses(logs[0].read_text())) < 3:  # Training is under way.
      assert time.monotonic() < deadline and all(p.poll() is None for p in procs), (
          logs[0].read_text()[-3000:])
      time.sleep(0.5)
    procs[1].send_signal(signal.SIGTERM)
    codes = [p.wait(timeout=240) for p in procs]
  finally:
    for proc, file in zip(procs, files):
      if proc.poll() is None:
        proc.kill()
      file.close()
  texts = [path.read_text() for path in logs]
  assert codes == [143, 143], texts[0][-3000:] + texts[1][-3000:]
  steps = [int(p.name) for p in (tmp_path / "w" / "checkpoints").iterdir()]
  assert len(steps) == 1 and steps[0] % trainer.PREEMPTION_SYNC_EVERY == 0, steps
  for text in texts:
    assert f"SIGTERM (preempted): saved checkpoint {steps[0]}" in text


def _worker_main():
  """`launch.main` with the "prior_global" task registered (see the module docstring)."""
  from absl import app  # pylint: disable=g-import-not-at-top
  from flowpose import tasks  # pylint: disable=g-import-not-at-top
  from flowpose.tasks import prior  # pylint: disable=g-import-not-at-top
  from launch import main as launch_main  # pylint: disable=g-import-not-at-top

  def input_pipeline(config, split, process_index, process_count, start_step=0):
    if split != "train":
      return prior.input_pipeline(config, split, process_index, process_count, start_step)
    share = config.batch_size // process_count
    one_process = prior.input_pipeline(config, "train", 0, 1, start_step)
    return one_process.map(lambda x: x[process_index * share:(process_index + 1) * share])

  names = ("LOSS_TERMS", "CONFIG_FIELDS", "validate_config", "init", "loss", "evaluate",
           "optimizer_labels", "export")
  tasks.register("prior_global", tasks.namespace(
      **{n: getattr(prior, n) for n in names}, input_pipeline=input_pipeline))
  app.run(launch_main.main, flags_parser=launch_main.parse_flags)


if __name__ == "__main__":
  _worker_main()
