"""Stage 1 train-step throughput and achieved FLOP/s.

  python -m benchmarks.stage1_bench [--size small] [--image_sizes 64 128] [--steps 10]

Times the jitted train step of each phase (after compilation) on a fixed batch of phantoms, and
divides XLA's cost analysis of the compiled step (FLOPs) by the time, as a fraction of this
machine's float32 matmul FLOP/s measured in the same run. XLA counts a while loop's body once, so
the RTV solver inside the step is undercounted: the fraction is a lower bound. Each phase is timed
with the structure solved inside the step (`structure="in_step"`) and given with the batch
(`"per_image"`: what the input pipeline then supplies), in the same process.
"""

import argparse
import functools
import itertools
import time

import jax
import jax.numpy as jnp
import numpy as np

from alenn_jax import rtv
from alenn_jax import train_inpainting as ti
from alenn_jax.datasets.phantoms import render
from benchmarks.common import best_time, machine_description
from configs import stage1


def matmul_flops_per_second(n: int = 2048) -> float:
  a = jnp.ones((n, n), jnp.float32)
  f = jax.jit(lambda a: a @ a)
  f(a).block_until_ready()
  return 2 * n**3 / best_time(lambda: f(a).block_until_ready(), 5)


def step_flops(compiled) -> float:
  cost = compiled.cost_analysis()
  if isinstance(cost, list | tuple):
    cost = cost[0]
  return float(cost.get("flops", float("nan")))


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--size", default="small", choices=("smoke", "small", "full"))
  parser.add_argument("--image_sizes", type=int, nargs="+", default=[64, 128])
  parser.add_argument("--batch", type=int, default=16)
  parser.add_argument("--steps", type=int, default=10)
  args = parser.parse_args()
  print(f"machine: {machine_description()}")
  peak = matmul_flops_per_second()
  print(f"float32 matmul (2048^3): {peak / 1e9:.1f} GFLOP/s\n")
  print(
    "| model | image | batch | phase | structure | s/step | images/s | GFLOP/step | GFLOP/s "
    "| of matmul |"
  )
  print("|---|---|---|---|---|---|---|---|---|---|")
  for size in args.image_sizes:
    config = stage1.get_config(args.size)
    static = ti.GanSetup.from_config(config)
    images = (
      np.stack([render.render_phantom(i, size, None)[0] for i in range(args.batch)]).astype(
        np.float32
      )[..., None]
      / 127.5
      - 1.0
    )
    images = jnp.asarray(images)
    batches = {
      "in_step": {"image": images},
      "per_image": {"image": images, "structure": rtv.structure_of(images, static.rtv)},
    }
    for phase, (mode, batch) in itertools.product((1, 2), batches.items()):
      state = ti.create_train_state(config, static, jax.random.PRNGKey(0), size)
      fn = jax.jit(
        functools.partial(ti.train_step, static=static, phase=phase), donate_argnums=(0,)
      )
      rng = jax.random.PRNGKey(1)
      compiled = fn.lower(state, batch, rng).compile()
      flops = step_flops(compiled)
      state, _ = compiled(state, batch, rng)  # Warm-up.
      jax.block_until_ready(state)
      t0 = time.perf_counter()
      for i in range(args.steps):
        state, metrics = compiled(state, batch, jax.random.fold_in(rng, i))
      jax.block_until_ready((state, metrics))
      seconds = (time.perf_counter() - t0) / args.steps
      print(
        f"| {args.size} | {size} | {args.batch} | {phase} | {mode} | {seconds:.3f} | "
        f"{args.batch / seconds:.1f} | {flops / 1e9:.2f} | {flops / seconds / 1e9:.1f} | "
        f"{flops / seconds / peak:.1%} |",
        flush=True,
      )


if __name__ == "__main__":
  main()
