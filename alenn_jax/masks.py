"""Inpainting masks: 1 = keep, 0 = hole. `[B, H, W, 1]` float32.

Training masks mix four kinds, drawn on device inside the train step from a per-step key: random
rectangles, free-form strokes, squares of the localization window size at random positions, and
`grid` masks: windows at exactly the positions the localize job uses (one window, or a
`multi_window` group of windows `grid_gap` apart), so the generator is trained on exactly the task
stage 2 gives it. `window_masks` and `window_groups` enumerate the sliding windows of stage 2.
"""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

KINDS = ("rectangle", "strokes", "window", "grid")


def mask_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.weights = (0.3, 0.3, 0.4, 0.0)  # Probabilities of rectangle, strokes, window, grid.
  config.rect_min = 0.15  # Rectangle side as a fraction of the image side, min...
  config.rect_max = 0.5  # ... and max.
  config.num_strokes = 4  # Free-form strokes per mask.
  config.stroke_vertices = 5  # Vertices per stroke (a polyline).
  config.stroke_width = 0.06  # Stroke width as a fraction of the image side.
  config.window = 32  # Side of the window squares, pixels (stage 2's localization window).
  config.grid_stride = 0  # Grid masks: the localize stride (px); 0: half the window.
  config.grid_gap = 0  # Grid masks: the multi_window gap (px); 0: the window.
  config.grid_groups = 0.5  # Grid masks: fraction that hide a whole group (the rest one window).
  return config


def _grid(h: int, w: int):
  yy, xx = jnp.meshgrid(
    jnp.arange(h, dtype=jnp.float32), jnp.arange(w, dtype=jnp.float32), indexing="ij"
  )
  return yy, xx


def rectangle_mask(key, h: int, w: int, min_frac: float, max_frac: float) -> jax.Array:
  """One axis-aligned rectangular hole with sides in [min_frac, max_frac] of the image. [H, W]."""
  k1, k2, k3, k4 = jax.random.split(key, 4)
  rh = jnp.round(jax.random.uniform(k1, (), minval=min_frac, maxval=max_frac) * h)
  rw = jnp.round(jax.random.uniform(k2, (), minval=min_frac, maxval=max_frac) * w)
  top = jnp.floor(jax.random.uniform(k3, ()) * (h - rh + 1))
  left = jnp.floor(jax.random.uniform(k4, ()) * (w - rw + 1))
  yy, xx = _grid(h, w)
  hole = (yy >= top) & (yy < top + rh) & (xx >= left) & (xx < left + rw)
  return 1.0 - hole.astype(jnp.float32)


def window_mask(key, h: int, w: int, window: int) -> jax.Array:
  """A window x window square hole at a random position. [H, W]."""
  window = min(window, h, w)
  k1, k2 = jax.random.split(key)
  top = jax.random.randint(k1, (), 0, h - window + 1)
  left = jax.random.randint(k2, (), 0, w - window + 1)
  yy, xx = _grid(h, w)
  hole = (yy >= top) & (yy < top + window) & (xx >= left) & (xx < left + window)
  return 1.0 - hole.astype(jnp.float32)


def strokes_mask(key, h: int, w: int, num_strokes: int, vertices: int, width: float) -> jax.Array:
  """Free-form holes: `num_strokes` random polylines of the given width (fraction of the side)."""
  k1, k2 = jax.random.split(key)
  start = jax.random.uniform(k1, (num_strokes, 1, 2)) * jnp.array([h, w], jnp.float32)
  steps = jax.random.normal(k2, (num_strokes, vertices - 1, 2)) * (
    0.15 * jnp.array([h, w], jnp.float32)
  )
  points = jnp.concatenate([start, start + jnp.cumsum(steps, axis=1)], axis=1)
  a = points[:, :-1].reshape(-1, 2)  # Segment starts [S, 2].
  b = points[:, 1:].reshape(-1, 2)
  yy, xx = _grid(h, w)
  p = jnp.stack([yy, xx], axis=-1)[:, :, None, :]  # [H, W, 1, 2]
  ab = b - a
  t = jnp.clip(jnp.sum((p - a) * ab, -1) / jnp.maximum(jnp.sum(ab * ab, -1), 1e-6), 0.0, 1.0)
  dist = jnp.linalg.norm(p - (a + t[..., None] * ab), axis=-1)  # [H, W, S]
  hole = jnp.min(dist, axis=-1) <= 0.5 * width * max(h, w)
  return 1.0 - hole.astype(jnp.float32)


def grid_layout(h: int, w: int, config) -> tuple[np.ndarray, np.ndarray]:
  """The localize job's window positions `[K, 2]` and its multi_window groups as indices into
  them, `[G, M]` padded with -1, for `config`'s window, grid_stride and grid_gap."""
  window = min(config.window, h, w)
  stride = config.grid_stride or max(1, window // 2)
  positions = window_positions(h, w, window, stride)
  groups = window_groups(h, w, window, stride, config.grid_gap or window)
  padded = np.full((len(groups), max(len(g) for g in groups)), -1, np.int32)
  for i, g in enumerate(groups):
    padded[i, : len(g)] = g
  return positions, padded


def grid_mask(key, h: int, w: int, window: int, positions, groups, group_fraction) -> jax.Array:
  """One window of the localization grid, or (with probability `group_fraction`) one of its
  multi_window groups, hidden. `positions`, `groups`: `grid_layout`'s. [H, W]."""
  window = min(window, h, w)
  k_use, k_single, k_group = jax.random.split(key, 3)
  single = jnp.full((groups.shape[1],), -1, jnp.int32)
  single = single.at[0].set(jax.random.randint(k_single, (), 0, len(positions)))
  group = jnp.asarray(groups)[jax.random.randint(k_group, (), 0, len(groups))]
  members = jnp.where(jax.random.bernoulli(k_use, group_fraction), group, single)  # [M]
  corners = jnp.asarray(positions)[jnp.maximum(members, 0)].astype(jnp.float32)  # [M, 2]
  yy, xx = _grid(h, w)
  top, left = corners[:, 0, None, None], corners[:, 1, None, None]
  inside = (yy >= top) & (yy < top + window) & (xx >= left) & (xx < left + window)
  hole = jnp.any(inside & (members >= 0)[:, None, None], axis=0)
  return 1.0 - hole.astype(jnp.float32)


def sample_masks(key, batch: int, h: int, w: int, config: ml_collections.ConfigDict) -> jax.Array:
  """`[batch, H, W, 1]` masks, each of a kind drawn with probabilities `config.weights`."""
  weights = jnp.asarray(config.weights, jnp.float32)
  if weights.shape != (len(KINDS),):
    raise ValueError(f"masks.weights must have {len(KINDS)} entries {KINDS}, got {config.weights}.")
  positions, groups = grid_layout(h, w, config)

  def one(k):
    k_kind, k_rect, k_strokes, k_window, k_grid = jax.random.split(k, 5)
    kind = jax.random.categorical(k_kind, jnp.log(weights / weights.sum()))
    options = jnp.stack(
      [
        rectangle_mask(k_rect, h, w, config.rect_min, config.rect_max),
        strokes_mask(
          k_strokes, h, w, config.num_strokes, config.stroke_vertices, config.stroke_width
        ),
        window_mask(k_window, h, w, config.window),
        grid_mask(k_grid, h, w, config.window, positions, groups, config.grid_groups),
      ]
    )
    return options[kind]

  return jax.vmap(one)(jax.random.split(key, batch))[..., None]


def window_positions(h: int, w: int, window: int, stride: int) -> np.ndarray:
  """Top-left corners `[K, 2]` of windows every `stride` pixels, the last ones flush with the border
  so that every pixel is covered."""
  if window > min(h, w) or window < 1 or stride < 1:
    raise ValueError(
      f"need 1 <= window <= min(h, w) and stride >= 1; got window={window}, "
      f"stride={stride} for a {h}x{w} image."
    )

  def starts(n):
    s = list(range(0, n - window + 1, stride))
    if s[-1] != n - window:
      s.append(n - window)
    return s

  return np.asarray([(top, left) for top in starts(h) for left in starts(w)], np.int32)


def window_masks(h: int, w: int, window: int, stride: int) -> np.ndarray:
  """`[K, H, W, 1]` float32 masks, each hiding one sliding window (0 inside it)."""
  positions = window_positions(h, w, window, stride)
  return np.stack([hole_masks(h, w, window, p[None]) for p in positions])


def window_groups(h: int, w: int, window: int, stride: int, gap: int) -> list[np.ndarray]:
  """The sliding-window positions split into groups whose windows lie at least `gap` pixels apart
  (along rows or columns), so one inpainting pass can repaint a whole group: each group an int
  array of indices into `window_positions(h, w, window, stride)`. Every position is in exactly one
  group; greedy in raster order, which gives about ceil((window + gap) / stride)**2 groups.
  """
  if gap < 1:
    raise ValueError(f"need gap >= 1 so that a group's windows never touch; got gap={gap}.")
  positions = window_positions(h, w, window, stride)
  groups: list[list[int]] = []
  for k, (top, left) in enumerate(positions):
    for members in groups:
      others = positions[members]
      apart = np.maximum(np.abs(others[:, 0] - top), np.abs(others[:, 1] - left)) - window
      if apart.min() >= gap:
        members.append(k)
        break
    else:
      groups.append([k])
  return [np.asarray(g, np.int32) for g in groups]


def hole_masks(h: int, w: int, window: int, positions: np.ndarray) -> np.ndarray:
  """`[H, W, 1]` float32 mask hiding every window whose top-left corner is in `positions`."""
  mask = np.ones((h, w, 1), np.float32)
  for top, left in positions:
    mask[top : top + window, left : left + window] = 0.0
  return mask


def composite(image: jax.Array, generated: jax.Array, mask: jax.Array) -> jax.Array:
  """I * M + G * (1 - M): the known pixels kept exactly, the hole filled by the generator."""
  return image * mask + generated * (1.0 - mask)
