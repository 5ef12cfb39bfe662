"""Image-quality metrics (JAX): PSNR and SSIM, the paper's eq. 13-15.

SSIM follows Wang et al. (2004) as scikit-image computes it with `gaussian_weights=True`: an 11 x 11
Gaussian window (sigma 1.5, truncated at 3.5 sigma), K1 = 0.01, K2 = 0.03, population covariances,
'reflect' borders, and the mean of the SSIM map over the image less a 5-pixel border. (The paper's
eq. 14 prints the denominators as products; they are sums, as in Wang et al.)
"""

import jax
import jax.numpy as jnp
import numpy as np

SSIM_SIGMA = 1.5
SSIM_TRUNCATE = 3.5
SSIM_K1 = 0.01
SSIM_K2 = 0.03


def psnr(a: jax.Array, b: jax.Array, data_range: float) -> jax.Array:
  """Peak signal-to-noise ratio in dB of each image: `[B, H, W, C]` x2 -> `[B]` (inf if equal)."""
  mse = jnp.mean((a.astype(jnp.float32) - b.astype(jnp.float32)) ** 2, axis=(1, 2, 3))
  return 10.0 * jnp.log10(data_range**2 / mse)


def _gaussian_window() -> np.ndarray:
  radius = int(SSIM_TRUNCATE * SSIM_SIGMA + 0.5)
  x = np.arange(-radius, radius + 1, dtype=np.float64)
  g = np.exp(-0.5 * (x / SSIM_SIGMA) ** 2)
  return (g / g.sum()).astype(np.float32)


def _filter(x: jax.Array, window: np.ndarray) -> jax.Array:
  """Separable filtering over H and W with symmetric ('reflect' in scipy) borders."""
  r = len(window) // 2
  for axis in (1, 2):
    pad = [(0, 0)] * 4
    pad[axis] = (r, r)
    padded = jnp.pad(x, pad, mode="symmetric")
    n = x.shape[axis]
    x = sum(
      float(w) * jax.lax.slice_in_dim(padded, i, i + n, axis=axis) for i, w in enumerate(window)
    )
  return x


def ssim(a: jax.Array, b: jax.Array, data_range: float) -> jax.Array:
  """Mean structural similarity of each image: `[B, H, W, C]` x2 -> `[B]` (channels averaged)."""
  window = _gaussian_window()
  pad = len(window) // 2
  if a.shape[1] <= 2 * pad or a.shape[2] <= 2 * pad:
    raise ValueError(f"SSIM needs images larger than {2 * pad}x{2 * pad}, got {a.shape}.")
  a = a.astype(jnp.float32)
  b = b.astype(jnp.float32)
  ux, uy = _filter(a, window), _filter(b, window)
  vx = _filter(a * a, window) - ux * ux
  vy = _filter(b * b, window) - uy * uy
  vxy = _filter(a * b, window) - ux * uy
  c1 = (SSIM_K1 * data_range) ** 2
  c2 = (SSIM_K2 * data_range) ** 2
  s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux**2 + uy**2 + c1) * (vx + vy + c2))
  return jnp.mean(s[:, pad:-pad, pad:-pad, :], axis=(1, 2, 3))
