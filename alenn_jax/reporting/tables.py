"""Table 1 (stage 1's repainting of normal and abnormal images) and Table 2 (per backbone, with
and without LE; also with normal as the positive class) with its LE effect: paired-bootstrap
intervals and DeLong's test, from the classifier runs' predictions.
"""

import csv
import glob
import os

import numpy as np

from alenn_jax import image_io, metrics, models, predictions, stats
from alenn_jax.reporting import figures

# ----------------------------------------------------------------------------------------------
# Stage 2b: Table 2 and Figure 4.


def write_table1(table, workdir: str) -> str:
  """Table 1 (`workdir/report/table1.csv`): PSNR and SSIM of repainting each kind of image."""
  path = os.path.join(workdir, "report", "table1.csv")
  rows = [["Images", "PSNR", "SSIM", "Count"]]
  rows += [[name, f"{v['psnr']:.4f}", f"{v['ssim']:.4f}", v["count"]] for name, v in table.items()]
  with image_io.atomic_open(path, "w") as f:
    csv.writer(f).writerows(rows)
  return path


TABLE2_COLUMNS = (
  "Backbone",
  "With LE",
  "Accuracy",
  "Precision",
  "Recall",
  "Specificity",
  "F1",
  "Kappa",
  "AUC",
  "n",
)
TABLE2_METRICS = tuple((c, c.lower()) for c in TABLE2_COLUMNS[2:-1])  # (column, scores key).
TABLE2_NORMAL_CSV = "table2_normal_positive.csv"  # The paper's convention (see paper_values).


def _run_key(r: dict):
  """Table 2's order: backbone (the paper's order), then fusion with `none` first."""
  order = list(models.BACKBONE_NAMES)
  backbone = order.index(r["backbone"]) if r["backbone"] in order else len(order)
  return (backbone, r["backbone"], r["fusion"] != "none", r["fusion"])


def group_runs(results: list[dict]) -> list[list[dict]]:
  """Runs grouped by (backbone, fusion), in Table 2's order; a group holds one run per seed."""
  groups: dict[tuple, list[dict]] = {}
  for r in sorted(results, key=lambda r: (_run_key(r), r.get("seed", 0))):
    groups.setdefault((r["backbone"], r["fusion"]), []).append(r)
  return list(groups.values())


def table2_rows(
  results: list[dict], level: str = "image", positive: str = "abnormal"
) -> list[dict]:
  """One row per backbone and fusion, as in the paper's Table 2: the mean over seeds, with each
  metric's standard deviation over seeds in an `sd` column when a group has several. `positive`
  "normal" recomputes each run's scores with normal as the positive class."""
  view = (lambda s: s) if positive == "abnormal" else metrics.normal_positive
  groups = [[r for r in g if level in r] for g in group_runs(results)]
  groups = [g for g in groups if g]
  several = any(len(g) > 1 for g in groups)
  rows = []
  for group in groups:
    first = group[0]
    le = "no" if first["fusion"] == "none" else f"yes ({first['fusion']})"
    row = {
      "Backbone": models.BACKBONE_NAMES.get(first["backbone"], first["backbone"]),
      "With LE": le,
    }
    for column, key in TABLE2_METRICS:
      values = [view(r[level])[key] for r in group]
      row[column] = f"{np.mean(values):.4f}"
      if several:
        row[f"{column} sd"] = f"{np.std(values, ddof=1) if len(values) > 1 else 0.0:.4f}"
    row["n"] = first[level]["n"]
    if several:
      row["Seeds"] = len(group)
    rows.append(row)
  return rows


def table2(run_dirs: list[str], report_dir: str, split: str) -> list[dict]:
  """Table 2 (`table2.csv`, plus `table2_study.csv` for MURA) and Figure 4 (`fig4_roc.png`) from
  the classifier runs in `run_dirs` that have scores on `split`. Returns the image-level rows."""
  results = [r for r in (predictions.read_results(d, split) for d in run_dirs) if r is not None]
  if not results:
    raise ValueError(f"no classifier results on split {split!r} in {run_dirs}.")
  rows = table2_rows(results)
  image_io.write_csv(os.path.join(report_dir, "table2.csv"), rows, list(rows[0]))
  normal = table2_rows(results, positive="normal")
  image_io.write_csv(os.path.join(report_dir, TABLE2_NORMAL_CSV), normal, list(normal[0]))
  study_rows = table2_rows(results, "study")
  if study_rows:
    image_io.write_csv(os.path.join(report_dir, "table2_study.csv"), study_rows, list(rows[0]))
  dataset = results[0]["dataset"]
  figures.figure4(
    [group[0] for group in group_runs(results)],  # The first seed's curves.
    os.path.join(report_dir, "fig4_roc.png"),
    f"ROC on {dataset} {split} (positive class: abnormal)",
  )
  return rows


LE_EFFECT_COLUMNS = (
  "backbone",
  "fusion",
  "metric",
  "without",
  "with",
  "delta",
  "ci_low",
  "ci_high",
  "p",
  "test",
  "without_ci_low",
  "without_ci_high",
  "with_ci_low",
  "with_ci_high",
  "seeds",
  "n",
)


def _paired(group: list[dict], ids: list[str]) -> np.ndarray:
  """`[seeds, n]` probabilities of a group's runs, in the order of `ids`."""
  out = []
  for r in group:
    p = r["predictions"]
    by_id = dict(zip(p["ids"], p["probs"], strict=True))
    missing = [i for i in ids if i not in by_id]
    if missing:
      raise ValueError(f"{r['run_dir']} has no prediction for {missing[0]!r}; rerun its eval.")
    out.append([by_id[i] for i in ids])
  return np.asarray(out, np.float64)


def le_effect_rows(results: list[dict], n_resamples: int, level: str = "image") -> list[dict]:
  """Each backbone's runs with LE against its runs without, on the same examples: the paired
  bootstrap (`stats.paired_bootstrap`, over images, or over studies at the study level) for every
  metric, and DeLong's test for the AUC (on the seed-mean probabilities)."""
  groups = group_runs(results)
  rows = []
  for base in groups:
    if base[0]["fusion"] != "none":
      continue
    p = base[0]["predictions"]
    ids, labels = list(p["ids"]), np.asarray(p["labels"])
    without = _paired(base, ids)
    for other in groups:
      if other[0]["backbone"] != base[0]["backbone"] or other[0]["fusion"] == "none":
        continue
      with_ = _paired(other, ids)
      y, a, b = labels, without, with_
      if level == "study":
        _, y, a = _study_arrays(ids, labels, without)
        _, _, b = _study_arrays(ids, labels, with_)
      if len(set(y.tolist())) < 2:
        continue  # Nothing to rank: one class only.
      boot = stats.paired_bootstrap(y, a, b, base[0]["threshold"], n_resamples)
      delong = stats.delong_test(y, a.mean(axis=0), b.mean(axis=0))
      for metric, r in boot.items():
        is_auc = metric == "auc"
        rows.append(
          {
            "backbone": base[0]["backbone"],
            "fusion": other[0]["fusion"],
            "metric": metric,
            "without": f"{r['without']:.4f}",
            "with": f"{r['with']:.4f}",
            "delta": f"{r['delta']:+.4f}",
            "ci_low": f"{r['ci_delta'][0]:+.4f}",
            "ci_high": f"{r['ci_delta'][1]:+.4f}",
            "p": f"{delong['p'] if is_auc else r['p']:.4f}",
            "test": "DeLong" if is_auc else "bootstrap",
            "without_ci_low": f"{r['ci_without'][0]:.4f}",
            "without_ci_high": f"{r['ci_without'][1]:.4f}",
            "with_ci_low": f"{r['ci_with'][0]:.4f}",
            "with_ci_high": f"{r['ci_with'][1]:.4f}",
            "seeds": f"{len(base)}/{len(other)}",
            "n": len(y),
          }
        )
  return rows


def _study_arrays(ids, labels, probs):
  """Study-level arrays of `[seeds, n]` image probabilities: (studies, labels, `[seeds, m]`)."""
  out = [metrics.study_level(ids, labels, p, predictions.mura_study) for p in probs]
  return out[0][0], out[0][1], np.stack([o[2] for o in out])


def le_effect(run_dirs: list[str], report_dir: str, split: str, n_resamples: int) -> list[dict]:
  """`table2_le_effect.csv` (and `table2_le_effect_study.csv` where Table 2 has a study level):
  one row per backbone x fusion x metric with the with-minus-without difference, its 95%
  interval and p."""
  results = [r for r in (predictions.read_results(d, split) for d in run_dirs) if r is not None]
  rows = le_effect_rows(results, n_resamples)
  image_io.write_csv(os.path.join(report_dir, "table2_le_effect.csv"), rows, LE_EFFECT_COLUMNS)
  if any("study" in r for r in results):
    study = le_effect_rows(results, n_resamples, "study")
    path = os.path.join(report_dir, "table2_le_effect_study.csv")
    image_io.write_csv(path, study, LE_EFFECT_COLUMNS)
  return rows


def le_effect_sentences(rows: list[dict]) -> list[str]:
  """Each backbone's LE effect in words, from the AUC and kappa rows of `le_effect_rows`."""
  out = []
  by_run: dict[tuple, dict] = {}
  for r in rows:
    by_run.setdefault((r["backbone"], r["fusion"]), {})[r["metric"]] = r
  for (backbone, fusion_mode), found in by_run.items():
    parts = []
    verdicts = []
    for metric, name in (("auc", "AUC"), ("kappa", "kappa")):
      r = found.get(metric)
      if r is None:
        continue
      low, high = float(r["ci_low"]), float(r["ci_high"])
      parts.append(
        f"{name} {r['without']} → {r['with']} (Δ {r['delta']}, 95% CI {r['ci_low']} to "
        f"{r['ci_high']}, {r['test']} p = {float(r['p']):.3f})"
      )
      verdicts.append("raised" if low > 0 else "lowered" if high < 0 else None)
    if not parts:
      continue
    if verdicts and all(v == "raised" for v in verdicts):
      verdict = "LE raised both, beyond the 95% intervals"
    elif verdicts and all(v == "lowered" for v in verdicts):
      verdict = "LE lowered both, beyond the 95% intervals"
    elif any(verdicts):
      verdict = (
        "mixed: "
        + ", ".join(f"{name} {v}" for name, v in zip(("AUC", "kappa"), verdicts, strict=False) if v)
        + ", the other within its interval"
      )
    else:
      verdict = "no difference this test set can resolve (every interval includes 0)"
    name = models.BACKBONE_NAMES.get(backbone, backbone)
    out.append(f"- **{name}**, LE by `{fusion_mode}`: {'; '.join(parts)}: {verdict}.")
  return out


def classifier_runs(root: str) -> list[str]:
  """Run directories under `root` (each with a report/metrics_*.json), sorted."""
  found = glob.glob(os.path.join(root, "*", "report", "metrics_*.json"))
  return sorted({os.path.dirname(os.path.dirname(p)) for p in found})
