"""Stage 2b train-step throughput of each backbone and achieved FLOP/s.

  python -m benchmarks.classifier_bench [--backbones vgg19 resnet50 ...] [--batch 16] [--steps 2]
      [--size full]

Times the jitted train step (BCE, Adam, BatchNorm updates; Inception with its auxiliary head) of
each backbone at its published input size (224 px, 299 for Inception-v3), batch 16, 1 grey channel,
after compilation, on random images. XLA's cost analysis of the compiled step gives the FLOPs; the
achieved FLOP/s is reported as a fraction of this machine's float32 matmul FLOP/s measured in the
same run (the baseline).
"""

import argparse
import functools
import time

import jax
import jax.numpy as jnp
import numpy as np

from alenn_jax.classification import classifier_setup, train_classifier
from benchmarks.common import machine_description
from benchmarks.stage1_bench import matmul_flops_per_second, step_flops
from configs import stage2


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument(
    "--backbones", nargs="+", default=["vgg19", "resnet50", "densenet121", "inception_v3"]
  )
  parser.add_argument("--size", default="full", choices=("smoke", "small", "full"))
  parser.add_argument("--batch", type=int, default=16)
  parser.add_argument("--steps", type=int, default=2)
  parser.add_argument("--half_precision", action="store_true")
  args = parser.parse_args()
  print(f"machine: {machine_description()}")
  peak = matmul_flops_per_second()
  print(f"float32 matmul (2048^3): {peak / 1e9:.1f} GFLOP/s\n")
  print(
    "| backbone | size | image | batch | compile s | s/step | images/s | GFLOP/step | GFLOP/s "
    "| of matmul |"
  )
  print("|---|---|---|---|---|---|---|---|---|---|")
  for backbone in args.backbones:
    config = stage2.get_config(f"{args.size},backbone={backbone}")
    config.model.half_precision = args.half_precision
    size = config.data.image_size
    static = classifier_setup.ClassifierSetup.from_config(config)
    state = train_classifier.create_train_state(config, static, jax.random.PRNGKey(0), size)
    rng = np.random.default_rng(0)
    batch = {
      "image": jnp.asarray(rng.uniform(-1, 1, (args.batch, size, size, 1)), jnp.float32),
      "label": jnp.asarray(rng.integers(0, 2, args.batch), jnp.int32),
      "weight": jnp.ones((args.batch,), jnp.float32),
    }
    t0 = time.perf_counter()
    fn = jax.jit(functools.partial(train_classifier.train_step, static=static), donate_argnums=(0,))
    compiled = fn.lower(state, batch, jax.random.PRNGKey(1)).compile()
    compile_s = time.perf_counter() - t0
    flops = step_flops(compiled)
    state, metrics = compiled(state, batch, jax.random.PRNGKey(1))  # Warm-up.
    jax.block_until_ready(state)
    t0 = time.perf_counter()
    for i in range(args.steps):
      state, metrics = compiled(state, batch, jax.random.PRNGKey(2 + i))
    jax.block_until_ready((state, metrics))
    seconds = (time.perf_counter() - t0) / args.steps
    print(
      f"| {backbone} | {args.size} | {size} | {args.batch} | {compile_s:.0f} | {seconds:.2f} | "
      f"{args.batch / seconds:.2f} | {flops / 1e9:.1f} | {flops / seconds / 1e9:.1f} | "
      f"{flops / seconds / peak:.1%} |",
      flush=True,
    )


if __name__ == "__main__":
  main()
