"""What normal anatomy of the same appearance also fails to repaint: D divided by it (an addition:
the paper's text has no such step).

A repainting error tracks how hard a region is to repaint as much as whether it is abnormal
(Meissen et al., "On the Pitfalls of Using the Residual Error as Anomaly Score", MIDL 2022). On the
demo's phantoms, after `highpass` and `shift`, most maxima of D that miss the lesion lie on the
narrow dark gap between the two forearm bones: a thin line the generator does not reproduce, in
normal images as much as in abnormal ones (BENCHMARKS.md). Hand-made features of a pixel (its
intensity, local contrast, gradient or Laplacian) cannot tell that gap from a fracture line or a
lytic focus; the pixel's whole neighbourhood can.

The model, fitted once per localize run on training normals (`fit`):
  1. `pixels` pixels are drawn from the normal images (inside their letterbox extent), each
     described by the `patch` x `patch` image patch around it (the image reflected at its edges);
  2. the patches are clustered into `codes` classes by k-means (`iterations` Lloyd steps from
     `pixels` drawn at random), and each class keeps the mean D of its members: the error normal
     anatomy of that appearance gets;
  3. any pixel of any image is given the class of the code nearest to its own patch, E that
     class's mean D, and D becomes D / (E + floor), `floor` = `floor_fraction` times the mean D of
     the sample, so appearances that normals repaint perfectly (E about 0) are not magnified from
     noise.

So a dark gap that every normal forearm shows is divided by the large error normals get there,
while a lytic focus or a fracture line, an appearance with no close normal counterpart, is
divided by the error of the nearest normal appearance (bone, usually low). The map stays one
fixed function of the image for every image: nothing is normalised per image.
"""

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from alenn_jax import image_io
from alenn_jax.errors import UserInputError


class Model(NamedTuple):
  """`codes` `[C, patch * patch]` patch centroids, `expected` `[C]` their mean D on normals and
  `floor` (scalar) the value added to E."""

  codes: jax.Array
  expected: jax.Array
  floor: jax.Array


def patches(images, patch: int):
  """`[B, H, W, 1]` -> `[B, H, W, patch * patch]`: the `patch` x `patch` neighbourhood of every
  pixel, row by row, the image reflected about its edges (`jnp.pad`'s "reflect")."""
  _, h, w, _ = images.shape
  r = patch // 2
  x = jnp.pad(images[..., 0], ((0, 0), (r, r), (r, r)), mode="reflect")
  return jnp.stack([x[:, i : i + h, j : j + w] for i in range(patch) for j in range(patch)], -1)


def _nearest(x, codes):
  """Index of the code nearest to each vector of `x` `[..., P]` (squared Euclidean distance)."""
  distance = (codes * codes).sum(1) - 2.0 * x @ codes.T  # |x|^2 is the same for every code.
  return jnp.argmin(distance, axis=-1)


_nearest_jit = jax.jit(_nearest)


def _lloyd(samples, codes, iterations: int):
  """k-means: `iterations` assignment / mean steps from `codes`; a code that loses all its
  members keeps its place."""

  def body(_, codes):
    member = _nearest(samples, codes)
    sums = jax.ops.segment_sum(samples, member, len(codes))
    counts = jax.ops.segment_sum(jnp.ones(len(samples)), member, len(codes))
    return jnp.where(counts[:, None] > 0, sums / jnp.maximum(counts, 1.0)[:, None], codes)

  return jax.lax.fori_loop(0, iterations, body, codes)


_lloyd_jit = jax.jit(_lloyd, static_argnums=2)


def fit(
  images,
  d,
  valid,
  *,
  patch: int,
  codes: int,
  pixels: int,
  iterations: int,
  floor_fraction: float,
  seed: int = 0,
) -> Model:
  """The model (see the module docstring) from normal images `[N, H, W, 1]` in [-1, 1], their D
  `[N, H, W, 1]` and `valid` `[N, H, W]` (True inside each image's letterbox extent)."""
  images, d, valid = np.asarray(images), np.asarray(d), np.asarray(valid, bool)
  where = np.flatnonzero(valid.ravel())
  if len(where) < codes:
    raise UserInputError(
      f"config.normal_error.codes={codes}: the normal images mapped for it hold only "
      f"{len(where)} pixels; use fewer codes, or more images (config.normal_error.images)."
    )
  rng = np.random.default_rng(seed)
  chosen = np.sort(rng.choice(where, min(pixels, len(where)), replace=False))
  # Patches of the chosen pixels only, image by image (all of them would not fit at 256 px).
  per_image = images.shape[1] * images.shape[2]
  samples, values = [], []
  for n in np.unique(chosen // per_image):
    mine = chosen[chosen // per_image == n] % per_image
    samples.append(
      np.asarray(patches(jnp.asarray(images[n : n + 1]), patch)).reshape(-1, patch**2)[mine]
    )
    values.append(d[n].reshape(-1)[mine])
  samples, values = np.concatenate(samples), np.concatenate(values).astype(np.float64)
  start = samples[rng.choice(len(samples), codes, replace=False)]
  centroids = _lloyd_jit(jnp.asarray(samples), jnp.asarray(start), iterations)
  member = np.asarray(_nearest_jit(jnp.asarray(samples), centroids))
  counts = np.bincount(member, minlength=codes)
  expected = np.bincount(member, values, minlength=codes) / np.maximum(counts, 1)
  return Model(
    codes=jnp.asarray(centroids, jnp.float32),
    expected=jnp.asarray(expected, jnp.float32),
    floor=jnp.asarray(max(floor_fraction * values.mean(), 1e-8), jnp.float32),
  )


def patch_side(model: Model) -> int:
  """The side of the neighbourhoods `model` was fitted on (its codes hold side**2 values)."""
  return math.isqrt(model.codes.shape[-1])


def expected_error(model: Model, images, chunk: int = 8192):
  """E `[B, H, W, 1]`: the mean normal D of the class nearest to each pixel's patch, `chunk`
  pixels of every image at a time (the distances of a chunk to every code are `[B, chunk, C]`).
  The batch axis stays the outer one, so on a mesh each device keeps its own images' pixels."""
  b, h, w, _ = images.shape
  patch = patch_side(model)
  chunk = max(1, min(chunk, h * w))
  x = patches(images, patch).reshape(b, h * w, patch * patch)
  pad = -(h * w) % chunk
  x = jnp.pad(x, ((0, 0), (0, pad), (0, 0))).reshape(b, -1, chunk, patch * patch)
  # [n, B, chunk]: chunk by chunk, each `[B, chunk, P]`.
  member = jax.lax.map(lambda rows: _nearest(rows, model.codes), jnp.moveaxis(x, 1, 0))
  member = jnp.moveaxis(member, 0, 1).reshape(b, -1)[:, : h * w]
  return model.expected[member].reshape(b, h, w, 1)


def calibrate(model: Model, images, d):
  """D / (E + floor), `[B, H, W, 1]` images in [-1, 1] and their D."""
  return d / (expected_error(model, images) + model.floor)


def save(path: str, model: Model) -> None:
  """The model as an npz (written atomically)."""
  with image_io.atomic_open(path, "wb") as f:
    np.savez(f, **{k: np.asarray(v) for k, v in model._asdict().items()})


def load(path: str) -> Model:
  with np.load(path) as stored:
    return Model(*(jnp.asarray(stored[k]) for k in Model._fields))
