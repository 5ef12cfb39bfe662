"""Mask samplers and window masks."""

import jax
import jax.numpy as jnp
import numpy as np
from absl.testing import absltest, parameterized

from alenn_jax import masks


class MasksTest(parameterized.TestCase):
  def test_rectangle_hole_fraction_within_bounds(self):
    for seed in range(20):
      m = np.asarray(masks.rectangle_mask(jax.random.PRNGKey(seed), 40, 50, 0.2, 0.5))
      hole = 1.0 - m
      rows, cols = np.nonzero(hole)
      h, w = rows.max() - rows.min() + 1, cols.max() - cols.min() + 1
      self.assertEqual(hole.sum(), h * w)  # One solid rectangle.
      self.assertTrue(8 <= h <= 20 and 10 <= w <= 25, (h, w))

  def test_window_mask_is_one_window_square(self):
    m = np.asarray(masks.window_mask(jax.random.PRNGKey(0), 32, 32, 8))
    self.assertEqual((1 - m).sum(), 64)
    rows, cols = np.nonzero(1 - m)
    self.assertEqual((np.ptp(rows) + 1, np.ptp(cols) + 1), (8, 8))

  def test_strokes_make_a_partial_hole(self):
    fractions = [
      1 - float(masks.strokes_mask(jax.random.PRNGKey(s), 64, 64, 4, 5, 0.06).mean())
      for s in range(10)
    ]
    self.assertTrue(all(0.005 < f < 0.6 for f in fractions), fractions)

  def test_sample_masks_are_binary_and_mix_kinds(self):
    config = masks.mask_config()
    config.window = 8
    m = np.asarray(masks.sample_masks(jax.random.PRNGKey(1), 64, 32, 32, config))
    self.assertEqual(m.shape, (64, 32, 32, 1))
    self.assertTrue(set(np.unique(m)) <= {0.0, 1.0})
    holes = (1 - m).sum(axis=(1, 2, 3))
    self.assertTrue(np.all(holes > 0))
    self.assertGreater(np.sum(holes == 64), 5)  # Window squares...
    self.assertGreater(np.sum(holes != 64), 5)  # ... and other kinds.

  def test_sample_masks_only_windows_when_weighted_so(self):
    config = masks.mask_config()
    config.weights = (0.0, 0.0, 1.0, 0.0)
    config.window = 4
    m = np.asarray(masks.sample_masks(jax.random.PRNGKey(2), 16, 16, 16, config))
    np.testing.assert_array_equal((1 - m).sum(axis=(1, 2, 3)), 16)

  def test_grid_masks_are_the_localize_windows_and_groups(self):
    config = masks.mask_config()
    config.weights = (0.0, 0.0, 0.0, 1.0)
    config.window, config.grid_stride, config.grid_gap = 8, 4, 8
    m = np.asarray(masks.sample_masks(jax.random.PRNGKey(3), 64, 32, 32, config))[..., 0]
    positions = masks.window_positions(32, 32, 8, 4)
    groups = masks.window_groups(32, 32, 8, 4, 8)
    allowed = [masks.hole_masks(32, 32, 8, p[None])[..., 0] for p in positions]
    allowed += [masks.hole_masks(32, 32, 8, positions[g])[..., 0] for g in groups]
    allowed = np.stack(allowed)
    kinds = set()
    for mask in m:
      self.assertTrue(np.any(np.all(allowed == mask, axis=(1, 2))))
      kinds.add(bool((mask == 0).sum() > 64))
    self.assertEqual(kinds, {False, True})  # Single windows and whole groups both occur.

  @parameterized.parameters((32, 32, 8, 8), (32, 40, 8, 6), (33, 31, 9, 4), (16, 16, 16, 4))
  def test_window_masks_cover_every_pixel(self, h, w, window, stride):
    m = masks.window_masks(h, w, window, stride)
    coverage = (1 - m).sum(axis=0)[..., 0]
    self.assertTrue(np.all(coverage >= 1))
    self.assertTrue(np.all((1 - m).sum(axis=(1, 2, 3)) == window * window))

  @parameterized.parameters((32, 32, 8, 4, 4, 9), (64, 64, 16, 8, 16, 16), (20, 20, 6, 5, 2, None))
  def test_window_groups_cover_every_window_once_and_keep_gap(self, h, w, window, stride, gap, n):
    positions = masks.window_positions(h, w, window, stride)
    groups = masks.window_groups(h, w, window, stride, gap)
    members = np.concatenate(groups)
    self.assertEqual(sorted(members.tolist()), list(range(len(positions))))
    if n is not None:
      self.assertLen(groups, n)  # ceil((window + gap) / stride) ** 2 on a regular grid.
    for group in groups:
      p = positions[group]
      for i in range(len(p)):
        for j in range(i + 1, len(p)):
          apart = max(abs(p[i, 0] - p[j, 0]), abs(p[i, 1] - p[j, 1])) - window
          self.assertGreaterEqual(apart, gap)
      hole = masks.hole_masks(h, w, window, p)
      self.assertEqual((hole == 0).sum(), len(p) * window * window)  # Disjoint windows.

  def test_window_groups_refuse_touching_windows(self):
    with self.assertRaisesRegex(ValueError, "gap >= 1"):
      masks.window_groups(16, 16, 4, 2, 0)

  def test_window_positions_known_values(self):
    np.testing.assert_array_equal(
      masks.window_positions(10, 10, 4, 4),
      [[0, 0], [0, 4], [0, 6], [4, 0], [4, 4], [4, 6], [6, 0], [6, 4], [6, 6]],
    )
    with self.assertRaisesRegex(ValueError, "window <= min"):
      masks.window_positions(8, 8, 9, 1)

  def test_composite_keeps_pixels_outside_the_hole(self):
    image = jnp.asarray(np.random.default_rng(0).uniform(-1, 1, (2, 8, 8, 1)), jnp.float32)
    generated = jnp.full_like(image, 0.25)
    mask = jnp.asarray(masks.window_masks(8, 8, 4, 4)[:2])
    out = np.asarray(masks.composite(image, generated, mask))
    keep = np.asarray(mask) == 1
    np.testing.assert_array_equal(out[keep], np.asarray(image)[keep])
    np.testing.assert_array_equal(out[~keep], 0.25)


if __name__ == "__main__":
  absltest.main()
