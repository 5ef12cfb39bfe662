"""RTV: batched JAX conjugate gradient vs a float64 sparse direct solve of the reference algorithm.

  python -m benchmarks.rtv_bench [--repeats 3] [--cases 1x512 8x256]

Both run in this process on the same images: real radiographs from ../shared/data/fracatlas (or
--fracatlas) when present (phantoms otherwise), one 512x512 image and a batch of 8 at 256x256,
with the reference code's default parameters and StructureFlow's, at the default CG tolerance
and a tight one.
Prints a Markdown table: seconds, CG iterations per outer iteration (max over the batch), max-abs
difference from the reference, and the per-image speed ratio.
"""

import argparse
import functools
import glob
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from alenn_jax import image_io, rtv
from alenn_jax.datasets.phantoms import render
from benchmarks.common import best_time, machine_description
from tests import rtv_reference

FRACATLAS = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "fracatlas")
PARAMS = {
  "reference (0.01, 3, 0.02, 4)": (0.01, 3.0, 0.02, 4),
  "StructureFlow (0.015, 3, 0.001, 3)": (0.015, 3.0, 0.001, 3),
}
TOLS = {"default": rtv.DEFAULT_TOL, "tight": 1e-6}


def load_images(n: int, size: int, fracatlas: str = FRACATLAS) -> tuple[np.ndarray, str]:
  files = sorted(glob.glob(os.path.join(fracatlas, "images", "*", "*.jpg")))[:n]
  if len(files) == n:
    return np.stack([image_io.load_grey_image(f, size) for f in files]), "FracAtlas"
  images = [render.render_phantom(i, size, None)[0] / 255.0 for i in range(n)]
  return np.stack(images).astype(np.float32), "phantoms"


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument(
    "--cases", nargs="+", default=["1x512", "8x256"], help="images x side, e.g. 2x64 (quick)"
  )
  parser.add_argument(
    "--fracatlas",
    default=FRACATLAS,
    help="FracAtlas folder (images/<class>/*.jpg); phantoms if absent",
  )
  args = parser.parse_args()
  print(f"machine: {machine_description()}\n")
  print(
    "| case | parameters | tol | JAX s (all images) | reference s (all images) "
    "| speed-up per image | CG iters per outer iter | max-abs diff |"
  )
  print("|---|---|---|---|---|---|---|---|")
  cases = [tuple(int(v) for v in c.lower().split("x")) for c in args.cases]
  for case, (n, size) in ((f"{n} x {size}^2", (n, size)) for n, size in cases):
    images, source = load_images(n, size, args.fracatlas)
    for pname, params in PARAMS.items():
      t0 = time.perf_counter()
      expected = np.stack(
        [rtv_reference.tsmooth(img.astype(np.float64), *params) for img in images]
      )
      ref_s = time.perf_counter() - t0
      for tname, tol in TOLS.items():
        lam, sigma, sharpness, n_iter = params
        extract = functools.partial(
          rtv.extract_structure_with_info,
          jnp.asarray(images)[..., None],
          lam=lam,
          sigma=sigma,
          sharpness=sharpness,
          n_iter=n_iter,
          tol=tol,
          max_cg_iters=2000,
        )
        call = lambda extract=extract: jax.block_until_ready(extract())
        structure, info = call()  # Compile.
        jax_s = best_time(call, args.repeats)
        diff = float(np.abs(np.asarray(structure)[..., 0] - expected).max())
        iters = np.asarray(info.cg_iters).max(axis=(1, 2)).tolist()
        print(
          f"| {case} ({source}) | {pname} | {tname} {tol:g} | {jax_s:.3f} | {ref_s:.3f} | "
          f"{ref_s / jax_s:.1f}x | {iters} | {diff:.1e} |",
          flush=True,
        )


if __name__ == "__main__":
  main()
