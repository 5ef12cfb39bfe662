"""The LE-map storage format: written by the localize job, read by the report, the classifiers and
anything else that uses a localize workdir's maps.

A localize workdir W holds, per split, `W/le_maps/<split>/shard_XXXXX.npz` (cross-fitted maps:
`shard_f<fold>_XXXXX.npz`, one series per fold's generator), each with `ids` (str
[N]), `shapes` (int32 [N, 2]) and `offsets` (int64 [N + 1]) into `data` (float16, the difference
maps D of all N images flattened, each cropped back to the image inside the letterbox square)
and, when the maps were kept to a foreground (`config.localize.foreground`), `foreground` (each
image's body as packed booleans; D is zero outside it); and `W/le_maps/scale.json`: the
dataset-level constant that turns D into the LE map, LE = clip(D / scale, 0, 1). Never normalised
per image: that would invent a lesion in every normal image.
"""

import glob
import json
import os

import numpy as np

from alenn_jax import image_io
from alenn_jax.errors import UserInputError

LE_MAPS = "le_maps"  # The folder of a localize workdir that holds the maps.


def shard_path(workdir: str, split: str, index: int, fold: int | None = None) -> str:
  name = f"shard_{index:05d}.npz" if fold is None else f"shard_f{fold}_{index:05d}.npz"
  return os.path.join(workdir, LE_MAPS, split, name)


def scale_path(workdir: str) -> str:
  return os.path.join(workdir, LE_MAPS, "scale.json")


def le_map(d: np.ndarray, scale: float) -> np.ndarray:
  """LE = clip(D / scale, 0, 1) with the dataset-level `scale`."""
  return np.clip(np.asarray(d, np.float32) / scale, 0.0, 1.0)


def _flat(arrays, dtype) -> np.ndarray:
  return np.concatenate([a.ravel() for a in arrays]).astype(dtype) if arrays else np.zeros(0, dtype)


def write_shard(path: str, ids, maps, bodies=None) -> None:
  """Stores the `[h, w]` maps of `ids` in one shard (atomically), with each image's foreground
  (`bodies`, boolean `[h, w]`: the pixels the map keeps; None: every pixel)."""
  shapes = np.asarray([m.shape for m in maps], np.int32).reshape(-1, 2)
  offsets = np.concatenate([[0], np.cumsum([m.size for m in maps])]).astype(np.int64)
  arrays = {"data": _flat(maps, np.float16)}
  if bodies is not None:
    arrays["foreground"] = np.packbits(_flat(bodies, bool))
  with image_io.atomic_open(path, "wb") as f:
    np.savez(f, ids=np.asarray(ids, dtype=str), shapes=shapes, offsets=offsets, **arrays)


def _shard_files(workdir: str, split: str) -> list[str]:
  return sorted(glob.glob(os.path.join(workdir, LE_MAPS, split, "shard_*.npz")))


def read_difference_maps(workdir: str, split: str) -> dict[str, np.ndarray]:
  """id -> D (float32 `[h, w]`, the image's own letterboxed extent) of every shard of `split`."""
  files = _shard_files(workdir, split)
  if not files:
    raise UserInputError(
      f"no LE maps for split {split!r} in {workdir}/{LE_MAPS}; run "
      f"python launch.py --config=configs/localize.py --workdir={workdir} first."
    )
  out = {}
  for path in files:
    with np.load(path) as shard:
      out.update(_per_image(shard, shard["data"], np.float32))
  return out


def read_foreground(workdir: str, split: str) -> dict[str, np.ndarray]:
  """id -> the foreground its map was kept on (boolean `[h, w]`), for the images of `split` whose
  maps were made with one (`config.localize.foreground`); others are absent."""
  out = {}
  for path in _shard_files(workdir, split):
    with np.load(path) as shard:
      if "foreground" in shard.files:
        bits = np.unpackbits(shard["foreground"], count=int(shard["offsets"][-1]))
        out.update(_per_image(shard, bits, bool))
  return out


def _per_image(shard, flat: np.ndarray, dtype) -> dict[str, np.ndarray]:
  """id -> its `[h, w]` slice of `flat`, a shard's images laid end to end as `_flat` writes them."""
  ids, shapes, offsets = shard["ids"], shard["shapes"], shard["offsets"]
  return {
    str(example_id): flat[offsets[i] : offsets[i + 1]].astype(dtype).reshape(shapes[i])
    for i, example_id in enumerate(ids)
  }


def write_scale(workdir: str, scale: float, **details) -> None:
  image_io.write_text(scale_path(workdir), json.dumps({"scale": scale, **details}))


def read_scale_record(workdir: str) -> dict | None:
  """scale.json as written (scale, percentile, images), or None when there is none yet."""
  path = scale_path(workdir)
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)


def read_scale(workdir: str) -> float:
  record = read_scale_record(workdir)
  if record is None:
    raise UserInputError(
      f"no {scale_path(workdir)}; run the localize job (configs/localize.py) on {workdir} first."
    )
  return float(record["scale"])


def read_le_maps(workdir: str, split: str) -> dict[str, np.ndarray]:
  """id -> LE map in [0, 1] for `split`, what stage 2 fuses with the images."""
  scale = read_scale(workdir)
  return {k: le_map(v, scale) for k, v in read_difference_maps(workdir, split).items()}
