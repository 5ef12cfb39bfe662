"""Which images `predict` reads: a folder (recursive), a glob, or a .txt/.csv list of paths, and
the file-name-safe name each image's outputs get.
"""

import csv
import glob
import os

from alenn_jax.datasets.folder import folder
from alenn_jax.errors import UserInputError

LIST_SUFFIXES = (".txt", ".csv")


# ----------------------------------------------------------------------------------------------
# Which images.


def find_images(spec: str) -> tuple[list[str], str]:
  """(absolute image paths, sorted; the folder their output names are relative to) of a folder
  (recursive), a glob, or a .txt/.csv list of paths (relative ones taken from the list's folder).
  """
  if not spec:
    raise UserInputError("config.images is empty; give a folder, a glob or a list of paths.")
  spec = os.path.expanduser(spec)
  if os.path.isdir(spec):
    root = os.path.abspath(spec)
    paths = folder.find_image_files(root)
    what = f"folder {spec} (PNG, JPEG or DICOM, at any depth)"
  elif os.path.isfile(spec) and spec.lower().endswith(LIST_SUFFIXES):
    paths = _read_list(spec)
    root = os.path.commonpath([os.path.dirname(p) for p in paths]) if paths else ""
    what = f"list {spec}"
  elif os.path.isfile(spec):
    paths, root = [os.path.abspath(spec)], os.path.dirname(os.path.abspath(spec))
    what = spec
  else:
    paths = [os.path.abspath(p) for p in glob.glob(spec, recursive=True) if os.path.isfile(p)]
    prefix = spec.split("*")[0].split("?")[0].split("[")[0]
    root = os.path.abspath(prefix if prefix.endswith(os.sep) else os.path.dirname(prefix) or ".")
    what = f"glob {spec!r}" if any(c in spec for c in "*?[") else f"{spec} (no such file)"
  if not paths:
    raise UserInputError(f"config.images: {what} matches no image.")
  return sorted(set(paths)), root


def _read_list(path: str) -> list[str]:
  """Paths listed one per line (.txt) or in a `path` column (else the first column) of a CSV."""
  base = os.path.dirname(os.path.abspath(path))
  with open(path, newline="") as f:
    if path.lower().endswith(".csv"):
      rows = list(csv.reader(f))
      column = rows[0].index("path") if rows and "path" in rows[0] else None
      if column is not None:
        rows = rows[1:]
      names = [r[column or 0] for r in rows if r and r[column or 0].strip()]
    else:
      names = [line.strip() for line in f if line.strip() and not line.startswith("#")]
  return [os.path.normpath(os.path.join(base, os.path.expanduser(n))) for n in names]


def output_name(path: str, root: str) -> str:
  """A file-name-safe name unique among the images: the path below `root`, '/' -> '__' and the
  suffix kept as '_png' ('p7/a.dcm' -> 'p7__a_dcm')."""
  rel = os.path.relpath(path, root) if root else os.path.basename(path)
  stem, suffix = os.path.splitext(rel)
  name = stem.replace(os.sep, "__").replace("/", "__")
  return name + (f"_{suffix[1:].lower()}" if suffix else "")
