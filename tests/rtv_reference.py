"""Float64 reference of RTV, built the way the authors' MATLAB `tsmooth` builds it.

Used by the tests and the benchmark to check `alenn_jax.rtv`; it is not part of the package. Every
step follows the reference code: column-major pixel order, `spdiags` with diagonals -r and -1, the
diagonal 1 - (e + w + s + n), and a sparse *direct* solve (the reference's fallback when `ichol` is
unavailable), right-hand side always the input image.
"""

import math

import numpy as np
import scipy.signal
import scipy.sparse
import scipy.sparse.linalg


def matlab_round(x: float) -> int:
  return math.floor(x + 0.5) if x >= 0 else -math.floor(-x + 0.5)


def gaussian_1d(sigma: float) -> np.ndarray:
  ksize = matlab_round(5 * sigma) | 1  # bitor(round(5*sigma), 1)
  x = np.arange(ksize) - (ksize - 1) / 2
  g = np.exp(-(x**2) / (2 * sigma**2))
  g[g < np.finfo(float).eps * g.max()] = 0
  return g / g.sum()


def lpfilter(img: np.ndarray, sigma: float) -> np.ndarray:
  """conv2(conv2(im, g, 'same'), g', 'same') per channel. img [H, W, C]."""
  g = gaussian_1d(sigma)
  out = np.empty_like(img)
  for c in range(img.shape[2]):
    tmp = scipy.signal.convolve2d(img[:, :, c], g[None, :], mode="same")
    out[:, :, c] = scipy.signal.convolve2d(tmp, g[:, None], mode="same")
  return out


def texture_weights(fin: np.ndarray, sigma: float, sharpness: float):
  """computeTextureWeights. fin [H, W, C] float64 -> (wx, wy) [H, W]."""
  ch = fin.shape[2]
  fx = np.pad(np.diff(fin, axis=1), ((0, 0), (0, 1), (0, 0)))
  fy = np.pad(np.diff(fin, axis=0), ((0, 1), (0, 0), (0, 0)))
  wto = 1.0 / np.maximum(np.sum(np.sqrt(fx**2 + fy**2), axis=2) / ch, sharpness)
  fbin = lpfilter(fin, sigma)
  gfx = np.pad(np.diff(fbin, axis=1), ((0, 0), (0, 1), (0, 0)))
  gfy = np.pad(np.diff(fbin, axis=0), ((0, 1), (0, 0), (0, 0)))
  wtbx = 1.0 / np.maximum(np.sum(np.abs(gfx), axis=2) / ch, 0.001)
  wtby = 1.0 / np.maximum(np.sum(np.abs(gfy), axis=2) / ch, 0.001)
  retx = wtbx * wto
  rety = wtby * wto
  retx[:, -1] = 0
  rety[-1, :] = 0
  return retx, rety


def system_matrix(wx: np.ndarray, wy: np.ndarray, lam: float) -> scipy.sparse.csc_matrix:
  """The matrix of solveLinearEquation (lam already halved). Unknowns in column-major order."""
  r, c = wx.shape
  k = r * c
  dx = -lam * wx.flatten(order="F")
  dy = -lam * wy.flatten(order="F")
  # spdiags([dx, dy], [-r, -1], k, k): for a sub-diagonal d, A(j - d, j) = B(j).
  a = scipy.sparse.diags([dx[: k - r], dy[: k - 1]], [-r, -1], shape=(k, k))
  e = dx
  w = np.concatenate([np.zeros(r), dx[: k - r]])  # padarray(dx, r, 'pre'), last r dropped
  s = dy
  n = np.concatenate([np.zeros(1), dy[: k - 1]])
  d = 1 - (e + w + s + n)
  return (a + a.T + scipy.sparse.diags(d, 0, shape=(k, k))).tocsc()


def solve_linear_equation(img: np.ndarray, wx, wy, lam: float) -> np.ndarray:
  a = system_matrix(wx, wy, lam)
  out = np.empty_like(img)
  lu = scipy.sparse.linalg.splu(a)
  for ch in range(img.shape[2]):
    out[:, :, ch] = lu.solve(img[:, :, ch].flatten(order="F")).reshape(img.shape[:2], order="F")
  return out


def tsmooth(img, lam=0.01, sigma=3.0, sharpness=0.02, max_iter=4) -> np.ndarray:
  """The reference algorithm on one `[H, W, C]` (or `[H, W]`) image, float64."""
  img = np.asarray(img, np.float64)
  squeeze = img.ndim == 2
  if squeeze:
    img = img[:, :, None]
  x = img
  sigma_iter = sigma
  lam = lam / 2.0
  for _ in range(max_iter):
    wx, wy = texture_weights(x, sigma_iter, sharpness)
    x = solve_linear_equation(img, wx, wy, lam)
    sigma_iter = max(sigma_iter / 2.0, 0.5)
  return x[:, :, 0] if squeeze else x
