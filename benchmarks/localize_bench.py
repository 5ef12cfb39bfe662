"""LE-map methods against per_window (one pass per window, as the paper's text), in the same
process, on the same phantoms.

  python -m benchmarks.localize_bench [--sizes 128 256] [--models small] [--images 4]
      [--stage1_workdir W]      # a trained stage 1 (its own model size) instead of random weights
      [--score job|plain]       # D as the localize job scores it (default) or plain |I - I_k|
      [--context PX]            # context's crop (default 0: the window plus the receptive field)

For each image size, model and method (`per_window`, `multi_window` with gap = window, `context`
with the localize job's default crop, the window plus the generator's receptive field, or
`--context` px), one jitted `difference_map` call maps a batch of abnormal phantoms. It
reports the wall time per map (after compilation), the generator FLOPs per map (XLA's cost
analysis of one inpainting pass at the pass's size, times the passes a map needs: XLA counts a
loop body once, so the whole map's count would be too low), and agreement with per_window: the
Pearson r of D over all pixels and the difference in pixel AUROC of D against the lesion masks.
With random weights the agreement measures only the mechanics; give a trained generator for
meaningful agreement. Window 16 / stride 8 at 128 px and 32 / 16 at 256 px (the `full` configs').
Then the time to map MURA elbow (5,396 images) at 224 px (window 32 / stride 16) is projected from
each method's measured maps/s at 256 px. The last line is the summary.

`--score job` scores D as the localize job does by default (configs/localize.py): a reflected
border of one stride, the high-pass of window / 8 and the blur of window / 16; `--score plain`
turns all three off (|I - I_k| over the bare image).
"""

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

from alenn_jax import checkpointing, metrics, rtv
from alenn_jax import masks as masks_lib
from alenn_jax.datasets.phantoms import render
from alenn_jax.localization import difference
from alenn_jax.models import inpainting
from benchmarks.common import machine_description
from configs import stage1

MURA_ELBOW_IMAGES = 5396
METHODS = ("per_window", "multi_window", "context")


def generator(model: str, workdir: str | None):
  """(gen_s, gen_t, params, rtv params, name, model config) of a trained workdir or a fresh
  `model`."""
  if workdir:
    g = checkpointing.load_generator(workdir)
    return g.gen_s, g.gen_t, g.params, g.rtv, f"trained ({workdir}, step {g.step})", g.config.model
  config = stage1.get_config(model)
  gen_s, gen_t, _, _ = inpainting.build(config.model)
  x = jnp.zeros((1, 64, 64, 3), jnp.float32)
  k_s, k_t = jax.random.split(jax.random.PRNGKey(0))
  params = {"gen_s": gen_s.init(k_s, x)["params"], "gen_t": gen_t.init(k_t, x)["params"]}
  rtv_params = rtv.RTVParams.from_config(config.rtv)
  return gen_s, gen_t, params, rtv_params, f"{model}, random weights", config.model


def phantoms(size: int, count: int):
  """`count` abnormal phantoms (each lesion kind in turn) in [-1, 1] and their lesion masks."""
  images, lesions = [], []
  for i in range(count):
    image, mask = render.render_phantom(3_000_000 + i, size, render.LESION_KINDS[i % 4])
    images.append(image.astype(np.float32) / 127.5 - 1.0)
    lesions.append(mask)
  return jnp.asarray(np.stack(images)[..., None]), np.stack(lesions)


def method_args(method: str, window: int, context: int) -> dict:
  if method == "multi_window":
    return {"gap": window}
  if method == "context":
    return {"context": context}
  return {}


def passes(method: str, size: int, window: int, stride: int, pad: int, context: int):
  """(passes per map, side of each pass's input) on the canvas of the image and its border."""
  side = size + 2 * pad
  k = len(masks_lib.window_positions(side, side, window, stride))
  if method == "multi_window":
    return len(masks_lib.window_groups(side, side, window, stride, window)), side
  if method == "context":
    return k, min(context, side)
  return k, side


def pass_flops(inpaint, params, side: int, batch: int) -> float:
  x = jnp.zeros((batch, side, side, 1), jnp.float32)
  compiled = jax.jit(inpaint).lower(params, x, x, jnp.ones_like(x)).compile()
  analysis = compiled.cost_analysis()
  analysis = analysis[0] if isinstance(analysis, list) else analysis
  return float(analysis["flops"])


def score_args(score: str, window: int, stride: int) -> dict:
  """The localize job's default score (its config's -1s resolved) or the plain |I - I_k|."""
  if score == "plain":
    return {}
  return {
    "pad": stride,
    "highpass": window / 8,
    "shift": max(1, round(window / 16)),
    "smooth": window / 16,
  }


def context_side(context: int, window: int, model) -> int:
  """`--context`, or (0) the localize job's default for `window` and the generator `model`."""
  return context or difference.default_context(window, model)


def run_case(gen, size: int, count: int, chunk: int, repeats: int, score: str, context: int):
  gen_s, gen_t, params, rtv_params, _, model = gen
  window, stride = (16, 8) if size <= 128 else (32, 16)
  context = context_side(context, window, model)
  scoring = score_args(score, window, stride)
  images, lesions = phantoms(size, count)
  structure = jax.jit(lambda x: rtv.structure_of(x, rtv_params))(images)
  inpaint = difference.stage1_inpaint_fn(gen_s, gen_t)
  flops_at = {}
  out = {}
  for method in METHODS:
    fn = jax.jit(
      lambda p, i, s, method=method: difference.difference_map(
        p,
        i,
        s,
        inpaint_fn=inpaint,
        window=window,
        stride=stride,
        chunk=chunk,
        method=method,
        **method_args(method, window, context),
        **scoring,
      )
    )
    d = np.asarray(fn(params, images, structure))[..., 0]  # Compiles.
    t0 = time.perf_counter()
    for _ in range(repeats):
      fn(params, images, structure).block_until_ready()
    seconds = (time.perf_counter() - t0) / repeats / count
    n, side = passes(method, size, window, stride, scoring.get("pad", 0), context)
    if side not in flops_at:
      flops_at[side] = pass_flops(inpaint, params, side, 1)
    out[method] = {
      "window": f"{window}/{stride}",
      "passes": n,
      "side": side,
      "seconds": seconds,
      "gflops": n * flops_at[side] / 1e9,
      "d": d,
      "auroc": metrics.auc(lesions.ravel() > 0, d.ravel(), absent=float("nan")),
    }
  return out


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--sizes", type=int, nargs="+", default=[128, 256])
  parser.add_argument("--models", nargs="+", default=["small"])
  parser.add_argument("--images", type=int, default=4)
  parser.add_argument("--chunk", type=int, default=16)
  parser.add_argument("--repeats", type=int, default=1)
  parser.add_argument("--stage1_workdir", default=None)
  parser.add_argument("--score", choices=("job", "plain"), default="job")
  parser.add_argument("--context", type=int, default=0)
  args = parser.parse_args()
  print(f"machine: {machine_description()}")
  at256 = score_args(args.score, 32, 16)
  shown = at256 or {"pad": 0, "highpass": 0, "shift": 0, "smooth": 0}
  print(f"score: {args.score} ({', '.join(f'{k} {v:g}' for k, v in shown.items())} at 256 px)\n")
  print(
    "| generator | image | window/stride | method | passes per map | pass side | s per map | "
    "GFLOP per map | wall vs per_window | FLOPs vs per_window | Pearson r | pixel AUROC | "
    "AUROC delta |"
  )
  print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
  models = [None] if args.stage1_workdir else args.models
  summary = None
  projections = []
  for model in models:
    gen = generator(model, args.stage1_workdir)
    for size in args.sizes:
      results = run_case(gen, size, args.images, args.chunk, args.repeats, args.score, args.context)
      base = results["per_window"]
      for method, r in results.items():
        pearson = float(np.corrcoef(r["d"].ravel(), base["d"].ravel())[0, 1])
        r["wall_x"] = base["seconds"] / r["seconds"]
        r["flops_x"] = base["gflops"] / r["gflops"]
        r["delta"] = r["auroc"] - base["auroc"]
        print(
          f"| {gen[4]} | {size} | {r['window']} | {method} | {r['passes']} | {r['side']} | "
          f"{r['seconds']:.3f} | {r['gflops']:.1f} | {r['wall_x']:.1f}x | {r['flops_x']:.1f}x | "
          f"{pearson:.3f} | {r['auroc']:.3f} | {r['delta']:+.3f} |",
          flush=True,
        )
      if size == max(args.sizes):
        fastest = max((m for m in results if m != "per_window"), key=lambda m: results[m]["wall_x"])
        summary = (fastest, results[fastest])
        crop = context_side(args.context, 32, gen[5])
        k224 = {m: passes(m, 224, 32, 16, at256.get("pad", 0), crop) for m in METHODS}
        k256 = {m: results[m]["passes"] for m in METHODS}
        for method in METHODS:
          # Seconds per map scale with passes and pixels per pass from 256 to 224 px.
          n224, side224 = k224[method]
          scale = n224 / k256[method] * (side224 / results[method]["side"]) ** 2
          hours = MURA_ELBOW_IMAGES * results[method]["seconds"] * scale / 3600
          projections.append((gen[4], method, hours))
  print("\nProjection: MURA elbow, 5,396 images at 224 px, window 32 / stride 16")
  print("| generator | method | projected hours |")
  print("|---|---|---|")
  for name, method, hours in projections:
    print(f"| {name} | {method} | {hours:.2f} |")
  method, r = summary
  print(
    f"\nsummary: {method} vs per_window at {max(args.sizes)} px: {r['wall_x']:.1f}x wall, "
    f"{r['flops_x']:.1f}x fewer FLOPs, pixel AUROC delta {r['delta']:+.3f}"
  )


if __name__ == "__main__":
  main()
