"""Input pipeline: a built dataset -> host batches (grain) -> global arrays sharded on "data".

Conventions, stated once for the whole project. A batch is a dict:

  image        float32 [B, S, S, 1] in [-1, 1] (-1 black, +1 white): what the models see
  lesion_mask  float32 [B, S, S, 1], 1 inside a known lesion
  label        int32 [B], 0 normal, 1 abnormal
  valid_box    int32 [B, 4] (top, left, height, width) of the image inside the letterboxed square,
               so maps computed on the square can be cropped back to the image
  weight       float32 [B], 1 for real examples, 0 for the padding of the last evaluation batch
  le           float32 [B, S, S, 1] in [0, 1], the example's LE map (stage 2, only when the
               iterator is given `le_maps`), letterboxed and augmented exactly as the image
  id           numpy str, host-side only: in training this process's ids [B_local]; in evaluation
               the ids of the whole global batch [B] (the same on every process)

Images are letterboxed: resized with the aspect kept so the longest side is S, then centred on a
black S x S square. `batch_size` is global (all processes, all devices) and must be divisible by
the device count. Training iterators are infinite, shuffled per epoch from a seed, augmented, and
deterministic: the same seed gives the same batches, and `get_state()`/`set_state()` resume them.
Evaluation iterators visit every example exactly once.
"""

import dataclasses
import math
import threading
from typing import Any

import grain
import jax
import ml_collections
import numpy as np
from PIL import Image

from alenn_jax import data_splits, sharding
from alenn_jax.errors import UserInputError

NUMERIC_KEYS = ("image", "lesion_mask", "label", "valid_box", "weight")
OPTIONAL_KEYS = ("le", "structure")


def numeric_keys(batch) -> tuple[str, ...]:
  """The device-side keys of a batch (or example): NUMERIC_KEYS and the optional ones present."""
  return NUMERIC_KEYS + tuple(k for k in OPTIONAL_KEYS if k in batch)


def data_config() -> ml_collections.ConfigDict:
  """Defaults of `config.data`, shared by every stage."""
  config = ml_collections.ConfigDict()
  config.name = (
    "phantoms/px128"  # A dataset of alenn_jax.datasets: phantoms/..., mura/..., fracatlas/...
  )
  config.data_dir = "~/tensorflow_datasets"  # Where built datasets live (built there on first use).
  config.manual_dir = ""  # The unpacked MURA or FracAtlas files, or your folder (not phantoms).
  config.group_by = "path"  # folder datasets: split by hashing each "path" or its "parent" folder.
  config.image_size = 128  # Side S of the letterboxed square images.
  config.labels = (0, 1)  # Labels to keep: (0,) for normals only (stage 1).
  config.train_split = "train"
  config.eval_split = "validation"  # Where checkpoints are selected (resolved: resolve_eval_split).
  # Datasets without a `validation` split (MURA: train/valid) get a `selection` split carved from
  # train by patient (this fraction of patients; the rest stays `train`), so checkpoints are never
  # selected on the split that is scored.
  config.selection_fraction = 0.1
  # True: carve nothing; a dataset without a split of its own to select on (MURA) then selects
  # checkpoints on the scored split, which is optimistic. The paper's text names no selection
  # split; with MURA's train/valid this is what is left without a carve.
  config.paper_selection = False
  # Cross-fitting (stage 1 of `localize.folds` > 1): the train split's patients fall into `folds`
  # folds by a hash; `holdout_fold` >= 0 leaves that fold out of the train split.
  config.folds = 1
  config.holdout_fold = -1
  config.batch_size = 16  # Global batch size (the paper's text: 16).
  config.crop = 0  # Training batches: random crops of this side (px) of the images (0: whole).
  config.seed = 0  # Shuffling and augmentation seed.
  config.num_threads = 2  # Host threads decoding and augmenting.
  # Training iterators keep each example decoded and letterboxed (before augmentation, so the
  # batches are the same) until this many MiB are held: every epoch after the first then skips
  # the decode, most of a small image's input cost. 0: decode every time.
  config.cache_mb = 512.0
  config.augment = ml_collections.ConfigDict()
  config.augment.flip = True  # Random left-right flip.
  config.augment.rotate_deg = 7.0  # Uniform rotation in [-x, x] degrees.
  config.augment.scale = 0.08  # Uniform zoom in [1 - x, 1 + x].
  config.augment.brightness = 0.08  # Added to the [0, 1] image, uniform in [-x, x].
  config.augment.contrast = 0.15  # Contrast factor uniform in [1 - x, 1 + x], about the mean.
  return config


def letterbox(image: np.ndarray, size: int, resample=Image.Resampling.BILINEAR):
  """`[H, W]` or `[H, W, 1]` uint8 -> (`[size, size]` uint8, (top, left, height, width))."""
  image = image[..., 0] if image.ndim == 3 else image
  h, w = image.shape
  scale = size / max(h, w)
  nh, nw = max(1, min(size, round(h * scale))), max(1, min(size, round(w * scale)))
  if (nh, nw) != (h, w):
    image = np.asarray(Image.fromarray(image).resize((nw, nh), resample))
  top, left = (size - nh) // 2, (size - nw) // 2
  out = np.zeros((size, size), np.uint8)
  out[top : top + nh, left : left + nw] = image
  return out, (top, left, nh, nw)


def place_map(values: np.ndarray, box, size: int) -> np.ndarray:
  """A float map of an image's own extent, resized into the letterbox `box` (top, left, height,
  width) of a `[size, size]` square, zero outside: how a stored LE map meets its image."""
  top, left, nh, nw = (int(v) for v in box)
  pil = Image.fromarray(np.asarray(values, np.float32), mode="F")
  if pil.size != (nw, nh):
    pil = pil.resize((nw, nh), Image.Resampling.BILINEAR)
  out = np.zeros((size, size), np.float32)
  out[top : top + nh, left : left + nw] = np.asarray(pil, np.float32)
  return out


def _affine(image: np.ndarray, angle_deg: float, zoom: float, flip: bool, resample) -> np.ndarray:
  """Rotation about the centre, zoom and optional flip of a square uint8 or float32 image (zero
  fill)."""
  size = image.shape[0]
  pil = Image.fromarray(image)
  if flip:
    pil = pil.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
  if angle_deg or zoom != 1.0:
    # PIL's affine maps output to input coordinates: inverse rotation and 1/zoom about the centre.
    a = math.radians(angle_deg)
    cos, sin = math.cos(a) / zoom, math.sin(a) / zoom
    c = (size - 1) / 2.0
    matrix = (cos, sin, c - cos * c - sin * c, -sin, cos, c + sin * c - cos * c)
    pil = pil.transform(
      (size, size), Image.Transform.AFFINE, matrix, resample=resample, fillcolor=0
    )
  return np.asarray(pil)


LETTERBOXED = "letterboxed"  # An example's (image, lesion mask, box) at the working size.


def _letterboxed(example: dict, size: int):
  """(image, lesion mask, box) of a decoded example letterboxed to `size` (uint8 squares)."""
  image, box = letterbox(example["image"], size)
  mask, _ = letterbox(example["lesion_mask"], size, Image.Resampling.NEAREST)
  return image, mask, box


class _DecodedOnce:
  """Random access to `source`'s examples as `_Preprocess` takes them, each decoded and
  letterboxed to `size` once and kept until `budget_bytes` are held (later ones are decoded on
  every visit). The letterboxed squares are what `_Preprocess` would compute itself, so the
  batches are the same with or without it. Safe to share between grain's reading threads."""

  def __init__(self, source, size: int, budget_bytes: int):
    self._source, self._size, self._budget = source, size, budget_bytes
    self._kept: dict[int, dict] = {}
    self._held = 0
    self._lock = threading.Lock()

  def __len__(self) -> int:
    return len(self._source)

  def __getitem__(self, i):
    i = int(i)
    kept = self._kept.get(i)
    if kept is not None:
      return kept
    example = self._source[i]
    image, mask, box = _letterboxed(example, self._size)
    out = {"id": example["id"], "label": example["label"], LETTERBOXED: (image, mask, box)}
    with self._lock:
      if i not in self._kept and self._held + image.nbytes + mask.nbytes <= self._budget:
        self._kept[i] = out
        self._held += image.nbytes + mask.nbytes
    return out


@dataclasses.dataclass(frozen=True)
class _Preprocess:
  """Decoded example -> numpy dict with the batch keys (augmented when `augment` is given)."""

  size: int
  augment: ml_collections.ConfigDict | None = None
  le_maps: Any = None  # id -> LE map in [0, 1] of the image's own extent (stage 2), or None.
  crop: int = 0  # Training: a random crop of this side from the `size` square (0: none).
  # id -> RTV structure in [0, 1] of the letterboxed `size` square (stage 1 with
  # structure="per_image"), or None: augmented with its image (the same rotation, zoom, flip,
  # contrast and brightness) and cropped with it; adds the batch key `structure` in [-1, 1].
  structures: Any = None

  def __call__(self, example: dict, rng: np.random.Generator | None = None) -> dict:
    example_id = example["id"]
    example_id = example_id.decode("utf-8") if isinstance(example_id, bytes) else str(example_id)
    if LETTERBOXED in example:  # From `_DecodedOnce`: already at this size.
      image, mask, box = example[LETTERBOXED]
    else:
      image, mask, box = _letterboxed(example, self.size)
    le = None
    if self.le_maps is not None:
      if example_id not in self.le_maps:
        raise UserInputError(f"no LE map for example {example_id!r}; recompute the LE maps.")
      le = place_map(self.le_maps[example_id], box, self.size)
    structure = None
    if self.structures is not None:
      if example_id not in self.structures:
        raise UserInputError(f"no RTV structure for example {example_id!r} in the per-image cache.")
      structure = np.asarray(self.structures[example_id], np.float32)
      if structure.shape != (self.size, self.size):
        raise ValueError(
          f"the structure of {example_id!r} is {structure.shape}, not the {self.size}-px square."
        )
    out = image.astype(np.float32) / 255.0
    if self.augment is not None and rng is not None:
      aug = self.augment
      flip = bool(aug.flip) and rng.random() < 0.5
      angle = rng.uniform(-aug.rotate_deg, aug.rotate_deg)
      zoom = rng.uniform(1.0 - aug.scale, 1.0 + aug.scale)
      image = _affine(image, angle, zoom, flip, Image.Resampling.BILINEAR)
      mask = _affine(mask, angle, zoom, flip, Image.Resampling.NEAREST)
      if le is not None:
        le = _affine(le, angle, zoom, flip, Image.Resampling.BILINEAR)
      if structure is not None:
        structure = _affine(structure, angle, zoom, flip, Image.Resampling.BILINEAR)
      out = image.astype(np.float32) / 255.0
      contrast = rng.uniform(1.0 - aug.contrast, 1.0 + aug.contrast)
      brightness = rng.uniform(-aug.brightness, aug.brightness)
      mean = out.mean()
      out = np.clip((out - mean) * contrast + mean + brightness, 0.0, 1.0)
      if structure is not None:  # RTV commutes with a shift and (nearly) with a gain.
        structure = np.clip((structure - mean) * contrast + mean + brightness, 0.0, 1.0)
    result = {
      "image": (out * 2.0 - 1.0)[:, :, None].astype(np.float32),
      "lesion_mask": (mask > 0).astype(np.float32)[:, :, None],
      "label": np.int32(example["label"]),
      "valid_box": np.asarray(box, np.int32),
      "weight": np.float32(1.0),
      "id": example_id,
    }
    if le is not None:
      result["le"] = np.clip(le, 0.0, 1.0)[:, :, None]
    if structure is not None:
      result["structure"] = (np.clip(structure, 0.0, 1.0) * 2.0 - 1.0)[:, :, None]
    if self.crop and rng is not None and self.crop < self.size:
      result = _random_crop(result, self.crop, rng)
    return result


def eval_preprocess(size: int, le_maps=None):
  """`example -> batch entry` exactly as evaluation prepares an example (letterboxed to `size`,
  no augmentation; `le_maps`: id -> LE map of the image's own extent, or None). An example is a
  dict with `image` and `lesion_mask` (uint8 `[h, w]`), `label` and `id`."""
  return _Preprocess(size, None, le_maps)


def _random_crop(example: dict, crop: int, rng: np.random.Generator) -> dict:
  """The same random `crop` x `crop` window of every map of an example; `valid_box` becomes the
  image's extent inside the crop."""
  size = example["image"].shape[0]
  top, left = (int(v) for v in rng.integers(0, size - crop + 1, 2))
  out = dict(example)
  for key in ("image", "lesion_mask", *OPTIONAL_KEYS):  # Every map of the example.
    if key in out:
      out[key] = out[key][top : top + crop, left : left + crop]
  y0, x0, h, w = (int(v) for v in example["valid_box"])
  y1, x1 = min(max(y0 - top, 0), crop), min(max(x0 - left, 0), crop)
  y2, x2 = min(max(y0 + h - top, 0), crop), min(max(x0 + w - left, 0), crop)
  out["valid_box"] = np.asarray([y1, x1, y2 - y1, x2 - x1], np.int32)
  return out


class _ProcessBlocks(grain.MapDataset):
  """This process's contiguous block of every global batch of `parent`: element j is parent's
  element (j // local) * local * processes + process * local + j % local. So the global batch a
  step sees (and each example's augmentation, seeded by its index in `parent`) is the same
  whatever the number of processes."""

  def __init__(self, parent, process: int, processes: int, local: int):
    super().__init__(parent)
    self._process, self._processes, self._local = process, processes, local

  def __len__(self) -> int:
    return len(self._parent) // self._processes

  def __getitem__(self, index):
    if isinstance(index, slice):
      return self.slice(index)
    block, offset = divmod(index, self._local)
    return self._parent[(block * self._processes + self._process) * self._local + offset]


def _select(labels: np.ndarray, keep, name: str, split: str) -> np.ndarray:
  indices = np.nonzero(np.isin(labels, np.asarray(keep)))[0]
  if len(indices) == 0:
    raise UserInputError(f"config.data.labels={tuple(keep)} selects no example of {name}:{split}.")
  return indices


def _local_batch_size(config, mesh) -> int:
  sharding.check_batch_divisible(config.batch_size, mesh, "config.data.batch_size")
  return config.batch_size // jax.process_count()


def _stack(examples) -> dict:
  batch = {k: np.stack([e[k] for e in examples]) for k in numeric_keys(examples[0])}
  batch["id"] = np.asarray([e["id"] for e in examples])
  return batch


class GlobalBatches:
  """Iterates host batches as global arrays; `id` stays a host-local numpy array."""

  def __init__(self, iterator, mesh, num_batches: int | None = None, global_ids=None):
    self._iterator = iterator
    self._mesh = mesh
    self.num_batches = num_batches  # None: infinite.
    self._global_ids = global_ids  # [num_batches, B] on several processes (evaluation), or None.
    self._count = 0

  def __iter__(self):
    return self

  def __next__(self) -> dict:
    host = next(self._iterator)
    batch = sharding.to_global({k: host[k] for k in numeric_keys(host)}, self._mesh)
    batch["id"] = host["id"] if self._global_ids is None else self._global_ids[self._count]
    self._count += 1
    return batch

  def get_state(self):
    return self._iterator.get_state()

  def set_state(self, state) -> None:
    self._iterator.set_state(state)


def train_iterator(
  config: ml_collections.ConfigDict, mesh, split: str | None = None, le_maps=None, structures=None
) -> GlobalBatches:
  """Infinite, shuffled, augmented batches of the `config.labels` examples of the train split.

  Args:
    config: `config.data` (see `data_config`).
    mesh: the device mesh; batches are split on its "data" axis.
    split: defaults to `config.train_split`.
    le_maps: id -> LE map of the image's own extent; adds the batch key `le` (stage 2).
    structures: id -> RTV structure in [0, 1] of the letterboxed `config.image_size` square,
      augmented with its image; adds the batch key `structure` (stage 1's `per_image`).
  """
  split = split or config.train_split
  local_batch = _local_batch_size(config, mesh)
  source, labels = data_splits.open_split(config, split)
  indices = _select(labels, config.labels, config.name, split)
  preprocess = _Preprocess(
    config.image_size, config.augment, le_maps, config.get("crop", 0), structures
  )
  examples = data_splits.Subset(source, indices)
  budget = int(config.get("cache_mb", 0) * 2**20)
  if budget > 0:
    examples = _DecodedOnce(examples, config.image_size, budget)
  dataset = grain.MapDataset.source(examples).seed(config.seed).shuffle().repeat(None)
  dataset = dataset.random_map(preprocess)
  if jax.process_count() > 1:
    dataset = _ProcessBlocks(dataset, jax.process_index(), jax.process_count(), local_batch)
  dataset = dataset.batch(local_batch, drop_remainder=True, batch_fn=_stack)
  read = grain.ReadOptions(num_threads=config.num_threads, prefetch_buffer_size=2 * local_batch)
  return GlobalBatches(iter(dataset.to_iter_dataset(read)), mesh)


def selected_indices(
  config: ml_collections.ConfigDict, split: str, labels=None, fold: int | None = None
) -> np.ndarray:
  """The dataset indices `eval_iterator` visits, in its order: every example of `split` with a
  label in `labels` (default `config.labels`), of cross-fitting `fold` only when given."""
  _, all_labels = data_splits.open_split(config, split)
  return _selected(config, split, all_labels, labels, fold)


def _selected(config, split: str, all_labels, labels, fold) -> np.ndarray:
  indices = _select(all_labels, config.labels if labels is None else labels, config.name, split)
  if fold is not None:
    indices = indices[
      data_splits.view_folds(data_splits.prepared_builder(config, split), config, split)[indices]
      == fold
    ]
  return indices


def eval_iterator(
  config: ml_collections.ConfigDict,
  mesh,
  split: str | None = None,
  labels=None,
  le_maps=None,
  fold: int | None = None,
) -> GlobalBatches:
  """One pass over every selected example of `split`, in order, the last batch padded (weight 0).
  `fold`: only the examples of that cross-fitting fold (`fold_of`, `config.folds` folds); it may
  have none (then no batch).

  Every process gets the same number of batches, so collective evaluation steps never deadlock.
  """
  split = split or config.eval_split
  source, all_labels = data_splits.open_split(config, split)
  indices = _selected(config, split, all_labels, labels, fold)
  if not len(indices):
    return GlobalBatches(iter(()), mesh, 0)
  local_batch = _local_batch_size(config, mesh)
  padded = _padded(indices, config.batch_size)
  num_batches = len(padded) // config.batch_size
  # This process's contiguous block of every global batch.
  local = padded.reshape(num_batches, jax.process_count(), local_batch)[:, jax.process_index()]
  iterator = _ordered_batches(config, source, indices[0], local.ravel(), local_batch, le_maps)
  global_ids = None
  if jax.process_count() > 1:  # Every process gets the ids of the whole global batch.
    raw = data_splits.undecoded_split(data_splits.prepared_builder(config, split), config, split)
    names = [data_splits.id_of(raw[int(i)]) if i >= 0 else "" for i in padded]
    global_ids = np.asarray(names).reshape(num_batches, config.batch_size)
  return GlobalBatches(iterator, mesh, num_batches, global_ids)


def batches_alone(
  config: ml_collections.ConfigDict, mesh, split: str, indices, le_maps=None
) -> GlobalBatches:
  """The examples of `split` at dataset `indices` (e.g. a part of `selected_indices`), in order,
  read by this process alone on its own `mesh` (its local devices), in batches of
  `config.batch_size / jax.process_count()` (the last padded, weight 0): each device sees the
  batch it would in a collective pass. For jobs whose processes share out whole parts of a split
  and need no collective (the LE maps)."""
  processes = jax.process_count()
  if config.batch_size % processes:
    raise UserInputError(
      f"config.data.batch_size={config.batch_size} is not divisible by the {processes} "
      f"processes; use a multiple of {processes}."
    )
  local_batch = config.batch_size // processes
  devices = mesh.devices.size
  if local_batch % devices:
    raise UserInputError(
      f"config.data.batch_size={config.batch_size}: each of the {processes} process(es) gets "
      f"{local_batch} images per batch, which its {devices} devices cannot share evenly; use a "
      f"multiple of {processes * devices}."
    )
  indices = np.asarray(indices, np.int64)
  if not len(indices):
    return GlobalBatches(iter(()), mesh, 0)
  source = data_splits.source_of(data_splits.prepared_builder(config, split), config, split)
  padded = _padded(indices, local_batch)
  iterator = _ordered_batches(config, source, indices[0], padded, local_batch, le_maps)
  return GlobalBatches(iterator, mesh, len(padded) // local_batch)


def _padded(indices, batch: int) -> np.ndarray:
  """`indices` followed by -1 (padding) up to a whole number of batches."""
  padded = np.full(math.ceil(len(indices) / batch) * batch, -1, np.int64)
  padded[: len(indices)] = indices
  return padded


def _ordered_batches(config, source, first: int, indices, batch: int, le_maps):
  """Preprocessed batches of `source` at `indices` in order (`-1`: padding of weight 0)."""
  preprocess = _Preprocess(config.image_size, None, le_maps)
  filler = preprocess(source[int(first)])
  filler = {**filler, "weight": np.float32(0.0), "id": ""}

  def prepare(example):
    return filler if example is data_splits.PADDING else preprocess(example)

  dataset = grain.MapDataset.source(data_splits.Subset(source, indices)).map(prepare)
  dataset = dataset.batch(batch, drop_remainder=False, batch_fn=_stack)
  read = grain.ReadOptions(num_threads=config.num_threads, prefetch_buffer_size=2 * batch)
  return iter(dataset.to_iter_dataset(read))
