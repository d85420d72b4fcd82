"""A small in-memory stand-in for `flowpose.data.evidence` (the `cmu_evidence` contract).

Until the real pipeline lands, the regressor's tests train on this: bodies posed by the flow
prior's samples (`decode(z)`, z ~ N(0, latent_std^2)), random shapes and cameras, evidence made
with the fitter's forward model (`reduced_body.pose_points` + `perspective_project`), a part map
and mask splatted from the full mesh's projected vertices (nearest vertex wins), light detector
corruption. Every field of the contract's batch elements is produced with its dtype and shape.

`install()` makes `from flowpose.data import evidence` return this module (tests only).
"""

import functools
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from flowpose import losses
from flowpose.body import model as body_lib
from flowpose.body.build import assets
from flowpose.data import poses
from flowpose.fitting import photo
from flowpose.fitting import reduced_body
from flowpose.geometry import camera
from flowpose.prior import registry


def install() -> None:
  """`flowpose.data.evidence` -> this module (the regressor task imports it lazily).

  Both the module table and the package attribute: once the real module was imported (another
  test file in the same run), `from flowpose.data import evidence` reads the attribute.
  `tests/test_regressor.py` puts the real module back after its tests.
  """
  import flowpose.data  # pylint: disable=g-import-not-at-top
  sys.modules["flowpose.data.evidence"] = sys.modules[__name__]
  flowpose.data.evidence = sys.modules[__name__]


def default_config() -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(dict(
      prior_workdir="", resolution=32, num_part_pixels=96, labelled_fraction=1.0,
      num_train=256, num_eval=64, latent_std=0.5, noise_px=0.5, drop_prob=0.1,
      eval_split="validation"))


@functools.lru_cache(maxsize=1)
def _body():
  model = assets.load_cc0_model()
  return model, reduced_body.make_fit_body(model, photo.body_rotmats_fn, 4)


@functools.lru_cache(maxsize=8)
def examples(frozen: ml_collections.FrozenConfigDict, split: str) -> dict:
  """`{field: [N, ...]}` numpy examples of `split` (deterministic per config and split)."""
  config = frozen
  num = config.num_train if split == "train" else config.num_eval
  rng = np.random.default_rng([int.from_bytes(split.encode(), "little") % 2**31, 7])
  r = int(config.resolution)
  model, body = _body()
  prior = registry.load("flow", config.prior_workdir)
  z = config.latent_std * rng.standard_normal((num, prior.space.dim)).astype(np.float32)
  dofs = np.asarray(jax.vmap(prior.space.decode, (None, 0))(prior.params, jnp.asarray(z)))
  betas = (0.7 * rng.standard_normal((num, model.num_betas))).astype(np.float32)
  yaw = rng.uniform(0, 360, num)
  pitch = np.deg2rad(rng.uniform(-20, 20, num))
  tilt = lambda a: np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
  root = np.stack([tilt(p) @ reduced_body.facing_camera_rotation(y)
                   for y, p in zip(yaw, pitch)]).astype(np.float32)
  focal = (r * rng.uniform(1.5, 3.0, num)).astype(np.float32)
  points = jax.vmap(reduced_body.pose_points, (None, 0, 0, 0, None, None))(
      body, jnp.asarray(dofs), jnp.asarray(root), jnp.asarray(betas), jnp.zeros(3), False)
  kp0 = np.asarray(points.keypoints)
  height = kp0[..., 1].max(-1) - kp0[..., 1].min(-1)
  depth = focal * height / (rng.uniform(0.55, 0.9, num) * r)
  offset = rng.uniform(-0.1, 0.1, (num, 2)) * height[:, None]
  centre = 0.5 * (kp0.max(1) + kp0.min(1))
  transl = (np.concatenate([offset, depth[:, None]], -1) - centre).astype(np.float32)
  joints3d = (kp0 + transl[:, None]).astype(np.float32)
  pp = np.full((num, 2), r / 2, np.float32)
  focal2 = np.stack([focal, focal], -1)
  keypoints = np.asarray(camera.perspective_project_np(joints3d, focal2, pp), np.float32)
  rotmats = jax.vmap(photo.body_rotmats_fn)(jnp.asarray(dofs), jnp.asarray(root))
  verts = np.asarray(jax.vmap(body_lib.forward, (None, 0, 0, 0))(
      model, rotmats, jnp.asarray(betas), jnp.asarray(transl)).vertices)
  labels = np.asarray(model.part_labels)
  part_map = np.zeros((num, r, r), np.uint8)
  out = {k: [] for k in ("part_pixels", "part_labels", "part_valid", "mask_pixels",
                         "mask_valid")}
  for b in range(num):
    uv = camera.perspective_project_np(verts[b], focal2[b], pp[b])
    col, row = np.floor(uv[:, 0]).astype(int), np.floor(uv[:, 1]).astype(int)
    inside = (col >= 0) & (row >= 0) & (col < r) & (row < r)
    order = np.argsort(-verts[b, :, 2])  # Far first: the nearest vertex is written last.
    order = order[inside[order]]
    part_map[b, row[order], col[order]] = labels[order] + 1
    pix, lab, valid = losses.sample_part_pixels(part_map[b].astype(np.int32) - 1,
                                                config.num_part_pixels, rng)
    mpix, _, mvalid = losses.sample_part_pixels(np.where(part_map[b] > 0, 0, -1),
                                                config.num_part_pixels, rng)
    for key, value in zip(out, (pix, lab, valid, mpix, mvalid)):
      out[key].append(value)
  visible = np.all((keypoints >= 0) & (keypoints < r), -1).astype(np.float32)
  noisy = keypoints + config.noise_px * rng.standard_normal(keypoints.shape).astype(np.float32)
  confidence = visible * (rng.uniform(size=visible.shape) > config.drop_prob) * rng.uniform(
      0.5, 1.0, visible.shape)
  has_3d = np.random.default_rng(1234).uniform(size=num) < config.labelled_fraction
  return {
      "keypoints": noisy, "visible": visible, "part_map": part_map,
      "mask": (part_map > 0).astype(np.uint8), "pose_dofs": dofs, "root_rotmat": root,
      "betas": betas, "transl": transl, "focal": focal, "joints3d": joints3d,
      "subject": np.array(["standin"] * num), "clip": np.array([split] * num),
      "frame": np.arange(num, dtype=np.int32), "view": np.zeros(num, np.int32),
      "confidence": confidence.astype(np.float32),
      "part_pixels": np.stack(out["part_pixels"]).astype(np.float32),
      "part_labels": np.maximum(np.stack(out["part_labels"]), 0).astype(np.int32),
      "part_valid": np.stack(out["part_valid"]),
      "mask_pixels": np.stack(out["mask_pixels"]).astype(np.float32),
      "mask_valid": np.stack(out["mask_valid"]), "has_3d": has_3d,
      "weight": np.ones(num, np.float32), "keypoints_clean": keypoints,
  }


def builder_config_name(data_config) -> str:
  """The stand-in's name for its data (pseudo-label files record it)."""
  return f"standin_r{data_config.resolution}"


def train_dataset(data_config, process_index, process_count, batch_size, seed, start_step=0):
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  data = examples(ml_collections.FrozenConfigDict(data_config), "train")
  num = len(data["weight"])
  share = {k: v[process_index::process_count] for k, v in data.items()}
  ds = tf.data.Dataset.from_tensor_slices(share)
  return poses.epoch_batches(ds, len(share["weight"]), batch_size,
                             poses.process_seed(seed, process_index), start_step)


def eval_dataset(data_config, split, batch_size):
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  data = examples(ml_collections.FrozenConfigDict(data_config), split)
  num = len(data["weight"])
  pad = (-num) % batch_size
  if pad:
    data = {k: np.concatenate([v, v[:pad]]) for k, v in data.items()}
    data["weight"][num:] = 0.0
  return tf.data.Dataset.from_tensor_slices(data).batch(batch_size, drop_remainder=True)
