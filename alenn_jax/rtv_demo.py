"""A job that shows RTV at work: structure and texture of a batch of radiographs.

Reads the images named in `config.images` (or renders built-in phantoms), extracts their structure
in one batched call, and writes to `workdir/rtv/`: each structure as a PNG, a figure with input,
structure and texture (input - structure) side by side, and `summary.txt` with timings and
conjugate-gradient iteration counts.
"""

import os
import time

import jax
import jax.numpy as jnp
import matplotlib
import ml_collections
import numpy as np
from absl import logging

from alenn_jax import errors, image_io, rtv
from alenn_jax.datasets.phantoms import render

matplotlib.use("Agg")
import matplotlib.pyplot as plt


def load_images(config: ml_collections.ConfigDict) -> tuple[list[str], np.ndarray]:
  """Names and `[B, S, S]` float32 images in [0, 1]."""
  size = config.image_size
  if config.images:
    try:
      images = [image_io.load_grey_image(p, size) for p in config.images]
    except OSError as e:
      raise errors.UserInputError(f"config.images: {e}. Give PNG or JPEG files that exist.") from e
    return [os.path.basename(p) for p in config.images], np.stack(images)
  names, images = [], []
  for i in range(config.num_phantoms):
    lesion = None if i % 2 == 0 else render.LESION_KINDS[(i // 2) % len(render.LESION_KINDS)]
    image, _ = render.render_phantom(config.seed + i, size, lesion)
    names.append(f"phantom_{i:02d}_{lesion or 'normal'}")
    images.append(image.astype(np.float32) / 255.0)
  return names, np.stack(images)


def save_figure(names, images, structures, path):
  n = len(names)
  fig, axes = plt.subplots(n, 3, figsize=(7.5, 2.5 * n), squeeze=False)
  for row, (name, img, s) in enumerate(zip(names, images, structures, strict=True)):
    panels = (
      ("input", img, (0, 1)),
      ("structure (RTV)", s, (0, 1)),
      ("texture", img - s, (-0.2, 0.2)),
    )
    for ax, (title, panel, (lo, hi)) in zip(axes[row], panels, strict=True):
      ax.imshow(panel, cmap="gray", vmin=lo, vmax=hi)
      ax.set_title(f"{name}\n{title}" if title == "input" else title, fontsize=8)
      ax.axis("off")
  fig.tight_layout()
  with image_io.atomic_open(path, "wb") as f:
    fig.savefig(f, dpi=100, format="png")
  plt.close(fig)


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Extracts the structure of the configured images and writes the results under `workdir/rtv`."""
  names, images = load_images(config)
  batch = jnp.asarray(images)[..., None]  # [B, H, W, 1]
  kwargs = rtv.RTVParams.from_config(config.rtv).as_kwargs()
  t0 = time.perf_counter()
  jax.block_until_ready(rtv.extract_structure_with_info(batch, **kwargs))
  compile_and_run_s = time.perf_counter() - t0
  t0 = time.perf_counter()
  structure, info = jax.block_until_ready(rtv.extract_structure_with_info(batch, **kwargs))
  run_s = time.perf_counter() - t0
  structure = np.asarray(structure[..., 0])
  iters = np.asarray(info.cg_iters)[:, :, 0]  # [n_iter, B]

  out_dir = os.path.join(workdir, "rtv")
  if jax.process_index() == 0:
    os.makedirs(out_dir, exist_ok=True)
    for name, s in zip(names, structure, strict=True):
      image_io.save_grey(s, os.path.join(out_dir, f"{os.path.splitext(name)[0]}_structure.png"))
    save_figure(names, images, structure, os.path.join(out_dir, "structure_texture.png"))
    lines = [
      f"images: {len(names)} at {images.shape[1]}x{images.shape[2]}",
      f"rtv: {kwargs}",
      f"first call (compile + run): {compile_and_run_s:.2f} s",
      f"batched extraction: {run_s:.3f} s ({run_s / len(names) * 1e3:.1f} ms per image)",
      f"CG iterations per outer iteration (max over images): {iters.max(axis=1).tolist()}",
      f"device: {jax.devices()[0].device_kind} x{jax.device_count()}",
    ]
    image_io.write_text(os.path.join(out_dir, "summary.txt"), "\n".join(lines) + "\n")
    for line in lines:
      logging.info("%s", line)
    logging.info("wrote %s", out_dir)
  return {"seconds": run_s, "cg_iters": iters, "structure": structure}
