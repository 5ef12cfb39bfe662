"""The patient's body in a radiograph, from the image alone: what the LE maps keep.

Real films carry what is not patient: rulers, side markers ("L"/"R"), text labels, the bright
bands of collimation and film edges, and the letterbox bars of a non-square image. A normal-only
GAN fails to repaint all of them (they are rare and sharp), so without a mask they hold the
largest values of D and set the LE scale. On a radiograph the body is brighter than the air
around it, and what is not patient is either small and apart from it (markers, labels) or a band
along the film's edge (collimation):

  1. blur the image (a Gaussian of `image_priors.prior_sigma` px) and split it at the lower of
     the two three-class Otsu thresholds (air | soft tissue | bone; bright: body or artefact);
  2. drop bright bands along the border: a row (column) in the outer `band` of the image whose
     bright share exceeds `full_row` is a film or collimation edge, not anatomy;
  3. keep the connected bright regions of at least `keep_fraction` of the largest one (markers,
     labels and ruler marks are small and stand apart);
  4. fill the holes (dark regions enclosed by the body, e.g. between bones, are body) and shrink
     it by `erode` px.

Nothing here uses a lesion mask: it is part of the weakly supervised method. Where the image has
no dark background to separate (the bright share is above `most`, e.g. a tight crop), is under
8 px on a side, or the result keeps less than `least` of the image, every pixel is foreground: a
mask that cannot be trusted must not hide a lesion.
"""

import numpy as np
from scipy import ndimage
from skimage import filters

from alenn_jax import image_priors

MODES = ("none", "body")  # config.localize.foreground: "none" keeps every pixel.


def body_mask(
  image: np.ndarray,
  *,
  band: float = 0.1,
  full_row: float = 0.9,
  keep_fraction: float = 0.1,
  erode: int = 0,
  most: float = 0.9,
  least: float = 0.05,
) -> np.ndarray:
  """Boolean `[h, w]`: the body of `image` (`[h, w]`, any range; bright is dense), as above."""
  image = np.asarray(image, np.float64)
  h, w = image.shape
  everything = np.ones((h, w), bool)
  smooth = ndimage.gaussian_filter(image, image_priors.prior_sigma(h, w), mode="nearest")
  if min(h, w) < 8 or smooth.max() - smooth.min() < 1e-6:  # Too thin or blank to separate.
    return everything
  try:  # The lower of the two thresholds that split air, soft tissue and bone.
    bright = smooth > filters.threshold_multiotsu(smooth, classes=3)[0]
  except ValueError:  # Fewer than three grey levels (a tiny or flat image): nothing to split.
    return everything
  if bright.mean() > most:
    return everything
  rows, cols = max(1, round(band * h)), max(1, round(band * w))
  for edge in (slice(0, rows), slice(h - rows, h)):
    full = bright[edge].mean(axis=1) > full_row
    bright[edge][full] = False
  for edge in (slice(0, cols), slice(w - cols, w)):
    full = bright[:, edge].mean(axis=0) > full_row
    bright[:, edge][:, full] = False
  labels, count = ndimage.label(bright, structure=np.ones((3, 3), bool))
  if count == 0:
    return everything
  sizes = np.bincount(labels.ravel(), minlength=count + 1)[1:]
  kept = np.flatnonzero(sizes >= keep_fraction * sizes.max()) + 1
  body = ndimage.binary_fill_holes(np.isin(labels, kept))
  if erode > 0:
    body = ndimage.binary_erosion(body, iterations=erode, border_value=1)
  if body.mean() < least:
    return everything
  return body
