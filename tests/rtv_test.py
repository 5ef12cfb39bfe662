"""Tests of RTV structure extraction against a float64 re-implementation of the authors' code."""

import glob
import os
import subprocess
import sys
import tempfile

import jax
import jax.numpy as jnp
import numpy as np
from absl.testing import absltest, parameterized
from PIL import Image

from alenn_jax import image_io, rtv, sharding
from tests import rtv_reference

FRACATLAS = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "fracatlas")
# (lam, sigma, sharpness, n_iter): the reference code's defaults and StructureFlow's call.
REFERENCE_DEFAULTS = (0.01, 3.0, 0.02, 4)
STRUCTUREFLOW = (0.015, 3.0, 0.001, 3)
TIGHT_TOL = 1e-6


def synthetic_image(h=72, w=88, seed=0) -> np.ndarray:
  """Two overlapping shapes with a textured interior, noise and a gradient background."""
  rng = np.random.default_rng(seed)
  yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
  img = 0.2 + 0.2 * xx
  img = np.where((xx - 0.45) ** 2 + (yy - 0.4) ** 2 < 0.08, 0.7 + 0.1 * np.sin(60 * xx), img)
  img = np.where((np.abs(xx - 0.3) < 0.08) & (yy > 0.3), 0.9 + 0.05 * np.cos(50 * yy), img)
  return np.clip(img + 0.03 * rng.standard_normal((h, w)), 0, 1).astype(np.float32)


def real_radiograph(size=(96, 80)) -> np.ndarray | None:
  files = sorted(glob.glob(os.path.join(FRACATLAS, "images", "Fractured", "*.jpg")))
  if not files:
    return None
  with Image.open(files[0]) as img:
    grey = img.convert("L").resize(size[::-1], Image.Resampling.BILINEAR)
  return np.asarray(grey, np.float32) / 255.0


def run_rtv(images, params, tol=TIGHT_TOL, max_cg_iters=2000):
  lam, sigma, sharpness, n_iter = params
  return rtv.extract_structure(
    jnp.asarray(images),
    lam=lam,
    sigma=sigma,
    sharpness=sharpness,
    n_iter=n_iter,
    tol=tol,
    max_cg_iters=max_cg_iters,
  )


class GaussianTest(parameterized.TestCase):
  @parameterized.parameters((3.0, 15), (1.5, 9), (0.75, 5), (0.5, 3), (0.3, 3), (0.1, 1))
  def test_kernel_size_rounds_half_away_from_zero_and_is_odd(self, sigma, size):
    # round(7.5) = 8 -> 9 and round(2.5) = 3, where Python's round() would give 8 and 2.
    self.assertEqual(rtv.gaussian_kernel_size(sigma), size)

  @parameterized.parameters(3.0, 1.5, 0.75, 0.5)
  def test_blur_matches_reference_lpfilter(self, sigma):
    x = np.random.default_rng(1).random((1, 23, 31, 2))
    expected = rtv_reference.lpfilter(x[0], sigma)
    with jax.enable_x64(True):
      got = np.asarray(rtv.gaussian_blur(jnp.asarray(x), sigma))[0]
    np.testing.assert_allclose(got, expected, atol=1e-12)


class OperatorTest(parameterized.TestCase):
  def test_texture_weights_match_reference(self):
    s = np.random.default_rng(2).random((1, 20, 17, 3))
    ref_wx, ref_wy = rtv_reference.texture_weights(s[0], 1.5, 0.02)
    with jax.enable_x64(True):
      wx, wy = rtv.texture_weights(jnp.asarray(s), 1.5, 0.02)
    np.testing.assert_allclose(np.asarray(wx)[0, :, :, 0], ref_wx, rtol=1e-12)
    np.testing.assert_allclose(np.asarray(wy)[0, :, :, 0], ref_wy, rtol=1e-12)
    self.assertTrue(np.all(np.asarray(wx)[0, :, -1] == 0))
    self.assertTrue(np.all(np.asarray(wy)[0, -1, :] == 0))

  @parameterized.parameters((9, 7), (16, 16), (5, 12))
  def test_operator_equals_reference_sparse_matrix(self, h, w):
    rng = np.random.default_rng(h * w)
    wx = rng.random((h, w)) * 100
    wy = rng.random((h, w)) * 100
    wx[:, -1] = 0  # As computeTextureWeights leaves them.
    wy[-1, :] = 0
    x = rng.standard_normal((h, w))
    lam = 0.0075
    matrix = rtv_reference.system_matrix(wx, wy, lam)
    expected = (matrix @ x.flatten(order="F")).reshape((h, w), order="F")
    with jax.enable_x64(True):
      got = rtv.system_apply(
        jnp.asarray(x)[None, :, :, None],
        jnp.asarray(wx)[None, :, :, None],
        jnp.asarray(wy)[None, :, :, None],
        lam,
      )
    np.testing.assert_allclose(np.asarray(got)[0, :, :, 0], expected, rtol=1e-12, atol=1e-12)

  @parameterized.parameters((8, 8), (40, 33), (70, 18))
  def test_multigrid_preconditioner_is_symmetric_positive_definite(self, h, w):
    rng = np.random.default_rng(h + w)
    with jax.enable_x64(True):
      s = jnp.asarray(rng.random((2, h, w, 1)))
      wx, wy = rtv.texture_weights(s, 3.0, 0.001)
      precondition = rtv.MultigridPreconditioner(wx, wy, 0.0075)
      u = jnp.asarray(rng.standard_normal((2, h, w, 1)))
      v = jnp.asarray(rng.standard_normal((2, h, w, 1)))
      u_pv = np.asarray(jnp.sum(u * precondition(v), axis=(1, 2, 3)))
      pu_v = np.asarray(jnp.sum(precondition(u) * v, axis=(1, 2, 3)))
      u_pu = np.asarray(jnp.sum(u * precondition(u), axis=(1, 2, 3)))
    np.testing.assert_allclose(u_pv, pu_v, rtol=1e-9)
    self.assertTrue(np.all(u_pu > 0))

  def test_pcg_reaches_tolerance_and_stops_converged_systems(self):
    rng = np.random.default_rng(3)
    s = jnp.asarray(rng.random((3, 24, 24, 2)), jnp.float32)
    wx, wy = rtv.texture_weights(s, 3.0, 0.02)
    apply_a = lambda x: rtv.system_apply(x, wx, wy, 0.005)
    b = s.at[1].set(0.0)  # A zero right-hand side is converged from the start.
    x, iters, rel = rtv.pcg_solve(
      apply_a,
      b,
      jnp.zeros_like(b),
      rtv.MultigridPreconditioner(wx, wy, 0.005),
      tol=1e-5,
      max_iters=200,
    )
    iters, rel = np.asarray(iters), np.asarray(rel)
    self.assertTrue(np.all(rel[[0, 2]] <= 1e-5), rel)
    np.testing.assert_array_equal(iters[1], 0)
    np.testing.assert_array_equal(np.asarray(x)[1], 0.0)
    true_rel = np.linalg.norm(np.asarray(b - apply_a(x))[0]) / np.linalg.norm(np.asarray(b)[0])
    self.assertLess(true_rel, 1e-4)


class ExtractStructureTest(parameterized.TestCase):
  @parameterized.named_parameters(
    ("synthetic_reference_defaults", "synthetic", REFERENCE_DEFAULTS),
    ("synthetic_structureflow", "synthetic", STRUCTUREFLOW),
    ("radiograph_reference_defaults", "radiograph", REFERENCE_DEFAULTS),
    ("radiograph_structureflow", "radiograph", STRUCTUREFLOW),
  )
  def test_matches_float64_direct_solve_of_reference_algorithm(self, source, params):
    img = synthetic_image() if source == "synthetic" else real_radiograph()
    if img is None:
      self.skipTest(f"no FracAtlas images under {FRACATLAS}")
    expected = rtv_reference.tsmooth(img.astype(np.float64), *params)
    got = np.asarray(run_rtv(img[None, :, :, None], params))[0, :, :, 0]
    self.assertLess(np.abs(got - expected).max(), 1e-4)
    # And RTV did something: the structure is not the input.
    self.assertGreater(np.abs(expected - img).max(), 0.05)

  def test_batch_equals_images_one_by_one(self):
    batch = np.stack([synthetic_image(seed=i) for i in range(3)])[..., None]
    together = np.asarray(run_rtv(batch, STRUCTUREFLOW, tol=1e-4))
    for i in range(3):
      alone = np.asarray(run_rtv(batch[i : i + 1], STRUCTUREFLOW, tol=1e-4))[0]
      np.testing.assert_allclose(together[i], alone, atol=1e-6)

  def test_channels_share_weights_as_in_reference(self):
    rgb = np.stack([synthetic_image(seed=i) for i in range(3)], axis=-1)
    expected = rtv_reference.tsmooth(rgb.astype(np.float64), *REFERENCE_DEFAULTS)
    got = np.asarray(run_rtv(rgb[None], REFERENCE_DEFAULTS))[0]
    self.assertLess(np.abs(got - expected).max(), 1e-4)

  def test_constant_image_is_its_own_structure(self):
    img = np.full((1, 20, 30, 1), 0.37, np.float32)
    np.testing.assert_allclose(np.asarray(run_rtv(img, STRUCTUREFLOW)), img, atol=1e-6)

  def test_sharded_batch_inside_jit_equals_unsharded(self):
    mesh = sharding.make_mesh()
    batch = np.stack([synthetic_image(32, 32, seed=i) for i in range(8)])[..., None]
    sharded = jax.device_put(batch, sharding.batch_sharding(mesh))

    @jax.jit
    def step(x):  # As a train step would: RTV inside a larger jitted function.
      return run_rtv(x, STRUCTUREFLOW, tol=1e-4) * 2.0 - 1.0

    out = step(sharded)
    self.assertEqual(out.sharding, sharding.batch_sharding(mesh))
    expected = np.asarray(run_rtv(batch, STRUCTUREFLOW, tol=1e-4)) * 2.0 - 1.0
    np.testing.assert_allclose(np.asarray(out), expected, atol=1e-5)

  def test_no_gradient_flows_through(self):
    x = jnp.asarray(synthetic_image(16, 16))[None, :, :, None]
    grad = jax.grad(lambda x: jnp.sum(run_rtv(x, STRUCTUREFLOW, tol=1e-3)) + jnp.sum(x))(x)
    np.testing.assert_array_equal(np.asarray(grad), 1.0)

  def test_info_reports_iterations_and_residuals(self):
    img = jnp.asarray(synthetic_image())[None, :, :, None]
    _, info = rtv.extract_structure_with_info(img, tol=1e-4)
    self.assertEqual(info.cg_iters.shape, (rtv.DEFAULT_N_ITER, 1, 1))
    self.assertTrue(np.all(np.asarray(info.cg_iters) > 0))
    self.assertTrue(np.all(np.asarray(info.rel_residual) <= 1e-4))

  @parameterized.named_parameters(
    ("rank3", (4, 4, 1), {}, "B, H, W, C"),
    ("too_small", (1, 1, 5, 1), {}, "2x2"),
    ("negative_lam", (1, 8, 8, 1), {"lam": -1.0}, "positive"),
    ("zero_iters", (1, 8, 8, 1), {"n_iter": 0}, "n_iter"),
  )
  def test_bad_input_is_a_clear_error(self, shape, kwargs, message):
    with self.assertRaisesRegex(ValueError, message):
      rtv.extract_structure(jnp.zeros(shape), **kwargs)


class CommandLineTest(absltest.TestCase):
  def _run(self, *args):
    return subprocess.run(
      [sys.executable, "-m", "alenn_jax.rtv", *args],
      capture_output=True,
      text=True,
      cwd=os.path.join(os.path.dirname(__file__), ".."),
      env={**os.environ, "JAX_PLATFORMS": "cpu"},
      check=False,
    )

  def test_round_trip_png_to_npy_and_png(self):
    tmp = self.create_tempdir().full_path
    rgb = (np.stack([synthetic_image(40, 50)] * 3, axis=-1) * 255).astype(np.uint8)
    src = os.path.join(tmp, "in.png")
    Image.fromarray(rgb, mode="RGB").save(src)
    out_npy = os.path.join(tmp, "out", "s.npy")
    result = self._run(src, out_npy, "--tol=1e-5", "--size=32")
    self.assertEqual(result.returncode, 0, result.stderr)
    structure = np.load(out_npy)
    self.assertEqual(structure.shape, (32, 32))
    self.assertEqual(structure.dtype, np.float32)
    grey = image_io.load_grey_image(src, 32)
    expected = np.asarray(rtv.extract_structure(jnp.asarray(grey)[None, :, :, None], tol=1e-5))
    np.testing.assert_allclose(structure, expected[0, :, :, 0], atol=1e-5)

    out_png = os.path.join(tmp, "s.png")
    result = self._run(src, out_png, "--tol=1e-5", "--size=32")
    self.assertEqual(result.returncode, 0, result.stderr)
    with Image.open(out_png) as img:
      self.assertEqual(img.mode, "L")
      pixels = np.asarray(img)
    np.testing.assert_array_less(np.abs(pixels / 255.0 - structure), 1 / 255.0 + 1e-6)
    self.assertEqual(sorted(os.listdir(tmp)), ["in.png", "out", "s.png"])  # No temporary left.

  def test_missing_or_corrupt_input_exits_2_naming_the_file(self):
    tmp = self.create_tempdir().full_path
    corrupt = os.path.join(tmp, "corrupt.png")
    with open(corrupt, "wb") as f:
      f.write(b"\x89PNG\r\n\x1a\n not really")
    for path in (os.path.join(tmp, "missing.png"), corrupt):
      result = self._run(path, os.path.join(tmp, "out.png"))
      self.assertEqual(result.returncode, 2)
      self.assertIn(path, result.stderr)
      self.assertEqual(len(result.stderr.strip().splitlines()), 1, result.stderr)
      self.assertFalse(os.path.exists(os.path.join(tmp, "out.png")))

  def test_grey_loader_handles_16_bit(self):
    with tempfile.TemporaryDirectory() as tmp:
      path = os.path.join(tmp, "x16.png")
      Image.fromarray(np.full((4, 4), 65535 // 2, np.uint16)).save(path)
      np.testing.assert_allclose(image_io.load_grey_image(path), 0.5, atol=1e-4)


if __name__ == "__main__":
  absltest.main()
