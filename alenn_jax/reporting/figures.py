"""Figure 3 (image, D, LE and overlay panels) and Figure 4 (ROC curves), written as PNG."""

import matplotlib
import numpy as np

from alenn_jax import image_io, le_maps, metrics, models

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from alenn_jax.reporting import lesion_scores


def overlay_title(d: np.ndarray, lesion: np.ndarray, tolerance: int) -> str:
  """Figure 3's overlay caption: where the + (the largest D) lies against the true lesion."""
  if not lesion.any():
    return "overlay (+: largest D)"
  where = "on" if lesion_scores.pointing_hit(d, lesion, tolerance) else "off"
  return f"overlay (+: largest D, {where} the lesion)"


def figure3(examples, d_maps, scale, path: str, title: str, tolerance: int = 2) -> None:
  """Rows of original, difference D, LE heat map and overlay (with the true lesion outline). The
  overlay marks where D is largest, the point the pointing game scores, and says whether it falls
  within `tolerance` px of the lesion."""
  n = len(examples)
  fig, axes = plt.subplots(n, 4, figsize=(10, 2.6 * n), squeeze=False)
  for row, ex in zip(axes, examples, strict=True):
    d = d_maps[ex["id"]]
    le = le_maps.le_map(d, scale)
    row[0].imshow(ex["image"], cmap="gray", vmin=0, vmax=1)
    row[0].set_title(f"{ex['id']}", fontsize=7)
    row[1].imshow(d, cmap="magma", vmin=0, vmax=max(scale * 1.5, 1e-6))
    row[1].set_title("difference D", fontsize=8)
    row[2].imshow(le, cmap="jet", vmin=0, vmax=1)
    row[2].set_title("LE", fontsize=8)
    row[3].imshow(ex["image"], cmap="gray", vmin=0, vmax=1)
    row[3].imshow(le, cmap="jet", vmin=0, vmax=1, alpha=0.45)
    y, x = np.unravel_index(np.argmax(d), d.shape)
    row[3].plot([x], [y], marker="+", color="white", markersize=10, markeredgewidth=1.5)
    if ex["lesion"].any():
      row[3].contour(ex["lesion"] > 0, levels=[0.5], colors="white", linewidths=0.8)
    row[3].set_title(overlay_title(d, ex["lesion"], tolerance), fontsize=8)
    for ax in row:
      ax.axis("off")
  fig.suptitle(title, fontsize=10)
  fig.tight_layout()
  with image_io.atomic_open(path, "wb") as f:
    fig.savefig(f, dpi=90, format="png")
  plt.close(fig)


def figure4(results: list[dict], path: str, title: str) -> None:
  """ROC curves, one panel per backbone, with and without LE, AUC in the legend."""
  backbones = [b for b in models.BACKBONE_NAMES if any(r["backbone"] == b for r in results)]
  backbones += sorted({r["backbone"] for r in results} - set(backbones))
  cols = min(len(backbones), 4)
  fig, axes = plt.subplots(1, cols, figsize=(3.6 * cols, 3.6), squeeze=False)
  for ax, backbone in zip(axes[0], backbones, strict=True):
    for r in sorted(
      (r for r in results if r["backbone"] == backbone), key=lambda r: r["fusion"] != "none"
    ):
      p = r["predictions"]
      fpr, tpr, _ = metrics.roc_curve(p["labels"], p["probs"])
      auc = metrics.auc(p["labels"], p["probs"])
      label = "without LE" if r["fusion"] == "none" else f"with LE ({r['fusion']})"
      ax.plot(fpr, tpr, lw=1.5, label=f"{label}, AUC {auc:.3f}")
    ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls="--")
    ax.set_title(models.BACKBONE_NAMES.get(backbone, backbone))
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate (abnormal)")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.legend(loc="lower right", fontsize=7)
  fig.suptitle(title, fontsize=9)
  fig.tight_layout()
  with image_io.atomic_open(path, "wb") as f:
    fig.savefig(f, format="png", dpi=110)
  plt.close(fig)
