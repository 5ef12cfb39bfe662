"""Relative Total Variation (RTV) structure extraction, batched on the accelerator.

RTV separates an image into structure (bones, soft-tissue outlines) and texture (trabecular
pattern, noise). It is the method of Xu, Yan, Xia & Jia, "Structure Extraction from Texture via
Relative Total Variation", ACM TOG 31(6), 2012, and this module computes exactly what the authors'
reference code `tsmooth(I, lambda, sigma, sharpness, maxIter)` computes:

  for each outer iteration t (sigma_t = max(sigma / 2**t, 0.5)):
    wx = 1 / max(|dx (G_sigma_t * S)|, 0.001) * 1 / max(|grad S|, sharpness)   (wy likewise)
    solve (Id + (lambda / 2) * (Dx^T Wx Dx + Dy^T Wy Dy)) S = I_input

with forward differences, the last column of wx and last row of wy set to zero, and a separable
Gaussian G of size round(5 sigma) forced odd, zero padded. The reference factorises the sparse
matrix; here the 5-point operator is applied matrix-free and each image and channel's system is
solved by a conjugate gradient (`lax.while_loop`) over the whole batch, warm-started from the
previous outer iterate and preconditioned by a multigrid V-cycle (`MultigridPreconditioner`).
Weights are shared by an image's channels (the reference averages gradient magnitudes over them).
Images are `[B, H, W, C]` float in [0, 1]; `extract_structure` is jit-compiled, may be called
inside other jitted code, and passes no gradient. `python -m alenn_jax.rtv IN OUT` shows one image.
"""

import argparse
import dataclasses
import functools
import math
import sys
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from alenn_jax import image_io
from alenn_jax.errors import UserInputError

# The reference's `vareps`: floor of the smoothed-gradient magnitude in the texture weights.
GRADIENT_FLOOR = 1e-3
# StructureFlow's call tsmooth(I, 0.015, 3, 0.001, 3): the project's default.
DEFAULT_LAM = 0.015
DEFAULT_SIGMA = 3.0
DEFAULT_SHARPNESS = 1e-3
DEFAULT_N_ITER = 3
# Relative residual ||b - A x|| / ||b|| at which a solve stops, and its iteration cap.
DEFAULT_TOL = 1e-4
DEFAULT_MAX_CG_ITERS = 500
# Where stage 1 takes the structure of its training images from (`config.structure`, see
# train_inpainting): each augmented batch's, inside the step, or each image's, once, augmented.
STRUCTURE_MODES = ("in_step", "per_image")


@dataclasses.dataclass(frozen=True)
class RTVParams:
  """The RTV parameters as one value: what configs hold (`config.rtv`), jitted code closes over."""

  lam: float = DEFAULT_LAM  # Smoothing weight lambda (halved internally, as the reference does).
  sigma: float = DEFAULT_SIGMA  # Initial texture-window scale; halves each outer iteration.
  sharpness: float = DEFAULT_SHARPNESS  # Gradient floor: smaller keeps sharper edges.
  n_iter: int = DEFAULT_N_ITER  # Outer re-weighting iterations.
  tol: float = DEFAULT_TOL  # Relative residual at which each CG solve stops.
  max_cg_iters: int = DEFAULT_MAX_CG_ITERS  # CG iteration cap per solve.

  @classmethod
  def from_config(cls, config) -> "RTVParams":
    """From a `config.rtv` block (a ConfigDict or a dict); unknown fields are refused."""
    values = dict(config)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(values) - set(names))
    if unknown:
      raise UserInputError(
        f"config.rtv has unknown field(s) {', '.join(unknown)}; its fields: {', '.join(names)}."
      )
    return cls(**values)

  def as_kwargs(self) -> dict:
    return dataclasses.asdict(self)


class SolveInfo(NamedTuple):
  """Per outer iteration statistics of the conjugate-gradient solves."""

  cg_iters: jax.Array  # [n_iter, B, C] iterations each system took.
  rel_residual: jax.Array  # [n_iter, B, C] final ||b - A x|| / ||b||.


def gaussian_kernel_size(sigma: float) -> int:
  """round(5 sigma) (half away from zero, as MATLAB rounds) forced odd."""
  return math.floor(5.0 * sigma + 0.5) | 1


def gaussian_kernel(sigma: float) -> np.ndarray:
  """The normalised 1-D Gaussian of `fspecial('gaussian', [1, k], sigma)`."""
  size = gaussian_kernel_size(sigma)
  offsets = np.arange(size, dtype=np.float64) - (size - 1) / 2.0
  kernel = np.exp(-(offsets**2) / (2.0 * sigma**2))
  return kernel / kernel.sum()


def _correlate_axis(x: jax.Array, kernel: np.ndarray, axis: int, mode: str) -> jax.Array:
  """'same' filtering of `x` along `axis` (kernel is symmetric), the border extended by
  `jnp.pad`'s `mode`."""
  axis = axis % x.ndim
  radius = len(kernel) // 2
  length = x.shape[axis]
  pad = [(0, 0)] * x.ndim
  pad[axis] = (radius, radius)
  padded = jnp.pad(x, pad, mode=mode)
  out = jnp.zeros_like(x)
  for i, weight in enumerate(kernel):
    out = out + weight * jax.lax.slice_in_dim(padded, i, i + length, axis=axis)
  return out


def separable_filter(x: jax.Array, kernel: np.ndarray, mode: str = "constant") -> jax.Array:
  """'same' filtering of `[..., H, W, C]` images (any leading axes) along W, then H, with the
  symmetric 1-D `kernel`; the border extended by `jnp.pad`'s `mode` ("constant": zeros)."""
  return _correlate_axis(_correlate_axis(x, kernel, -2, mode), kernel, -3, mode)


def gaussian_blur(x: jax.Array, sigma: float) -> jax.Array:
  """Separable Gaussian blur of `[B, H, W, C]` images, zero padded, as the reference's lpfilter."""
  return separable_filter(x, gaussian_kernel(sigma))


def diff_x(x: jax.Array) -> jax.Array:
  """Forward difference along W, zero in the last column. [B, H, W, C] -> same."""
  return jnp.pad(x[:, :, 1:] - x[:, :, :-1], ((0, 0), (0, 0), (0, 1), (0, 0)))


def diff_y(x: jax.Array) -> jax.Array:
  """Forward difference along H, zero in the last row. [B, H, W, C] -> same."""
  return jnp.pad(x[:, 1:] - x[:, :-1], ((0, 0), (0, 1), (0, 0), (0, 0)))


def _shift_right(x: jax.Array) -> jax.Array:
  """out[:, :, j] = x[:, :, j - 1], zero at j = 0."""
  return jnp.pad(x[:, :, :-1], ((0, 0), (0, 0), (1, 0), (0, 0)))


def _shift_down(x: jax.Array) -> jax.Array:
  """out[:, i] = x[:, i - 1], zero at i = 0."""
  return jnp.pad(x[:, :-1], ((0, 0), (1, 0), (0, 0), (0, 0)))


def texture_weights(s: jax.Array, sigma: float, sharpness: float) -> tuple[jax.Array, jax.Array]:
  """The reference's computeTextureWeights.

  Args:
    s: current structure estimate, `[B, H, W, C]`.
    sigma: scale of the Gaussian that defines the windowed (smoothed) gradient.
    sharpness: floor of the gradient magnitude (the reference's `vareps_s`).

  Returns:
    `(wx, wy)`, each `[B, H, W, 1]` (shared by the channels); `wx[:, :, -1]` and `wy[:, -1]` are 0.
  """
  grad_mag = jnp.mean(jnp.sqrt(diff_x(s) ** 2 + diff_y(s) ** 2), axis=-1, keepdims=True)
  w_tone = 1.0 / jnp.maximum(grad_mag, sharpness)
  smooth = gaussian_blur(s, sigma)
  gx = jnp.mean(jnp.abs(diff_x(smooth)), axis=-1, keepdims=True)
  gy = jnp.mean(jnp.abs(diff_y(smooth)), axis=-1, keepdims=True)
  wx = w_tone / jnp.maximum(gx, GRADIENT_FLOOR)
  wy = w_tone / jnp.maximum(gy, GRADIENT_FLOOR)
  wx = wx.at[:, :, -1].set(0.0)
  wy = wy.at[:, -1].set(0.0)
  return wx, wy


def weighted_laplacian(x: jax.Array, wx: jax.Array, wy: jax.Array) -> jax.Array:
  """(Dx^T Wx Dx + Dy^T Wy Dy) x, the 5-point stencil, matrix-free. x [B, H, W, C]."""
  flux_x = wx * diff_x(x)
  flux_y = wy * diff_y(x)
  return (_shift_right(flux_x) - flux_x) + (_shift_down(flux_y) - flux_y)


def system_apply(x: jax.Array, wx: jax.Array, wy: jax.Array, lam: float) -> jax.Array:
  """A x with A = Id + lam * (Dx^T Wx Dx + Dy^T Wy Dy)."""
  return x + lam * weighted_laplacian(x, wx, wy)


def _dot(u: jax.Array, v: jax.Array) -> jax.Array:
  """Inner product of each image-channel system: [B, H, W, C] x2 -> [B, 1, 1, C]."""
  return jnp.sum(u * v, axis=(1, 2), keepdims=True)


def _safe_div(num: jax.Array, den: jax.Array) -> jax.Array:
  return jnp.where(den != 0, num / jnp.where(den != 0, den, 1.0), 0.0)


# Multigrid preconditioner. The system is M x + Lw x = b with M diagonal ("mass"; the identity on
# the image grid) and Lw the 5-point Laplacian with edge weights ex = lam * wx, ey = lam * wy.
# Aggregating 2x2 blocks with the piecewise-constant prolongation P keeps that form exactly under
# the Galerkin product P^T A P: the coarse mass is the block sum of M and a coarse edge weight is
# the sum of the two fine edges crossing the block boundary. So every level is the same matrix-free
# stencil, the hierarchy costs a few block sums, and strong edge weights (flat regions, where RTV
# weights reach 1e6) are carried down faithfully. A symmetric V-cycle (red-black Gauss-Seidel, red-
# black before the coarse correction and black-red after it; a dense Cholesky solve on the coarsest
# grid) is a symmetric positive definite preconditioner for conjugate gradient.

_COARSEST_SIDE = 16  # The coarsest grid is at most this many pixels on a side; solved directly.


class _Level(NamedTuple):
  mass: jax.Array  # [B, h, w, 1]
  ex: jax.Array  # [B, h, w, 1] weight of the edge to the right neighbour (0 in the last column).
  ey: jax.Array  # [B, h, w, 1] weight of the edge to the lower neighbour (0 in the last row).
  diag: jax.Array  # [B, h, w, 1]


def _make_level(mass, ex, ey) -> _Level:
  return _Level(mass, ex, ey, mass + ex + _shift_right(ex) + ey + _shift_down(ey))


def _level_apply(level: _Level, x: jax.Array) -> jax.Array:
  return level.mass * x + weighted_laplacian(x, level.ex, level.ey)


def _block_sum(x: jax.Array) -> jax.Array:
  """Sums 2x2 blocks: [B, h, w, C] -> [B, h/2, w/2, C] (the restriction P^T)."""
  # Strided slices: XLA on CPU runs this ~10x faster than a reshape and a two-axis reduction.
  return x[:, 0::2, 0::2] + x[:, 1::2, 0::2] + x[:, 0::2, 1::2] + x[:, 1::2, 1::2]


def _block_repeat(x: jax.Array) -> jax.Array:
  """Copies each pixel to a 2x2 block (the prolongation P)."""
  b, h, w, c = x.shape
  return jnp.broadcast_to(x[:, :, None, :, None], (b, h, 2, w, 2, c)).reshape(b, 2 * h, 2 * w, c)


def _coarsen(level: _Level) -> _Level:
  """The Galerkin coarse level P^T A P of piecewise-constant 2x2 aggregation."""
  ex = level.ex[:, :, 1::2]  # Fine edges from odd columns cross a block boundary.
  ex = ex[:, 0::2] + ex[:, 1::2]
  ey = level.ey[:, 1::2]
  ey = ey[:, :, 0::2] + ey[:, :, 1::2]
  return _make_level(_block_sum(level.mass), ex, ey)


def _num_coarsenings(h: int, w: int) -> int:
  side = max(h, w)
  return max(0, math.ceil(math.log2(side / _COARSEST_SIDE))) if side > _COARSEST_SIDE else 0


def _checkerboard_parity(h: int, w: int) -> np.ndarray:
  """(i + j) % 2 of every pixel, `[1, h, w, 1]` int32."""
  return ((np.arange(h)[:, None] + np.arange(w)[None, :]) % 2).astype(np.int32)[None, :, :, None]


class MultigridPreconditioner:
  """Symmetric V-cycle for `Id + lam (Dx^T Wx Dx + Dy^T Wy Dy)`; built inside traced code."""

  def __init__(self, wx: jax.Array, wy: jax.Array, lam: float, sweeps: int = 1):
    b, h, w, _ = wx.shape
    self.shape = (h, w)
    self.sweeps = sweeps
    n = _num_coarsenings(h, w)
    hp, wp = (-(-h // 2**n) * 2**n, -(-w // 2**n) * 2**n)
    pad = ((0, 0), (0, hp - h), (0, wp - w), (0, 0))
    # Padding pixels have unit mass and no edges: decoupled, they never touch the image's unknowns.
    level = _make_level(
      jnp.ones((b, hp, wp, 1), wx.dtype), jnp.pad(lam * wx, pad), jnp.pad(lam * wy, pad)
    )
    self.levels = [level]
    for _ in range(n):
      level = _coarsen(level)
      self.levels.append(level)
    coarsest = self.levels[-1]
    _, hc, wc, _ = coarsest.mass.shape
    basis = jnp.broadcast_to(
      jnp.eye(hc * wc, dtype=wx.dtype).reshape(1, hc, wc, hc * wc), (b, hc, wc, hc * wc)
    )
    dense = _level_apply(coarsest, basis).reshape(b, hc * wc, hc * wc)
    self.coarse_cholesky = jnp.linalg.cholesky(dense)

  def _smooth(self, level: _Level, x, b, first_colour: int):
    """`sweeps` symmetric-order Gauss-Seidel sweeps, one colour of the checkerboard at a time."""
    parity = jnp.asarray(_checkerboard_parity(*level.mass.shape[1:3]))

    def half_sweep(i, x):
      mask = parity == (first_colour + i) % 2
      return jnp.where(mask, x + (b - _level_apply(level, x)) / level.diag, x)

    # A loop (not unrolled Python) on purpose: its boundary stops XLA from fusing the sweeps of all
    # levels into the finest one, where every pixel would recompute its whole dependency cone.
    return jax.lax.fori_loop(0, 2 * self.sweeps, half_sweep, x)

  def _coarse_solve(self, b):
    bsz, h, w, c = b.shape
    rhs = b.reshape(bsz, h * w, c)
    sol = jax.vmap(lambda chol, r: jax.scipy.linalg.cho_solve((chol, True), r))(
      self.coarse_cholesky, rhs
    )
    return sol.reshape(bsz, h, w, c)

  def _vcycle(self, depth: int, b):
    if depth == len(self.levels) - 1:
      return self._coarse_solve(b)
    level = self.levels[depth]
    x = self._smooth(level, jnp.zeros_like(b), b, first_colour=0)
    coarse_b = _block_sum(b - _level_apply(level, x))
    correction = self._vcycle(depth + 1, coarse_b)
    x = x + _block_repeat(correction)
    return self._smooth(level, x, b, first_colour=1)

  def __call__(self, r: jax.Array) -> jax.Array:
    h, w = self.shape
    hp, wp = self.levels[0].mass.shape[1:3]
    padded = jnp.pad(r, ((0, 0), (0, hp - h), (0, wp - w), (0, 0)))
    return self._vcycle(0, padded)[:, :h, :w]


def pcg_solve(apply_a, b, x0, precondition, *, tol: float, max_iters: int):
  """Preconditioned conjugate gradient on independent systems.

  Each `(image, channel)` slice of `b` is its own system (inner products reduce over H and W). A
  system stops updating once ||b - A x|| <= tol * ||b||, so a batch yields what each image would
  alone; the loop ends when all systems have converged or after `max_iters` iterations.

  Args:
    apply_a: symmetric positive definite operator, `[B, H, W, C] -> [B, H, W, C]`.
    b: right-hand sides, `[B, H, W, C]`.
    x0: initial guess, same shape.
    precondition: symmetric positive definite approximation of A^-1, same signature as `apply_a`.
    tol: relative residual tolerance.
    max_iters: iteration cap.

  Returns:
    `(x, iters, rel_residual)` with `iters` and `rel_residual` of shape `[B, C]`.
  """
  b_norm = jnp.sqrt(_dot(b, b))
  threshold = tol * b_norm
  r = b - apply_a(x0)
  z = precondition(r)
  rz = _dot(r, z)
  active = jnp.sqrt(_dot(r, r)) > threshold
  iters = jnp.zeros(active.shape, jnp.int32)

  def cond(state):
    k, _, _, _, _, active, _ = state
    return jnp.logical_and(k < max_iters, jnp.any(active))

  def body(state):
    k, x, r, p, rz, active, iters = state
    ap = apply_a(p)
    alpha = jnp.where(active, _safe_div(rz, _dot(p, ap)), 0.0)
    x = x + alpha * p
    r = r - alpha * ap
    z = precondition(r)
    rz_new = _dot(r, z)
    beta = _safe_div(rz_new, rz)
    p = jnp.where(active, z + beta * p, p)
    rz = jnp.where(active, rz_new, rz)
    iters = iters + active.astype(jnp.int32)
    active = jnp.logical_and(active, jnp.sqrt(_dot(r, r)) > threshold)
    return k + 1, x, r, p, rz, active, iters

  state = (jnp.int32(0), x0, r, z, rz, active, iters)
  _, x, r, _, _, _, iters = jax.lax.while_loop(cond, body, state)
  rel_residual = _safe_div(jnp.sqrt(_dot(r, r)), b_norm)
  return x, iters[:, 0, 0, :], rel_residual[:, 0, 0, :]


@functools.partial(
  jax.jit, static_argnames=("lam", "sigma", "sharpness", "n_iter", "tol", "max_cg_iters")
)
def extract_structure_with_info(
  images: jax.Array,
  *,
  lam: float = DEFAULT_LAM,
  sigma: float = DEFAULT_SIGMA,
  sharpness: float = DEFAULT_SHARPNESS,
  n_iter: int = DEFAULT_N_ITER,
  tol: float = DEFAULT_TOL,
  max_cg_iters: int = DEFAULT_MAX_CG_ITERS,
) -> tuple[jax.Array, SolveInfo]:
  """`extract_structure`, plus the conjugate-gradient statistics of every outer iteration."""
  if images.ndim != 4:
    raise ValueError(f"extract_structure expects [B, H, W, C] images, got shape {images.shape}.")
  if images.shape[1] < 2 or images.shape[2] < 2:
    raise ValueError(f"extract_structure needs images of at least 2x2 pixels, got {images.shape}.")
  if not (lam > 0 and sigma > 0 and sharpness > 0 and n_iter >= 1 and tol > 0):
    raise ValueError(
      "RTV parameters must be positive (lam, sigma, sharpness, tol) and n_iter >= 1; got "
      f"lam={lam}, sigma={sigma}, sharpness={sharpness}, n_iter={n_iter}, tol={tol}."
    )
  dtype = images.dtype if jnp.issubdtype(images.dtype, jnp.floating) else jnp.float32
  rhs = jax.lax.stop_gradient(images.astype(dtype))
  lam_half = lam / 2.0  # the reference halves lambda before building the system.
  x = rhs
  sigma_t = sigma
  iters, residuals = [], []
  for _ in range(n_iter):
    wx, wy = texture_weights(x, sigma_t, sharpness)
    apply_a = functools.partial(system_apply, wx=wx, wy=wy, lam=lam_half)
    precondition = MultigridPreconditioner(wx, wy, lam_half)
    x, k, rel = pcg_solve(apply_a, rhs, x, precondition, tol=tol, max_iters=max_cg_iters)
    iters.append(k)
    residuals.append(rel)
    sigma_t = max(sigma_t / 2.0, 0.5)
  return x, SolveInfo(cg_iters=jnp.stack(iters), rel_residual=jnp.stack(residuals))


def extract_structure(
  images: jax.Array,
  *,
  lam: float = DEFAULT_LAM,
  sigma: float = DEFAULT_SIGMA,
  sharpness: float = DEFAULT_SHARPNESS,
  n_iter: int = DEFAULT_N_ITER,
  tol: float = DEFAULT_TOL,
  max_cg_iters: int = DEFAULT_MAX_CG_ITERS,
) -> jax.Array:
  """RTV structure of a batch of images.

  Args:
    images: `[B, H, W, C]` float in [0, 1].
    lam: smoothing weight lambda (halved internally, as the reference does).
    sigma: initial scale of the texture window; halves each outer iteration, floor 0.5.
    sharpness: floor of the gradient magnitude; smaller keeps sharper edges.
    n_iter: outer (re-weighting) iterations.
    tol: relative residual at which each conjugate-gradient solve stops.
    max_cg_iters: cap on conjugate-gradient iterations per solve.

  Returns:
    The structure, same shape as `images`.
  """
  structure, _ = extract_structure_with_info(
    images,
    lam=lam,
    sigma=sigma,
    sharpness=sharpness,
    n_iter=n_iter,
    tol=tol,
    max_cg_iters=max_cg_iters,
  )
  return structure


def structure_of(images: jax.Array, params: RTVParams) -> jax.Array:
  """RTV structure of `[B, H, W, C]` images in the models' `[-1, 1]` range, in `[-1, 1]`."""
  return extract_structure((images + 1.0) / 2.0, **params.as_kwargs()) * 2.0 - 1.0


def _positive(kind):
  def parse(text):
    value = kind(text)
    if value <= 0:
      raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value

  return parse


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(
    prog="python -m alenn_jax.rtv",
    description="RTV structure of one image (PNG/JPEG; colour is converted to grey).",
  )
  parser.add_argument("in_image", help="input PNG or JPEG")
  parser.add_argument("out_file", help="output: .npy (float32) or an 8-bit PNG")
  parser.add_argument("--lam", type=_positive(float), default=DEFAULT_LAM)
  parser.add_argument("--sigma", type=_positive(float), default=DEFAULT_SIGMA)
  parser.add_argument("--sharpness", type=_positive(float), default=DEFAULT_SHARPNESS)
  parser.add_argument("--iters", type=_positive(int), default=DEFAULT_N_ITER)
  parser.add_argument("--tol", type=_positive(float), default=DEFAULT_TOL)
  parser.add_argument("--max_cg_iters", type=_positive(int), default=DEFAULT_MAX_CG_ITERS)
  parser.add_argument("--size", type=_positive(int), default=None, help="resize to SIZE x SIZE")
  args = parser.parse_args(argv)

  try:
    grey = image_io.load_grey_image(args.in_image, args.size)
  except OSError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  structure, info = extract_structure_with_info(
    jnp.asarray(grey)[None, :, :, None],
    lam=args.lam,
    sigma=args.sigma,
    sharpness=args.sharpness,
    n_iter=args.iters,
    tol=args.tol,
    max_cg_iters=args.max_cg_iters,
  )
  try:
    image_io.save_grey(np.asarray(structure[0, :, :, 0]), args.out_file)
  except OSError as e:
    print(f"error: cannot write {args.out_file!r}: {e}", file=sys.stderr)
    return 2
  iters = np.asarray(info.cg_iters)[:, 0, 0].tolist()
  print(
    f"{args.in_image} {grey.shape[1]}x{grey.shape[0]} -> {args.out_file} (CG iterations {iters})"
  )
  return 0


if __name__ == "__main__":
  sys.exit(main())
