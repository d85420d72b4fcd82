"""The one trainer: `train_and_evaluate(config, workdir)` for every task (`config.task`).

The task (`flowpose.tasks.<config.task>`, default "prior") supplies init, loss, evaluation and
its tf.data input pipeline; this module owns the rest: one jitted step over a 1-D device mesh
("data": the batch sharded over devices, params and optimizer state replicated, the state
donated), the optimizer (Adam + warmup-cosine + global-norm clipping; parameters the task
labels "frozen" untouched), orbax checkpoints, clu metric writers with
`ReportProgress` (steps/s, ETA), preemption and the NaN guard.

Fault tolerance:
* Resume: on start the newest checkpoint in `workdir/checkpoints` is restored (fixed order:
  workdir checkpoint, else fresh data-dependent init). The task's training stream starts at
  the restored step and its batch of step `s` is a pure function of `(seed, s)`
  (`flowpose.data.poses`), so a resumed run ends with exactly the parameters of an
  uninterrupted one.
* Preemption: SIGTERM sets a flag; the loop then writes a checkpoint of the current step and
  returns with `preempted=True` (`launch/main.py` then exits with 143).
* Divergence: a step whose loss or gradient is not finite leaves the state unchanged (on
  device, so a NaN state can never be saved) and the loop stops with `NonFiniteLossError`
  naming the step; the last checkpoint is kept.
"""

import contextlib
import functools
import math
import signal
import threading
from typing import Any, NamedTuple, Optional

from absl import logging
import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from clu import metric_writers
from clu import periodic_actions

from flowpose import io_utils
from flowpose.train import checkpointing
from flowpose.train import config_lib
from flowpose.train import distributed
from flowpose.train import workdir as workdir_lib

CONFIG_FILE = workdir_lib.CONFIG_FILE
PREEMPTION_SYNC_EVERY = 10  # Steps between multi-process SIGTERM checks (distributed.stop_agreed).
# Fields that change no compiled function: runs differing only in these share programs.
_HOST_ONLY_FIELDS = ("log_every", "eval_every", "checkpoint_every", "keep_checkpoints")


class NonFiniteLossError(FloatingPointError):
  """Training produced a NaN/inf loss or gradient."""


class TrainState(flax.struct.PyTreeNode):
  """Everything a checkpoint must hold to resume exactly."""
  step: jax.Array  # int32 [], number of updates applied.
  params: Any
  opt_state: Any


class TrainResult(NamedTuple):
  """What `train_and_evaluate` returns (host values).

  Attributes:
    params: the task's params at `step`.
    step: number of updates applied.
    eval_metrics: the task's eval metrics of the last evaluation, made at `eval_step`.
    eval_step: the step `eval_metrics` belong to (== `step` unless preempted).
    initial_eval_metrics: eval metrics when this run started (fresh or resumed).
    train_metrics: the last logged (interval-averaged) train metrics.
    preempted: True if SIGTERM stopped the run early (checkpoint written).
  """
  params: Any
  step: int
  eval_metrics: dict
  eval_step: int
  initial_eval_metrics: dict
  train_metrics: dict
  preempted: bool

  @property
  def eval_nll(self) -> Optional[float]:
    return self.eval_metrics.get("nll")

  @property
  def initial_eval_nll(self) -> Optional[float]:
    return self.initial_eval_metrics.get("nll")


# ---------------------------------------------------------------------------
# Optimizer and step (pure functions).
# ---------------------------------------------------------------------------


def make_optimizer(config: ml_collections.ConfigDict, param_labels=None):
  """Adam + warmup-cosine + global-norm clipping.

  Args:
    config: the training config (`optimizer.*`, `num_train_steps`).
    param_labels: optional "train"/"frozen" labels (pytree prefix or callable, as
      `optax.multi_transform` takes them); frozen parameters get zero updates.

  Returns:
    `(tx, schedule)`.
  """
  opt = config.optimizer
  schedule = optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=opt.learning_rate, warmup_steps=opt.warmup_steps,
      decay_steps=config.num_train_steps, end_value=opt.learning_rate * opt.end_lr_factor)
  tx = optax.chain(optax.clip_by_global_norm(opt.grad_clip_norm), optax.adam(schedule))
  if param_labels is not None:
    tx = optax.multi_transform({"train": tx, "frozen": optax.set_to_zero()}, param_labels)
  return tx, schedule


def train_step(state: TrainState, batch: Any, *, loss_fn, tx, schedule, rng: jax.Array):
  """One update. Returns `(new_state, metrics)`; a non-finite step is a no-op.

  Args:
    state: the train state (donated by the jitted caller).
    batch: the global batch (sharded over the mesh).
    loss_fn: `(params, batch, rng) -> (total, terms)`.
    tx: the optimizer; schedule: its learning rate schedule.
    rng: the run's training key; folded with the step here.
  """
  step_rng = jax.random.fold_in(rng, state.step)
  (loss, terms), grads = jax.value_and_grad(
      lambda params: loss_fn(params, batch, step_rng), has_aux=True)(state.params)
  grad_norm = optax.global_norm(grads)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  new_state = TrainState(step=state.step + 1,
                         params=optax.apply_updates(state.params, updates),
                         opt_state=opt_state)
  finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
  # Select on device: a NaN update never reaches the state (nor a checkpoint).
  new_state = jax.tree.map(lambda new, old: jnp.where(finite, new, old), new_state, state)
  metrics = {"loss": loss, "grad_norm": grad_norm, "learning_rate": schedule(state.step),
             "finite": finite, **terms}
  return new_state, metrics


# ---------------------------------------------------------------------------
# Host-side helpers.
# ---------------------------------------------------------------------------


class _SigtermFlag:
  """Context manager: SIGTERM sets `requested` instead of killing the process."""

  def __init__(self):
    self.requested = False
    self._installed, self._previous = False, None

  def _handler(self, signum, frame):
    # Only set a flag: logging or I/O inside a signal handler can deadlock.
    del signum, frame
    self.requested = True

  def __enter__(self):
    # signal.signal only works in the main thread (not under some runners).
    if threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGTERM, self._handler)
      self._installed = True
    return self

  def __exit__(self, *exc):
    if self._installed:
      signal.signal(signal.SIGTERM, self._previous or signal.SIG_DFL)


def _check_finite(step: int, metrics: dict, manager) -> None:
  if bool(jax.device_get(metrics["finite"])):
    return
  manager.wait_until_finished()
  loss, grad_norm = jax.device_get((metrics["loss"], metrics["grad_norm"]))
  raise NonFiniteLossError(
      f"Training stopped: non-finite loss {float(loss)} / gradient norm {float(grad_norm)} "
      f"at step {step}. That update was not applied; the last checkpoint is step "
      f"{manager.latest_step()} in {manager.directory}. Lower optimizer.learning_rate or "
      "check the data.")


def _mean_metrics(history: list) -> dict:
  history = jax.device_get(history)
  return {f"train/{k}": float(np.mean([h[k] for h in history]))
          for k in history[0] if k != "finite"}


def _train_batches(task, config, start_step: int):
  """This process's host batches from `start_step` on (element i = step start_step + i)."""
  ds = task.input_pipeline(config, "train", jax.process_index(), jax.process_count(),
                           start_step=start_step)
  return ds.as_numpy_iterator()


def _example_batch(task, config) -> Any:
  """The first `config.init_examples` examples of the global training stream (host arrays).

  With several processes their shares of the first batches are gathered, so all initialise
  from the same examples, as one process reading the same global stream would.
  """
  batches = _train_batches(task, config, 0)
  first = next(batches)
  rows = jax.tree.leaves(first)[0].shape[0] * jax.process_count()
  chunks = [first] + [next(batches) for _ in range(math.ceil(config.init_examples / rows) - 1)]
  chunks = [distributed.global_batch(chunk) for chunk in chunks]
  return jax.tree.map(lambda *xs: np.concatenate(xs)[:config.init_examples], *chunks)


def _device_batches(dataset, sharding):
  """Eval batches (the same on every process) placed on the mesh."""
  for batch in dataset.as_numpy_iterator():
    yield jax.tree.map(lambda x: jax.device_put(x, sharding), batch)


# ---------------------------------------------------------------------------
# The training loop.
# ---------------------------------------------------------------------------


class _Programs(NamedTuple):
  """Jitted functions for one task, config and mesh."""
  fresh_state: Any  # Unjitted (example_batch) -> TrainState, for eval_shape.
  init_fn: Any      # Jitted fresh_state.
  step_fn: Any


@functools.lru_cache(maxsize=8)
def _build_programs(task, frozen: ml_collections.FrozenConfigDict,
                    mesh: jax.sharding.Mesh) -> _Programs:
  """Builds the step functions; memoised on what defines them.

  `frozen` is the config without host-only fields (intervals), so repeated runs in one
  process (tests, sweeps, resume after an exception) reuse the compiled code.
  """
  config = ml_collections.ConfigDict(frozen)
  tx, schedule = make_optimizer(config, getattr(task, "optimizer_labels", None))
  init_rng, train_rng = jax.random.split(jax.random.key(config.seed))
  replicated = jax.NamedSharding(mesh, jax.P())
  data_sharding = jax.NamedSharding(mesh, jax.P("data"))

  def fresh_state(example_batch):
    params = task.init(config, init_rng, example_batch)
    return TrainState(jnp.zeros((), jnp.int32), params, tx.init(params))

  loss_fn = lambda params, batch, rng: task.loss(params, batch, rng, config)
  step_fn = jax.jit(
      functools.partial(train_step, loss_fn=loss_fn, tx=tx, schedule=schedule, rng=train_rng),
      in_shardings=(replicated, data_sharding), out_shardings=(replicated, replicated),
      donate_argnums=(0,))
  init_fn = jax.jit(fresh_state, out_shardings=replicated)
  return _Programs(fresh_state, init_fn, step_fn)


@contextlib.contextmanager
def _workdir_guard(workdir: str, config: ml_collections.ConfigDict, override: bool):
  """One run per workdir, and a resume keeps the run's config (issue 10, defect 2).

  Process 0 holds `workdir/.lock` for the run's life (all processes share the workdir); every
  process refuses a resume whose config changes the result unless `override`. Runs after the
  config is validated and the workdir proven writable, before anything in it is read or written.
  """
  lock = (workdir_lib.WorkdirLock(workdir) if jax.process_index() == 0
          else contextlib.nullcontext())
  with distributed.all_processes_enter(lock, lambda: workdir_lib.WorkdirLockedError(
      f"process 0 could not take the lock of {workdir} (see its log)")):
    workdir_lib.check_resume_config(workdir, config, override)
    if jax.process_index() == 0:  # Before any checkpoint: a killed first run is checked too.
      workdir_lib.write_config(workdir, config)
    yield


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, *,
                       override: bool = False) -> TrainResult:
  """Trains `config.task` per `config`, writing checkpoints/metrics/exports to `workdir`.

  Args:
    config: the experiment config (`experiments/*.py`).
    workdir: output folder; an existing run there is resumed.
    override: resume even though `config` differs from the stored `config.json` in fields
      that change the result (each difference is logged).

  Raises:
    ValueError: a bad config field (before anything is trained or written).
    flowpose.io_utils.OutputPathError: `workdir` empty or not writable (before any work).
    flowpose.train.workdir.WorkdirLockedError: another live run holds `workdir`.
    flowpose.train.workdir.ConfigMismatchError: a resume with a result-changing config.
    flowpose.train.checkpointing.CheckpointError: no intact checkpoint to resume from.
    NonFiniteLossError: the loss diverged (see the module docstring).
  """
  task = config_lib.validate_config(config)
  workdir = str(io_utils.require_output_path(workdir, "--workdir"))
  with _workdir_guard(workdir, config, override):
    return _train(config, workdir, task)


def _train(config: ml_collections.ConfigDict, workdir: str, task) -> TrainResult:
  num_steps = config.num_train_steps
  process_index, process_count = jax.process_index(), jax.process_count()

  # Set up mesh #
  mesh = jax.make_mesh((jax.device_count(),), ("data",),
                       axis_types=(jax.sharding.AxisType.Auto,))
  replicated = jax.NamedSharding(mesh, jax.P())
  data_sharding = jax.NamedSharding(mesh, jax.P("data"))
  frozen = ml_collections.FrozenConfigDict(
      {k: v for k, v in config.items() if k not in _HOST_ONLY_FIELDS})
  programs = _build_programs(task, frozen, mesh)

  # Restore or initialise #
  example_batch = _example_batch(task, config)
  checkpoint_manager = checkpointing.create_manager(workdir, config.keep_checkpoints)
  abstract_state = jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=replicated),
      jax.eval_shape(programs.fresh_state, example_batch))
  state = checkpointing.restore_latest(checkpoint_manager, abstract_state)
  if state is None:
    state = programs.init_fn(example_batch)
    if process_count > 1:  # Hosts saw different shards: use host 0's.
      from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
      state = multihost_utils.broadcast_one_to_all(state)
    logging.info("Fresh init (task %s) from %d examples.", config_lib.task_name(config),
                 len(jax.tree.leaves(example_batch)[0]))
  else:
    logging.info("Resumed from checkpoint step %d.", int(state.step))
  start_step = int(state.step)

  # Data, metrics and hooks #
  train_batches = _train_batches(task, config, start_step)
  eval_dataset = task.input_pipeline(config, "eval", process_index, process_count)
  writer = metric_writers.create_default_writer(workdir, just_logging=process_index > 0)
  report_progress = periodic_actions.ReportProgress(
      num_train_steps=num_steps, writer=writer, every_steps=config.log_every)

  def evaluate_now(params, step):
    metrics = task.evaluate(params, _device_batches(eval_dataset, data_sharding), config)
    writer.write_scalars(step, {f"eval/{k}": v for k, v in metrics.items()})
    return metrics

  eval_metrics = initial_eval_metrics = evaluate_now(state.params, start_step)
  eval_step = start_step
  train_metrics, history, pending = {}, [], None

  # Train loop #
  try:
    with _SigtermFlag() as sigterm:
      for step in range(start_step, num_steps):
        if distributed.stop_agreed(sigterm.requested, step - start_step, PREEMPTION_SYNC_EVERY):
          if pending is not None:
            _check_finite(*pending, checkpoint_manager)
          if checkpoint_manager.latest_step() != step:  # Not just saved.
            checkpointing.save(checkpoint_manager, step, state)
          checkpoint_manager.wait_until_finished()
          logging.warning("SIGTERM (preempted): saved checkpoint %d, exiting (last eval at "
                          "step %d: %s).", step, eval_step, eval_metrics)
          return TrainResult(jax.device_get(state.params), step, eval_metrics, eval_step,
                             initial_eval_metrics, train_metrics, True)
        with jax.profiler.StepTraceAnnotation("train", step_num=step):
          batch = jax.tree.map(
              lambda x: jax.make_array_from_process_local_data(data_sharding, x),
              next(train_batches))
          state, metrics = programs.step_fn(state, batch)
        # Check the previous step now that this one is queued, so the host does not wait
        # on the device every step.
        if pending is not None:
          _check_finite(*pending, checkpoint_manager)
        pending = (step, metrics)
        history.append(metrics)
        done = step + 1
        report_progress(done)
        is_last = done == num_steps
        if done % config.log_every == 0 or is_last:
          _check_finite(*pending, checkpoint_manager)
          train_metrics = _mean_metrics(history)
          writer.write_scalars(done, train_metrics)
          history = []
        if done % config.eval_every == 0 or is_last:
          eval_metrics, eval_step = evaluate_now(state.params, done), done
        if done % config.checkpoint_every == 0 or is_last:
          _check_finite(*pending, checkpoint_manager)
          checkpointing.save(checkpoint_manager, done, state)
  finally:
    # Also on errors: finish the checkpoints already started (a crash after a save
    # returned must not lose it) and release the writer's files.
    checkpoint_manager.wait_until_finished()
    checkpoint_manager.close()
    writer.close()

  # Export #
  params = jax.device_get(state.params)
  step = int(state.step)
  if process_index == 0 and hasattr(task, "export"):
    logging.info("Wrote %s.", task.export(workdir, params, config))
  logging.info("Finished at step %d; eval at step %d: %s.", step, eval_step,
               ", ".join(f"{k}={v:.4f}" for k, v in eval_metrics.items()))
  return TrainResult(params, step, eval_metrics, eval_step, initial_eval_metrics,
                     train_metrics, False)
