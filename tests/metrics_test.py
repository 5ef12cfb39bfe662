"""Image metrics against scikit-image."""

import jax.numpy as jnp
import numpy as np
from absl.testing import absltest, parameterized
from skimage import metrics as skm

from alenn_jax import metrics


class ImageMetricsTest(parameterized.TestCase):
  @parameterized.parameters((1.0, 1), (2.0, 1), (255.0, 3))
  def test_psnr_and_ssim_match_skimage(self, data_range, channels):
    rng = np.random.default_rng(int(data_range) + channels)
    a = rng.random((3, 40, 33, channels)) * data_range
    b = np.clip(a + rng.normal(0, 0.1 * data_range, a.shape), 0, data_range)
    b[1] = a[1] * 0.5  # A very different second pair.
    got_psnr = np.asarray(metrics.psnr(jnp.asarray(a), jnp.asarray(b), data_range))
    got_ssim = np.asarray(metrics.ssim(jnp.asarray(a), jnp.asarray(b), data_range))
    for i in range(3):
      want_psnr = skm.peak_signal_noise_ratio(a[i], b[i], data_range=data_range)
      want_ssim = skm.structural_similarity(
        a[i],
        b[i],
        data_range=data_range,
        gaussian_weights=True,
        sigma=1.5,
        use_sample_covariance=False,
        channel_axis=-1,
      )
      self.assertAlmostEqual(got_psnr[i], want_psnr, delta=1e-4 * abs(want_psnr))
      self.assertAlmostEqual(got_ssim[i], want_ssim, delta=1e-4)

  def test_identical_images(self):
    a = jnp.asarray(np.random.default_rng(0).random((2, 16, 16, 1)))
    self.assertTrue(np.all(np.isinf(np.asarray(metrics.psnr(a, a, 1.0)))))
    np.testing.assert_allclose(np.asarray(metrics.ssim(a, a, 1.0)), 1.0, atol=1e-6)

  def test_ssim_rejects_tiny_images(self):
    with self.assertRaisesRegex(ValueError, "larger than 10x10"):
      metrics.ssim(jnp.zeros((1, 8, 8, 1)), jnp.zeros((1, 8, 8, 1)), 1.0)


if __name__ == "__main__":
  absltest.main()
