"""Reading radiographs (PNG, JPEG, DICOM) and writing results without ever leaving half a file
behind."""

import contextlib
import csv
import io
import logging
import os
import threading

import numpy as np
import pydicom
import pydicom.errors
import pydicom.pixels
from PIL import Image, ImageFile

# Compressed DICOM transfer syntaxes pydicom decodes only with an extra package: UID prefix ->
# what to install.
_DICOM_CODECS = (
  ("1.2.840.10008.1.2.4.5", "pylibjpeg pylibjpeg-libjpeg"),  # JPEG baseline / extended.
  ("1.2.840.10008.1.2.4.7", "pylibjpeg pylibjpeg-libjpeg"),  # JPEG lossless.
  ("1.2.840.10008.1.2.4.8", "pyjpegls"),  # JPEG-LS.
  ("1.2.840.10008.1.2.4.9", "pylibjpeg pylibjpeg-openjpeg"),  # JPEG 2000.
  ("1.2.840.10008.1.2.4.20", "pylibjpeg pylibjpeg-openjpeg"),  # High-throughput JPEG 2000.
)
DICOM_SUFFIXES = (".dcm", ".dicom", ".dic")

# PIL's truncated-image mode is a process-wide switch: held only while one file decodes.
_TRUNCATED_MODE = threading.Lock()


@contextlib.contextmanager
def atomic_open(path: str, mode: str = "wb"):
  """Opens a temporary file beside `path`, renamed onto `path` only when the block succeeds."""
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  tmp = os.path.join(directory, f".{os.path.basename(path)}.tmp-{os.getpid()}")
  try:
    with open(tmp, mode) as f:
      yield f
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


def write_text(path: str, text: str) -> None:
  with atomic_open(path, "w") as f:
    f.write(text)


def write_csv(path: str, rows: list[dict], columns, ignore_extra: bool = False) -> None:
  """Rows of dicts under a header of `columns`, atomically (keys beyond `columns` are an error
  unless `ignore_extra`)."""
  with atomic_open(path, "w") as f:
    writer = csv.DictWriter(
      f, fieldnames=list(columns), extrasaction="ignore" if ignore_extra else "raise"
    )
    writer.writeheader()
    writer.writerows(rows)


def _decode(data: bytes) -> Image.Image:
  image = Image.open(io.BytesIO(data))
  image.load()
  return image


def is_dicom(path: str) -> bool:
  """A DICOM file by its name (.dcm, .dicom, .dic) or by the 'DICM' marker at byte 128 (DICOM
  files often have no suffix at all)."""
  if path.lower().endswith(DICOM_SUFFIXES):
    return True
  try:
    with open(path, "rb") as f:
      head = f.read(132)
  except OSError:
    return False
  return len(head) == 132 and head[128:] == b"DICM"


def _codec_hint(syntax) -> str:
  for prefix, package in _DICOM_CODECS:
    if str(syntax).startswith(prefix):
      return package
  return "pylibjpeg pylibjpeg-libjpeg pylibjpeg-openjpeg (or python-gdcm)"


def _has_decoder(syntax) -> bool:
  try:
    return pydicom.pixels.get_decoder(syntax).is_available
  except NotImplementedError:  # A syntax pydicom has no decoder for at all.
    return False


def read_dicom(path: str) -> np.ndarray:
  """A single-frame greyscale DICOM image as `[H, W]` float32 in [0, 1], as a viewer shows it.

  The stored values are taken over the range their BitsStored allows, the modality LUT (Rescale
  Slope/Intercept) and the VOI LUT or window (Window Center/Width, the first one) are applied when
  present, and MONOCHROME1 (stored inverted: high values dark) is inverted.

  Raises:
    OSError: not a DICOM file, no pixel data, multi-frame or colour, or compressed with a transfer
      syntax that needs a decoder package (the message names it); always naming the file.
  """
  try:
    ds = pydicom.dcmread(path)
  except (pydicom.errors.InvalidDicomError, OSError, ValueError, EOFError) as e:
    raise OSError(f"cannot read DICOM {path!r}: {e}") from e
  if "PixelData" not in ds:
    what = getattr(ds, "SOPClassUID", None)
    kind = f" ({what.name})" if what is not None else ""
    raise OSError(f"DICOM {path!r} holds no image: it has no pixel data{kind}.")
  frames = int(ds.get("NumberOfFrames", 1) or 1)
  if frames > 1:
    raise OSError(f"DICOM {path!r} has {frames} frames; only single-frame radiographs are read.")
  photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip()
  samples = int(ds.get("SamplesPerPixel", 1) or 1)
  if samples != 1 or photometric not in ("MONOCHROME1", "MONOCHROME2"):
    raise OSError(
      f"DICOM {path!r} is a colour image ({photometric}, {samples} samples per pixel); only "
      "greyscale (MONOCHROME1/2) radiographs are read."
    )
  meta = getattr(ds, "file_meta", None)
  syntax = meta.get("TransferSyntaxUID") if meta is not None else None
  if syntax is not None and syntax.is_compressed and not _has_decoder(syntax):
    raise OSError(
      f"DICOM {path!r} is compressed as {syntax.name} ({syntax}), which needs a decoder: "
      f"pip install {_codec_hint(syntax)}"
    )
  quiet = logging.getLogger("pydicom")
  level = quiet.level
  quiet.setLevel(logging.CRITICAL)  # pydicom logs a traceback before raising; we raise one line.
  try:
    stored = ds.pixel_array
  except Exception as e:  # pydicom raises RuntimeError, NotImplementedError or ValueError.
    reason = " ".join(str(e).split())
    raise OSError(f"cannot decode the pixels of DICOM {path!r}: {reason}") from e
  finally:
    quiet.setLevel(level)
  bits = int(ds.get("BitsStored", ds.get("BitsAllocated", 16)))
  signed = int(ds.get("PixelRepresentation", 0)) == 1
  low, high = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
  values = np.asarray(pydicom.pixels.apply_modality_lut(stored, ds), np.float64)
  ends = pydicom.pixels.apply_modality_lut(np.array([low, high], np.float64), ds)
  low, high = float(np.min(ends)), float(np.max(ends))
  if "VOILUTSequence" in ds:
    lut = ds.VOILUTSequence[0]
    out_bits = int(lut.LUTDescriptor[2])
    values = np.asarray(pydicom.pixels.apply_voi(values, ds), np.float64)
    low, high = 0.0, float(2**out_bits - 1)
  elif "WindowCenter" in ds and "WindowWidth" in ds:
    centre = float(np.ravel(ds.WindowCenter)[0])
    width = max(float(np.ravel(ds.WindowWidth)[0]), 1.0)
    # DICOM PS3.3 C.11.2.1.2.1, the linear window, onto [0, 1].
    values = (values - (centre - 0.5)) / max(width - 1.0, 1.0) + 0.5
    low, high = 0.0, 1.0
  grey = (values - low) / max(high - low, 1e-12)
  grey = np.clip(grey, 0.0, 1.0).astype(np.float32)
  return 1.0 - grey if photometric == "MONOCHROME1" else grey


def open_image(path: str, allow_truncated: bool = True) -> tuple[Image.Image, bool]:
  """Opens and fully decodes an image file (PNG, JPEG, any format PIL reads, or DICOM): (image,
  repaired). A DICOM comes back as a mode "F" image in [0, 1] (`read_dicom`).

  A file cut short by a few bytes (a truncated JPEG, common in downloaded datasets) is decoded as
  every viewer shows it, with PIL's truncated-image mode, and `repaired` is True; with
  `allow_truncated=False` it is refused like any unreadable file.

  Raises:
    OSError: the file is missing, unreadable, or not a decodable image; the message names it.
  """
  if is_dicom(path):
    return Image.fromarray(read_dicom(path), mode="F"), False
  try:
    with open(path, "rb") as f:
      data = f.read()
    return _decode(data), False
  except (OSError, ValueError, SyntaxError) as e:
    # PIL raises UnidentifiedImageError (an OSError), ValueError or SyntaxError.
    truncated = "truncated" in str(e)
    if not (allow_truncated and truncated):
      note = " (truncated; allowed without strict mode)" if truncated else ""
      raise OSError(f"cannot read image {path!r}: {e}{note}") from e
  with _TRUNCATED_MODE:
    previous = ImageFile.LOAD_TRUNCATED_IMAGES
    ImageFile.LOAD_TRUNCATED_IMAGES = True
    try:
      return _decode(data), True
    except (OSError, ValueError, SyntaxError) as e:
      raise OSError(f"cannot read image {path!r}: {e}") from e
    finally:
      ImageFile.LOAD_TRUNCATED_IMAGES = previous


def load_grey_image(path: str, size: int | None = None) -> np.ndarray:
  """Reads a PNG/JPEG/DICOM as `[H, W]` float32 in [0, 1] (colour converted to grey, 16-bit
  scaled, DICOM as `read_dicom` shows it; a truncated file decoded as far as it goes, see
  `open_image`).

  Args:
    path: the image file.
    size: when given, the image is resized (bilinear) to `size` x `size`.

  Raises:
    OSError: the file is missing or is not a readable image; the message names the file.
  """
  img, _ = open_image(path)
  if img.mode in ("I;16", "I;16B", "I;16L", "I"):
    grey = np.asarray(img, dtype=np.float32) / 65535.0
  elif img.mode == "F":
    grey = np.asarray(img, dtype=np.float32)
  else:
    grey = np.asarray(img.convert("L"), dtype=np.float32) / 255.0
  if size is not None:
    resized = Image.fromarray(grey, mode="F").resize((size, size), Image.Resampling.BILINEAR)
    grey = np.asarray(resized, dtype=np.float32)
  return np.clip(grey, 0.0, 1.0)


def save_grey(array: np.ndarray, path: str) -> None:
  """Writes `[H, W]` floats in [0, 1]: `.npy` float32 as is, anything else as an 8-bit PNG."""
  with atomic_open(path, "wb") as f:
    if path.endswith(".npy"):
      np.save(f, np.asarray(array, np.float32))
    else:
      pixels = np.round(np.clip(array, 0.0, 1.0) * 255.0).astype(np.uint8)
      Image.fromarray(pixels, mode="L").save(f, format="PNG")
