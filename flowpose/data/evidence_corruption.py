"""Detector-like corruption of `cmu_evidence` batches and pixel sampling, in TensorFlow.

    batch = corrupt_batch(batch, seed, data_config)   # seed: [2] int64, e.g. (data seed, step)

Everything is vectorised over the batch and drawn with stateless ops from `seed`, so a batch's
corruption is a pure function of (the clean batch, seed): `flowpose.data.evidence` passes
(process seed, step) in training and (eval_seed, batch index) in evaluation.

What a 2D system gets wrong, as `config.data` knobs (`flowpose.data.evidence.default_config`):
* keypoints: Gaussian noise of `keypoint_noise_px` (px at the crop, per coordinate); with
  probability `keypoint_swap_prob` per example one left/right COCO pair is exchanged (the point
  labelled left wrist is the right one, and vice versa); each keypoint is dropped with
  probability `keypoint_drop_prob`. `confidence` = 0 for dropped or not visible keypoints,
  else `floor + (1 - floor) exp(-|noise|^2 / (2 (2 sigma)^2))` in (0, 1] (noisier = less sure,
  as a heatmap peak), `floor` = `confidence_floor`.
* part map: eroded (parts next to background become background) or dilated (background next to
  a part takes its largest neighbouring label), each with probability `part_morph_prob / 2`,
  by 1..`morph_max_px` 3x3 steps, each changing a random `morph_boundary_fraction` of the
  boundary pixels (ragged, as a segmenter's edges).
* mask: its own erosion/dilation (`mask_morph_prob`), then up to `mask_max_holes` rectangular
  holes (each with probability `mask_hole_prob`, sides `mask_hole_size` x R, centred on a
  person pixel).
Sampling (for the part-alignment and silhouette losses): `num_part_pixels` pixel centres of the
corrupted part map, evenly per part (weighted sampling without replacement, weights 1 / part
size, Efraimidis-Spirakis keys), and as many of the corrupted mask, uniformly; `*_valid` is
False where the map has fewer pixels.
"""

import ml_collections

# COCO-17 left/right pairs (left index first): eyes, ears, shoulders, ..., ankles.
COCO_LR_PAIRS = tuple((1 + 2 * i, 2 + 2 * i) for i in range(8))
NUM_KEYPOINTS = 17


def _tf():
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  return tf


def _uniform(tf, shape, seed):
  return tf.random.stateless_uniform(shape, seed, dtype=tf.float32)


def morph(labels, op, steps, seed, boundary_fraction: float = 1.0):
  """Per-example erosion (op -1) / dilation (op +1) of label maps, `steps` 3x3 passes each.

  Each pass changes a random `boundary_fraction` of the pixels it would change (a ragged
  boundary, as a segmenter's: at 64 px a full 1 px erosion wipes out 2 px wide forearms).

  Args:
    labels: [B, R, R] int32, 0 = background. op: [B] int32 in {-1, 0, 1}. steps: [B] int32.
    seed: [2] stateless seed. boundary_fraction: in [0, 1].
  Returns:
    [B, R, R] int32.
  """
  tf = _tf()
  max_steps = tf.reduce_max(tf.concat([steps, [0]], 0))

  def one_pass(i, x):
    flip = _uniform(tf, tf.shape(x), tf.random.experimental.stateless_fold_in(seed, i))
    flip = flip < boundary_fraction
    grid = x[..., None]
    dilated = tf.where(x == 0, tf.nn.max_pool2d(grid, 3, 1, "SAME")[..., 0], x)
    # A pixel survives erosion when its whole 3x3 neighbourhood is person (min pool of fg).
    inner = -tf.nn.max_pool2d(-tf.cast(grid > 0, tf.float32), 3, 1, "SAME")[..., 0]
    eroded = tf.where(inner > 0, x, tf.zeros_like(x))
    active = (i < steps)[:, None, None] & flip
    x = tf.where(active & (op == 1)[:, None, None], dilated, x)
    x = tf.where(active & (op == -1)[:, None, None], eroded, x)
    return i + 1, x

  _, out = tf.while_loop(lambda i, x: i < max_steps, one_pass, (tf.constant(0), labels))
  return out


def _morph_ops(tf, batch_size, prob, max_px, seed):
  """[B] op in {-1, 0, 1} (erode/none/dilate, each with prob/2) and [B] steps in 1..max_px
  (max_px = 0: no change)."""
  seeds = tf.random.experimental.stateless_split(seed, 2)
  u = _uniform(tf, [batch_size], seeds[0])
  prob = prob if int(max_px) >= 1 else 0.0
  op = tf.where(u < prob / 2, -1, tf.where(u < prob, 1, 0))
  steps = tf.random.stateless_uniform([batch_size], seeds[1], 1, max(int(max_px), 1) + 1,
                                      dtype=tf.int32)
  return op, steps


def sample_pixels(weights, num, seed):
  """Weighted sampling of pixels without replacement (Efraimidis-Spirakis), `num` per map.

  Args:
    weights: [B, R, R] float32 >= 0 (0 = never drawn). num: N. seed: [2].
  Returns:
    (pixels [B, N, 2] float32 centres (u, v) = (col + 0.5, row + 0.5), flat indices [B, N]
    int32, valid [B, N] bool).
  """
  tf = _tf()
  shape = tf.shape(weights)
  flat = tf.reshape(weights, [shape[0], -1])
  u = _uniform(tf, tf.shape(flat), seed)
  # key = u^(1/w): compare log(u) / w (u in [0, 1): log(0) = -inf only with zero probability).
  keys = tf.where(flat > 0, tf.math.log(tf.maximum(u, 1e-30)) / tf.maximum(flat, 1e-30),
                  tf.fill(tf.shape(flat), float("-inf")))
  values, index = tf.math.top_k(keys, k=num, sorted=False)
  width = shape[2]
  pixels = tf.stack([tf.cast(index % width, tf.float32) + 0.5,
                     tf.cast(index // width, tf.float32) + 0.5], -1)
  return pixels, index, values > float("-inf")


def _holes(tf, mask, config, seed):
  """[B, R, R] mask with random rectangular holes centred on person pixels."""
  size = tf.shape(mask)[1]
  batch = tf.shape(mask)[0]
  rows = tf.range(size)[None, :, None]
  cols = tf.range(size)[None, None, :]
  lo, hi = config.mask_hole_size
  holes = tf.zeros_like(mask, tf.bool)
  num_holes = int(config.mask_max_holes)
  if num_holes < 1:
    return mask
  for hole_seed in tf.unstack(tf.random.experimental.stateless_split(seed, num_holes)):
    s = tf.random.experimental.stateless_split(hole_seed, 3)
    active = _uniform(tf, [batch], s[0]) < config.mask_hole_prob
    _, centre, found = sample_pixels(tf.cast(mask > 0, tf.float32), 1, s[1])
    half = tf.cast(_uniform(tf, [batch, 2], s[2]) * (hi - lo) + lo, tf.float32) * tf.cast(
        size, tf.float32) / 2
    half = tf.cast(tf.math.ceil(half), tf.int32)
    r0, c0 = centre[:, 0] // size, centre[:, 0] % size
    inside = ((tf.abs(rows - r0[:, None, None]) < half[:, 0, None, None]) &
              (tf.abs(cols - c0[:, None, None]) < half[:, 1, None, None]))
    holes |= inside & (active & found[:, 0])[:, None, None]
  return tf.where(holes, tf.zeros_like(mask), mask)


def _corrupt_keypoints(tf, batch, config, seeds):
  keypoints, visible = batch["keypoints"], batch["visible"]
  size = tf.shape(keypoints)[0]
  sigma = float(config.keypoint_noise_px)
  noise = tf.random.stateless_normal(tf.shape(keypoints), seeds[0]) * sigma
  spread = 2.0 * max(sigma, 1e-6)
  floor = float(config.confidence_floor)
  confidence = floor + (1.0 - floor) * tf.exp(
      -tf.reduce_sum(noise**2, -1) / (2 * spread**2))
  noisy = keypoints + noise
  # One left/right pair exchanged in a `keypoint_swap_prob` fraction of the examples.
  swap = _uniform(tf, [size], seeds[1]) < config.keypoint_swap_prob
  pair = tf.random.stateless_uniform([size], seeds[2], 0, len(COCO_LR_PAIRS), dtype=tf.int32)
  left = 1 + 2 * pair
  index = tf.range(NUM_KEYPOINTS)[None, :]
  perm = tf.where(swap[:, None] & (index == left[:, None]), index + 1,
                  tf.where(swap[:, None] & (index == left[:, None] + 1), index - 1, index))
  noisy = tf.gather(noisy, perm, batch_dims=1)
  confidence = tf.gather(confidence, perm, batch_dims=1)
  seen = tf.gather(visible, perm, batch_dims=1) > 0
  kept = _uniform(tf, [size, NUM_KEYPOINTS], seeds[3]) >= config.keypoint_drop_prob
  confidence = tf.where(seen & kept, confidence, tf.zeros_like(confidence))
  return noisy, confidence, swap


def corrupt_batch(batch, seed, config: ml_collections.ConfigDict):
  """Corrupts a clean `cmu_evidence` batch and samples pixels (module docstring).

  Args:
    batch: dict of the stored fields with a leading [B] (keypoints [B, 17, 2], visible,
      part_map [B, R, R] uint8, mask, ...).
    seed: [2] int64 stateless seed.
    config: `config.data` (corruption knobs, num_part_pixels).

  Returns:
    The batch with keypoints / part_map / mask corrupted, `keypoints_clean`, `confidence`,
    `part_pixels [B, N, 2]`, `part_labels [B, N]` int32 (0..P-1, 0 where not valid),
    `part_valid`, `mask_pixels`, `mask_valid`, and `swapped [B]` bool (the example had a
    left/right exchange; for tests and statistics).
  """
  tf = _tf()
  seeds = tf.unstack(tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), 11))
  out = dict(batch)
  out["keypoints_clean"] = batch["keypoints"]
  out["keypoints"], out["confidence"], out["swapped"] = _corrupt_keypoints(
      tf, batch, config, seeds[:4])
  size = tf.shape(batch["part_map"])[0]
  labels = tf.cast(batch["part_map"], tf.int32)
  op, steps = _morph_ops(tf, size, config.part_morph_prob, config.morph_max_px, seeds[4])
  ragged = float(config.morph_boundary_fraction)
  labels = morph(labels, op, steps, seeds[9], ragged)
  mask = tf.cast(batch["mask"], tf.int32)
  op, steps = _morph_ops(tf, size, config.mask_morph_prob, config.morph_max_px, seeds[5])
  mask = _holes(tf, morph(mask, op, steps, seeds[10], ragged), config, seeds[6])
  out["part_map"] = tf.cast(labels, tf.uint8)
  out["mask"] = tf.cast(mask, tf.uint8)
  # Parts evenly: weight 1 / (pixels of the part) per pixel.
  counts = tf.cast(tf.math.bincount(tf.reshape(labels, [size, -1]), minlength=256,
                                    maxlength=256, axis=-1), tf.float32)  # [B, 256] (uint8)
  weights = tf.where(labels > 0, 1.0 / tf.maximum(tf.gather(counts, labels, batch_dims=1), 1.0),
                     0.0)
  num = int(config.num_part_pixels)
  out["part_pixels"], index, out["part_valid"] = sample_pixels(weights, num, seeds[7])
  picked = tf.gather(tf.reshape(labels, [size, -1]), index, batch_dims=1) - 1
  out["part_labels"] = tf.where(out["part_valid"], picked, tf.zeros_like(picked))
  out["mask_pixels"], _, out["mask_valid"] = sample_pixels(
      tf.cast(mask > 0, tf.float32), num, seeds[8])
  return out
