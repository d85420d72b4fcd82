"""Pseudo 3D labels for the weak regime: a weak network's refined fits of its own training examples.

    labels = make_pseudo_labels(workdir)     # {key, builder, pose_dofs, root_rotmat, ...}
    save(path, labels)                       # read back by `--config.data.pseudo_labels=path`

SPIN-style self-training (Kolotouros et al. 2019) with no 3D labels anywhere: the trained `weak`
network predicts each training example, the fitter refines that start on the example's 2D
evidence (`fitting.network_refine`; keypoints + parts, the fitter's priors), and the refined
pose, shape and camera become the example's 3D labels for the next training round
(`flowpose.data.evidence.load_pseudo_labels`: found examples get `has_3d`). The evidence is the
corrupted one the network trains on (corruption drawn from `data.eval_seed`, as evaluation), so
nothing cleaner than what the weak regime sees enters. The true 3D labels of the data are read
only for a diagnostic: how far the network and the pseudo-labels are from them
(`network_pa_mpjpe_mm`, `label_pa_mpjpe_mm`, stored beside the labels, never used to choose).
"""

import io
import time

from absl import logging
import jax
import ml_collections
import numpy as np

from flowpose import io_utils
from flowpose import metrics
from flowpose.data import evidence_pseudo
from flowpose.fitting import network_refine
from flowpose.models import predictor

_STRINGS = ("subject", "clip")


def frames_with_keys(data_config: ml_collections.ConfigDict, split: str, batch_size: int,
                     num_frames: int = 0, every: int = 1):
  """(`{field: [n, ...]}` of `tasks.regressor.BATCH_FIELDS`, keys [n] "subject/clip/frame/view")
  of `split` in file order with the evaluation corruption: every `every`-th example (from the
  first), the first `num_frames` of those (0 = all)."""
  from flowpose.data import evidence  # pylint: disable=g-import-not-at-top
  from flowpose.tasks import regressor as task  # pylint: disable=g-import-not-at-top
  chunks, keys = [], []
  for batch in evidence.eval_dataset(data_config, split, batch_size).as_numpy_iterator():
    keep = batch["weight"] > 0
    text = [np.char.decode(batch[k][keep].astype(bytes)) for k in _STRINGS]
    keys += [f"{s}/{c}/{f}/{v}" for s, c, f, v in zip(*text, batch["frame"][keep],
                                                       batch["view"][keep])]
    chunks.append({k: batch[k][keep] for k in task.BATCH_FIELDS if k in batch})
    if num_frames and len(keys) >= num_frames * every:
      break
  keys = keys[::every]
  stop = num_frames or len(keys)
  frames = {k: np.concatenate([c[k] for c in chunks])[::every][:stop] for k in chunks[0]}
  return frames, np.array(keys[:stop])


REFINEMENTS = ("labels", "benchmark")


def label_refine_config(steps: int, refinement: str = "labels") -> ml_collections.ConfigDict:
  """The pseudo-labels' refinement. "labels": `network_refine.refine_config` from the network
  beside one yaw-0 restart, the lowest loss kept, without the benchmark's anchors (pull to the
  network's z or 3D keypoints) or restart mean: the labels correct the network (session 10's
  rounds were measured so; it suits a network far from the truth, as `weak_2d`). "benchmark":
  the benchmark's `weak_refined` refinement (`refine_config`'s defaults: the network's z
  anchored, a yaw-180 restart, since session 16 the restarts' mean; with the mask; since session
  18 from the network's flip-averaged read; the benchmark's `weak_refined` also starts from
  the two reads it averages since session 19, `network_refine.NETWORK_STARTS`, the labels keep
  the one start their rounds were measured with). Session 15
  (then the best restart kept), the 9,512 training examples of the round-1 network (76.0 mm
  PA-MPJPE against the unused true 3D): labels 76.3 mm with "labels", 66.4 with "benchmark"
  (65 min instead of 12 on 2 cores)."""
  if refinement == "labels":
    return network_refine.refine_config(steps, (0.0,), pose_anchor=0.0, keypoints_anchor=0.0,
                                        restart_mean_temperature=0.0)
  if refinement == "benchmark":
    return network_refine.refine_config(steps)
  raise ValueError(f"refinement: expected one of {REFINEMENTS}, got {refinement!r}")


def make_pseudo_labels(workdir: str, *, split: str = "train", refine_steps: int = 150,
                       batch_size: int = 256, use_mask: bool = False, num_frames: int = 0,
                       manual_dir: str = "", refinement: str = "labels", every: int = 1) -> dict:
  """The pseudo-labels of `workdir`'s (a finished regressor run) `split` (module docstring).

  `refinement`: `label_refine_config`'s choice ("benchmark" always fits the mask, as the
  benchmark does). `every`: label every `every`-th example only (file order; the others stay
  2D-only in the next round: `regressor_base.PSEUDO_LABEL_EVERY`). `manual_dir`: the clip
  folder, if not the run's own `data.manual_dir`. Batches of `batch_size` frames (the last
  padded), progress logged with frames/s and the time left.
  Returns `{key [n], builder, pose_dofs [n, 50], root_rotmat [n, 3, 3], betas [n, S],
  transl [n, 3], joints3d [n, 17, 3], network_pa_mpjpe_mm, label_pa_mpjpe_mm}`.
  """
  from flowpose.data import evidence  # pylint: disable=g-import-not-at-top
  from flowpose.tasks import regressor as task  # pylint: disable=g-import-not-at-top
  if every < 1:
    raise ValueError(f"every: expected an int >= 1, got {every}")
  refine_config = label_refine_config(refine_steps, refinement)
  use_mask = use_mask or refinement == "benchmark"
  config, context, params = predictor.load_params(workdir)
  data_config = ml_collections.ConfigDict(config.data)
  if manual_dir:
    data_config.manual_dir = manual_dir
  frames, keys = frames_with_keys(data_config, split, batch_size, num_frames, every)
  num = len(keys)
  config.model.prior_workdir = f"{workdir}/{predictor.PRIOR_DIR}"
  # "benchmark": the benchmark's start too (the network's flip-averaged read).
  flip = refinement == "benchmark"
  predict = jax.jit(lambda p, b: task.predict_batch(p, b, config, flip_average=flip))
  labels = {k: [] for k in evidence_pseudo.PSEUDO_FIELDS}
  network_points = []
  start_time = time.time()
  for start in range(0, num, batch_size):
    batch = network_refine.pad_rows({k: v[start:start + batch_size] for k, v in frames.items()},
                                    batch_size)
    count = min(batch_size, num - start)
    out = jax.device_get(predict(params, batch))
    network_points.append(out["keypoints3d"][:count])
    result = network_refine.refine(context, batch, out, refine_config, use_mask)
    labels["pose_dofs"].append(np.asarray(result.pose_dofs)[:count])
    labels["root_rotmat"].append(np.asarray(result.rotmats)[:count, 0])
    labels["betas"].append(np.asarray(result.betas)[:count])
    labels["transl"].append(np.asarray(result.transl)[:count])
    labels["joints3d"].append(network_refine.posed_keypoints(context, result)[:count])
    done, seconds = start + count, time.time() - start_time
    logging.info("pseudo-labels %d/%d frames, %.1f frames/s, %.0f s left", done, num,
                 done / seconds, (num - done) * seconds / done)
  labels = {k: np.concatenate(v).astype(np.float32) for k, v in labels.items()}
  truth = frames["joints3d"]
  labels.update(key=keys, builder=np.array(evidence.builder_config_name(data_config)),
                network_pa_mpjpe_mm=np.float32(np.mean(metrics.pa_mpjpe(
                    np.concatenate(network_points), truth))),
                label_pa_mpjpe_mm=np.float32(np.mean(metrics.pa_mpjpe(labels["joints3d"],
                                                                      truth))))
  logging.info("pseudo-labels of %d frames; diagnostic vs the unused true 3D: network "
               "PA-MPJPE %.1f mm, pseudo-labels %.1f mm", num, labels["network_pa_mpjpe_mm"],
               labels["label_pa_mpjpe_mm"])
  return labels


def save(path: str, labels: dict) -> None:
  """Writes `labels` as one .npz, atomically (nothing partial is left behind)."""
  buffer = io.BytesIO()
  np.savez(buffer, **labels)
  io_utils.atomic_write(path, buffer.getvalue())
