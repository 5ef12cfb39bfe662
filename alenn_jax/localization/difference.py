"""D, the sliding-window difference map: pure functions of images and a repainting function.

The paper's text names an "Algorithm 1" without printing it; what follows is our reading of its
description (a window of side w slid with step d < w, each position repainted as normal).
For every window position k the window is hidden (mask M_k), repainted as normal by stage 1
(gen_s -> gen_t, composited: I_k = I * M_k + I_hat * (1 - M_k)), and |I - I_k| is accumulated
inside the window. D is that sum divided by the number of windows covering each pixel (windows at
the border are placed flush with it, so every pixel is covered). The text speaks of the "relative
error" between an image and its repainting without a formula; |I - I_k| is our reading. The
additions (`pad`, `highpass`, `shift`, `smooth`) are described at `difference_map`; all 0 give
the plain |I - I_k|. All windows of a batch go through the generators in one vmapped
computation, `chunk` windows at a time (a `lax.scan` over chunks), so memory stays bounded.

D is always the mean, over the sliding windows k covering a pixel, of |I - I_k| at that pixel,
where I_k is the image with window k repainted; the methods differ in how I_k is obtained:

  per_window    one generator pass over the whole image per window (the paper's text)
  multi_window  one pass repaints a whole group of windows lying at least `gap` pixels apart
                (`masks.window_groups`); window k's difference is still taken inside window k
                only, so a group of one window is exactly `per_window` (RIAD's disjoint cells,
                Zavrtanik et al. 2021). Passes per image: about ceil((window + gap) / stride)**2.
  context       one pass per window over a `context` x `context` crop around it (clamped to the
                image), as InTra (Pirnay & Chai 2021) repaints patches from a neighbourhood;
                `context` >= the image side is the whole image, i.e. `per_window`. A crop
                smaller than the window plus the generator's receptive field
                (`default_context`) cuts off context the generator uses: whatever size of
                crop it was trained on, its repaintings then depart from the whole image's.

With `pad` > 0 the images (and structure) are first extended by `pad` reflected pixels on every
side, the windows are laid out over that larger canvas and D is cropped back to the images. With
`pad` = stride every pixel is covered by as many windows as an inner one (without it a corner
pixel has one window where an inner pixel has (window / stride)**2, so its mean is the noisiest),
and a window at the image's border is repainted with context on all sides instead of against
the generator's own padding. (What each changes
on phantoms and real films: BENCHMARKS.md.)

With `highpass` = sigma > 0, what window k contributes is |r_k - m_k| instead of |r_k|, where
r_k = I - I_k is the signed repainting error and m_k its local mean inside the hole (a Gaussian
of that sigma, normalised over the hole's pixels): a repainting that gets the brightness of a
region wrong but its content right scores nothing there. On the phantoms most of |r_k| on
normal anatomy is such an offset (the bright condyle, whose brightness a hidden window cannot
tell), while a lesion is a local deviation from its surroundings. With `shift` = s > 0, a pixel
of the hole scores the smallest difference between I there and the (brightness-corrected)
repainting at any pixel up to s px away along a row or a column: min over |d| <= s of
|I(x) - I_k'(x + d)|, I_k' = I - r_k. A cortex edge repainted a pixel off then scores nothing,
while a lesion, which the repainting has nowhere near, keeps its difference: a thin line as well
as a blob, since the repainting has no such line a pixel away either. With `smooth` = sigma > 0,
D (the mean over windows) is then blurred with a Gaussian of that sigma, so a lesion's pixels
share the evidence of their neighbours. All 0: the plain |I - I_k|.
"""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from alenn_jax import masks as masks_lib
from alenn_jax import rtv
from alenn_jax.models import inpainting

METHODS = ("per_window", "multi_window", "context")
LETTERBOX = ("reflect", "zero")  # How the bars around a non-square image are filled for the maps.


def _chunked(arrays, chunk: int, pad_values):
  """Each `[K, ...]` array padded along axis 0 to a multiple of `chunk` (with its pad value) and
  reshaped to `[K / chunk, chunk, ...]`."""
  k = len(arrays[0])
  chunk = max(1, min(chunk, k))
  pad = -k % chunk
  out = []
  for a, value in zip(arrays, pad_values, strict=True):
    filler = np.full((pad, *a.shape[1:]), value, a.dtype)
    out.append(jnp.asarray(np.concatenate([a, filler]).reshape(-1, chunk, *a.shape[1:])))
  return out


def difference_map(
  params,
  images,
  structure,
  *,
  inpaint_fn,
  window: int,
  stride: int,
  chunk: int,
  method: str = "per_window",
  gap: int = 0,
  context: int = 0,
  pad: int = 0,
  highpass: float = 0.0,
  shift: int = 0,
  smooth: float = 0.0,
):
  """D of a batch: `[B, H, W, 1]` images in [-1, 1] -> `[B, H, W, 1]` mean |I - I_k| (in [0, 1]).

  See the module docstring for the methods and for what `pad`, `highpass`, `shift` and `smooth`
  do; all 0 give the plain |I - I_k|.

  Args:
    params: whatever `inpaint_fn` needs (stage 1: {"gen_s": ..., "gen_t": ...}).
    images: `[B, H, W, 1]` in [-1, 1].
    structure: `[B, H, W, 1]` RTV structure in [-1, 1] (computed once per image, not per window).
    inpaint_fn: `(params, images, structure, mask) -> composited images`, all `[N, h, w, 1]`.
    window, stride: sliding-window side and step, pixels.
    chunk: passes run together (times the batch size: the generator's batch).
    method, gap, context: see above.
    pad: reflected border (px) added before the windows are laid out; 0: none.
    highpass, smooth: Gaussian sigmas (px), see above; 0: off.
    shift: how far (px) the repainting may be off before a difference counts, see above; 0: off.
  """
  if method not in METHODS:
    raise ValueError(f"method={method!r}; use one of {', '.join(METHODS)}.")
  same = dict(
    inpaint_fn=inpaint_fn,
    window=window,
    stride=stride,
    chunk=chunk,
    method=method,
    gap=gap,
    context=context,
    highpass=highpass,
    shift=shift,
  )
  if pad:
    _, h, w, _ = images.shape
    widths = ((0, 0), (pad, pad), (pad, pad), (0, 0))
    padded = (jnp.pad(images, widths, mode="reflect"), jnp.pad(structure, widths, mode="reflect"))
    # Blurred on the reflected canvas, so the border is blurred with real neighbours.
    d = difference_map(params, *padded, **same, smooth=smooth)
    return d[:, pad : pad + h, pad : pad + w]
  if smooth:
    d = difference_map(params, images, structure, **same)
    return gaussian_blur(d, smooth, mode="symmetric")
  _, h, w, _ = images.shape
  positions = masks_lib.window_positions(h, w, window, stride)
  holes = masks_lib.window_masks(h, w, window, stride)  # [K, H, W, 1]: one window per pass.
  coverage = (1.0 - holes).sum(axis=0)  # [H, W, 1], >= 1 everywhere.
  if method == "context" and (context < h or context < w):
    total = _context_sum(
      params, images, structure, inpaint_fn, window, positions, chunk, context, highpass, shift
    )
    return total / jnp.asarray(coverage)
  if method == "multi_window":  # [G, H, W, 1]: each pass hides a group of windows.
    groups = masks_lib.window_groups(h, w, window, stride, gap)
    holes = np.stack([masks_lib.hole_masks(h, w, window, positions[g]) for g in groups])
  (holes,) = _chunked([holes], chunk, [1.0])  # Padding passes hide nothing, so add nothing.

  def body(total, mask_chunk):  # [n, H, W, 1]: n passes, each over the whole batch.
    n = mask_chunk.shape[0]
    masks = _same_for_each_image(len(images), mask_chunk)
    composite = inpaint_fn(params, *_by_image(n, images, structure), masks)
    diff = hole_difference(images[:, None], _split(composite, n), mask_chunk[None], highpass, shift)
    return total + diff.sum(axis=1), None

  total, _ = jax.lax.scan(body, jnp.zeros_like(images), holes)
  return total / jnp.asarray(coverage)


def _reflected_index(i, start, length):
  """Positions `i` (any integers) reflected into `[start, start + length)` about its edges, the
  edge pixel not repeated (numpy's and `jnp.pad`'s "reflect", repeated for any distance)."""
  period = jnp.maximum(2 * (length - 1), 1)
  j = jnp.mod(i - start, period)
  j = jnp.where(j >= length, period - j, j)
  return start + jnp.where(length > 1, j, 0)


def reflect_into_letterbox(images, boxes):
  """`[B, S, S, C]` letterboxed images with the bars around each image's extent (`boxes` `[B, 4]`:
  top, left, height, width) filled by reflecting the image about its own edges, as `jnp.pad`'s
  "reflect" would extend the extent alone; the extent itself is unchanged.

  An image that is not square meets its letterbox bars inside the canvas, where the reflected
  border of `difference_map`'s `pad` never reaches: a window there is repainted against a black
  bar, and D of such edges was the maximum of most FracAtlas maps (BENCHMARKS.md)."""
  _, height, width, _ = images.shape

  def one(image, box):
    rows = _reflected_index(jnp.arange(height), box[0], box[2])
    cols = _reflected_index(jnp.arange(width), box[1], box[3])
    return image[rows][:, cols]

  return jax.vmap(one)(images, jnp.asarray(boxes, jnp.int32))


def gaussian_blur(x, sigma: float, mode: str = "constant"):
  """`[..., H, W, C]` blurred by a Gaussian of `sigma` px truncated as scipy's `gaussian_filter`
  (radius int(3 sigma + 0.5); `rtv.gaussian_blur` truncates as MATLAB's fspecial), the border
  extended by `jnp.pad`'s `mode` ("constant": zeros)."""
  radius = int(3.0 * sigma + 0.5)
  taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
  return rtv.separable_filter(x, taps / taps.sum(), mode)


def _merge(x):
  """`[B, n, ...]` -> `[B * n, ...]`, image-major: the batch axis, the one sharded over devices,
  stays the outer one, so each device keeps its own images' passes. (`jax.vmap` over passes
  would put the pass axis outside instead, and every pass would gather the batch across devices;
  on emulated CPU devices that made maps 5x slower and could hang.)"""
  return x.reshape((-1, *x.shape[2:]))


def _split(x, n: int):
  """`[B * n, ...]` -> `[B, n, ...]`, the inverse of `_merge`."""
  return x.reshape((-1, n, *x.shape[1:]))


def _by_image(n: int, *arrays):
  """Each `[B, ...]` array repeated for `n` passes as `[B * n, ...]` (image-major, `_merge`)."""
  return [_merge(jnp.broadcast_to(a[:, None], (a.shape[0], n, *a.shape[1:]))) for a in arrays]


def _same_for_each_image(b: int, masks):
  """`[n, ...]` masks of n passes, the same for each of `b` images, as `[b * n, ...]` (image-major,
  `_merge`)."""
  return _merge(jnp.broadcast_to(masks[None], (b, *masks.shape)))


def hole_difference(images, composite, mask, highpass: float = 0.0, shift: int = 0):
  """What one pass contributes, inside its hole (mask 0) and zero elsewhere, in [0, 1]: |r| / 2,
  r = images - composite, or with `highpass` = sigma > 0, |r - m| / 2 with m the Gaussian mean of r
  over the hole's pixels, and with `shift` = s > 0 the least |images(x) - c(x + d)| / 2 over the
  offsets d up to s px along a row or column, c = images - r the (corrected) repainting
  (`difference_map`). Arrays are `[..., H, W, C]` and broadcast: `mask` without the batch axis
  (e.g. `[1, n, H, W, 1]` for n passes), so each hole's normalising weight is computed once, not
  once per image."""
  hole = 1.0 - mask
  r = (images - composite) * hole
  if highpass:
    weight = gaussian_blur(hole, highpass)
    r = (r - gaussian_blur(r, highpass) / jnp.maximum(weight, 1e-6)) * hole
  if shift:
    # Outside the hole c is the image itself, so near the hole's rim the image's own pixels count
    # as matches too: what the window hides is judged against everything around it.
    repainted = images - r
    error = jnp.abs(r)
    for offset in _cross_offsets(shift):
      error = jnp.minimum(error, jnp.abs(images - _shifted(repainted, *offset)))
    r = error * hole
  return jnp.abs(r) / 2.0


def _cross_offsets(radius: int) -> list[tuple[int, int]]:
  """The nonzero (dy, dx) up to `radius` px along a row or a column: 4 * radius offsets."""
  steps = [d for d in range(-radius, radius + 1) if d]
  return [(d, 0) for d in steps] + [(0, d) for d in steps]


def _shifted(x, dy: int, dx: int):
  """`[..., H, W, C]` -> y with y[..., i, j, :] = x[..., i + dy, j + dx, :], the edge pixels
  repeated beyond the border."""
  h, w = x.shape[-3:-1]
  p = max(abs(dy), abs(dx))
  widths = [(0, 0)] * (x.ndim - 3) + [(p, p), (p, p), (0, 0)]
  x = jnp.pad(x, widths, mode="edge")
  return x[..., p + dy : p + dy + h, p + dx : p + dx + w, :]


def _context_sum(
  params, images, structure, inpaint_fn, window, positions, chunk, context, highpass, shift
):
  """Sum over windows of |I - I_k| inside window k, each I_k repainted from a crop around k."""
  b, h, w, c = images.shape
  ch, cw = min(context, h), min(context, w)
  tops = np.clip(positions[:, 0] + window // 2 - ch // 2, 0, h - ch)
  lefts = np.clip(positions[:, 1] + window // 2 - cw // 2, 0, w - cw)
  offsets = np.stack([tops, lefts], axis=1).astype(np.int32)  # [K, 2] crop corners.
  local = np.stack(
    [
      masks_lib.hole_masks(ch, cw, window, (pos - off)[None])
      for pos, off in zip(positions, offsets, strict=True)
    ]
  )  # [K, ch, cw, 1]: each window's hole inside its crop.
  offsets, local = _chunked([offsets, local], chunk, [0, 1.0])

  def crops(x, offsets):  # [B, H, W, c] -> [B, n, ch, cw, c]: each image's n crops.
    one = lambda o: jax.lax.dynamic_slice(x, (0, o[0], o[1], 0), (b, ch, cw, c))
    return jnp.swapaxes(jax.vmap(one)(offsets), 0, 1)

  def place(diff, offset):  # [B, ch, cw, c] at `offset` of a zero `[B, H, W, c]`.
    return jax.lax.dynamic_update_slice(jnp.zeros_like(images), diff, (0, offset[0], offset[1], 0))

  def body(total, chunk_args):  # n windows, each over the whole batch (image-major, `_merge`).
    offsets, mask_chunk = chunk_args
    n = len(offsets)
    crop, crop_structure = crops(images, offsets), crops(structure, offsets)
    masks = _same_for_each_image(b, mask_chunk)
    composite = inpaint_fn(params, _merge(crop), _merge(crop_structure), masks)
    diff = hole_difference(crop, _split(composite, n), mask_chunk[None], highpass, shift)
    return total + jax.vmap(place)(jnp.swapaxes(diff, 0, 1), offsets).sum(axis=0), None

  total, _ = jax.lax.scan(body, jnp.zeros_like(images), (offsets, local))
  return total


def stage1_inpaint_fn(gen_s: inpainting.Generator, gen_t: inpainting.Generator):
  """The stage 1 repainting (composited) as an `inpaint_fn` for `difference_map`."""

  def inpaint(params, images, structure, mask):
    return inpainting.inpaint(gen_s, gen_t, params, images, structure, mask)[2]

  return inpaint


# ----------------------------------------------------------------------------------------------
# The job.


def default_context(window: int, model: ml_collections.ConfigDict) -> int:
  """The `context` crop (px) that holds a window and all a generator of `model` computes its
  pixels from: window + `inpainting.receptive_field`, rounded up to a multiple of 2**depth."""
  factor = 2 ** int(model.depth)
  return -(-(window + inpainting.receptive_field(model)) // factor) * factor
