"""The image-only reference maps and the body mask, on hand-made images."""

import numpy as np
from absl.testing import absltest
from scipy import ndimage

from alenn_jax import foreground, image_priors


def _forearm(h=64, w=48, marker=True, band=True):
  """A dark film with a bright vertical limb (soft tissue with a brighter bone in it), a small
  bright side marker apart from it and a bright collimation band along the bottom."""
  image = np.full((h, w), 0.08)
  image[:, 14:34] = 0.35  # Soft tissue.
  image[:, 20:28] = 0.8  # Bone.
  image[30:33, 22:26] = 0.5  # A dark gap across the bone (a lesion), inside the body.
  if marker:
    image[4:9, 40:45] = 1.0
  if band:
    image[h - 4 :, :] = 0.95
  return image


class ImagePriorsTest(absltest.TestCase):
  def test_intensity_is_the_image_blurred_by_the_sigma_of_its_size(self):
    image = np.random.default_rng(0).random((40, 64))
    self.assertEqual(image_priors.prior_sigma(40, 64), 1.0)
    self.assertEqual(image_priors.prior_sigma(128, 100), 2.0)
    want = ndimage.gaussian_filter(image, 1.0, mode="nearest")
    np.testing.assert_allclose(image_priors.intensity_map(image), want)

  def test_gradient_is_largest_on_an_edge_and_zero_on_flat_ground(self):
    image = np.zeros((32, 32))
    image[:, 16:] = 1.0
    grad = image_priors.gradient_map(image)
    self.assertLessEqual(set(np.argmax(grad, axis=1)), {15, 16})
    np.testing.assert_allclose(grad[:, :8], 0.0, atol=1e-12)
    np.testing.assert_allclose(grad[:, 24:], 0.0, atol=1e-12)
    # The image's border is not an edge.
    np.testing.assert_allclose(image_priors.gradient_map(np.ones((16, 16))), 0.0, atol=1e-12)

  def test_centre_prior_peaks_in_the_middle(self):
    prior = image_priors.centre_prior(9, 15)
    self.assertEqual(np.unravel_index(np.argmax(prior), prior.shape), (4, 7))
    self.assertAlmostEqual(prior.max(), 1.0)


class BodyMaskTest(absltest.TestCase):
  def test_keeps_the_limb_and_drops_the_marker_and_the_band(self):
    image = _forearm()
    body = foreground.body_mask(image)
    self.assertTrue(body[10:56, 16:32].all())  # The limb, its lesion included.
    self.assertTrue(body[30:33, 22:26].all())
    self.assertFalse(body[4:9, 40:45].any())  # The marker.
    self.assertFalse(body[60:, :14].any())  # The band, beside the limb.
    self.assertFalse(body[:, :10].any())  # The air.

  def test_a_dark_gap_enclosed_by_the_body_is_body(self):
    image = np.full((48, 48), 0.05)
    image[8:40, 8:40] = 0.7
    image[20:28, 20:28] = 0.05  # Dark, but inside.
    body = foreground.body_mask(image, band=0.0)
    self.assertTrue(body[8:40, 8:40].all())
    self.assertFalse(body[:6].any())

  def test_erode_shrinks_the_body(self):
    image = _forearm(marker=False, band=False)
    plain = foreground.body_mask(image)
    eroded = foreground.body_mask(image, erode=2)
    self.assertTrue(np.all(eroded <= plain))
    # The blurred limb reaches a pixel past its edges (13 to 34); 2 px fewer on each side.
    self.assertTrue(plain[:, 13:35].all())
    self.assertFalse(eroded[:, :15].any() or eroded[:, 33:].any())
    self.assertTrue(eroded[:, 15:33].all())

  def test_keeps_everything_where_nothing_can_be_separated(self):
    self.assertTrue(foreground.body_mask(np.full((32, 32), 0.4)).all())  # Blank.
    bone = np.full((32, 32), 0.6)
    bone[:, 14:18] = 0.9  # No dark background: a tight crop of bright anatomy.
    bone[:2, :2] = 0.0
    self.assertTrue(foreground.body_mask(bone).all())
    for shape in ((1, 1), (2, 3), (64, 2), (7, 64)):  # Tiny or thin images: every pixel, no error.
      self.assertTrue(foreground.body_mask(np.arange(np.prod(shape)).reshape(shape)).all())
    speck = np.zeros((64, 64))
    speck[30:32, 30:32] = 1.0  # What is left is under `least` of the image.
    self.assertTrue(foreground.body_mask(speck).all())


if __name__ == "__main__":
  absltest.main()
