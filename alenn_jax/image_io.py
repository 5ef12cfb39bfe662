"""Reading radiographs and writing results without ever leaving half a file behind."""

import contextlib
import io
import os
import threading

import numpy as np
from PIL import Image, ImageFile

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


def _decode(data: bytes) -> Image.Image:
  image = Image.open(io.BytesIO(data))
  image.load()
  return image


def open_image(path: str, allow_truncated: bool = True) -> tuple[Image.Image, bool]:
  """Opens and fully decodes an image file: (image, repaired).

  A file cut short by a few bytes (a truncated JPEG, common in downloaded datasets) is decoded as
  every viewer shows it, with PIL's truncated-image mode, and `repaired` is True; with
  `allow_truncated=False` it is refused like any unreadable file.

  Raises:
    OSError: the file is missing, unreadable, or not a decodable image; the message names it.
  """
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
  """Reads a PNG/JPEG as `[H, W]` float32 in [0, 1] (colour converted to grey, 16-bit scaled; a
  truncated file decoded as far as it goes, see `open_image`).

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
