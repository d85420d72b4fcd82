"""Trains the flow pose prior by maximum likelihood: `train_and_evaluate(config, workdir)`.

One jitted step over a 1-D device mesh ("data"): the batch is sharded over
devices, params and optimizer state replicated, the state donated. The loss is
the mean negative log-likelihood (nats per pose) plus any extra terms, composed
by `flowpose.losses.weighted_sum` with `config.loss_weights`.

Fault tolerance:
* Resume: on start the newest checkpoint in `workdir/checkpoints` is restored
  (fixed order: workdir checkpoint, else fresh data-dependent init). Batches
  are a pure function of `(seed, step)` (see `input_pipeline`), so a resumed
  run ends with exactly the parameters of an uninterrupted one.
* Preemption: SIGTERM sets a flag; the loop then writes a checkpoint of the
  current step and returns normally.
* Divergence: a step whose loss or gradient is not finite leaves the state
  unchanged (on device, so a NaN state can never be saved) and the loop stops
  with `NonFiniteLossError` naming the step; the last checkpoint is kept.
"""

import functools
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

# flowpose.prior.flow imports distrax (TFP) first: TFP fails if TensorFlow (which
# clu imports) came first.
from flowpose.prior import io as prior_io
from flowpose.prior import flow as prior_lib  # pylint: disable=g-bad-import-order
from flowpose import losses
from flowpose.train import checkpointing
from flowpose.train import config_lib
from flowpose.data import poses as pose_data
from clu import metric_writers  # pylint: disable=g-bad-import-order
from clu import periodic_actions


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
    params: the prior's params at `step`.
    step: number of updates applied.
    eval_nll: eval NLL (nats/pose) at the last evaluation.
    initial_eval_nll: eval NLL when this run started (fresh or resumed).
    train_metrics: the last logged (interval-averaged) train metrics.
    preempted: True if SIGTERM stopped the run early (checkpoint written).
  """
  params: Any
  step: int
  eval_nll: Optional[float]
  initial_eval_nll: Optional[float]
  train_metrics: dict
  preempted: bool


# ---------------------------------------------------------------------------
# Optimizer, loss and steps (pure functions).
# ---------------------------------------------------------------------------


def make_optimizer(config: ml_collections.ConfigDict):
  """Adam + warmup-cosine + global-norm clipping; the prior's stats frozen.

  Returns:
    `(tx, schedule)`.
  """
  opt = config.optimizer
  schedule = optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=opt.learning_rate,
      warmup_steps=opt.warmup_steps, decay_steps=config.num_train_steps,
      end_value=opt.learning_rate * opt.end_lr_factor)
  train_tx = optax.chain(optax.clip_by_global_norm(opt.grad_clip_norm),
                         optax.adam(schedule))
  # The standardisation stats are data, not parameters (prior.py).
  tx = optax.multi_transform({"train": train_tx, "frozen": optax.set_to_zero()},
                             {"stats": "frozen", "flow": "train"})
  return tx, schedule


def loss_terms(prior: prior_lib.FlowPrior, params: Any,
               poses: jax.Array) -> dict[str, jax.Array]:
  """Unweighted loss terms (every name in `config_lib.LOSS_TERMS`).

  Args:
    prior: the prior.
    params: its params.
    poses: `[B, D]` radians.

  Returns:
    `{"nll": mean -log p (nats/pose), "weight_l2": 0.5 * sum of squared flow
    params}`.
  """
  nll = -jnp.mean(prior.log_prob(params, poses))
  weight_l2 = 0.5 * sum(jnp.sum(jnp.square(p))
                        for p in jax.tree.leaves(params["flow"]))
  return {"nll": nll, "weight_l2": weight_l2}


def train_step(state: TrainState, poses: jax.Array, *,
               prior: prior_lib.FlowPrior, tx, schedule, weights: dict,
               input_noise: float, rng: jax.Array):
  """One update. Returns `(new_state, metrics)`; a non-finite step is a no-op."""
  if input_noise > 0:
    noise_rng = jax.random.fold_in(rng, state.step)
    poses = poses + input_noise * jax.random.normal(noise_rng, poses.shape)

  def loss_fn(params):
    terms = loss_terms(prior, params, poses)
    total, _ = losses.weighted_sum(terms, weights)
    return total, terms

  (loss, terms), grads = jax.value_and_grad(loss_fn, has_aux=True)(
      state.params)
  grad_norm = optax.global_norm(grads)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  new_state = TrainState(step=state.step + 1,
                         params=optax.apply_updates(state.params, updates),
                         opt_state=opt_state)
  finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
  # Select on device: a NaN update never reaches the state (nor a checkpoint).
  new_state = jax.tree.map(lambda new, old: jnp.where(finite, new, old),
                           new_state, state)
  metrics = {"loss": loss, "grad_norm": grad_norm,
             "learning_rate": schedule(state.step), "finite": finite, **terms}
  return new_state, metrics


def eval_step(params: Any, poses: jax.Array, weights: jax.Array, *,
              prior: prior_lib.FlowPrior):
  """Sum of -log p over real rows (`weights` 1) and their count."""
  nll = jnp.where(weights > 0, -prior.log_prob(params, poses), 0.0)
  return jnp.sum(nll), jnp.sum(weights)


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
      f"Training stopped: non-finite loss {float(loss)} / gradient norm "
      f"{float(grad_norm)} at step {step}. That update was not applied; the "
      f"last checkpoint is step {manager.latest_step()} in {manager.directory}."
      " Lower optimizer.learning_rate or check the data.")


def _mean_metrics(history: list) -> dict:
  history = jax.device_get(history)
  return {f"train/{k}": float(np.mean([h[k] for h in history]))
          for k in history[0] if k != "finite"}


def evaluate(eval_fn, params, *, data: np.ndarray, batch_size: int,
             sharding) -> float:
  """Mean NLL (nats/pose) over `data [M, D]` in fixed-size sharded batches."""
  total, count = 0.0, 0.0
  for poses, weights in pose_data.eval_batches(data, batch_size):
    poses = jax.device_put(poses, sharding)
    weights = jax.device_put(weights, sharding)
    nll_sum, n = jax.device_get(eval_fn(params, poses, weights))
    total, count = total + float(nll_sum), count + float(n)
  return total / count


# ---------------------------------------------------------------------------
# The training loop.
# ---------------------------------------------------------------------------


class _Programs(NamedTuple):
  """The prior and its jitted functions for one config and mesh."""
  prior: prior_lib.FlowPrior
  fresh_state: Any  # Unjitted (poses [N, D]) -> TrainState, for eval_shape.
  init_fn: Any      # Jitted fresh_state.
  step_fn: Any
  eval_fn: Any


@functools.lru_cache(maxsize=8)
def _build_programs(frozen: ml_collections.FrozenConfigDict,
                    mesh: jax.sharding.Mesh) -> _Programs:
  """Builds the step functions; memoised on the fields that define them.

  `frozen` holds only those fields (flow, optimizer, loss weights, ...), so
  repeated runs in one process (tests, sweeps, resume after an exception)
  reuse the compiled code instead of tracing and compiling again.
  """
  config = ml_collections.ConfigDict(frozen)
  prior = prior_lib.make_prior(config.flow)
  tx, schedule = make_optimizer(config)
  init_rng, train_rng = jax.random.split(jax.random.key(config.seed))
  replicated = jax.NamedSharding(mesh, jax.P())
  data_sharding = jax.NamedSharding(mesh, jax.P("data"))

  def fresh_state(poses):
    params = prior.init(init_rng, poses)
    return TrainState(jnp.zeros((), jnp.int32), params, tx.init(params))

  step_fn = jax.jit(
      functools.partial(
          train_step, prior=prior, tx=tx, schedule=schedule,
          weights=dict(config.loss_weights), input_noise=config.input_noise,
          rng=train_rng),
      in_shardings=(replicated, data_sharding),
      out_shardings=(replicated, replicated), donate_argnums=(0,))
  eval_fn = jax.jit(functools.partial(eval_step, prior=prior),
                    out_shardings=replicated)
  init_fn = jax.jit(fresh_state, out_shardings=replicated)
  return _Programs(prior, fresh_state, init_fn, step_fn, eval_fn)


def train_and_evaluate(config: ml_collections.ConfigDict,
                       workdir: str) -> TrainResult:
  """Trains the prior per `config`, writing checkpoints/metrics to `workdir`.

  Raises:
    ValueError: a bad config field (before anything is trained or written).
    NonFiniteLossError: the loss diverged (see the module docstring).
  """
  config_lib.validate_config(config)
  num_steps = config.num_train_steps

  # Set up mesh #
  mesh = jax.make_mesh((jax.device_count(),), ("data",),
                       axis_types=(jax.sharding.AxisType.Auto,))
  replicated = jax.NamedSharding(mesh, jax.P())
  data_sharding = jax.NamedSharding(mesh, jax.P("data"))
  programs = _build_programs(ml_collections.FrozenConfigDict({
      field: config[field] for field in (
          "seed", "num_train_steps", "flow", "optimizer", "loss_weights",
          "input_noise")}), mesh)

  # Data #
  data = pose_data.load_data(config.data, programs.prior.event_dim,
                                  chart=programs.prior.chart)
  local_batch = config.batch_size // jax.process_count()
  train_batches = pose_data.EpochBatches(
      data.train, local_batch, config.seed, jax.process_index())
  init_rows = np.random.default_rng((config.seed, 1)).permutation(
      data.train.shape[0])[:config.init_examples]
  init_poses = data.train[np.sort(init_rows)]
  if config.input_noise > 0:
    # The data-dependent init (standardisation, actnorm) must see the same jittered poses as
    # training: a DOF that is constant in the data would otherwise be scaled by 1/floor and
    # the jitter would arrive hundreds of standard deviations out (loss ~1e26 at step 0).
    init_poses = init_poses + config.input_noise * np.random.default_rng(
        (config.seed, 2)).standard_normal(init_poses.shape).astype(init_poses.dtype)

  # Restore or initialise #
  checkpoint_manager = checkpointing.create_manager(
      workdir, config.keep_checkpoints)
  abstract_state = jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=replicated),
      jax.eval_shape(programs.fresh_state, init_poses))
  state = checkpointing.restore_latest(checkpoint_manager, abstract_state)
  if state is None:
    state = programs.init_fn(init_poses)
    if jax.process_count() > 1:  # Hosts saw different shards: use host 0's.
      from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
      state = multihost_utils.broadcast_one_to_all(state)
    logging.info("Fresh init from %d poses.", init_poses.shape[0])
  else:
    logging.info("Resumed from checkpoint step %d.", int(state.step))
  start_step = int(state.step)
  if jax.process_index() == 0:
    prior_io.write_config(workdir, config)

  # Metrics and hooks #
  writer = metric_writers.create_default_writer(
      workdir, just_logging=jax.process_index() > 0)
  report_progress = periodic_actions.ReportProgress(
      num_train_steps=num_steps, writer=writer, every_steps=config.log_every)
  evaluate_now = functools.partial(evaluate, programs.eval_fn, data=data.eval,
                                   batch_size=config.eval_batch_size,
                                   sharding=data_sharding)
  eval_nll = initial_eval_nll = evaluate_now(state.params)
  writer.write_scalars(start_step, {"eval/nll": eval_nll})
  train_metrics, history, pending = {}, [], None

  # Train loop #
  try:
    with _SigtermFlag() as sigterm:
      for step in range(start_step, num_steps):
        if sigterm.requested:
          if pending is not None:
            _check_finite(*pending, checkpoint_manager)
          if checkpoint_manager.latest_step() != step:  # Not just saved.
            checkpointing.save(checkpoint_manager, step, state)
          checkpoint_manager.wait_until_finished()
          logging.warning("SIGTERM (preempted): saved checkpoint %d, "
                          "exiting.", step)
          return TrainResult(jax.device_get(state.params), step, eval_nll,
                             initial_eval_nll, train_metrics, True)
        with jax.profiler.StepTraceAnnotation("train", step_num=step):
          poses = jax.make_array_from_process_local_data(
              data_sharding, train_batches.batch(step))
          state, metrics = programs.step_fn(state, poses)
        # Check the previous step now that this one is queued, so the host
        # does not wait on the device every step.
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
          eval_nll = evaluate_now(state.params)
          writer.write_scalars(done, {"eval/nll": eval_nll})
        if done % config.checkpoint_every == 0 or is_last:
          _check_finite(*pending, checkpoint_manager)
          checkpointing.save(checkpoint_manager, done, state)
  finally:
    # Also on errors: finish the checkpoints already started (a crash after
    # a save returned must not lose it) and release the writer's files.
    checkpoint_manager.wait_until_finished()
    checkpoint_manager.close()
    writer.close()

  # Export #
  params = jax.device_get(state.params)
  if jax.process_index() == 0:
    path = prior_io.export_prior(workdir, params, config)
    logging.info("Wrote %s (eval NLL %.4f nats/pose).", path, eval_nll)
  return TrainResult(params, int(state.step), eval_nll, initial_eval_nll,
                     train_metrics, False)
