"""normal_error: patch descriptors, k-means classes and D divided by the normals' error."""

import os
import tempfile

import jax.numpy as jnp
import numpy as np
from absl.testing import absltest, parameterized

from alenn_jax import normal_error
from alenn_jax.errors import UserInputError


def numpy_lloyd(samples, codes, iterations):
  """Reference k-means: plain assignment to the nearest code, then each code to its members' mean
  (a code without members stays)."""
  codes = codes.copy()
  for _ in range(iterations):
    distance = ((samples[:, None] - codes[None]) ** 2).sum(-1)
    member = distance.argmin(1)
    for c in range(len(codes)):
      if (member == c).any():
        codes[c] = samples[member == c].mean(0)
  return codes


def lines_and_blob(n: int, rng, blob: bool = False):
  """`[n, 24, 24, 1]` images of bright bone (0.6) crossed by 1-px dark lines (-0.4) every 4
  columns from a random first column, and their D: 0.5 on the lines (normals fail to repaint
  them), 0.01 elsewhere; with `blob`, a 3 x 3 brighter spot (1.0) between two lines with the same
  D as the lines. Returns images, D and each image's first line column."""
  images = np.full((n, 24, 24, 1), 0.6, np.float32)
  d = np.full((n, 24, 24, 1), 0.01, np.float32)
  firsts = rng.integers(0, 4, n)
  for i, first in enumerate(firsts):
    images[i, :, first::4] = -0.4
    d[i, :, first::4] = 0.5
    if blob:
      images[i, 10:13, first + 5 : first + 8] = 1.0
      d[i, 10:13, first + 5 : first + 8] = 0.5
  return images, d, firsts


def fit_everywhere(images, d, **fields):
  """`normal_error.fit` on every pixel of `images` (no letterbox bars)."""
  return normal_error.fit(images, d, np.ones(images.shape[:3], bool), **fields)


class NormalErrorTest(parameterized.TestCase):
  @parameterized.parameters(1, 3, 5)
  def test_patches_are_each_pixels_reflected_neighbourhood(self, patch):
    images = np.random.default_rng(0).normal(size=(2, 6, 7, 1)).astype(np.float32)
    got = np.asarray(normal_error.patches(jnp.asarray(images), patch))
    r = patch // 2
    padded = np.pad(images[..., 0], ((0, 0), (r, r), (r, r)), mode="reflect")
    for y, x in ((0, 0), (5, 6), (2, 3)):
      expected = padded[:, y : y + patch, x : x + patch].reshape(2, -1)
      np.testing.assert_array_equal(got[:, y, x], expected)

  def test_lloyd_steps_match_a_numpy_kmeans(self):
    rng = np.random.default_rng(1)
    samples = rng.normal(size=(300, 4)).astype(np.float32)
    start = samples[:6].copy()
    got = np.asarray(normal_error._lloyd_jit(jnp.asarray(samples), jnp.asarray(start), 5))
    np.testing.assert_allclose(got, numpy_lloyd(samples, start, 5), atol=1e-5)

  def test_the_normals_own_error_is_discounted_and_a_new_appearance_is_not(self):
    rng = np.random.default_rng(2)
    images, d, _ = lines_and_blob(40, rng)
    model = fit_everywhere(
      images,
      d,
      patch=3,
      codes=8,
      pixels=8000,
      iterations=10,
      floor_fraction=1.0,
    )
    test_images, test_d, firsts = lines_and_blob(4, rng, blob=True)
    expected = np.asarray(normal_error.expected_error(model, jnp.asarray(test_images)))
    calibrated = np.asarray(normal_error.calibrate(model, jnp.asarray(test_images), test_d))
    for i, first in enumerate(firsts):
      line, spot = (20, first + 4), (11, first + 6)
      # The lines, which every normal has, get the normals' error there; the spot, the same raw
      # D, looks like the bone normals repaint well.
      self.assertGreater(expected[i, *line, 0], 0.3)
      self.assertLess(expected[i, *spot, 0], 0.1)
      self.assertGreater(calibrated[i, *spot, 0], 3 * calibrated[i, *line, 0])
      self.assertIn(np.argmax(calibrated[i, ..., 0]) // 24, (10, 11, 12))  # The spot's rows.
    self.assertAlmostEqual(float(model.floor), float(d.mean()), delta=0.02)

  def test_only_pixels_inside_the_extent_are_sampled(self):
    rng = np.random.default_rng(3)
    images, d, _ = lines_and_blob(10, rng)
    valid = np.zeros(images.shape[:3], bool)
    valid[:, :, :12] = True
    d[:, :, 12:] = 100.0  # Bars: never part of the fit.
    model = normal_error.fit(
      images, d, valid, patch=3, codes=4, pixels=1000, iterations=3, floor_fraction=1.0
    )
    self.assertLess(float(np.max(model.expected)), 1.0)

  def test_the_chunk_does_not_change_the_error(self):
    rng = np.random.default_rng(4)
    images, d, _ = lines_and_blob(8, rng)
    model = fit_everywhere(
      images,
      d,
      patch=3,
      codes=5,
      pixels=2000,
      iterations=4,
      floor_fraction=0.5,
    )
    whole = normal_error.expected_error(model, jnp.asarray(images), chunk=24 * 24)
    chunked = normal_error.expected_error(model, jnp.asarray(images), chunk=100)
    np.testing.assert_array_equal(np.asarray(whole), np.asarray(chunked))
    # And it is the mean D of a nearest code (brute force; ties may go either way).
    x = np.asarray(normal_error.patches(jnp.asarray(images), 3)).reshape(-1, 9)
    distance = ((x[:, None] - np.asarray(model.codes)[None]) ** 2).sum(-1)  # [pixels, codes]
    expected = np.asarray(model.expected)
    got = np.asarray(chunked).reshape(-1)
    for i in range(len(x)):
      nearest = np.flatnonzero(distance[i] <= distance[i].min() + 1e-4)
      self.assertIn(got[i], expected[nearest])

  def test_a_saved_model_loads_as_it_was(self):
    rng = np.random.default_rng(5)
    images, d, _ = lines_and_blob(4, rng)
    model = fit_everywhere(
      images,
      d,
      patch=3,
      codes=4,
      pixels=500,
      iterations=2,
      floor_fraction=1.0,
    )
    with tempfile.TemporaryDirectory() as tmp:
      path = os.path.join(tmp, "m.npz")
      normal_error.save(path, model)
      loaded = normal_error.load(path)
    for a, b in zip(model, loaded, strict=True):
      np.testing.assert_array_equal(np.asarray(a), np.asarray(b))

  def test_more_codes_than_pixels_is_refused_naming_the_field(self):
    images, d, _ = lines_and_blob(1, np.random.default_rng(6))
    valid = np.zeros(images.shape[:3], bool)
    valid[0, :2, :2] = True
    with self.assertRaisesRegex(UserInputError, r"config.normal_error.codes=8: .* only 4 pixels"):
      normal_error.fit(
        images, d, valid, patch=3, codes=8, pixels=100, iterations=1, floor_fraction=1.0
      )


if __name__ == "__main__":
  absltest.main()
