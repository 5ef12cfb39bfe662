"""Use a trained model on new radiographs: P(abnormal) from every classifier, and the LE map.

  python launch.py --config=configs/predict.py --workdir=OUT \\
      --config.from_workdir=W --config.images=X

W is a pipeline workdir (`configs/pipeline.py`), a localize workdir (maps only) or a classifier
workdir (with the localize workdir its LE maps came from, when it fuses them). Everything is loaded
from the configs stored there: the stage 1 generator, the localize job's map method, window and LE
scale, and each classifier's best checkpoint. Cross-fitted maps (`localize.folds` > 1) came from K
generators; a new image was seen by none of them, and fold 0's maps it. X is a folder (searched
recursively for PNG, JPEG and DICOM), a glob, or a .txt/.csv file listing paths (a `path` column,
or the first one).

Each image is read as the training data was (grey, its longest side fitted to the dataset's
`max_side`, letterboxed), repainted window by window as the localize job did, and classified
exactly as the classifier's own evaluation does. Outputs, in OUT:

  predictions.csv   path, p_abnormal_<backbone>_<fusion>[_seed<k>] per classifier, le_max, le_area
                    (the fraction of the image with LE >= 0.5), one row per readable image
  maps/<name>.png   the image, its LE map and the overlay (as Figure 3)
  maps/<name>_d.npy D at the image's own resolution (float32)
  skipped.csv       path, reason: each file that could not be read

A rerun skips the images already done (their row and both map files exist): results go to
`OUT/.parts/` a batch at a time, atomically, and predictions.csv is assembled from them at the end.
On several hosts each process predicts its contiguous share.
"""

import concurrent.futures
import csv
import dataclasses
import glob
import io
import os
import time

import jax
import ml_collections
import numpy as np
from absl import logging
from jax.experimental import multihost_utils
from matplotlib import colormaps
from PIL import Image

from alenn_jax import (
  checkpointing,
  datasets,
  image_io,
  input_pipeline,
  le_maps,
  normal_error,
  sharding,
)
from alenn_jax.classification import classifier_setup, image_lists, inference
from alenn_jax.datasets import common
from alenn_jax.errors import UserInputError
from alenn_jax.localization import localize, map_settings
from alenn_jax.progress import format_seconds

PREDICTIONS = "predictions.csv"
SKIPPED = "skipped.csv"
MAPS = "maps"
PARTS = ".parts"
LE_AREA_THRESHOLD = 0.5


# ----------------------------------------------------------------------------------------------
# Which models.


@dataclasses.dataclass
class Classifier:
  column: str  # p_abnormal_<backbone>_<fusion>
  config: ml_collections.ConfigDict
  trained: checkpointing.TrainedClassifier
  predict_step: object  # train_classifier.make_predict_step's.


@dataclasses.dataclass
class Models:
  localize_config: ml_collections.ConfigDict | None  # The localize run's stored config.
  generator: checkpointing.TrainedGenerator | None
  scale: float | None
  classifiers: list[Classifier]
  data: ml_collections.ConfigDict  # The training data's config (max_side comes from it).
  # The localize run's normal-error model (`normal_error.Model`), None when it used none.
  normal: object = None


def _classifier_dirs(workdir: str) -> list[str]:
  root = os.path.join(workdir, "classifiers")
  if not os.path.isdir(root):
    return []
  return [
    os.path.join(root, d)
    for d in sorted(os.listdir(root))
    if os.path.exists(checkpointing.config_path(os.path.join(root, d), "classifier"))
  ]


def find_runs(workdir: str) -> tuple[str | None, list[str]]:
  """(localize workdir or None, classifier workdirs) of a pipeline, localize or classifier
  workdir; a one-line error naming what is missing and the command that makes it."""
  workdir = os.path.abspath(os.path.expanduser(workdir))
  if not os.path.isdir(workdir):
    raise UserInputError(f"config.from_workdir={workdir} does not exist.")
  if os.path.exists(os.path.join(workdir, "config.json")):  # A pipeline.
    loc = os.path.join(workdir, "localize")
    missing = []
    if not os.path.exists(le_maps.scale_path(loc)):
      missing.append("its LE maps (localize/le_maps/scale.json)")
    if not _classifier_dirs(workdir):
      missing.append("its classifiers (classifiers/*/config_classifier.json)")
    if missing:
      raise UserInputError(
        f"the pipeline in {workdir} is missing {' and '.join(missing)}; finish it first: "
        f"python launch.py --config=configs/pipeline.py --workdir={workdir}"
      )
    return loc, _classifier_dirs(workdir)
  if os.path.exists(checkpointing.config_path(workdir, "localize")):
    if not os.path.exists(le_maps.scale_path(workdir)):
      raise UserInputError(
        f"the localize run in {workdir} has not finished (no le_maps/scale.json); finish it: "
        f"python launch.py --config=configs/localize.py --workdir={workdir}"
      )
    return workdir, []
  if os.path.exists(checkpointing.config_path(workdir, "classifier")):
    config = checkpointing.read_stored_config(workdir, "classifier", "classifier run")
    loc = inference.le_source(config, workdir) if config.fusion != "none" else None
    return loc, [workdir]
  raise UserInputError(
    f"{workdir} holds no trained pipeline, localize or classifier run (no config.json, "
    "config_localize.json or config_classifier.json); train one there first, e.g. "
    f"python launch.py --config=configs/pipeline.py --workdir={workdir}"
  )


def load_models(from_workdir: str, mesh) -> Models:
  """The generator, map settings, LE scale and classifiers of `from_workdir` (see `find_runs`)."""
  loc, classifier_dirs = find_runs(from_workdir)
  localize_config = generator = scale = normal = None
  if loc is not None:
    localize_config = checkpointing.read_stored_config(loc, "localize", "localize run")
    source = localize_config.generator.workdir
    if not os.path.isdir(source):
      raise UserInputError(
        f"the LE maps in {loc} were made by the stage 1 generator in {source}, which is gone; "
        "put it back there, or make the maps again with configs/localize.py."
      )
    generator = checkpointing.load_generator(source, localize_config.generator.step, mesh)
    scale = le_maps.read_scale(loc)
    normal = _normal_error_model(loc, localize_config)
  classifiers = []
  for directory in classifier_dirs:
    config = checkpointing.read_stored_config(directory, "classifier", "classifier run")
    if config.fusion != "none" and os.path.abspath(
      inference.le_source(config, directory)
    ) != os.path.abspath(loc or ""):
      raise UserInputError(
        f"the classifier in {directory} fuses LE maps from "
        f"{inference.le_source(config, directory)}, not {loc}; predict with one of them."
      )
    trained = checkpointing.load_classifier(directory, "best", mesh)
    setup = classifier_setup.ClassifierSetup.from_config(config)
    name = f"{config.backbone}_{config.fusion}"
    base = os.path.basename(os.path.normpath(directory))  # A pipeline's <name>_seed<k> runs.
    classifiers.append(
      Classifier(
        column=f"p_abnormal_{base if base.startswith(name) else name}",
        config=config,
        trained=trained,
        predict_step=inference.make_predict_step(setup, mesh),
      )
    )
  data = (localize_config or classifiers[0].config).data
  return Models(localize_config, generator, scale, classifiers, data, normal)


def _normal_error_model(loc: str, localize_config: ml_collections.ConfigDict):
  """The normal-error model the maps of `loc` were divided by (that of the generator predict
  maps with, fold 0's when cross-fitted), or None when they were not."""
  ne = localize_config.get("normal_error")
  if ne is None or not ne.patch:
    return None
  path = map_settings.normal_error_path(loc, 0 if localize_config.get("folds", 1) > 1 else None)
  if not os.path.exists(path):
    raise UserInputError(
      f"the LE maps in {loc} were divided by a normal-error model ({path}), which is gone; make "
      "the maps again with configs/localize.py (--config.force_restart=True)."
    )
  return normal_error.load(path)


def max_side_of(data: ml_collections.ConfigDict) -> int | None:
  """The longest side the training dataset stored its images at (None: not fitted)."""
  builder = datasets.get_builder(
    data.name, os.path.expanduser(data.data_dir), group_by=data.get("group_by") or None
  )
  return getattr(builder.builder_config, "max_side", None)


# ----------------------------------------------------------------------------------------------
# One image.


def read_picture(path: str, max_side: int | None) -> tuple[np.ndarray, tuple[int, int]]:
  """(uint8 `[h, w]` as the dataset builders store it, the file's own (height, width))."""
  image, _ = image_io.open_image(path)
  own = (image.size[1], image.size[0])
  grey = common.grey_fitted(image, max_side) if max_side else common.to_grey_uint8(image)
  return grey, own


def panel(grey: np.ndarray, le: np.ndarray) -> np.ndarray:
  """uint8 RGB: the image, its LE map (jet) and the overlay, side by side (as Figure 3)."""
  g = np.repeat((grey.astype(np.float32) / 255.0)[..., None], 3, axis=-1)
  heat = colormaps["jet"](np.clip(le, 0.0, 1.0))[..., :3].astype(np.float32)
  overlay = 0.55 * g + 0.45 * heat
  gap = np.ones((g.shape[0], 4, 3), np.float32)
  row = np.concatenate([g, gap, heat, gap, overlay], axis=1)
  return np.round(row * 255.0).astype(np.uint8)


def _save_png(array: np.ndarray, path: str) -> None:
  buffer = io.BytesIO()
  Image.fromarray(array).save(buffer, format="PNG")
  with image_io.atomic_open(path, "wb") as f:
    f.write(buffer.getvalue())


def _resize(values: np.ndarray, shape) -> np.ndarray:
  pil = Image.fromarray(np.asarray(values, np.float32), mode="F")
  if pil.size != (shape[1], shape[0]):
    pil = pil.resize((shape[1], shape[0]), Image.Resampling.BILINEAR)
  return np.asarray(pil, np.float32)


# ----------------------------------------------------------------------------------------------
# Resumable results.


def _part_rows(out: str) -> list[dict]:
  rows = []
  for path in sorted(glob.glob(os.path.join(out, PARTS, "part-*.csv"))):
    with open(path, newline="") as f:
      rows += list(csv.DictReader(f))
  return rows


def _maps_exist(out: str, name: str, with_maps: bool) -> bool:
  if not with_maps:
    return True
  return all(
    os.path.exists(os.path.join(out, MAPS, name + suffix)) for suffix in (".png", "_d.npy")
  )


def done_paths(out: str, names: dict[str, str], with_maps: bool) -> set[str]:
  """Images with a stored row whose map files are still there."""
  return {
    r["path"]
    for r in _part_rows(out)
    if not r.get("skipped") and r["path"] in names and _maps_exist(out, names[r["path"]], with_maps)
  }


# ----------------------------------------------------------------------------------------------
# The job.


class _Predictor:
  """Maps and classifies one batch of pictures at a time."""

  def __init__(self, models: Models, mesh):
    self.models = models
    self.mesh = mesh
    self.map_step = None
    if models.generator is not None:
      self.map_step = localize.make_map_step(models.localize_config, models.generator)
      self.map_size = int(models.localize_config.data.image_size)
    batch_sizes = [int(models.localize_config.data.batch_size)] if models.localize_config else []
    self.batch_size = max(batch_sizes + [int(c.config.data.batch_size) for c in models.classifiers])
    n = jax.local_device_count()
    self.batch_size = -(-self.batch_size // n) * n

  def _global(self, array):
    return sharding.to_global(array, self.mesh)

  def difference_maps(self, pictures) -> list[np.ndarray]:
    """D of each picture (`[h, w]`: its extent in the letterbox), as the localize job stores it."""
    boxes, stack = [], []
    for grey in pictures:
      square, box = input_pipeline.letterbox(grey, self.map_size)
      stack.append(square.astype(np.float32) / 255.0 * 2.0 - 1.0)
      boxes.append(box)
    stack += [stack[0]] * (self.batch_size - len(stack))
    boxes += [boxes[0]] * (self.batch_size - len(boxes))
    images = self._global(np.stack(stack)[..., None])
    d = self.map_step(
      self.models.generator.params, images, self._global(np.asarray(boxes)), self.models.normal
    )
    d = np.asarray(jax.device_get(d))[..., 0]
    out = []
    for i, (top, left, h, w) in enumerate(boxes[: len(pictures)]):
      box = np.s_[top : top + h, left : left + w]
      kept, _ = map_settings.keep_to_foreground(
        self.models.localize_config, stack[i][box], d[i][box]
      )
      # float16, as stored: the classifiers were trained on maps rounded so.
      out.append(kept.astype(np.float16).astype(np.float32))
    return out

  def probabilities(self, classifier: Classifier, pictures, les) -> np.ndarray:
    size = int(classifier.config.data.image_size)
    fused = classifier.config.fusion != "none"
    preprocess = input_pipeline.eval_preprocess(
      size, {str(i): le for i, le in enumerate(les)} if fused else None
    )
    examples = [
      preprocess({"image": grey, "lesion_mask": np.zeros_like(grey), "label": 0, "id": str(i)})
      for i, grey in enumerate(pictures)
    ]
    examples += [examples[0]] * (self.batch_size - len(examples))
    batch = {
      k: np.stack([e[k] for e in examples]) for k in input_pipeline.numeric_keys(examples[0])
    }
    p, _, _ = classifier.predict_step(
      classifier.trained.params, classifier.trained.batch_stats, self._global(batch)
    )
    return np.asarray(jax.device_get(p))[: len(pictures)]


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Predicts every image of `config.images` with the models of `config.from_workdir`."""
  if not config.from_workdir:
    raise UserInputError(
      "config.from_workdir is empty; give the pipeline (or localize or classifier) workdir "
      "whose models should predict."
    )
  paths, root = image_lists.find_images(config.images)
  names = {p: image_lists.output_name(p, root) for p in paths}
  # Each process predicts with its own devices: no collective between processes until the end.
  mesh = sharding.make_mesh(jax.local_devices())
  models = load_models(config.from_workdir, mesh)
  with_maps = models.generator is not None
  predictor = _Predictor(models, mesh)
  max_side = max_side_of(models.data)
  columns = ["path"] + [c.column for c in models.classifiers]
  columns += ["le_max", "le_area"] if with_maps else []
  done = done_paths(workdir, names, with_maps)
  todo = [p for p in paths if p not in done]
  share = np.array_split(np.asarray(todo, dtype=object), jax.process_count())[jax.process_index()]
  logging.info(
    "predict: %d images (%d done before), %d for this process; models from %s",
    len(paths),
    len(done),
    len(share),
    config.from_workdir,
  )
  process = jax.process_index()
  first_part = len(glob.glob(os.path.join(workdir, PARTS, f"part-p{process:03d}-*.csv")))
  t0, finished = time.perf_counter(), 0
  batch = predictor.batch_size
  share = list(share)
  with concurrent.futures.ThreadPoolExecutor(max(1, int(config.num_threads))) as pool:

    def read_ahead(start):  # The next batch's files are read while this one is predicted.
      return [pool.submit(_try_read, p, max_side) for p in share[start : start + batch]]

    pending = read_ahead(0)
    for start in range(0, len(share), batch):
      chunk = [future.result() for future in pending]
      pending = read_ahead(start + batch)
      rows = [{"path": p, "skipped": why} for p, _, _, why in chunk if why]
      good = [(p, grey, own) for p, grey, own, why in chunk if not why]
      if good:
        rows += _predict_batch(predictor, good, names, workdir, with_maps)
      part = os.path.join(
        workdir, PARTS, f"part-p{process:03d}-{first_part + start // batch:06d}.csv"
      )
      image_io.write_csv(part, rows, [*columns, "skipped"], ignore_extra=True)
      finished += len(chunk)
      elapsed = time.perf_counter() - t0
      eta = (len(share) - finished) * elapsed / max(finished, 1)
      logging.info(
        "predict: %d/%d images, %.1f images/s, ETA %s",
        finished,
        len(share),
        finished / max(elapsed, 1e-9),
        format_seconds(eta),
      )
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices("predict: every share written")
  result = _assemble(workdir, names, columns, with_maps)
  logging.info(
    "predict: %d images predicted, %d skipped; wrote %s",
    result["predicted"],
    result["skipped"],
    os.path.join(workdir, PREDICTIONS),
  )
  if result["predicted"] == 0:
    raise UserInputError(
      f"none of the {len(paths)} files of config.images could be read; see "
      f"{os.path.join(workdir, SKIPPED)} for each reason."
    )
  return result


def _try_read(path: str, max_side):
  try:
    grey, own = read_picture(path, max_side)
  except (OSError, ValueError, Image.DecompressionBombError) as e:  # Each file's own problem.
    logging.warning("predict: skipping %s: %s", path, e)
    return path, None, None, " ".join(str(e).split())
  return path, grey, own, ""


def _predict_batch(predictor: _Predictor, good, names, workdir: str, with_maps: bool) -> list:
  pictures = [grey for _, grey, _ in good]
  rows = [{"path": p} for p, _, _ in good]
  les = None
  if with_maps:
    ds = predictor.difference_maps(pictures)
    les = [le_maps.le_map(d, predictor.models.scale) for d in ds]
    for row, (path, grey, own), d, le in zip(rows, good, ds, les, strict=True):
      name = names[path]
      image_io.save_grey(_resize(d, own), os.path.join(workdir, MAPS, name + "_d.npy"))
      le_full = _resize(le, grey.shape)
      _save_png(panel(grey, le_full), os.path.join(workdir, MAPS, name + ".png"))
      row["le_max"] = f"{float(le.max()):.6f}"
      row["le_area"] = f"{float(np.mean(le >= LE_AREA_THRESHOLD)):.6f}"
  for classifier in predictor.models.classifiers:
    probs = predictor.probabilities(classifier, pictures, les)
    for row, p in zip(rows, probs, strict=True):
      row[classifier.column] = f"{float(p):.9g}"
  return rows


def _assemble(workdir: str, names, columns, with_maps: bool) -> dict:
  """predictions.csv and skipped.csv from the parts (the latest row of each path wins)."""
  latest = {}
  for row in _part_rows(workdir):
    if row["path"] in names:
      latest[row["path"]] = row
  predicted = [
    r
    for p, r in sorted(latest.items())
    if not r.get("skipped") and _maps_exist(workdir, names[p], with_maps)
  ]
  skipped = [{"path": p, "reason": r["skipped"]} for p, r in sorted(latest.items()) if r["skipped"]]
  if jax.process_index() == 0:
    image_io.write_csv(os.path.join(workdir, SKIPPED), skipped, ["path", "reason"])
    if predicted:  # Else run() says why, and skipped.csv has each file's reason.
      image_io.write_csv(os.path.join(workdir, PREDICTIONS), predicted, columns, ignore_extra=True)
  return {"predicted": len(predicted), "skipped": len(skipped), "columns": columns}
