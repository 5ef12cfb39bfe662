"""Sliding-window localization: the vmapped, chunked path against a per-window loop.

  python -m benchmarks.localize_bench [--sizes 64 128] [--batch 4]

Both run in this process with the same generator (the stage 1 `small` model, random weights: speed
does not depend on them) on the same phantoms: the vmapped path is one jitted `difference_map`
call over all windows; the loop calls a jitted single-window inpainting once per window. Then the
time to map MURA elbow (5,396 images) at 224 px with window 32 / stride 16 is projected from the
vmapped path's measured windows/s at that size, for the small and the full model.
"""

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

from alenn_jax import localize, rtv
from alenn_jax import masks as masks_lib
from alenn_jax import train_inpainting as ti
from alenn_jax.datasets.phantoms import render
from benchmarks.common import machine_description
from configs import stage1

MURA_ELBOW_IMAGES = 5396


def setup(size_name: str, image_size: int, batch: int):
  config = stage1.get_config(size_name)
  static = ti.GanSetup.from_config(config)
  state = ti.create_train_state(config, static, jax.random.PRNGKey(0), image_size)
  params = {"gen_s": state.gen_s.params, "gen_t": state.gen_t.params}
  images = np.stack([render.render_phantom(i, image_size, None)[0] for i in range(batch)])
  images = jnp.asarray(images[..., None].astype(np.float32) / 127.5 - 1.0)
  structure = jax.jit(lambda x: rtv.structure_of(x, static.rtv))(images)
  return static, params, images, structure


def time_vmapped(static, params, images, structure, window, stride, chunk, repeats=2) -> float:
  fn = jax.jit(
    lambda p, i, s: localize.difference_map(
      p,
      i,
      s,
      inpaint_fn=localize.stage1_inpaint_fn(static.gen_s, static.gen_t),
      window=window,
      stride=stride,
      chunk=chunk,
    )
  )
  fn(params, images, structure).block_until_ready()
  t0 = time.perf_counter()
  for _ in range(repeats):
    fn(params, images, structure).block_until_ready()
  return (time.perf_counter() - t0) / repeats


def time_loop(static, params, images, structure, window, stride) -> float:
  inpaint = jax.jit(localize.stage1_inpaint_fn(static.gen_s, static.gen_t))
  h, w = images.shape[1:3]
  masks = jnp.asarray(masks_lib.window_masks(h, w, window, stride))
  inpaint(
    params, images, structure, jnp.broadcast_to(masks[0][None], images.shape)
  ).block_until_ready()
  t0 = time.perf_counter()
  total = jnp.zeros_like(images)
  for mask in masks:
    mask = jnp.broadcast_to(mask[None], images.shape)
    composite = inpaint(params, images, structure, mask)
    total = total + jnp.abs(images - composite) * (1 - mask)
  total.block_until_ready()
  return time.perf_counter() - t0


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--sizes", type=int, nargs="+", default=[64, 128])
  parser.add_argument("--batch", type=int, default=4)
  parser.add_argument("--chunk", type=int, default=16)
  args = parser.parse_args()
  print(f"machine: {machine_description()}\n")
  print(
    "| model | image | window/stride | windows per image | vmapped windows/s | loop windows/s "
    "| speed-up | vmapped images/s |"
  )
  print("|---|---|---|---|---|---|---|---|")
  for size in args.sizes:
    window, stride = 16, 8
    static, params, images, structure = setup("small", size, args.batch)
    k = len(masks_lib.window_positions(size, size, window, stride))
    t_vmap = time_vmapped(static, params, images, structure, window, stride, args.chunk)
    t_loop = time_loop(static, params, images, structure, window, stride)
    n = k * args.batch
    print(
      f"| small | {size} | {window}/{stride} | {k} | {n / t_vmap:.1f} | {n / t_loop:.1f} | "
      f"{t_loop / t_vmap:.1f}x | {args.batch / t_vmap:.2f} |",
      flush=True,
    )
  print("\nProjection: MURA elbow, 5,396 images at 224 px, window 32 / stride 16")
  print("| model | windows per image | measured windows/s | projected hours |")
  print("|---|---|---|---|")
  k = len(masks_lib.window_positions(224, 224, 32, 16))
  for size_name, n in (("small", args.chunk), ("full", 4)):
    # The vmapped path inpaints `chunk` windows at a time; time such a batch at 224 px.
    static, params, images, structure = setup(size_name, 224, n)
    mask = jnp.broadcast_to(jnp.asarray(masks_lib.window_masks(224, 224, 32, 16)[:n]), images.shape)
    inpaint = jax.jit(localize.stage1_inpaint_fn(static.gen_s, static.gen_t))
    inpaint(params, images, structure, mask).block_until_ready()
    t0 = time.perf_counter()
    inpaint(params, images, structure, mask).block_until_ready()
    rate = n / (time.perf_counter() - t0)
    print(
      f"| {size_name} | {k} | {rate:.2f} | {MURA_ELBOW_IMAGES * k / rate / 3600:.1f} |", flush=True
    )


if __name__ == "__main__":
  main()
