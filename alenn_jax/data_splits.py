"""A built dataset's splits: its own, `selection` carved from train where it has no validation
split (by patient, so no patient is in two splits), cross-fitting folds, which split is scored
and which selects checkpoints, and each split's labels, lesion kinds and raw examples.
"""

import os

import jax
import ml_collections
import numpy as np
import tensorflow_datasets as tfds
from absl import logging

from alenn_jax import datasets
from alenn_jax.errors import UserInputError

PADDING = {"padding": True}  # Stands for the examples that fill the last evaluation batch.


class Subset:
  """Random access to the examples of `source` at `indices` (`-1`: `PADDING`)."""

  def __init__(self, source, indices):
    self._source = source
    self._indices = np.asarray(indices, np.int64)

  def __len__(self) -> int:
    return len(self._indices)

  def __getitem__(self, i):
    index = int(self._indices[i])
    return PADDING if index < 0 else self._source[index]


_CARVED: dict = {}  # (dataset folder, train split, fraction) -> (selection rows, train rows).


_GROUPS: dict = {}  # (dataset folder, split) -> the selection group of every example.


def prepared_builder(config: ml_collections.ConfigDict, split: str | None):
  """The dataset's builder, built first if needed; `split` (unless None) must exist."""
  data_dir = _expand(config.data_dir)
  manual_dir = _expand(config.manual_dir) if config.manual_dir else None
  group_by = config.get("group_by") or None
  builder = datasets.get_builder(config.name, data_dir, group_by=group_by)
  if not builder.is_prepared():
    if jax.process_count() > 1:
      raise UserInputError(
        f"config.data.name={config.name!r} is not built in {data_dir}; on several hosts, build it "
        "first with python -m alenn_jax.datasets.prepare."
      )
    builder = datasets.build(config.name, data_dir, manual_dir, group_by=group_by)
  elif config.name.partition("/")[0] == "folder":
    datasets.folder.check_source(builder, manual_dir)
  if split is not None and split not in _split_names(builder, config):
    missing = builder.info.metadata.get("missing_splits", [])
    why = (
      f" (none of its images were in {builder.info.metadata.get('manual_dir', 'manual_dir')} "
      "when the dataset was built: download them, then rebuild it in a new data_dir)"
      if split in missing
      else ""
    )
    raise UserInputError(
      f"config.data: {config.name} has no split {split!r}{why}; it has "
      f"{', '.join(sorted(_split_names(builder, config)))}."
    )
  return builder


# ----------------------------------------------------------------------------------------------
# Splits: the dataset's own, and `selection` carved from train where the dataset has no
# validation split.

SELECTION = "selection"


def carves_selection(config: ml_collections.ConfigDict, built_splits) -> bool:
  """Whether `selection` is carved from `config.train_split`: the dataset has that split but no
  `validation` (nor `selection`) split of its own, `config.eval_split` names none of its other
  splits (say a folder's `val`), and `paper_selection` is off."""
  built_splits = set(built_splits)
  own = built_splits - {config.train_split, "test", "valid"}
  return (
    not config.get("paper_selection", False)
    and config.train_split in built_splits
    and not built_splits & {"validation", SELECTION}
    and config.eval_split not in own
  )


def _split_names(builder, config) -> list[str]:
  names = list(builder.info.splits)
  return [*names, SELECTION] if carves_selection(config, names) else names


def split_names(config: ml_collections.ConfigDict) -> list[str]:
  """Every split of the dataset (with `selection` where it is carved), `config.train_split` first
  (building the dataset if needed)."""
  names = _split_names(prepared_builder(config, None), config)
  first = [config.train_split] if config.train_split in names else []
  return first + sorted(s for s in names if s != config.train_split)


def selection_group(example) -> str:
  """What the selection split is carved by: the patient where the dataset records one, else the
  image."""
  key = example.get("patient_id", b"") or example["id"]
  return key.decode("utf-8") if isinstance(key, bytes) else str(key)


def in_selection(group: str, fraction: float) -> bool:
  """A deterministic draw per group (a hash, the same on every machine and run)."""
  return datasets.common.hash64(f"selection:{group}") / 2.0**64 < fraction


def _carved_rows(builder, config) -> tuple[np.ndarray, np.ndarray]:
  """Row indices of the train split that form `selection`, and those that stay in train."""
  fraction = float(config.selection_fraction)
  key = (builder.data_dir, config.train_split, fraction)
  if key not in _CARVED:
    raw = builder.as_data_source(config.train_split, decoders=_skip_images())
    chosen = np.zeros(len(raw), bool)
    labels = np.zeros(len(raw), np.int32)
    for i in range(len(raw)):
      example = raw[i]
      chosen[i] = in_selection(selection_group(example), fraction)
      labels[i] = example["label"]
    counts = [int(np.sum(labels[chosen] == c)) for c in (0, 1)]
    if min(counts) == 0 or chosen.all():
      raise UserInputError(
        f"config.data.selection_fraction={fraction}: the selection split carved from "
        f"{config.name}:{config.train_split} would hold {counts[0]} normal and {counts[1]} "
        f"abnormal images out of {len(raw)}" + (" (all of them)" if chosen.all() else "") + "; "
        "raise it (at most 0.5) for a small dataset, or set config.data.paper_selection=True to "
        "select on the scored split."
      )
    _CARVED[key] = (np.nonzero(chosen)[0], np.nonzero(~chosen)[0])
  return _CARVED[key]


def fold_of(group: str, folds: int) -> int:
  """The cross-fitting fold of a patient (or image): a hash, the same on every machine and run."""
  return datasets.common.hash64(f"fold:{group}") % folds


def _split_rows(builder, config, split: str) -> tuple[str, np.ndarray | None]:
  """(the dataset's own split that holds `split`, its rows; None: all of them)."""
  rows = None
  if carves_selection(config, builder.info.splits):
    if split == SELECTION:
      return config.train_split, _carved_rows(builder, config)[0]
    if split == config.train_split:
      rows = _carved_rows(builder, config)[1]
  holdout = config.get("holdout_fold", -1)
  if split == config.train_split and holdout >= 0:
    folds = _folds(builder, config, split, rows)
    rows = (np.arange(len(folds)) if rows is None else rows)[folds != holdout]
  return split, rows


def _groups(builder, split: str) -> list[str]:
  """`selection_group` of every example of the dataset's own split `split` (read once)."""
  key = (builder.data_dir, split)
  if key not in _GROUPS:
    raw = builder.as_data_source(split, decoders=_skip_images())
    _GROUPS[key] = [selection_group(raw[i]) for i in range(len(raw))]
  return _GROUPS[key]


def _folds(builder, config, split: str, rows=None) -> np.ndarray:
  """The fold (`fold_of`, `config.folds`) of every example of the dataset's split `split` (of its
  `rows`, when given)."""
  groups = _groups(builder, split)
  rows = range(len(groups)) if rows is None else rows
  return np.asarray([fold_of(groups[int(i)], config.folds) for i in rows], np.int64)


def view_folds(builder, config, split: str) -> np.ndarray:
  """The fold of every example of `split` as the job sees it (a carved split's rows included)."""
  base, rows = _split_rows(builder, config, split)
  return _folds(builder, config, base, rows)


def split_folds(config: ml_collections.ConfigDict, split: str) -> dict[str, int]:
  """id -> cross-fitting fold of every example of `split` (`config.folds` folds)."""
  builder = prepared_builder(config, split)
  raw = undecoded_split(builder, config, split)
  folds = view_folds(builder, config, split)
  return {id_of(raw[i]): int(folds[i]) for i in range(len(raw))}


def source_of(builder, config, split: str, decoders=None):
  """Random access to the examples of `split` (a carved split's rows of its parent)."""
  base, rows = _split_rows(builder, config, split)
  source = builder.as_data_source(base, decoders=decoders)
  return source if rows is None else Subset(source, rows)


def _skip_images():
  return {"image": tfds.decode.SkipDecoding(), "lesion_mask": tfds.decode.SkipDecoding()}


def undecoded_split(builder, config, split: str):
  """The split's records with images left encoded: a cheap pass for labels and ids."""
  return source_of(builder, config, split, decoders=_skip_images())


def scored_split(config: ml_collections.ConfigDict) -> str:
  """Where final scores come from: `test` if the dataset has it, else `valid` (MURA's official
  validation set, used as its test set), else `config.eval_split`."""
  names = split_names(config)
  for name in ("test", "valid"):
    if name in names:
      return name
  return config.eval_split


def resolve_eval_split(config: ml_collections.ConfigDict, scored: str | None = None) -> str:
  """The split checkpoints are selected on: `config.eval_split` if the dataset has it and it is
  not the scored split, else `validation` or the carved `selection`; with `paper_selection` (no
  carve), a dataset without a split of its own to select on selects on the scored split
  (optimistic). `scored` defaults to `scored_split(config)`. Sets `config.eval_split` and returns
  it."""
  names = split_names(config)
  scored = scored or scored_split(config)
  found = [s for s in ("validation", SELECTION) if s in names and s != scored]
  if config.eval_split in names and config.eval_split != scored:
    chosen = config.eval_split
  elif found:
    chosen = found[0]
  elif config.get("paper_selection", False):
    chosen = scored
  else:
    raise UserInputError(
      f"config.data.eval_split={config.eval_split!r}: {config.name} has splits "
      f"{', '.join(names)}; set it to the split checkpoints are selected on."
    )
  if chosen == SELECTION:  # Refuses an empty or one-class carve now, not after stage 1.
    _carved_rows(prepared_builder(config, None), config)
  if chosen != config.eval_split:
    logging.info("config.data.eval_split: %s selects on %r", config.name, chosen)
  config.eval_split = chosen
  return chosen


def open_split(config: ml_collections.ConfigDict, split: str):
  """(decoded source, label of every example) of a split; builds the dataset first if needed."""
  builder = prepared_builder(config, split)
  raw = undecoded_split(builder, config, split)
  labels = np.fromiter((raw[i]["label"] for i in range(len(raw))), np.int32, len(raw))
  return source_of(builder, config, split), labels


def _text(value) -> str:
  """A stored Text feature as str (records read without decoding give bytes)."""
  return value.decode() if isinstance(value, bytes) else str(value)


def id_of(example) -> str:
  return _text(example["id"])


def _by_id(raw, value) -> dict:
  """id -> value(example) over the records of `raw`."""
  out = {}
  for i in range(len(raw)):
    example = raw[i]
    out[id_of(example)] = value(example)
  return out


def split_labels(config: ml_collections.ConfigDict, split: str) -> dict[str, int]:
  """id -> label of every example of `split`, read without decoding images."""
  raw = undecoded_split(prepared_builder(config, split), config, split)
  return _by_id(raw, lambda example: int(example["label"]))


def split_lesion_kinds(config: ml_collections.ConfigDict, split: str) -> dict[str, str] | None:
  """id -> lesion kind of every example of `split` ("none" for normals), where the dataset records
  one (the phantoms' `lesion_kind`); None where it does not. Read without decoding images."""
  builder = prepared_builder(config, split)
  if "lesion_kind" not in builder.info.features.keys():
    return None
  raw = undecoded_split(builder, config, split)
  return _by_id(raw, lambda example: _text(example["lesion_kind"]))


def _expand(path: str) -> str:
  return os.path.abspath(os.path.expanduser(path))
