"""The procedural phantom radiographs."""

import numpy as np
from absl.testing import absltest, parameterized

from alenn_jax.datasets.phantoms import render


class RenderPhantomTest(parameterized.TestCase):
  def test_same_seed_same_image(self):
    a, ma = render.render_phantom(3, 64, "lytic")
    b, mb = render.render_phantom(3, 64, "lytic")
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(ma, mb)
    self.assertFalse(np.array_equal(a, render.render_phantom(4, 64, "lytic")[0]))

  def test_normal_image_has_empty_mask_and_looks_like_a_radiograph(self):
    image, mask = render.render_phantom(0, 96)
    self.assertEqual(image.dtype, np.uint8)
    self.assertEqual(image.shape, (96, 96))
    self.assertEqual(mask.sum(), 0)
    # Dark air at the borders, bright bone in the middle, and a real spread of grey levels.
    self.assertLess(np.median(image[:, :5]), 60)
    self.assertGreater(np.percentile(image, 99), 150)
    self.assertGreater(image.std(), 20)

  @parameterized.parameters(*render.LESION_KINDS)
  def test_lesion_has_mask_inside_image_and_changes_pixels(self, kind):
    for seed in range(5):
      image, mask = render.render_phantom(seed, 64, kind)
      normal, _ = render.render_phantom(seed, 64, None)
      self.assertGreater(mask.sum(), 0, f"{kind} seed {seed}")
      self.assertTrue(set(np.unique(mask)) <= {0, 1})
      changed = np.abs(image.astype(int) - normal.astype(int)) > 12
      # Most of the visible change happens at the lesion (noise aside, the rest is identical).
      near = np.zeros_like(mask, bool)
      ys, xs = np.nonzero(mask)
      near[max(ys.min() - 2, 0) : ys.max() + 3, max(xs.min() - 2, 0) : xs.max() + 3] = True
      self.assertGreater(changed[near].sum(), 0, f"{kind} seed {seed}")

  def test_bad_arguments(self):
    with self.assertRaisesRegex(ValueError, "at least 16"):
      render.render_phantom(0, 8)
    with self.assertRaisesRegex(ValueError, "unknown lesion kind"):
      render.render_phantom(0, 64, "tumour")


if __name__ == "__main__":
  absltest.main()
