"""The reconstruction network: 2D evidence maps -> (pose, shape, orientation, camera).

After HMR (Kanazawa et al. 2018) and Zanfir et al. (ECCV 2020): a convolutional encoder over
evidence maps built from the batch (`evidence_maps`), then an iterative regression head with
error feedback that refines a parameter vector `theta` from a fixed start over
`num_iterations` steps: `theta_{i+1} = theta_i + MLP([features, theta_i])`.

`theta` = [pose (D), betas (S), orient (6), camera (3)] per example:
  pose    the flow latent `z` (head "flow": the pose is the frozen prior's bijector applied to
          z) or the DOFs themselves (head "dofs": the ablation without the flow; the prior is
          then only a penalty in the loss)
  betas   shape coefficients
  orient  global orientation of the body in the camera frame, 6D (first two columns of R)
  camera  weak perspective `(log s, tx, ty)` in crop-normalised units (the crop spans [-1, 1]),
          turned into a camera-frame root position by `camera_to_root` (see there).

The evidence channels come from `inputs` (any of "keypoints", "parts", "mask"), so an RGB
backbone can be added as one more input later. Everything is pure Flax linen; shapes follow
`[B, ...]`.
"""

from typing import Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

INPUTS = ("keypoints", "parts", "mask")
POSE_HEADS = ("flow", "dofs")
# Weak-perspective scale the head starts from: a 1.7 m body spans ~75% of the crop.
INITIAL_SCALE = 0.9


def num_channels(inputs: Sequence[str], num_keypoints: int, num_parts: int) -> int:
  """Channels of `evidence_maps` for the `inputs`."""
  sizes = {"keypoints": num_keypoints, "parts": num_parts, "mask": 1}
  return sum(sizes[name] for name in inputs)


def evidence_maps(batch: dict, *, resolution: int, num_parts: int, inputs: Sequence[str],
                  heatmap_sigma: float) -> jax.Array:
  """The encoder input `[B, R, R, C]` built from evidence fields (jnp, jittable).

  Args:
    batch: `keypoints [B, K, 2]` pixels (NaN allowed where confidence is 0),
      `confidence [B, K]`, `part_map [B, R, R]` uint8 (0 = background, 1..P = part + 1),
      `mask [B, R, R]` uint8; only the fields `inputs` name are read.
    resolution: R.
    num_parts: P.
    inputs: which channel groups, in order: "keypoints" (K Gaussian heatmaps, peak =
      confidence), "parts" (P one-hot part maps), "mask" (1 channel).
    heatmap_sigma: heatmap standard deviation in pixels.

  Returns:
    `[B, R, R, C]` float32.
  """
  centres = jnp.arange(resolution, dtype=jnp.float32) + 0.5  # Pixel centres (corner origin).
  maps = []
  for name in inputs:
    if name == "keypoints":
      conf = jnp.asarray(batch["confidence"], jnp.float32)
      kp = jnp.asarray(batch["keypoints"], jnp.float32)
      valid = (conf > 0) & jnp.all(jnp.isfinite(kp), -1)
      kp = jnp.where(valid[..., None], kp, -1e3)  # Far away: an all-zero heatmap.
      du = jnp.square(centres[None, None, :] - kp[..., 0:1])  # [B, K, R] along u (columns).
      dv = jnp.square(centres[None, None, :] - kp[..., 1:2])  # [B, K, R] along v (rows).
      heat = jnp.exp(-(dv[..., :, None] + du[..., None, :]) / (2 * heatmap_sigma ** 2))
      heat = heat * jnp.where(valid, conf, 0.0)[..., None, None]
      maps.append(jnp.moveaxis(heat, 1, -1))  # [B, R, R, K]
    elif name == "parts":
      labels = jnp.asarray(batch["part_map"], jnp.int32)
      maps.append(jax.nn.one_hot(labels - 1, num_parts, dtype=jnp.float32))  # 0 -> all zero.
    elif name == "mask":
      maps.append(jnp.asarray(batch["mask"], jnp.float32)[..., None])
    else:
      raise ValueError(f"model.inputs: unknown input {name!r}; expected among {INPUTS}")
  return jnp.concatenate(maps, axis=-1)


class ThetaLayout:
  """Slices of the head's parameter vector `theta [B, T]` (static)."""

  def __init__(self, pose_dim: int, num_betas: int):
    self.pose_dim, self.num_betas = pose_dim, num_betas
    self.sizes = (("pose", pose_dim), ("betas", num_betas), ("orient", 6), ("camera", 3))
    self.dim = sum(size for _, size in self.sizes)

  def split(self, theta: jax.Array) -> dict:
    """`theta [..., T]` -> `{pose [..., D], betas [..., S], orient [..., 6], camera [..., 3]}`."""
    out, start = {}, 0
    for name, size in self.sizes:
      out[name] = theta[..., start:start + size]
      start += size
    return out

  def join(self, parts: dict) -> jax.Array:
    return jnp.concatenate([jnp.asarray(parts[name], jnp.float32) for name, _ in self.sizes],
                           axis=-1)


def initial_theta(layout: ThetaLayout, pose_init: jax.Array) -> jax.Array:
  """`[T]` start of the iterations: `pose_init [D]`, mean shape, upright body facing the camera
  (body Y up / +Z forward -> camera y down / z forward: R = diag(1, -1, -1)), centred, scale
  `INITIAL_SCALE`."""
  facing = np.diag([1.0, -1.0, -1.0])
  return layout.join({"pose": pose_init, "betas": np.zeros(layout.num_betas),
                      "orient": np.concatenate([facing[:, 0], facing[:, 1]]),
                      "camera": np.array([np.log(INITIAL_SCALE), 0.0, 0.0])})


def camera_to_root(camera: jax.Array, focal: jax.Array, resolution: int) -> jax.Array:
  """Weak-perspective camera -> camera-frame position of the body's root joint (metres).

  The head predicts `(log s, tx, ty)` such that a point `X` (camera frame, relative to the
  root) lands at crop-normalised coordinates `s (X_xy + t)`, i.e. pixels
  `R/2 + (R/2) s (X_xy + t)`. A pinhole with focal `f` and principal point `(R/2, R/2)` gives
  the same for points near the root when the root sits at `(tx, ty, 2 f / (R s))`.

  Args:
    camera: `[..., 3]` `(log s, tx, ty)`.
    focal: `[...]` focal length of the crop (pixels).
    resolution: R.

  Returns:
    `[..., 3]` root position.
  """
  scale = jnp.exp(camera[..., 0])
  depth = 2.0 * focal / (resolution * scale)
  return jnp.concatenate([camera[..., 1:3], depth[..., None]], axis=-1)


def root_to_camera(root: jax.Array, focal: jax.Array, resolution: int) -> jax.Array:
  """Inverse of `camera_to_root` (`[..., 3]` -> `[..., 3]`)."""
  log_scale = jnp.log(2.0 * focal / (resolution * root[..., 2]))
  return jnp.concatenate([log_scale[..., None], root[..., :2]], axis=-1)


def downsampling(widths: Tuple[int, ...], stem_patch: int) -> int:
  """How many times smaller than R the encoder's last map is (R must be a multiple)."""
  return (stem_patch or 2) * 2 ** (len(widths) - 1)


class Encoder(nn.Module):
  """A stem, strided 3x3 convolutions + GroupNorm + ReLU, then the flattened map -> `features`.

  Stem (`stem_patch`): 0 = a 3x3 stride-2 convolution like the others; p >= 2 = a p x p patch
  embedding (the map cut into p x p patches, each a Dense layer: one matmul, several times
  cheaper than a convolution's backward pass on CPU). The map is flattened (not pooled) so the
  features keep where the person is in the crop, which the camera translation needs.
  """
  widths: Tuple[int, ...]
  features: int
  stem_patch: int = 0

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """`x [B, R, R, C]` -> `[B, features]`."""
    for i, width in enumerate(self.widths):
      if i == 0 and self.stem_patch:
        p = self.stem_patch
        b, h, w, c = x.shape
        x = x.reshape(b, h // p, p, w // p, p, c).transpose(0, 1, 3, 2, 4, 5)
        x = nn.Dense(width)(x.reshape(b, h // p, w // p, p * p * c))
      else:
        x = nn.Conv(width, (3, 3), strides=(2, 2), padding="SAME")(x)
      x = nn.GroupNorm(num_groups=min(8, width))(x)
      x = nn.relu(x)
    x = x.reshape((x.shape[0], -1))
    return nn.relu(nn.Dense(self.features)(x))


class Regressor(nn.Module):
  """Encoder + iterative error-feedback head (module docstring).

  Attributes:
    widths: encoder conv widths (each halves the resolution).
    features: encoder output size.
    head_hidden: the head MLP's hidden sizes.
    num_iterations: refinement iterations of the head.
    theta_dim: T, the parameter vector's size (`ThetaLayout.dim`).
  """
  widths: Tuple[int, ...]
  features: int
  head_hidden: Tuple[int, ...]
  num_iterations: int
  theta_dim: int
  stem_patch: int = 0

  @nn.compact
  def __call__(self, maps: jax.Array, theta_init: jax.Array) -> jax.Array:
    """`maps [B, R, R, C]`, `theta_init [T]` -> `[num_iterations, B, T]` (last = output)."""
    feats = Encoder(tuple(self.widths), self.features, self.stem_patch)(maps)
    theta = jnp.broadcast_to(theta_init, (maps.shape[0], self.theta_dim))
    layers = [nn.Dense(h, name=f"head_{i}") for i, h in enumerate(self.head_hidden)]
    # Small last layer: the first iterations stay near the start (the mean body).
    out = nn.Dense(self.theta_dim, name="head_out",
                   kernel_init=nn.initializers.variance_scaling(0.01, "fan_avg", "uniform"))
    history = []
    for _ in range(self.num_iterations):  # Shared weights across iterations (HMR).
      x = jnp.concatenate([feats, theta], axis=-1)
      for layer in layers:
        x = nn.relu(layer(x))
      theta = theta + out(x)
      history.append(theta)
    return jnp.stack(history)
