"""What several test files share: a class-wide temporary folder with the phantoms built in it,
running launch.py in a subprocess or in this process, a localize workdir's maps written without a
generator, the `slow` mark, and comparing parameter trees."""

import contextlib
import io
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from unittest import mock

import jax
import numpy as np
import pydicom
import pytest
from absl import app
from absl.testing import flagsaver, parameterized
from PIL import Image
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from alenn_jax import checkpointing, data_splits, datasets, le_maps

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))

# An end-to-end or multi-process run (minutes on 2 cores): `make test` leaves these out,
# `make test-slow` runs only these, `make test-all` and CI run everything.
slow = pytest.mark.slow


class PhantomsTestCase(parameterized.TestCase):
  """`cls.tmp`, a folder removed after the class, and `cls.data_dir`, with phantoms/px64 built."""

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.tmp = tempfile.mkdtemp()
    cls.data_dir = os.path.join(cls.tmp, "data")
    datasets.build("phantoms/px64", cls.data_dir)

  @classmethod
  def tearDownClass(cls):
    shutil.rmtree(cls.tmp, ignore_errors=True)
    super().tearDownClass()


def launch(*args, env=None):
  """`python launch.py ARGS` in the repository, on the CPU; returns the CompletedProcess. `env`
  adds variables to this process's (a value of None removes one)."""
  env = {**os.environ, "JAX_PLATFORMS": "cpu", **(env or {})}
  return subprocess.run(
    [sys.executable, "launch.py", *args],
    capture_output=True,
    text=True,
    cwd=REPO,
    env={k: v for k, v in env.items() if v is not None},
    check=False,
  )


def launch_in_process(*args) -> subprocess.CompletedProcess:
  """`launch.py ARGS` run in this process as `python launch.py ARGS` runs it (absl's app.run with
  launch.py's flag parser), its stdout and stderr captured and its exit status returned: an
  error's text and status without the second or so a new Python spends importing JAX. Flags are
  restored afterwards. What absl logs (a traceback with --verbosity=1) goes to the real stderr,
  so a test of logged text starts a process (`launch`)."""
  import launch  # The entry point's flags, defined once per test process.

  argv = ["launch.py", *args]
  out, err = io.StringIO(), io.StringIO()
  status = 0
  # config_flags reads `--config.` overrides from sys.argv, as it does in a real process.
  with (
    flagsaver.flagsaver(),
    mock.patch.object(sys, "argv", argv),
    contextlib.redirect_stdout(out),
    contextlib.redirect_stderr(err),
  ):
    try:
      app.run(launch.main, argv=argv, flags_parser=launch._parse_flags)
    except SystemExit as e:
      status = e.code if isinstance(e.code, int) else int(e.code is not None)
  return subprocess.CompletedProcess(argv, status, out.getvalue(), err.getvalue())


def write_le_workdir(
  workdir: str, data_config, seed: int = 0, size: int = 32, per_shard: int = 16
) -> None:
  """A localize workdir's LE maps without the generator that makes them: for every example of every
  split of `data_config`'s dataset, a D map of uniform noise in [0, 1] (`size` x `size`; a map meets
  its image through `place_map`, which resizes it) in the job's shard format, `per_shard` maps a
  shard, with scale 1. What the classifiers read from a localize workdir; the pipeline test runs
  them on maps a trained generator made."""
  rng = np.random.default_rng(seed)
  for split in data_splits.split_names(data_config):
    ids = sorted(data_splits.split_labels(data_config, split))
    for index, first in enumerate(range(0, len(ids), per_shard)):
      chunk = ids[first : first + per_shard]
      maps = [rng.uniform(0.0, 1.0, (size, size)).astype(np.float32) for _ in chunk]
      le_maps.write_shard(le_maps.shard_path(workdir, split, index), chunk, maps)
  le_maps.write_scale(workdir, 1.0)


def leaves_equal(a, b) -> bool:
  """Whether two pytrees hold bit-identical arrays."""
  return all(
    np.array_equal(np.asarray(x), np.asarray(y))
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
  )


def stage1_generator(workdir: str):
  """(gen_s params, gen_t params, step) of the stage 1 run in `workdir`, loaded from its stored
  config as later stages load it."""
  generator = checkpointing.load_generator(workdir)
  return generator.params["gen_s"], generator.params["gen_t"], generator.step


def write_dicom(
  path: str,
  stored: np.ndarray,
  *,
  photometric: str = "MONOCHROME2",
  bits_stored: int = 12,
  slope: float = 1.0,
  intercept: float = 0.0,
  window: tuple[float, float] | None = None,
  frames: int = 1,
  pixels: bool = True,
  syntax: str = ExplicitVRLittleEndian,
) -> None:
  """A single-frame (or `frames`-frame) greyscale DICOM file of uint16 `stored` values, written
  with pydicom as a modality would; with a compressed `syntax`, its pixel data is a stub that
  only that syntax's decoder would try to read."""
  meta = FileMetaDataset()
  meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-ray, presentation.
  meta.MediaStorageSOPInstanceUID = generate_uid()
  meta.TransferSyntaxUID = syntax
  ds = pydicom.Dataset()
  ds.file_meta = meta
  ds.SOPClassUID = meta.MediaStorageSOPClassUID
  ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
  ds.Modality = "DX"
  if pixels:
    stored = np.asarray(stored, np.uint16)
    if frames > 1:
      ds.NumberOfFrames = frames
      stored = np.stack([stored] * frames)
    ds.Rows, ds.Columns = stored.shape[-2:]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = 16
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = 0
    ds.RescaleSlope = slope
    ds.RescaleIntercept = intercept
    if window is not None:
      ds.WindowCenter, ds.WindowWidth = window
    ds.PixelData = stored.tobytes()
    if pydicom.uid.UID(syntax).is_compressed:  # Not decodable: for the missing-decoder error.
      ds.PixelData = pydicom.encaps.encapsulate([b"\xff\x4f\xff\x51" + bytes(64)])
  ds.save_as(path, enforce_file_format=True)


def picture(size: int = 48) -> np.ndarray:
  """A smooth uint8 test picture (a bright bar on a ramp), the same every call."""
  yy, xx = np.mgrid[0:size, 0:size] / size
  bar = (np.abs(xx - 0.5) < 0.12).astype(float)
  return np.round(255 * np.clip(0.2 + 0.3 * yy + 0.45 * bar, 0, 1)).astype(np.uint8)


def make_image_folder(root: str, size: int = 48) -> dict[str, str]:
  """A folder of one picture in every form a user may have: grey PNG, JPEG, RGB PNG, DICOM
  MONOCHROME2 and MONOCHROME1 (stored inverted), a suffix-less DICOM, and a corrupt file.
  Returns {form: path}."""
  pic = picture(size)
  os.makedirs(root, exist_ok=True)
  paths = {form: os.path.join(root, name) for form, name in FOLDER_FORMS.items()}
  Image.fromarray(pic).save(paths["png"])
  Image.fromarray(pic).save(paths["jpeg"], quality=95)
  Image.fromarray(np.stack([pic] * 3, axis=-1)).save(paths["rgb"])
  stored = pic.astype(np.uint16) * 16  # 12-bit values.
  write_dicom(paths["dicom2"], stored)
  write_dicom(paths["dicom1"], 4095 - stored, photometric="MONOCHROME1")
  write_dicom(paths["dicom_bare"], stored)
  with open(paths["corrupt"], "wb") as f:
    f.write(b"\x89PNG\r\n\x1a\n" + bytes(20))
  return paths


FOLDER_FORMS = {
  "png": "grey.png",
  "jpeg": "photo.jpg",
  "rgb": "colour.png",
  "dicom2": "mono2.dcm",
  "dicom1": "mono1.dcm",
  "dicom_bare": "IM0001",
  "corrupt": "broken.png",
}


def make_mura_cohort(root: str, train_patients: int = 50, valid_patients: int = 8) -> None:
  """A MURA-v1.1 folder (XR_ELBOW) of one study per patient, two 48-px images each, normal and
  abnormal alternating (an abnormal image has a bright spot); patients are numbered on from
  train to valid. With the defaults, the carved `selection` split (10% of patients) holds both
  classes."""
  base = os.path.join(root, "MURA-v1.1")
  rng = np.random.default_rng(0)
  number = 0
  for split, count in (("train", train_patients), ("valid", valid_patients)):
    image_rows, study_rows = [], []
    for _ in range(count):
      number += 1
      positive = number % 2 == 0
      outcome = "positive" if positive else "negative"
      folder = f"MURA-v1.1/{split}/XR_ELBOW/patient{number:05d}/study1_{outcome}"
      os.makedirs(os.path.join(root, folder), exist_ok=True)
      for j in (1, 2):
        pic = picture().astype(np.int16) + rng.integers(-10, 10, (48, 48))
        if positive:
          y, x = rng.integers(8, 40, 2)
          pic[y - 4 : y + 4, x - 4 : x + 4] = 255
        rel = f"{folder}/image{j}.png"
        Image.fromarray(np.clip(pic, 0, 255).astype(np.uint8)).save(os.path.join(root, rel))
        image_rows.append(rel)
      study_rows.append(f"{folder}/,{int(positive)}")
    os.makedirs(base, exist_ok=True)
    with open(os.path.join(base, f"{split}_image_paths.csv"), "w") as f:
      f.write("\n".join(image_rows) + "\n")
    with open(os.path.join(base, f"{split}_labeled_studies.csv"), "w") as f:
      f.write("\n".join(study_rows) + "\n")


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def cpu_env(devices: int) -> dict:
  """The environment of a subprocess with `devices` emulated CPU devices."""
  return {
    **os.environ,
    "JAX_PLATFORMS": "cpu",
    "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}",
  }


def start_processes(per_process_args, port: int, devices: int = 4) -> list[subprocess.Popen]:
  """`python launch.py ARGS --multihost ...` for each process's ARGS (process i gets the i-th),
  each with `devices` CPU devices, coordinated on localhost:`port`; stderr piped."""
  count = len(per_process_args)
  return [
    subprocess.Popen(
      [
        sys.executable,
        "launch.py",
        *args,
        "--multihost",
        f"--coordinator_address=localhost:{port}",
        f"--num_processes={count}",
        f"--process_id={i}",
      ],
      cwd=REPO,
      env=cpu_env(devices),
      stdout=subprocess.DEVNULL,
      stderr=subprocess.PIPE,
      text=True,
    )
    for i, args in enumerate(per_process_args)
  ]
