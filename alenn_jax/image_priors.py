"""Maps made from the image alone, scored beside ALENN's in `localization.csv`.

A difference map that only tracks brightness or edges is not localizing lesions: reconstruction
residuals on medical images often do no better than a threshold on intensity (Meissen et al., "On
the Pitfalls of Using the Residual Error as Anomaly Score", MIDL 2022). So every report scores,
beside a uniformly random map,

  centre prior   a Gaussian centred on the image (sigma a quarter of its longer side)
  intensity      the image itself, blurred with a Gaussian of `prior_sigma(h, w)` px
  gradient       the magnitude of the Sobel gradient of that blurred image

ALENN counts as localizing only where it beats all three. Images are `[h, w]` in [0, 1], each
cropped to its own extent inside the letterbox square.
"""

import numpy as np
from scipy import ndimage


def prior_sigma(h: int, w: int) -> float:
  """The blur of the image-only maps: 1 px at 64 px, growing with the image (2 px at 128 px), so
  the maps mean the same structure at every working resolution."""
  return max(h, w) / 64.0


def centre_prior(h: int, w: int) -> np.ndarray:
  yy, xx = np.mgrid[0:h, 0:w]
  sigma = 0.25 * max(h, w)
  return np.exp(-(((yy - (h - 1) / 2) ** 2 + (xx - (w - 1) / 2) ** 2) / (2 * sigma**2)))


def intensity_map(image: np.ndarray) -> np.ndarray:
  """The image blurred with a Gaussian of `prior_sigma` px ("where the image is bright")."""
  image = np.asarray(image, np.float64)
  return ndimage.gaussian_filter(image, prior_sigma(*image.shape), mode="nearest")


def gradient_map(image: np.ndarray) -> np.ndarray:
  """|Sobel| of the blurred image ("where the edges are"); reflected at the image's border, so
  the border itself is not an edge."""
  smooth = intensity_map(image)
  gy = ndimage.sobel(smooth, axis=0, mode="nearest")
  gx = ndimage.sobel(smooth, axis=1, mode="nearest")
  return np.hypot(gx, gy)
