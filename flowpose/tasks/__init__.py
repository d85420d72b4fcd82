"""Training tasks plugged into `flowpose.train.trainer` by name (`config.task`).

The trainer (`train_and_evaluate(config, workdir)`) owns the loop, the device mesh, the
sharded jitted step (state donated), checkpoints, metrics, preemption and the NaN guard. A
task owns what differs per model. `get_task(config.task)` imports `flowpose.tasks.<task>`
(big_vision picks models the same way); a config without `task` trains the flow prior.

How to add a task: write `flowpose/tasks/<name>.py` with

    LOSS_TERMS = ("term_a", "term_b")        # config.loss_weights names exactly these
    CONFIG_FIELDS = ("model",)               # the task's own top-level config sections

    def validate_config(config) -> None      # raise ValueError naming the bad field
    def init(config, rng, example_batch) -> params
        # example_batch: `config.init_examples` training examples (the first batches of the
        # stream, host NumPy pytree). Called under `jax.eval_shape` too, so no side effects.
    def loss(params, batch, rng, config) -> (scalar, metrics)
        # Pure, jitted by the trainer. `rng` is already folded with the step. Compose with
        # `flowpose.losses.weighted_sum(terms, config.loss_weights)` and return every
        # unweighted term in `metrics` (the trainer logs them as `train/<term>`).
    def evaluate(params, dataset, config) -> {name: float}
        # `dataset`: iterable of eval batches already on the devices (sharded over the mesh's
        # "data" axis). Jit your own eval function (cache it per config).
    def input_pipeline(config, split, process_index, process_count, start_step=0)
        # -> tf.data.Dataset. split "train": infinite; element i is this process's share
        # (batch_size / process_count) of the batch of step start_step + i, a pure function
        # of (config.seed, step) -- `flowpose.data.poses.epoch_batches` does that for any
        # example stream. split "eval": finite, fixed-shape batches of eval_batch_size,
        # the same on every process.

and optionally `optimizer_labels(params)` (a pytree of "train" / "frozen" labels, see
`optax.multi_transform`) and `export(workdir, params, config) -> path` (written at the end
of training). Then `--config.task=<name>`; nothing in `flowpose/train` changes.
`tests/test_tasks.py` trains a linear-regression task defined in the test this way.
`register(name, task)` adds a task that lives outside this package (tests, plugins).
"""

import importlib
import pkgutil
from typing import Any, Dict

REQUIRED = ("LOSS_TERMS", "validate_config", "init", "loss", "evaluate", "input_pipeline")
_REGISTERED: Dict[str, Any] = {}


class UnknownTaskError(ValueError):
  """`config.task` names no task."""


def available() -> list:
  """Names of the tasks in this package and registered ones."""
  here = [m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_")]
  return sorted(set(here) | set(_REGISTERED))


def register(name: str, task: Any) -> None:
  """Makes `task` (a module or any object with the `REQUIRED` attributes) `config.task=name`."""
  _check(name, task)
  _REGISTERED[name] = task


def unregister(name: str) -> None:
  _REGISTERED.pop(name, None)


def _check(name: str, task: Any) -> None:
  missing = [a for a in REQUIRED if not hasattr(task, a)]
  if missing:
    raise UnknownTaskError(f"task {name!r} lacks {missing} (see flowpose.tasks docstring)")


def get_task(name: str) -> Any:
  """The task called `name` (`flowpose.tasks.<name>` or a registered one)."""
  if name in _REGISTERED:
    return _REGISTERED[name]
  if not isinstance(name, str) or not name.isidentifier() or name not in available():
    raise UnknownTaskError(f"config task: unknown task {name!r}; valid tasks: {available()}")
  task = importlib.import_module(f"{__name__}.{name}")
  _check(name, task)
  return task


class _Namespace:
  """Attributes from keywords; hashed by identity like a module (the trainer memoises on it)."""

  def __init__(self, **attributes):
    self.__dict__.update(attributes)


def namespace(**attributes) -> Any:
  """A task object from keyword arguments (for tasks defined in tests)."""
  return _Namespace(**attributes)
