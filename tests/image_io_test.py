"""Reading radiographs: DICOM as a viewer shows it, and one line saying why a file is unreadable."""

import os

import numpy as np
from absl.testing import absltest, parameterized
from PIL import Image

from alenn_jax import image_io
from tests import helpers


class DicomTest(parameterized.TestCase):
  def setUp(self):
    super().setUp()
    self.dir = self.create_tempdir().full_path
    rng = np.random.default_rng(0)
    self.stored = rng.integers(0, 4096, (20, 30)).astype(np.uint16)  # 12-bit values.

  def write(self, name, stored=None, **kwargs):
    path = os.path.join(self.dir, name)
    helpers.write_dicom(path, self.stored if stored is None else stored, **kwargs)
    return path

  def test_monochrome2_takes_the_bits_stored_range(self):
    grey = image_io.read_dicom(self.write("a.dcm"))
    self.assertEqual(grey.shape, (20, 30))
    np.testing.assert_allclose(grey, self.stored / 4095.0, atol=1e-6)

  def test_monochrome1_is_inverted(self):
    plain = image_io.read_dicom(self.write("a.dcm"))
    inverted = image_io.read_dicom(
      self.write("b.dcm", 4095 - self.stored, photometric="MONOCHROME1")
    )
    np.testing.assert_allclose(inverted, plain, atol=1e-6)

  def test_rescale_slope_and_intercept_keep_the_picture(self):
    plain = image_io.read_dicom(self.write("a.dcm"))
    rescaled = image_io.read_dicom(self.write("b.dcm", slope=2.0, intercept=-1024.0))
    np.testing.assert_allclose(rescaled, plain, atol=1e-6)

  def test_window_is_applied_after_the_rescale(self):
    centre, width = 1000.0, 801.0
    grey = image_io.read_dicom(
      self.write("a.dcm", slope=2.0, intercept=-500.0, window=(centre, width))
    )
    values = 2.0 * self.stored - 500.0
    expected = np.clip((values - (centre - 0.5)) / (width - 1.0) + 0.5, 0.0, 1.0)
    np.testing.assert_allclose(grey, expected, atol=1e-6)
    self.assertGreater(np.mean(grey == 0.0), 0.1)  # The window clips: it was applied.

  def test_found_without_a_suffix_and_read_like_any_image(self):
    path = self.write("IM0001")
    self.assertTrue(image_io.is_dicom(path))
    image, repaired = image_io.open_image(path)
    self.assertFalse(repaired)
    self.assertEqual(image.mode, "F")
    resized = image_io.load_grey_image(path, size=16)
    self.assertEqual(resized.shape, (16, 16))
    self.assertAlmostEqual(float(resized.mean()), float(self.stored.mean() / 4095.0), delta=0.02)

  def test_a_png_is_not_taken_for_a_dicom(self):
    path = os.path.join(self.dir, "a.png")
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(path)
    self.assertFalse(image_io.is_dicom(path))

  @parameterized.named_parameters(
    ("multi_frame", dict(frames=3), "3 frames"),
    ("colour", dict(photometric="RGB"), "colour"),
    ("no_pixels", dict(pixels=False), "no pixel data"),
    ("jpeg_lossless", dict(syntax="1.2.840.10008.1.2.4.70"), "JPEG Lossless"),
    ("jpeg_ls", dict(syntax="1.2.840.10008.1.2.4.80"), "pip install pyjpegls"),
    ("htj2k", dict(syntax="1.2.840.10008.1.2.4.201"), "pylibjpeg-openjpeg"),
    # Pillow decodes JPEG 2000: this stub is refused for what it is, not for a missing decoder.
    ("broken_jpeg2000", dict(syntax="1.2.840.10008.1.2.4.90"), "cannot decode the pixels"),
  )
  def test_refused_with_the_reason(self, kwargs, reason):
    path = self.write("x.dcm", **kwargs)
    with self.assertRaises(OSError) as cm:
      image_io.read_dicom(path)
    message = str(cm.exception)
    self.assertIn(reason, message)
    self.assertIn(path, message)
    self.assertNotIn("\n", message)

  def test_compressed_names_the_package_to_install(self):
    path = self.write("x.dcm", syntax="1.2.840.10008.1.2.4.70")
    with self.assertRaisesRegex(OSError, r"pip install pylibjpeg pylibjpeg-libjpeg"):
      image_io.load_grey_image(path)

  def test_not_a_dicom_is_an_error_naming_the_file(self):
    path = os.path.join(self.dir, "broken.dcm")
    with open(path, "wb") as f:
      f.write(b"not a dicom at all")
    with self.assertRaisesRegex(OSError, "broken.dcm"):
      image_io.load_grey_image(path)


if __name__ == "__main__":
  absltest.main()
