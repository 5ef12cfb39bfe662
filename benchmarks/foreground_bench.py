"""What keeping D to the body does, on a localize workdir's stored maps (no generator runs).

  python -m benchmarks.foreground_bench --workdir W/localize --split validation

For each variant (no mask, the body mask with 0..N px of erosion) the maps of `--split` are masked
as `config.localize.foreground="body"` masks them and scored as `localization.csv` scores them
(pointing game, pixel AUROC and AUPRC; the LE scale plays no part in these), beside the
reference maps (random, centre prior, intensity, gradient), every map on the body's pixels only
where there is a mask. Also printed: the share of the image
and of the lesion pixels each mask keeps. Lesion masks are used for the scores only: the mask
itself is chosen from the image.
"""

import argparse

import numpy as np

from alenn_jax import checkpointing, foreground, le_maps, sharding
from alenn_jax.reporting import lesion_scores, localization_report
from benchmarks.common import machine_description


def _masked(examples, maps, erode: int | None):
  """`maps` with D zero outside each image's body (`erode` None: unmasked), and the masks."""
  if erode is None:
    bodies = {ex["id"]: np.ones(ex["image"].shape, bool) for ex in examples}
  else:
    bodies = {ex["id"]: foreground.body_mask(ex["image"], erode=erode) for ex in examples}
  return {k: np.where(bodies[k], maps[k], 0.0) for k in bodies}, bodies


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--workdir", required=True, help="a localize workdir (holds le_maps/)")
  parser.add_argument("--split", default="validation")
  parser.add_argument("--erode", default="0,1,2", help="erosions (px) of the body mask to score")
  args = parser.parse_args()
  config = checkpointing.read_stored_config(args.workdir, "localize", "the localize run")
  mesh = sharding.make_mesh()
  examples = localization_report.collect(config, mesh, args.split)
  maps = le_maps.read_difference_maps(args.workdir, args.split)
  lesion = np.concatenate([ex["lesion"].ravel() > 0 for ex in examples if ex["label"] == 1])
  print(machine_description())
  print(f"{args.workdir}, split {args.split}: {len(examples)} images ({lesion.sum()} lesion px)")
  print("| maps | body erode | image kept | lesion kept | pointing | pixel AUROC | pixel AUPRC |")
  print("|---|---|---|---|---|---|---|")
  variants = [None] + [int(e) for e in args.erode.split(",") if e]
  for erode in variants:
    masked, bodies = _masked(examples, maps, erode)
    for ex in examples:  # As the report scores them: every map on the body's pixels only.
      ex["scored"] = None if erode is None else bodies[ex["id"]]
    refs = lesion_scores.reference_maps(examples, masked, seed=0)
    rows = lesion_scores.score_maps(examples, refs, 1.0, config.report.tolerance)  # No LE printed.
    share = lesion_scores.foreground_share(examples, bodies, args.split)
    image_kept, lesion_kept = float(share["image_kept"]), float(share["lesion_kept"])
    for row in rows:
      name = row["method"] + ("" if erode is None else ", body")
      print(
        f"| {name} | {'-' if erode is None else erode} | {image_kept:.3f} | {lesion_kept:.3f} | "
        f"{row['pointing_game']:.3f} | {row['pixel_auroc']:.3f} | {row['pixel_auprc']:.4f} |"
      )


if __name__ == "__main__":
  main()
