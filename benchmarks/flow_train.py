r"""Flow prior training throughput: flowpose (JAX) vs normflows (PyTorch CPU).

    python -m benchmarks.flow_train --out results/flow_train.json [--seconds 5]

The model is the default-sized prior (`experiments/prior_cmu.py`): D = 50, 8 blocks of
actnorm + affine coupling (conditioner MLP 2 x 256, one network giving shift and log-scale)
+ a learned LU mixing layer. flowpose: kinematic masks, group-LU mixing, the trainer's own
jitted step (`trainer.train_step` with the prior task's loss: NLL, backward, global-norm clipping, Adam, non-finite
guard; state donated). normflows 1.7: the same blocks as `ActNorm`, `AffineCouplingBlock`
(channel split 25/25, `MLP([25, 256, 256, 50])`) and `LULinearPermute(50)` with a diagonal
Gaussian base, `forward_kld` + backward + `clip_grad_norm_` + `torch.optim.Adam`.

Throughput = poses per second at batch 512, one optimizer step per batch, synthetic
standardised-scale poses (`pose_data.synthetic_poses`). Timings: warm-up (incl.
compilation) excluded, `block_until_ready`, steps run for `--seconds` each, the two libraries
in the same process with the same thread count (`torch.set_num_threads(os.cpu_count())`;
XLA's CPU client uses one thread per core). Also flowpose `log_prob` and `sample`
throughput at batch 4096 (jitted). On a loaded machine the numbers are noisy; the ratio
(both measured in the same run, interleaved) is the more stable figure.
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

from flowpose import io_utils
from flowpose.data import poses as pose_data
from flowpose.tasks import prior as prior_task
from flowpose.train import trainer
from experiments import prior_cmu

# Defined when run as a script only: benchmarks.data_pipeline imports this module.
_FLAGS = {}


def _define_flags():
  _FLAGS["out"] = flags.DEFINE_string("out", None, "JSON results file.")
  _FLAGS["seconds"] = flags.DEFINE_float("seconds", 5.0, "Timed seconds per measurement.")

TRAIN_BATCH = 512
EVAL_BATCH = 4096


def _timed(step, seconds: float, min_steps: int = 3) -> float:
  """Calls per second of `step()` (which blocks) over ~`seconds`, after one warm-up call."""
  step()
  count, start = 0, time.perf_counter()
  while count < min_steps or time.perf_counter() - start < seconds:
    step()
    count += 1
  return count / (time.perf_counter() - start)


def flowpose_programs(config, data: np.ndarray, batch_size: int = TRAIN_BATCH):
  """Returns `(train_step_fn, log_prob_fn, sample_fn)`, each a blocking closure.

  The train step is the trainer's own (`trainer.train_step` with the prior task's loss and
  the trainer's optimizer), jitted with the state donated as in `train_and_evaluate`.
  """
  prior = prior_task.make_prior(config)
  tx, schedule = trainer.make_optimizer(config, prior_task.optimizer_labels)
  params = jax.jit(functools.partial(prior_task.init, config))(jax.random.key(0), data[:4096])
  state = [trainer.TrainState(jnp.zeros((), jnp.int32), params, tx.init(params))]
  loss_fn = lambda p, b, r: prior_task.loss(p, b, r, config)
  step_fn = jax.jit(functools.partial(
      trainer.train_step, loss_fn=loss_fn, tx=tx, schedule=schedule, rng=jax.random.key(1)),
                    donate_argnums=(0,))
  batch = jnp.asarray(data[:batch_size])

  def train_step():
    state[0], metrics = step_fn(state[0], batch)
    metrics["loss"].block_until_ready()

  log_prob = jax.jit(prior.log_prob)
  eval_batch = jnp.asarray(data[:EVAL_BATCH])
  sample = jax.jit(prior.sample, static_argnums=2)
  key = jax.random.key(2)
  return (train_step,
          lambda: log_prob(state[0].params, eval_batch).block_until_ready(),
          lambda: sample(state[0].params, key, EVAL_BATCH).block_until_ready())


def normflows_program(config, data: np.ndarray):
  """A blocking train-step closure of the same-sized normflows model."""
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


def run(seconds: float) -> dict:
  config = prior_cmu.get_config()
  config.input_noise = 0.0  # As before the task split: the step without jitter.
  data = pose_data.synthetic_poses(8192, config.flow.event_dim, 0, "train")
  fp_train, fp_log_prob, fp_sample = flowpose_programs(config, data)
  nf_train, torch = normflows_program(config, data)
  threads = os.cpu_count()
  torch.set_num_threads(threads)
  # Interleave the two trainers so that load changes hit both.
  fp_rates, nf_rates = [], []
  for _ in range(2):
    fp_rates.append(_timed(fp_train, seconds / 2))
    nf_rates.append(_timed(nf_train, seconds / 2))
  fp_steps, nf_steps = float(np.mean(fp_rates)), float(np.mean(nf_rates))
  return {
      "flowpose_samples_per_s": fp_steps * TRAIN_BATCH,
      "normflows_samples_per_s": nf_steps * TRAIN_BATCH,
      "ratio": fp_steps / nf_steps,
      "log_prob_per_s": _timed(fp_log_prob, seconds) * EVAL_BATCH,
      "sample_per_s": _timed(fp_sample, seconds) * EVAL_BATCH,
      "setup": {
          "train_batch": TRAIN_BATCH, "eval_batch": EVAL_BATCH,
          "flow": {k: (list(v) if isinstance(v, tuple) else v)
                   for k, v in config.flow.items()},
          "threads": threads, "seconds_per_measurement": seconds,
          "jax": jax.__version__, "torch": torch.__version__,
          "normflows": __import__("normflows").__version__,
          "backend": jax.default_backend(), "machine": platform.processor() or
          platform.machine(), "load_average": list(os.getloadavg()),
      },
  }


def main(argv):
  del argv
  out = pathlib.Path(_FLAGS["out"].value) if _FLAGS["out"].value else None
  if out:
    io_utils.require_output_path(out, "--out", is_dir=False)
  result = run(_FLAGS["seconds"].value)
  rows = [("train flowpose (batch 512)", result["flowpose_samples_per_s"]),
          ("train normflows (batch 512)", result["normflows_samples_per_s"]),
          ("log_prob flowpose (batch 4096)", result["log_prob_per_s"]),
          ("sample flowpose (batch 4096)", result["sample_per_s"])]
  print(f"{'measurement':<34}{'poses/s':>14}")
  for name, value in rows:
    print(f"{name:<34}{value:>14,.0f}")
  print(f"{'ratio flowpose / normflows':<34}{result['ratio']:>14.2f}")
  if out:
    io_utils.atomic_write(out, json.dumps(result, indent=2).encode())


if __name__ == "__main__":
  _define_flags()
  app.run(main)
