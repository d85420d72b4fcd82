"""Multi-process (multi-host) runs: `jax.distributed` start-up (Slurm, Cloud TPU VMs, by hand) and
the few host-side agreements the trainer needs between processes.

    info = distributed.initialize(cluster="auto")   # Before anything touches a JAX backend.
    # info.process_id / info.num_processes / info.how

How the processes are found (`cluster`):
* "auto" (the default): explicit `coordinator_address`/`num_processes`/`process_id` if given;
  else a Slurm job step with more than one task (`srun`: `SLURM_STEP_NODELIST`, `SLURM_NTASKS`
  > 1, `SLURM_PROCID`), for which JAX derives the coordinator (first node of the step, port from
  the job id) and, on GPUs, `local_device_ids = [SLURM_LOCALID]` (one process per GPU, every GPU
  of the node visible to every task: `--gres=gpu:N --ntasks-per-node=N`); else a multi-worker TPU
  slice announced in the environment (`TPU_WORKER_HOSTNAMES` or `MEGASCALE_COORDINATOR_ADDRESS`);
  else one process (nothing is initialised: a plain local run is unchanged).
* "slurm" / "tpu": require that environment (a Cloud TPU VM is detected by JAX from the GCE
  metadata server: `launch/cluster/tpu_vm.sh` passes `--cluster=tpu` on every worker).
* "explicit": the three values are required (`launch.main --coordinator_address=host:port
  --num_processes=N --process_id=i`).
* "none": never initialise (one process, whatever the environment says).

CPU collectives (a CPU-only cluster or the 2-process test on 127.0.0.1) go through gloo, set
here explicitly (`jax_cpu_collectives_implementation`; JAX 0.10's default is gloo too), so a
jitted step whose batch spans processes all-reduces its gradients across them.

Agreements (each the identity in one process, so a single-process run is unchanged):
`global_batch(local)` (the processes' shares of a batch, gathered in process order),
`any_process(flag)` (SIGTERM seen anywhere), `all_processes_enter(lock)` (process 0's workdir
lock; a refusal stops every process instead of leaving the others waiting in a collective).
"""

import contextlib
import dataclasses
import os
from typing import Callable, Optional, Sequence

import jax
import numpy as np

CLUSTERS = ("auto", "none", "explicit", "slurm", "tpu")
_SLURM_STEP_VARS = ("SLURM_JOB_ID", "SLURM_STEP_NODELIST", "SLURM_NTASKS", "SLURM_PROCID",
                    "SLURM_LOCALID")
_TPU_VARS = ("TPU_WORKER_HOSTNAMES", "MEGASCALE_COORDINATOR_ADDRESS")


class DistributedConfigError(ValueError):
  """The distributed flags or environment are inconsistent (the message names the flag)."""


@dataclasses.dataclass(frozen=True)
class DistributedInfo:
  """What `initialize` did: `how` is "single", "explicit", "slurm" or "tpu"."""
  how: str
  process_id: int
  num_processes: int


def slurm_tasks(environ=None) -> int:
  """Tasks of the current Slurm job step (`srun`), 0 outside one (`salloc`/`sbatch` shells)."""
  environ = os.environ if environ is None else environ
  if not all(v in environ for v in _SLURM_STEP_VARS):
    return 0
  try:
    return int(environ["SLURM_NTASKS"])
  except ValueError as e:
    raise DistributedConfigError(
        f"SLURM_NTASKS={environ['SLURM_NTASKS']!r}: expected an integer") from e


def tpu_multiworker(environ=None) -> bool:
  """Whether the environment announces a TPU slice of several workers."""
  environ = os.environ if environ is None else environ
  hosts = environ.get("TPU_WORKER_HOSTNAMES", "")
  return "," in hosts or bool(environ.get("MEGASCALE_COORDINATOR_ADDRESS"))


def resolve(cluster: str = "auto", coordinator_address: Optional[str] = None,
            num_processes: Optional[int] = None, process_id: Optional[int] = None,
            environ=None) -> str:
  """Which start-up applies: "single", "explicit", "slurm" or "tpu" (pure; see module doc).

  Raises:
    DistributedConfigError: an unknown `cluster`, explicit values incomplete or out of range,
      or a named environment that is absent.
  """
  environ = os.environ if environ is None else environ
  if cluster not in CLUSTERS:
    raise DistributedConfigError(f"--cluster={cluster!r}: expected one of {CLUSTERS}")
  explicit = {"--coordinator_address": coordinator_address, "--num_processes": num_processes,
              "--process_id": process_id}
  given = [k for k, v in explicit.items() if v is not None]
  if cluster == "none":
    if given:
      raise DistributedConfigError(f"--cluster=none with {', '.join(given)}: drop them or "
                                   "use --cluster=explicit")
    return "single"
  if given or cluster == "explicit":
    missing = [k for k, v in explicit.items() if v is None]
    if missing or cluster not in ("auto", "explicit"):
      raise DistributedConfigError(
          f"explicit multi-process start needs --coordinator_address, --num_processes and "
          f"--process_id together (missing: {', '.join(missing) or 'none'}) and --cluster=auto "
          f"or explicit (got {cluster})")
    if ":" not in coordinator_address:
      raise DistributedConfigError(
          f"--coordinator_address={coordinator_address!r}: expected host:port")
    if num_processes < 1 or not 0 <= process_id < num_processes:
      raise DistributedConfigError(
          f"--process_id={process_id}, --num_processes={num_processes}: expected "
          "0 <= process_id < num_processes")
    return "explicit"
  if cluster == "slurm" or (cluster == "auto" and slurm_tasks(environ) > 1):
    if slurm_tasks(environ) < 1:
      raise DistributedConfigError(
          "--cluster=slurm outside a Slurm job step: run under `srun` (needs "
          f"{', '.join(_SLURM_STEP_VARS)})")
    return "slurm"
  if cluster == "tpu" or (cluster == "auto" and tpu_multiworker(environ)):
    return "tpu"
  return "single"


def initialize(cluster: str = "auto", coordinator_address: Optional[str] = None,
               num_processes: Optional[int] = None, process_id: Optional[int] = None,
               local_device_ids: Optional[Sequence[int]] = None,
               initialization_timeout: int = 300) -> DistributedInfo:
  """Starts `jax.distributed` when the job has several processes (module doc); idempotent.

  Call it before any JAX computation or device query. Returns what was done.
  """
  how = resolve(cluster, coordinator_address, num_processes, process_id)
  if how == "single":
    return DistributedInfo("single", 0, 1)
  # Gradients of a batch spanning processes are all-reduced by XLA's CPU collectives on
  # CPU-only hosts; without an implementation such a program fails at run time.
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  if not jax.distributed.is_initialized():
    if how == "explicit":
      jax.distributed.initialize(coordinator_address, num_processes, process_id,
                                 local_device_ids=local_device_ids,
                                 initialization_timeout=initialization_timeout)
    else:  # JAX's own cluster detection (Slurm variables, the TPU metadata server).
      jax.distributed.initialize(local_device_ids=local_device_ids,
                                 initialization_timeout=initialization_timeout)
  return DistributedInfo(how, jax.process_index(), jax.process_count())


# ---------------------------------------------------------------------------
# Agreements between processes (identities in one process).
# ---------------------------------------------------------------------------


def _multihost_utils():
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  return multihost_utils


def global_batch(local):
  """This process's share `[b, ...]` of a batch -> the global batch `[P * b, ...]` (host arrays).

  Process-major, as `jax.make_array_from_process_local_data` lays a batch out over the mesh.
  """
  if jax.process_count() == 1:
    return local
  gathered = _multihost_utils().process_allgather(local)  # [P, b, ...] per leaf.
  return jax.tree.map(lambda x: np.reshape(np.asarray(x), (-1,) + x.shape[2:]), gathered)


def any_process(flag: bool) -> bool:
  """Whether `flag` is set on any process (a collective: every process must call it)."""
  if jax.process_count() == 1:
    return bool(flag)
  return bool(np.any(_multihost_utils().process_allgather(np.int32(bool(flag)))))


def stop_agreed(requested: bool, steps_done: int, every: int) -> bool:
  """Whether to stop now for SIGTERM: at once in one process; with several, all together.

  Each process gets its SIGTERM at another moment, and one that stopped to checkpoint while the
  others ran the next step would deadlock both collectives. So every `every` steps (counted from
  the run's start step, the same on all; each check is a tiny collective that waits for the step
  in flight) they stop together if any flag is set. A scheduler's grace period (Slurm's
  `--signal=TERM@60`) covers the few steps until the next check.
  """
  if jax.process_count() == 1:
    return bool(requested)
  return steps_done % every == 0 and any_process(requested)


@contextlib.contextmanager
def all_processes_enter(context, refused: Callable[[], Exception]):
  """Enters `context` (process 0's lock; a null context elsewhere); all learn if it failed.

  Raises on every process when process 0's `__enter__` raised: there the original error,
  elsewhere `refused()`.
  """
  if jax.process_count() == 1:
    with context:
      yield
    return
  utils = _multihost_utils()
  try:
    context.__enter__()
  except BaseException:
    utils.broadcast_one_to_all(np.int32(0))
    raise
  if not int(utils.broadcast_one_to_all(np.int32(1))):
    raise refused()
  try:
    yield
  finally:
    context.__exit__(None, None, None)
