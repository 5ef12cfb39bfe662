"""The pipeline's report.md: what ran, Table 1, the localization table, Figure 3, Table 2 and
Figure 4, one function per section.
"""

import csv
import os
import time

import jax

from alenn_jax import additions, checkpointing, data_splits, image_io, paper_values
from alenn_jax.progress import format_seconds
from alenn_jax.reporting import lesion_scores, tables

# ----------------------------------------------------------------------------------------------
# The pipeline's report.md: every number is read from the files the stages wrote.


def _read_csv(path: str) -> list[dict]:
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return list(csv.DictReader(f))


def _by_kind_section(report_dir: str) -> list[str]:
  """report.md's lines for `localization_by_kind.csv`, where the localize job wrote one."""
  path = os.path.join(report_dir, lesion_scores.BY_KIND_CSV)
  if not os.path.exists(path):
    return []
  rows = [{k: row[k] for k in lesion_scores.BY_KIND_COLUMNS} for row in _read_csv(path)]
  return [
    "The same scores for each kind of lesion (that kind's abnormal images beside every normal "
    "one; Dice at the same thresholds):",
    "",
    _markdown_table(rows),
    "",
  ]


def _foreground_section(report_dir: str) -> list[str]:
  """report.md's line on which pixels ALENN's maps keep, where they were kept to the body."""
  path = os.path.join(report_dir, lesion_scores.FOREGROUND_CSV)
  if not os.path.exists(path):
    return [
      "Every pixel of each image's own extent (inside the letterbox square) is scored, for "
      "every map; ALENN's maps keep every pixel (`localize.foreground` none).",
      "",
    ]
  row = _read_csv(path)[0]
  return [
    "ALENN's D is kept to each image's body (`localize.foreground` body), and every map is "
    "scored on the body's pixels only (the pointing game's maximum, the pixel pools, the means): "
    "air, markers, labels and film-edge bands are not patient. A lesion pixel outside the body "
    f"counts as a miss for every map. On `{row['split']}` the body holds "
    f"{float(row['image_kept']):.1%} of the pixels and {float(row['lesion_kept']):.1%} of the "
    "lesion pixels.",
    "",
  ]


def _markdown_table(rows: list[dict]) -> str:
  if not rows:
    return "_(not produced)_"
  columns = list(rows[0])
  lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
  lines += ["| " + " | ".join(str(r[c]) for c in columns) + " |" for r in rows]
  return "\n".join(lines)


def _method_line(config) -> str:
  """report.md's line on which additions to the paper's text were on (alenn_jax.additions)."""
  on = additions.on(config)
  if config.data.eval_split != data_splits.SELECTION:  # The carve did not happen.
    on = [name for name in on if name != "selection carve"]
  if not on:
    return (
      "- Method: the paper's text, with no addition on (where it leaves a gap, the choices "
      'README\'s "the paper / what we add" states).'
    )
  return (
    f"- Method: the paper's text with these additions on: {', '.join(on)} (README: \"the paper "
    '/ what we add"; `configs/pipeline.py:paper` turns every one off).'
  )


def _normal_positive_section(report_dir: str) -> list[str]:
  """Table 2 with normal as the positive class, beside the paper's Table 2."""
  rows = _read_csv(os.path.join(report_dir, tables.TABLE2_NORMAL_CSV))
  if not rows:
    return []
  return [
    "**In the paper's convention.** Each row of the paper's Table 2 reproduces exactly from a "
    "confusion matrix of 465 images with 235 positives, the number of *normal* images in MURA "
    "elbow's validation split: the paper seems to have scored normal as the positive class (its "
    "text does not say). The same predictions as above with normal as positive (precision, "
    f"recall, specificity and F1 change; `{tables.TABLE2_NORMAL_CSV}`):",
    "",
    _markdown_table(rows),
    "",
    "The paper's Table 2 (MURA elbow validation; LE read as the second row of each backbone):",
    "",
    _markdown_table(paper_values.table2_rows()),
    "",
  ]


def write_report_md(config, workdir: str, report_dir: str, plan, timings: dict) -> str:
  """W/report/report.md: what ran, Table 1, the localization table, Figure 3, Table 2, Figure 4."""
  # The LE-map settings as the localize stage resolved them (window, stride: stage 1's defaults).
  localize = checkpointing.read_stored_config(
    os.path.join(workdir, "localize"), "localize", "localize run"
  )
  lines = [
    "# ALENN report",
    "",
    f"Workdir `{workdir}`; written {time.strftime('%Y-%m-%d %H:%M:%S')}. The full configuration is "
    "in `../config.json`. Abnormal (label 1) is the positive class throughout.",
    "",
    *_what_ran(config, localize),
    *_counts_and_times(config, plan, timings),
    *_table1_section(config, report_dir),
    *_localization_section(localize, report_dir),
    *_figure3_section(),
    *_table2_section(config, report_dir),
    *_figure4_section(),
  ]
  path = os.path.join(report_dir, "report.md")
  image_io.write_text(path, "\n".join(lines))
  return path


def _what_ran(config, localize) -> list[str]:
  """The data, the method's additions, the devices and each stage's settings."""
  data, devices = config.data, jax.devices()
  return [
    "## What ran",
    "",
    f"- Data: `{data.name}` from `{data.data_dir}`, letterboxed to {data.image_size} px for "
    f"stage 1 and the LE maps; classifiers at "
    + ", ".join(f"{b} {config.stage2[b].data.image_size} px" for b in config.backbones)
    + ".",
    _method_line(config),
    f"- Devices: {len(devices)} x {devices[0].platform} ({devices[0].device_kind}), "
    f"{jax.process_count()} process(es).",
    f"- Stage 1: model {dict(config.stage1.model)}, {config.stage1.phase1_steps} + "
    f"{config.stage1.phase2_steps} steps at batch {config.stage1.data.batch_size}; RTV "
    + (
      "structure solved once per training image and augmented with it (per_image)."
      if config.stage1.get("structure", "in_step") == "per_image"
      else "structure solved for every augmented batch inside the step (in_step)."
    ),
    _maps_line(localize),
    _classifiers_line(config),
  ]


def _maps_line(localize) -> str:
  """How the LE maps were made, as the localize stage stored its settings."""
  return (
    f"- LE maps: {localize.method}"
    + (f" (gap {localize.gap} px)" if localize.method == "multi_window" else "")
    + (f" (crop {localize.context} px)" if localize.method == "context" else "")
    + f", window {localize.window} px, stride {localize.stride} px"
    + (
      f" over a {localize.pad}-px reflected border"
      if localize.get("pad", 0)
      else ", no padded border"
    )
    + (
      f"; each window's error less its local mean (Gaussian σ {localize.highpass:g} px)"
      if localize.get("highpass", 0)
      else "; each window's plain |I - I_k| (our reading of the text's \"relative error\")"
    )
    + (
      f", less what the repainting matches within {localize.shift} px"
      if localize.get("shift", 0)
      else ""
    )
    + (f", D blurred (σ {localize.smooth:g} px)" if localize.get("smooth", 0) else "")
    + (
      ", D kept to each image's body (zero on the air, markers, labels and film-edge bands "
      "around it; `localize.foreground`)"
      if localize.get("foreground", "none") == "body"
      else ""
    )
    + (
      f", then divided by the error training normals of the same appearance get (k-means of "
      f"{localize.normal_error.patch}x{localize.normal_error.patch}-px neighbourhoods, "
      f"{localize.normal_error.codes} classes, from {localize.normal_error.images} normals)"
      if localize.get("normal_error") is not None and localize.normal_error.patch
      else ""
    )
    + "; scale = "
    f"the {localize.percentile:g}th percentile of D over the training normals"
    + (
      f"; cross-fitted: {localize.get('folds', 1)} stage 1 generators, each trained without one "
      "fold of the train patients, each image mapped by the one that never saw it."
      if localize.get("folds", 1) > 1
      else "; one generator, fit on the training normals themselves (in-sample maps)."
    )
  )


def _classifiers_line(config) -> str:
  """Which classifiers ran, where their checkpoints were selected and where they were scored."""
  data = config.data
  return (
    f"- Classifiers: {', '.join(config.backbones)}, each with fusion "
    f"{' and '.join(config.fusions)}; checkpoints selected by kappa on `{data.eval_split}`, "
    f"scored on `{config.test_split}`"
    + (
      " (optimistic: selected on the scored split, as the data has no other split to select on "
      "and no `selection` split was carved; the paper's text names no selection split)."
      if data.eval_split == config.test_split
      else "."
    )
    + (
      f" `{data_splits.SELECTION}` holds {data.selection_fraction:g} of the "
      f"`{data.train_split}` patients (by a hash of the patient id), carved out before anything "
      "was trained."
      if data.eval_split == data_splits.SELECTION
      else ""
    )
  )


def _counts_and_times(config, plan, timings: dict) -> list[str]:
  """Images per split and label; wall time per stage."""
  data = config.data
  lines = ["", "Images per split and label:", ""]
  count_rows = []
  for split in data_splits.split_names(data):
    labels = list(data_splits.split_labels(data, split).values())
    normal = sum(1 for v in labels if v == 0)
    count_rows.append(
      {"split": split, "normal": normal, "abnormal": len(labels) - normal, "total": len(labels)}
    )
  lines += [
    _markdown_table(count_rows),
    "",
    "Wall time per stage (of the run that finished it):",
    "",
  ]
  time_rows = [
    {"stage": name, "wall time": format_seconds(timings.get(name, {}).get("wall_s", float("nan")))}
    for name, _, _ in plan
  ]
  total = sum(t.get("wall_s", 0.0) for t in timings.values())
  time_rows.append({"stage": "**total**", "wall time": format_seconds(total)})
  lines += [_markdown_table(time_rows), ""]

  return lines


def _table1_section(config, report_dir: str) -> list[str]:
  return [
    "## Table 1: repainting normal and abnormal images",
    "",
    "Stage 1 repaints every pixel of held-out images from its surroundings (fixed windows); PSNR "
    "(dB) and SSIM against the original. The GAN has only seen normal images, so it should "
    "repaint normal images better (higher values) than abnormal ones.",
    "",
    _markdown_table(_read_csv(os.path.join(report_dir, "table1.csv"))),
    "",
    f"Our protocol: windows of {config.stage1.eval.window} px tile each image of "
    f"`{config.stage1.eval.split}`; each is repainted from the rest of the image and the whole "
    "repainted image is scored. The paper's text does not describe its protocol (which windows, "
    "which pixels are scored), and its 34.7 dB on MURA elbow suggests far fewer repainted pixels, "
    "so its values are not comparable with ours; they are, for reference:",
    "",
    _markdown_table([dict(r) for r in paper_values.TABLE1]),
    "",
  ]


def _localization_section(localize, report_dir: str) -> list[str]:
  return [
    "## Lesion localization",
    "",
    f"Scored on `{localize.report.split}` where lesion masks exist. Pointing game: the "
    "map's maximum lies on the lesion; pixel AUROC / AUPRC: lesion pixels against the rest "
    "(AUROC 0.5 is chance); Dice: the map thresholded where Dice was best on "
    f"`{localize.data.eval_split}`, pooled over every image. ALENN localizes lesions only "
    "where its difference map beats every reference: a random map, a centre prior, and two maps "
    "of the image alone, its blurred intensity (where the image is bright) and its gradient "
    "magnitude (where the edges are); and it should stay low on normal images.",
    "",
    _markdown_table(_read_csv(os.path.join(report_dir, "localization.csv")))
    if os.path.exists(os.path.join(report_dir, "localization.csv"))
    else "_Not scored: no abnormal image of the scored split has a lesion mask._",
    "",
    *_foreground_section(report_dir),
    *_by_kind_section(report_dir),
    "Mean LE over the normal images of each split. A generator repaints the images it was trained "
    "on better than new ones, so in-sample maps of training normals are darker than held-out "
    "normals' maps, and a classifier fed them can learn that gap instead of lesions; "
    "cross-fitting (`localize.folds` > 1) maps every image out of sample.",
    "",
    _markdown_table(_read_csv(os.path.join(report_dir, "normal_le.csv"))),
    "",
  ]


def _figure3_section() -> list[str]:
  return [
    "## Figure 3: difference and LE maps",
    "",
    "Each row: the image, the difference map D, the LE map, and the LE map over the image (true "
    "lesion outlined where known). Abnormal images should light up on the lesion, normal ones "
    "stay dark.",
    "",
    "![Figure 3, abnormal](fig3_abnormal.png)",
    "",
    "![Figure 3, normal](fig3_normal.png)",
    "",
  ]


def _table2_section(config, report_dir: str) -> list[str]:
  lines = [
    "## Table 2: classification with and without LE",
    "",
    f"Image-level scores on `{config.test_split}` at threshold "
    f"{config.stage2[config.backbones[0]].threshold:g} on P(abnormal). Compare each backbone's "
    "row without LE against its row with LE.",
    "",
    _markdown_table(_read_csv(os.path.join(report_dir, "table2.csv"))),
    "",
    *_normal_positive_section(report_dir),
  ]
  effect = _read_csv(os.path.join(report_dir, "table2_le_effect.csv"))
  if effect:
    resamples = config.get("bootstrap_resamples", 2000)
    lines += [
      "**Does LE help?** With minus without LE on the same images: 95% intervals from "
      f"{resamples} paired bootstrap resamples of the `{config.test_split}` images, p from "
      "DeLong's test for the AUC and from the bootstrap for the rest"
      + (
        f" (each classifier trained {config.seeds} times; the seed-mean is compared)"
        if config.get("seeds", 1) > 1
        else " (one training run each: seed-to-seed variation is not included)"
      )
      + ". Every metric is in `table2_le_effect.csv`.",
      "",
      *tables.le_effect_sentences(effect),
      "",
    ]
  study = _read_csv(os.path.join(report_dir, "table2_study.csv"))
  if study:
    lines += [
      "Study-level (mean probability over a study's images, the MURA protocol):",
      "",
      _markdown_table(study),
      "",
    ]
  return lines


def _figure4_section() -> list[str]:
  return [
    "## Figure 4: ROC curves",
    "",
    "One panel per backbone, with and without LE; the AUC is in the legend. A curve nearer the top "
    "left is better; the diagonal is chance.",
    "",
    "![Figure 4](fig4_roc.png)",
    "",
  ]
