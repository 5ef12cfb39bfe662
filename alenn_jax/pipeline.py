"""The whole method in one command: stage 1 -> LE maps -> classifiers with and without LE -> report.

  python launch.py --config=configs/pipeline.py --workdir=W

Every stage has its own folder in W and is skipped when its `done.json` is there; an interrupted
stage resumes from its own checkpoints. So re-running the command after a crash continues where it
stopped, and re-running it after success recomputes nothing. With `--multihost` every process runs
each stage together; process 0's markers decide which stages are skipped, and process 0 writes a
marker once every process has finished the stage, and the report.

  W/stage1/                     stage 1 (train_inpainting): checkpoints, report/table1.csv (with
                                localize.folds = K > 1: W/stage1/fold<k>/, one per fold)
  W/localize/                   stage 2a (localize): le_maps/, report/fig3_*.png, localization.csv
                                (and localization_by_kind.csv where the data records kinds)
  W/classifiers/<bb>_<fusion>/  stage 2b (train_classifier), one per backbone and fusion (and
                                seed: <bb>_<fusion>_seed<k> for the k-th of config.seeds > 1)
  W/report/                     report.md with every table and figure, and their source files
  W/config.json                 the configuration of the run
"""

import json
import os
import shutil
import time

import jax
import ml_collections
import numpy as np
from absl import logging

from alenn_jax import data_splits, image_io, multihost, pipeline_fields, train_inpainting
from alenn_jax.classification import train_classifier
from alenn_jax.errors import UserInputError
from alenn_jax.localization import localize, map_settings
from alenn_jax.progress import format_seconds
from alenn_jax.reporting import lesion_scores, report_md, tables


def _done_path(directory: str) -> str:
  return os.path.join(directory, "done.json")


def read_done(directory: str) -> dict | None:
  path = _done_path(directory)
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)


def _write_json(path: str, value) -> None:
  image_io.write_text(path, json.dumps(value, indent=2, sort_keys=True))


def _ruled_values(config, test_split: str) -> dict[str, object]:
  """Ruled field -> the value `resolve` gives it (fusion, le_workdir and init_from: the stage's
  default, which `stages` replaces per run)."""
  loc = config.localize
  values = {}
  for path, ruler in pipeline_fields.ruled_fields(config).items():
    if ruler.startswith("data."):
      values[path] = config.data[ruler[len("data.") :]]
  values["stage1.data.folds"], values["stage1.data.holdout_fold"] = loc.folds, -1
  values["stage1.masks.grid_stride"] = loc.stride
  values["stage1.masks.grid_gap"] = loc.gap if loc.method == "multi_window" else 0
  values["localize.init_from"] = ""
  values["localize.report.split"] = test_split
  for b in config.stage2:
    values[f"stage2.{b}.eval.split"] = test_split
    values[f"stage2.{b}.fusion"] = "none"
    values[f"stage2.{b}.le_workdir"] = ""
  return values


def _fill_ruled(config, values: dict[str, object]) -> None:
  """Writes the ruled fields; one set in a nested block to another value is refused."""
  rulers = pipeline_fields.ruled_fields(config)
  for path, value in values.items():
    block, key = pipeline_fields.parent(config, path)
    if key in block and block[key] != value:
      ruler = rulers[path]
      where = ruler if ruler.startswith("the ") else f"config.{ruler}"
      fix = f"leave config.{path} out" if ruler.startswith("the ") else f"set config.{ruler}"
      raise UserInputError(
        f"config.{path}={block[key]!r}: in a pipeline config {where} sets it; {fix} instead."
      )
    block[key] = value


def resolve(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Each stage's config with the shared data fields, the splits the dataset has, and the
  stage-to-stage fields filled in (`ruled_fields`; the pipeline config itself is not changed).
  Raises UserInputError for a ruled field set to another value in a nested block."""
  config = config.copy_and_resolve_references()
  config.unlock()
  data = config.data
  splits = data_splits.split_names(data)  # Builds the dataset on first use.
  test_split = config.test_split or data_splits.scored_split(data)
  if test_split not in splits:
    raise UserInputError(
      f"config.test_split={test_split!r}: {data.name} has splits {', '.join(splits)}."
    )
  config.test_split = test_split
  data_splits.resolve_eval_split(data, scored=test_split)
  loc, masks = config.localize, config.stage1.masks
  if not isinstance(loc.folds, int) or loc.folds < 1:
    raise UserInputError(f"config.localize.folds={loc.folds!r}: use 1 (no cross-fitting) or more.")
  for backbone in config.backbones:
    if backbone not in config.stage2:
      raise UserInputError(
        f"config.backbones lists {backbone!r}, which has no config.stage2.{backbone}; use some of "
        f"{', '.join(config.stage2)}."
      )
  _fill_ruled(config, _ruled_values(config, test_split))
  # Stage 1's grid masks hide the windows the LE maps will repaint, where they will repaint them.
  if loc.window and loc.window != masks.window:
    raise UserInputError(
      f"config.localize.window={loc.window} differs from config.stage1.masks.window="
      f"{masks.window}: stage 1 is trained on the windows the LE maps use; set both, or leave "
      "localize.window at 0."
    )
  if loc.folds > 1:
    normals = sum(1 for v in data_splits.split_labels(data, data.train_split).values() if v == 0)
    if loc.folds > normals:
      raise UserInputError(
        f"config.localize.folds={loc.folds} is more than the {normals} normal training images of "
        f"{data.name}; use at most {normals} folds."
      )
  return config


def _record_config(config, workdir: str) -> None:
  """Writes W/config.json on the first run; later runs say when their config differs."""
  path = os.path.join(workdir, "config.json")
  current = json.loads(config.to_json_best_effort())
  if not os.path.exists(path):
    _write_json(path, current)
    return
  with open(path) as f:
    previous = json.load(f)
  if previous != current:
    logging.warning(
      "%s was written by a run with another configuration; finished stages are reused as they "
      "are. Use a new workdir to rerun everything with this one.",
      path,
    )


def classifier_dir(workdir: str, backbone: str, fusion_mode: str, seed_index: int = 0) -> str:
  suffix = f"_seed{seed_index}" if seed_index else ""
  return os.path.join(workdir, "classifiers", f"{backbone}_{fusion_mode}{suffix}")


def classifier_dirs(config, workdir: str) -> list[str]:
  """Every classifier run of the pipeline: backbone x fusion x seed."""
  return [
    classifier_dir(workdir, b, f, k)
    for b in config.backbones
    for f in config.fusions
    for k in range(config.seeds)
  ]


def stages(config, workdir: str) -> list[tuple[str, str, callable]]:
  """(name, directory, function) of every stage, in order."""
  stage1_dir = os.path.join(workdir, "stage1")
  localize_dir = os.path.join(workdir, "localize")
  loc = config.localize
  folds = loc.folds
  out = []
  for k, directory in enumerate(map_settings.generator_dirs(stage1_dir, folds)):
    c = config.stage1.copy_and_resolve_references()
    name = "stage 1: inpainting GAN"
    if folds > 1:  # Cross-fitting: generator k never sees the train patients of fold k.
      c.data.folds, c.data.holdout_fold = folds, k
      name += f", without fold {k + 1} of {folds}"
    out.append((name, directory, lambda c=c, d=directory: _train_stage1(c, d)))
  loc.init_from = stage1_dir
  out.append(("stage 2a: LE maps", localize_dir, lambda: localize.run(loc, localize_dir)))
  for backbone in config.backbones:
    for fusion_mode in config.fusions:
      for k in range(config.seeds):
        c = config.stage2[backbone].copy_and_resolve_references()
        c.fusion = fusion_mode
        c.le_workdir = localize_dir
        c.seed += k  # Initialisation and dropout,
        c.data.seed += k  # and the order and augmentation of the batches.
        directory = classifier_dir(workdir, backbone, fusion_mode, k)
        out.append(
          (
            f"stage 2b: {backbone}, fusion {fusion_mode}"
            + (f", seed {k + 1} of {config.seeds}" if config.seeds > 1 else ""),
            directory,
            lambda c=c, d=directory: train_classifier.train_and_evaluate(c, d),
          )
        )
  return out


def _train_stage1(c, directory: str) -> None:
  if c.stop_at_step >= 0:
    raise UserInputError("config.stage1.stop_at_step must stay -1 inside the pipeline.")
  train_inpainting.train_and_evaluate(c, directory)


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Runs every stage that is not done yet, then writes W/report/report.md."""
  for fusion_mode in config.fusions:
    if fusion_mode not in ("none", "enhance", "channels"):
      raise UserInputError(f"config.fusions: {fusion_mode!r} is not none, enhance or channels.")
  t_start = time.perf_counter()
  resolved = resolve(config)
  first = jax.process_index() == 0  # Writes the markers and the report; all processes train.
  if first:
    _record_config(config, workdir)
  plan = stages(resolved, workdir)
  timings = {}
  for index, (name, directory, fn) in enumerate(plan):
    done = read_done(directory)
    # Process 0's markers decide, so every process runs the same stages together.
    if multihost.agreed(np.int32(done is not None)):
      logging.info("pipeline [%d/%d] %s: already done, skipped", index + 1, len(plan), name)
      timings[name] = done or {}
      continue
    logging.info("pipeline [%d/%d] %s: starting in %s", index + 1, len(plan), name, directory)
    t0 = time.perf_counter()
    fn()
    multihost.barrier(f"pipeline: {name} finished")  # Every process's part is written.
    wall = time.perf_counter() - t0
    timings[name] = {"wall_s": wall, "finished": time.strftime("%Y-%m-%d %H:%M:%S")}
    if first:
      _write_json(_done_path(directory), timings[name])
    elapsed = time.perf_counter() - t_start
    logging.info(
      "pipeline [%d/%d] %s: done in %s (pipeline elapsed %s)",
      index + 1,
      len(plan),
      name,
      format_seconds(wall),
      format_seconds(elapsed),
    )
  report_dir = os.path.join(workdir, "report")
  if read_done(report_dir) is not None:
    logging.info("pipeline: report already written, skipped")
  elif first:
    _collect_report(resolved, workdir, report_dir)
    path = report_md.write_report_md(resolved, workdir, report_dir, plan, timings)
    _write_json(_done_path(report_dir), {"finished": time.strftime("%Y-%m-%d %H:%M:%S")})
    logging.info("pipeline: wrote %s", path)
  multihost.barrier("pipeline: report written")
  logging.info("pipeline: finished in %s", format_seconds(time.perf_counter() - t_start))
  return {"timings": timings, "report": os.path.join(report_dir, "report.md")}


def _collect_report(config, workdir: str, report_dir: str) -> None:
  """Copies the stages' tables and figures into W/report and writes Table 2 and Figure 4."""
  os.makedirs(report_dir, exist_ok=True)
  stage1 = map_settings.generator_dirs(os.path.join(workdir, "stage1"), config.localize.folds)[0]
  sources = {os.path.join(stage1, "report", "table1.csv"): "table1.csv"}
  for name in (
    "normal_le.csv",
    "localization.csv",
    lesion_scores.BY_KIND_CSV,
    lesion_scores.FOREGROUND_CSV,
    "fig3_normal.png",
    "fig3_abnormal.png",
  ):
    sources[os.path.join(workdir, "localize", "report", name)] = name
  for src, name in sources.items():
    if os.path.exists(src):
      tmp = os.path.join(report_dir, f".{name}.tmp")
      shutil.copyfile(src, tmp)
      os.replace(tmp, os.path.join(report_dir, name))
  runs = classifier_dirs(config, workdir)
  tables.table2(runs, report_dir, config.test_split)
  tables.le_effect(runs, report_dir, config.test_split, config.bootstrap_resamples)
