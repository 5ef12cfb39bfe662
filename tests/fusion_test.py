"""Lesion-enhancement fusion: shapes and values of none, enhance and channels."""

import jax.numpy as jnp
import numpy as np
from absl.testing import absltest

from alenn_jax import fusion


class FusionTest(absltest.TestCase):
  def setUp(self):
    super().setUp()
    self.images = jnp.asarray([[[[-1.0], [0.0]], [[1.0], [0.5]]]])  # [1, 2, 2, 1]
    self.le = jnp.asarray([[[[1.0], [0.5]], [[0.0], [1.0]]]])

  def test_none_is_the_image(self):
    np.testing.assert_array_equal(fusion.fuse(self.images, None, "none"), self.images)

  def test_enhance_scales_the_0_1_image_by_one_plus_gamma_le(self):
    out = np.asarray(fusion.fuse(self.images, self.le, "enhance", gamma=2.0))
    i01 = np.array([[0.0, 0.5], [1.0, 0.75]])
    want = i01 * (1 + 2.0 * np.array([[1.0, 0.5], [0.0, 1.0]])) * 2 - 1
    np.testing.assert_allclose(out[0, ..., 0], want)
    # Where LE is 0 the image is untouched.
    self.assertEqual(out[0, 1, 0, 0], 1.0)

  def test_channels_stacks_image_le_and_product(self):
    out = np.asarray(fusion.fuse(self.images, self.le, "channels"))
    self.assertEqual(out.shape, (1, 2, 2, 3))
    i01 = (np.asarray(self.images) + 1) / 2
    le = np.asarray(self.le)
    np.testing.assert_allclose(out[..., 0:1], self.images)
    np.testing.assert_allclose(out[..., 1:2], le * 2 - 1)
    np.testing.assert_allclose(out[..., 2:3], i01 * le * 2 - 1)
    self.assertEqual(fusion.num_channels("channels"), 3)
    self.assertEqual(fusion.num_channels("enhance"), 1)

  def test_imagenet_inputs_are_rgb_normalised_per_channel(self):
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    out = np.asarray(fusion.normalize(self.images, (mean, std)))
    self.assertEqual(out.shape, (1, 2, 2, 3))
    i01 = (np.asarray(self.images) + 1) / 2
    for c in range(3):
      np.testing.assert_allclose(out[..., c : c + 1], (i01 - mean[c]) / std[c], rtol=1e-6)
    three = fusion.fuse(self.images, self.le, "channels")
    np.testing.assert_allclose(
      np.asarray(fusion.normalize(three, ((0.5,) * 3, (0.5,) * 3))), three, rtol=1e-6
    )
    self.assertEqual(fusion.num_channels("none", pretrained=True), 3)

  def test_bad_mode_or_missing_maps_are_refused(self):
    with self.assertRaisesRegex(ValueError, "config.fusion='sum'.*none, enhance, channels"):
      fusion.fuse(self.images, self.le, "sum")
    with self.assertRaisesRegex(ValueError, "needs LE maps"):
      fusion.fuse(self.images, None, "enhance")
    with self.assertRaisesRegex(ValueError, "differ in shape"):
      fusion.fuse(self.images, self.le[:, :1], "channels")


if __name__ == "__main__":
  absltest.main()
