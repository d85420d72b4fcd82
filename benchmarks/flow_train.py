r"""Flow prior training throughput: flowpose vs a plain-JAX RealNVP vs normflows (PyTorch CPU).

    python -m benchmarks.flow_train --out results/flow_train.json [--seconds 3] [--repeats 3]

The model is the default-sized prior of issue 15: D = 50, 8 blocks of actnorm + affine coupling
(conditioner MLP 2 x 256, one network giving shift and log-scale) + a learned LU mixing layer,
the default prior's alternating masks (`benchmark_config`). Three trainers, each timed on the
same batch of 512 standardised synthetic poses (`pose_data.synthetic_poses`), one optimizer
step per batch:
  * flowpose: the trainer's own jitted step (`trainer.train_step` with the prior task's loss:
    NLL, backward, global-norm clipping, Adam, non-finite guard; state donated);
  * plain: `benchmarks.realnvp_reference` (same D, depth, MLP widths and activation, no actnorm,
    LU or masks) through the same `trainer.train_step`: what the couplings alone cost in XLA;
  * normflows 1.7: `ActNorm`, `AffineCouplingBlock` (`MLP([25, 256, 256, 50])`) and
    `LULinearPermute(50)` with a diagonal Gaussian base, `forward_kld` + backward +
    `clip_grad_norm_` + `torch.optim.Adam`, `torch.set_num_threads(os.cpu_count())`; also on
    one thread, as a throttling check (see below).
Also `log_prob` and `sample` at batch 4096 (flowpose and plain, jitted), the FLOPs of each XLA
program (`cost_analysis`), the achieved GFLOP/s and the XLA f32 matmul ceiling (2048^3) of this
machine, all in the same process. And the honest bound of the targets
(`matmul_ceiling.flow_matmul_bound`): the flow's matmuls alone (same shapes and count, forward +
backward) + one fused Adam pass over a raveled parameter vector, train at 512 and forward at
4096; `targets` says whether 2x normflows and 150k log_prob poses/s are reachable at all here.

Timing: warm-up (compilation) excluded, `block_until_ready`, `--seconds` per measurement; the
sides are interleaved and the whole round is repeated `--repeats` times; the JSON holds every
round and the medians (ratios: median of the per-round ratios). Each measurement also records
the CPU time the process used per wall second ("cores busy").

Why `results/flow_train.json` once had normflows at 794 poses/s (30x below a quiet run): torch's
CPU ops run on OpenMP threads (MKL + libgomp here; `OPENBLAS_*` does not reach torch), whose
barriers spin-wait for every thread. With the 2 cores oversubscribed (load average 5-6 in that
run) one descheduled thread stalls every op of the other; XLA's thread pool does not wait like
that. The benchmark therefore records the thread/BLAS set-up of both sides and warns when a
side looks throttled: fewer cores busy than threads asked for, torch faster on one thread than
on all, or a load average above the core count.
"""

import os

# LU layers call LAPACK on tiny matrices: OpenBLAS threads only cost (see launch/main.py).
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

# pylint: disable=g-import-not-at-top,wrong-import-position
import functools
import json
import pathlib
import platform
import time

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import matmul_ceiling
from benchmarks import realnvp_reference
from flowpose import io_utils
from flowpose.data import poses as pose_data
from flowpose.tasks import prior as prior_task
from flowpose.train import trainer
from experiments import prior_cmu

# Defined when run as a script only: benchmarks.data_pipeline imports this module.
_FLAGS = {}


def _define_flags():
  _FLAGS["out"] = flags.DEFINE_string("out", None, "JSON results file.")
  _FLAGS["seconds"] = flags.DEFINE_float("seconds", 3.0, "Timed seconds per measurement.")
  _FLAGS["repeats"] = flags.DEFINE_integer("repeats", 3, "Rounds of all measurements.")

TRAIN_BATCH = 512
EVAL_BATCH = 4096
LOG_PROB_TARGET = 150_000.0  # Issue 15: log_prob poses/s at EVAL_BATCH.
ENV_VARS = ("OPENBLAS_NUM_THREADS", "OPENBLAS_CORETYPE", "OMP_NUM_THREADS", "MKL_NUM_THREADS",
            "OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME", "XLA_FLAGS",
            "TF_ENABLE_ONEDNN_OPTS", "JAX_PLATFORMS")


def benchmark_config():
  """The issue-15 benchmark model: the default prior with affine 2 x 256 couplings, no jitter."""
  config = prior_cmu.get_config()
  config.input_noise = 0.0  # As before the task split: the step without jitter.
  config.flow.coupling = "affine"
  config.flow.hidden_sizes = (256, 256)
  # The reference size D = 50 (the prior's default chart is now euler_free, D = 46):
  # the 50-DOF chart keeps the figures comparable with earlier runs and the baselines.
  config.flow.chart = "euler_dofs"
  return config


def _timed(step, seconds: float, min_steps: int = 3) -> float:
  """Calls per second of `step()` (which blocks) over ~`seconds`, after one warm-up call."""
  return _timed_cpu(step, seconds, min_steps)[0]


def _timed_cpu(step, seconds: float, min_steps: int = 3) -> tuple[float, float]:
  """`(calls per second, process CPU seconds per wall second)` of `step()`, warm-up excluded."""
  step()
  count, start, cpu = 0, time.perf_counter(), time.process_time()
  while count < min_steps or time.perf_counter() - start < seconds:
    step()
    count += 1
  wall = time.perf_counter() - start
  return count / wall, (time.process_time() - cpu) / wall


def _flops(jitted, *args) -> float:
  """XLA's FLOP count of one call of `jitted(*args)` (cost analysis of the compiled program)."""
  cost = jitted.lower(*args).compile().cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float(cost.get("flops", float("nan")))


def _train_program(loss_fn, params, config, labels, batch):
  """Blocking closure of the trainer's jitted, donated step, and its FLOPs per call."""
  tx, schedule = trainer.make_optimizer(config, labels)
  state = [trainer.TrainState(jnp.zeros((), jnp.int32), params, tx.init(params))]
  step_fn = jax.jit(functools.partial(
      trainer.train_step, loss_fn=loss_fn, tx=tx, schedule=schedule, rng=jax.random.key(1)),
                    donate_argnums=(0,))
  flops = _flops(step_fn, state[0], batch)

  def train_step():
    state[0], metrics = step_fn(state[0], batch)
    metrics["loss"].block_until_ready()

  return train_step, state, flops


def flowpose_programs(config, data: np.ndarray, batch_size: int = TRAIN_BATCH,
                      with_flops: bool = False):
  """Returns `(train_step_fn, log_prob_fn, sample_fn)`, each a blocking closure.

  The train step is the trainer's own (`trainer.train_step` with the prior task's loss and
  the trainer's optimizer), jitted with the state donated as in `train_and_evaluate`. With
  `with_flops`, also `{"train", "log_prob", "sample"}` FLOPs per call.
  """
  prior = prior_task.make_prior(config)
  params = jax.jit(functools.partial(prior_task.init, config))(jax.random.key(0), data[:4096])
  loss_fn = lambda p, b, r: prior_task.loss(p, b, r, config)
  train_step, state, train_flops = _train_program(
      loss_fn, params, config, prior_task.optimizer_labels, jnp.asarray(data[:batch_size]))
  log_prob = jax.jit(prior.log_prob)
  eval_batch = jnp.asarray(data[:EVAL_BATCH])
  sample = jax.jit(prior.sample, static_argnums=2)
  key = jax.random.key(2)
  programs = (train_step,
              lambda: log_prob(state[0].params, eval_batch).block_until_ready(),
              lambda: sample(state[0].params, key, EVAL_BATCH).block_until_ready())
  if not with_flops:
    return programs
  return programs, {"train": train_flops, "log_prob": _flops(log_prob, params, eval_batch),
                    "sample": _flops(sample, params, key, EVAL_BATCH)}


def reference_programs(config, data: np.ndarray):
  """The plain RealNVP's `(train_step_fn, log_prob_fn, sample_fn)` and FLOPs per call."""
  flow = config.flow
  x = (data - data.mean(0)) / data.std(0)  # Standardised as flowpose's input is.
  params = realnvp_reference.init(jax.random.key(0), flow.event_dim, flow.num_layers,
                                  tuple(flow.hidden_sizes))
  loss_fn = lambda p, b, r: (-jnp.mean(realnvp_reference.log_prob(p, b)), {})
  train_step, state, train_flops = _train_program(
      loss_fn, params, config, None, jnp.asarray(x[:TRAIN_BATCH]))
  log_prob = jax.jit(realnvp_reference.log_prob)
  sample = jax.jit(lambda p, k: realnvp_reference.forward(
      p, jax.random.normal(k, (EVAL_BATCH, flow.event_dim))))
  eval_batch, key = jnp.asarray(x[:EVAL_BATCH]), jax.random.key(2)
  return ((train_step,
           lambda: log_prob(state[0].params, eval_batch).block_until_ready(),
           lambda: sample(state[0].params, key).block_until_ready()),
          {"train": train_flops, "log_prob": _flops(log_prob, params, eval_batch),
           "sample": _flops(sample, params, key)})


def normflows_program(config, data: np.ndarray):
  """A blocking train-step closure of the same-sized normflows model, and `torch`."""
  import normflows as nf
  import torch
  dim, hidden = config.flow.event_dim, list(config.flow.hidden_sizes)
  half = dim // 2
  flows = []
  for _ in range(config.flow.num_layers):
    # normflows lists flows in the sampling direction; order within a block does not
    # change the cost.
    flows.append(nf.flows.ActNorm(dim))
    flows.append(nf.flows.AffineCouplingBlock(
        nf.nets.MLP([half] + hidden + [2 * (dim - half)], init_zeros=True)))
    flows.append(nf.flows.LULinearPermute(dim))
  model = nf.NormalizingFlow(nf.distributions.DiagGaussian(dim, trainable=False), flows)
  opt = torch.optim.Adam(model.parameters(), lr=config.optimizer.learning_rate)
  # Standardised like flowpose's input, so both see well-scaled data.
  x = torch.tensor((data - data.mean(0)) / data.std(0))
  batch = x[:TRAIN_BATCH]
  model.forward_kld(x[:4096])  # Data-dependent ActNorm init, as flowpose's.

  def train_step():
    opt.zero_grad(set_to_none=True)
    loss = model.forward_kld(batch)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), config.optimizer.grad_clip_norm)
    opt.step()

  return train_step, torch


def thread_setup(torch) -> dict:
  """The BLAS/thread set-up of both sides (what decides their speed besides the code)."""
  cores = os.cpu_count()
  affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else cores
  return {
      "cpu_count": cores, "affinity_cores": affinity,
      "env": {k: os.environ.get(k) for k in ENV_VARS},
      "torch_threads": torch.get_num_threads(),
      "torch_interop_threads": torch.get_num_interop_threads(),
      "torch_parallel_backend": next((line.split(":", 1)[1].strip() for line in
                                      torch.__config__.parallel_info().splitlines()
                                      if "parallel backend" in line), None),
      "torch_blas": ("mkl" if torch.backends.mkl.is_available() else "other"),
      "jax_backend": jax.default_backend(), "jax_devices": jax.device_count(),
  }


def _warnings(result: dict) -> list[str]:
  """Why a side may look slower than the code makes it (see the module doc)."""
  setup, out = result["setup"], []
  cores = setup["threads"]["cpu_count"]
  load = max(setup["load_average_before"][0], setup["load_average_after"][0])
  if load > 0.75 * cores:
    out.append(f"machine loaded: 1-min load average up to {load:.1f} on {cores} cores; "
               "absolute rates are low and ratios noisier than on a quiet machine")
  if max(result["fraction_of_ceiling"].values()) > 1 or load > 0.75 * cores:
    out.append(f"the matmul ceiling ({result['matmul_ceiling_gflop_per_s']:.0f} GFLOP/s) was "
               "measured while the machine was loaded: fractions of it are meaningless here")
  busy = result["cores_busy"]
  for side in ("flowpose", "plain", "normflows"):
    if busy[side] < 0.5 * min(cores, 2):
      out.append(f"{side} looks throttled: {busy[side]:.2f} cores busy while it ran "
                 f"({cores} available)")
  torch_threads = setup["threads"]["torch_threads"]
  if torch_threads < cores:
    out.append(f"torch uses {torch_threads} threads of {cores} cores")
  train = result["train_poses_per_s"]
  if torch_threads > 1 and train["normflows_1_thread"] > 1.1 * train["normflows"]:
    out.append(f"normflows is faster on 1 thread ({train['normflows_1_thread']:,.0f}) than on "
               f"{torch_threads} ({train['normflows']:,.0f} poses/s): its OpenMP threads are "
               "oversubscribed by other load (the cause of the old 794 poses/s figure)")
  if os.environ.get("OPENBLAS_CORETYPE"):
    out.append(f"OPENBLAS_CORETYPE={os.environ['OPENBLAS_CORETYPE']} (numpy/LAPACK kernels "
               "pinned to a core type; torch uses MKL, XLA its own kernels)")
  return out


def _median(values) -> float:
  return float(np.median(np.asarray(values, np.float64)))


def run(seconds: float, repeats: int = 3) -> dict:
  """Every measurement of the module doc; returns the JSON-ready results."""
  config = benchmark_config()
  load_before = list(os.getloadavg())
  data = pose_data.synthetic_poses(8192, config.flow.event_dim, 0, "train")
  fp_programs, fp_flops = flowpose_programs(config, data, with_flops=True)
  ref_programs, ref_flops = reference_programs(config, data)
  bound_programs, bound_flops = matmul_ceiling.flow_matmul_bound(config.flow, TRAIN_BATCH,
                                                                 EVAL_BATCH)
  nf_train, torch = normflows_program(config, data)
  threads = os.cpu_count()
  torch.set_num_threads(threads)
  ceiling = matmul_ceiling.matmul_ceiling()
  study = matmul_ceiling.ceiling_study(torch)
  rounds = []
  for _ in range(repeats):
    row = {}
    # Interleaved so that load changes hit every side.
    for name, (train, log_prob, sample) in (("flowpose", fp_programs), ("plain", ref_programs)):
      row[f"{name}_train"] = _timed_cpu(train, seconds)
      row[f"{name}_log_prob"] = _timed_cpu(log_prob, seconds / 2)
      row[f"{name}_sample"] = _timed_cpu(sample, seconds / 2)
    row["matmul_bound_train"] = _timed_cpu(bound_programs[0], seconds)
    row["matmul_bound_log_prob"] = _timed_cpu(bound_programs[1], seconds / 2)
    row["normflows_train"] = _timed_cpu(nf_train, seconds)
    torch.set_num_threads(1)
    row["normflows_1_thread_train"] = _timed_cpu(nf_train, seconds / 2)
    torch.set_num_threads(threads)
    rounds.append(row)

  def rate(key, batch):
    return _median([r[key][0] * batch for r in rounds])

  def ratio(a, b):
    return _median([r[a][0] / r[b][0] for r in rounds])

  train = {"flowpose": rate("flowpose_train", TRAIN_BATCH),
           "plain": rate("plain_train", TRAIN_BATCH),
           "normflows": rate("normflows_train", TRAIN_BATCH),
           "normflows_1_thread": rate("normflows_1_thread_train", TRAIN_BATCH),
           "matmul_bound": rate("matmul_bound_train", TRAIN_BATCH)}
  gflops = {f"{side}_{prog}": flops[prog] / 1e9
            for side, flops in (("flowpose", fp_flops), ("plain", ref_flops),
                                ("matmul_bound", bound_flops)) for prog in flops}
  achieved = {key: value * _median([r[key][0] for r in rounds]) for key, value in gflops.items()}
  log_prob_bound = rate("matmul_bound_log_prob", EVAL_BATCH)
  result = {
      "train_poses_per_s": train,
      "ratios": {"flowpose_vs_normflows": ratio("flowpose_train", "normflows_train"),
                 "flowpose_vs_plain": ratio("flowpose_train", "plain_train"),
                 "plain_vs_normflows": ratio("plain_train", "normflows_train"),
                 "log_prob_flowpose_vs_plain": ratio("flowpose_log_prob", "plain_log_prob"),
                 "flowpose_vs_matmul_bound": ratio("flowpose_train", "matmul_bound_train"),
                 "matmul_bound_vs_normflows": ratio("matmul_bound_train", "normflows_train")},
      # Issue 15's targets against the bound (`matmul_ceiling.flow_matmul_bound`: the flow's
      # matmuls alone + one Adam pass): below the target, the target is out of reach here.
      "targets": {
          "train_2x_normflows_poses_per_s": 2 * train["normflows"],
          "train_matmul_bound_poses_per_s": train["matmul_bound"],
          "train_2x_normflows_reachable": train["matmul_bound"] >= 2 * train["normflows"],
          "log_prob_target_poses_per_s": LOG_PROB_TARGET,
          "log_prob_matmul_bound_poses_per_s": log_prob_bound,
          "log_prob_target_reachable": log_prob_bound >= LOG_PROB_TARGET},
      "log_prob_poses_per_s": {"flowpose": rate("flowpose_log_prob", EVAL_BATCH),
                               "plain": rate("plain_log_prob", EVAL_BATCH),
                               "matmul_bound": log_prob_bound},
      "sample_poses_per_s": {"flowpose": rate("flowpose_sample", EVAL_BATCH),
                             "plain": rate("plain_sample", EVAL_BATCH)},
      "gflop_per_call": gflops,
      "gflop_per_s": achieved,
      "matmul_ceiling_gflop_per_s": ceiling,
      "matmul_ceiling_study": study,
      "fraction_of_ceiling": {k: v / ceiling for k, v in achieved.items()},
      "cores_busy": {side: _median([r[f"{side}_train"][1] for r in rounds])
                     for side in ("flowpose", "plain", "normflows")},
      "rounds": [{k: {"calls_per_s": v[0], "cores_busy": v[1]} for k, v in r.items()}
                 for r in rounds],
      "setup": {
          "train_batch": TRAIN_BATCH, "eval_batch": EVAL_BATCH,
          "flow": {k: (list(v) if isinstance(v, tuple) else v) for k, v in config.flow.items()},
          "threads": thread_setup(torch), "seconds_per_measurement": seconds,
          "repeats": repeats, "jax": jax.__version__, "torch": torch.__version__,
          "normflows": __import__("normflows").__version__,
          "machine": platform.processor() or platform.machine(),
          "load_average_before": load_before, "load_average_after": list(os.getloadavg()),
      },
  }
  result["warnings"] = _warnings(result)
  # The keys of the first edition, for readers of older results.
  result.update(flowpose_samples_per_s=train["flowpose"],
                normflows_samples_per_s=train["normflows"],
                ratio=result["ratios"]["flowpose_vs_normflows"],
                log_prob_per_s=result["log_prob_poses_per_s"]["flowpose"],
                sample_per_s=result["sample_poses_per_s"]["flowpose"])
  return result


def main(argv):
  del argv
  out = pathlib.Path(_FLAGS["out"].value) if _FLAGS["out"].value else None
  if out:
    io_utils.require_output_path(out, "--out", is_dir=False)
  if _FLAGS["repeats"].value < 1 or not _FLAGS["seconds"].value > 0:
    raise app.UsageError("--repeats must be >= 1 and --seconds > 0")
  result = run(_FLAGS["seconds"].value, _FLAGS["repeats"].value)
  train, ratios = result["train_poses_per_s"], result["ratios"]
  rows = [("train flowpose (batch 512)", train["flowpose"], "flowpose_train"),
          ("train plain JAX RealNVP", train["plain"], "plain_train"),
          ("train matmul bound (same shapes)", train["matmul_bound"], "matmul_bound_train"),
          ("train normflows", train["normflows"], None),
          ("train normflows, 1 thread", train["normflows_1_thread"], None),
          ("log_prob flowpose (batch 4096)", result["log_prob_poses_per_s"]["flowpose"],
           "flowpose_log_prob"),
          ("log_prob plain", result["log_prob_poses_per_s"]["plain"], "plain_log_prob"),
          ("log_prob matmul bound", result["log_prob_poses_per_s"]["matmul_bound"],
           "matmul_bound_log_prob"),
          ("sample flowpose (batch 4096)", result["sample_poses_per_s"]["flowpose"],
           "flowpose_sample"),
          ("sample plain", result["sample_poses_per_s"]["plain"], "plain_sample")]
  print(f"medians of {result['setup']['repeats']} rounds; XLA matmul ceiling "
        f"{result['matmul_ceiling_gflop_per_s']:.0f} GFLOP/s")
  print(f"{'measurement':<34}{'poses/s':>12}{'GFLOP/s':>10}{'of ceiling':>12}")
  for name, value, key in rows:
    extra = (f"{result['gflop_per_s'][key]:>10.1f}{result['fraction_of_ceiling'][key]:>12.1%}"
             if key else "")
    print(f"{name:<34}{value:>12,.0f}{extra}")
  for name, value in ratios.items():
    print(f"{'ratio ' + name:<34}{value:>12.2f}")
  for name, value in result["targets"].items():
    print(f"{'target ' + name:<50}{value!s:>12}" if isinstance(value, bool) else
          f"{'target ' + name:<50}{value:>12,.0f}")
  for warning in result["warnings"]:
    print(f"WARNING: {warning}")
  if out:
    io_utils.atomic_write(out, json.dumps(result, indent=2).encode())


if __name__ == "__main__":
  _define_flags()
  app.run(main)
