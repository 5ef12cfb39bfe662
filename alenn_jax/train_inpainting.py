"""Stage 1: structure-aware adversarial inpainting, trained on normal images only.

Phase 1 fits the structure generator gen_s (with disc_s) to repaint the RTV structure S of masked
normal images (whole, or random `config.data.crop`-px crops of them: the generators are fully
convolutional, so a CPU trains on large images at the cost of small ones); phase 2 fits the
texture generator gen_t (with disc_t) to repaint the image on top of gen_s's structure (gen_s
frozen, or fine-tuned by `config.finetune_gen_s`). Losses after the paper's eq. 11-12, as
`losses` reads them. Masks are drawn on device from a per-step key. S comes from
`rtv.extract_structure`, as `config.structure` says:

  in_step    inside the jitted step, of every augmented batch: the exact RTV of what the
             generators see, at the cost of one RTV solve per step.
  per_image  once per training image before the first step, then augmented with its image in
             the input pipeline (RTV commutes exactly with a brightness shift and nearly with a
             gain, rotation and zoom; BENCHMARKS.md measures both).

Reads top to bottom: `create_train_state`, `train_step`, `eval_step` (`repaint`), `evaluate`
(runs the generators over the evaluation split and scores them: Table 1, PSNR/SSIM of repainting
normal vs abnormal images, as the paper reports them; the protocol is ours), `train_and_evaluate`,
`evaluate_checkpoint` (`--mode=eval`).
Resuming is automatic from `workdir/checkpoints` (orbax): step, all parameters, optimizer and
spectral-norm states, the RNG and the input iterator's position. The checkpoint's `generator` item
(gen_s and gen_t parameters) is what later stages load, with `checkpointing.load_generator`.
"""

import dataclasses
import functools
import os
import time
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp
from absl import logging
from clu import parameter_overview

from alenn_jax import (
  checkpointing,
  data_splits,
  image_io,
  input_pipeline,
  losses,
  metrics,
  multihost,
  rtv,
  sharding,
  training_loop,
  writers,
)
from alenn_jax import masks as masks_lib
from alenn_jax.checkpointing import DATA, GENERATOR, STATE
from alenn_jax.errors import UserInputError
from alenn_jax.models import inpainting
from alenn_jax.reporting import tables

NETS = ("gen_s", "disc_s", "gen_t", "disc_t")
# Fields whose change makes the checkpoints of a workdir unusable (checkpointing.check_config).
STAGE1_SHAPE_FIELDS = ("model.", "data.image_size")


@flax.struct.dataclass
class Net:
  """One network: its parameters, optimizer state and (discriminators) spectral-norm vectors."""

  params: Any
  opt_state: Any
  batch_stats: Any


@flax.struct.dataclass
class TrainState:
  step: jax.Array  # int32 scalar: global step over both phases.
  rng: jax.Array  # Base PRNG key; step k uses fold_in(rng, k).
  gen_s: Net
  disc_s: Net
  gen_t: Net
  disc_t: Net


@dataclasses.dataclass(frozen=True)
class GanSetup:
  """What stage 1's step functions close over: modules, optimizer and constants from the config."""

  gen_s: inpainting.Generator
  gen_t: inpainting.Generator
  disc_s: inpainting.PatchDiscriminator
  disc_t: inpainting.PatchDiscriminator
  tx: optax.GradientTransformation
  alpha: float
  beta: float
  d_steps: int
  finetune_gen_s: bool
  masks: ml_collections.FrozenConfigDict
  rtv: rtv.RTVParams

  @classmethod
  def from_config(cls, config):
    gen_s, gen_t, disc_s, disc_t = inpainting.build(config.model)
    tx = optax.adam(config.optimizer.learning_rate, b1=config.optimizer.b1, b2=config.optimizer.b2)
    return cls(
      gen_s=gen_s,
      gen_t=gen_t,
      disc_s=disc_s,
      disc_t=disc_t,
      tx=tx,
      alpha=config.alpha,
      beta=config.beta,
      d_steps=config.d_steps,
      finetune_gen_s=config.finetune_gen_s,
      masks=ml_collections.FrozenConfigDict(config.masks),
      rtv=rtv.RTVParams.from_config(config.rtv),
    )


def create_train_state(config, static: GanSetup, rng, image_size: int) -> TrainState:
  """Fresh parameters and optimizer states for the four networks."""
  factor = 2**config.model.depth
  if image_size % factor:
    nearest = max(factor, image_size // factor * factor)
    raise UserInputError(
      f"config.data.image_size={image_size} is not divisible by 2**config.model.depth = {factor} "
      f"(the generators' stride); use a multiple of {factor}, e.g. {nearest}."
    )
  k_gs, k_gt, k_ds, k_dt, k_rng = jax.random.split(rng, 5)
  image = jnp.zeros((1, image_size, image_size, 1), jnp.float32)
  three = jnp.zeros((1, image_size, image_size, 3), jnp.float32)

  def gen(module, key):
    params = module.init(key, three)["params"]
    return Net(params=params, opt_state=static.tx.init(params), batch_stats={})

  def disc(module, key):
    variables = module.init(key, image, update_stats=False)
    params = variables["params"]
    return Net(
      params=params, opt_state=static.tx.init(params), batch_stats=variables["batch_stats"]
    )

  return TrainState(
    step=jnp.zeros((), jnp.int32),
    rng=k_rng,
    gen_s=gen(static.gen_s, k_gs),
    disc_s=disc(static.disc_s, k_ds),
    gen_t=gen(static.gen_t, k_gt),
    disc_t=disc(static.disc_t, k_dt),
  )


def inpaint(static: GanSetup, gen_s_params, gen_t_params, images, structure, mask):
  """(S_hat, I_hat, composite) for `[B, H, W, 1]` images, structures and masks."""
  params = {"gen_s": gen_s_params, "gen_t": gen_t_params}
  return inpainting.inpaint(static.gen_s, static.gen_t, params, images, structure, mask)


def _disc_apply(module, net_params, batch_stats, x, update):
  variables = {"params": net_params, "batch_stats": batch_stats}
  if update:
    logits, new = module.apply(variables, x, update_stats=True, mutable=["batch_stats"])
    return logits, new["batch_stats"]
  return module.apply(variables, x, update_stats=False), batch_stats


def train_step(state: TrainState, batch: dict, rng, *, static: GanSetup, phase: int):
  """One step of `phase` (1: gen_s/disc_s, 2: gen_t/disc_t): d_steps D updates, then one G update.

  Returns:
    `(new_state, metrics)`; metric names end in `_s` (phase 1) or `_t` (phase 2).
  """
  images = batch["image"]  # [B, H, W, 1] in [-1, 1]
  b, h, w, _ = images.shape
  mask = masks_lib.sample_masks(rng, b, h, w, static.masks)  # [B, H, W, 1], 1 = keep
  structure = batch["structure"] if "structure" in batch else rtv.structure_of(images, static.rtv)
  suffix = "s" if phase == 1 else "t"

  if phase == 1:
    disc, d_net = static.disc_s, state.disc_s
    target, weight = structure, static.alpha
    g_names = ("gen_s",)

    def generate(g_params):
      inputs = inpainting.generator_inputs_s(images, structure, mask)
      return static.gen_s.apply({"params": g_params["gen_s"]}, inputs)

  else:
    disc, d_net = static.disc_t, state.disc_t
    target, weight = images, static.beta
    g_names = ("gen_s", "gen_t") if static.finetune_gen_s else ("gen_t",)

    def generate(g_params):
      gen_s_params = g_params.get("gen_s", state.gen_s.params)
      inputs_s = inpainting.generator_inputs_s(images, structure, mask)
      s_hat = static.gen_s.apply({"params": gen_s_params}, inputs_s)
      if not static.finetune_gen_s:
        s_hat = jax.lax.stop_gradient(s_hat)
      inputs_t = inpainting.generator_inputs_t(images, s_hat, mask)
      return static.gen_t.apply({"params": g_params["gen_t"]}, inputs_t)

  g_params = {name: getattr(state, name).params for name in g_names}
  fake = jax.lax.stop_gradient(generate(g_params))

  def d_loss_fn(d_params, stats):
    real_logits, stats = _disc_apply(disc, d_params, stats, target, True)
    fake_logits, stats = _disc_apply(disc, d_params, stats, fake, True)
    return losses.discriminator_loss(real_logits, fake_logits), stats

  d_params, d_opt, d_stats = d_net.params, d_net.opt_state, d_net.batch_stats
  for _ in range(static.d_steps):
    (d_loss, d_stats), d_grads = jax.value_and_grad(d_loss_fn, has_aux=True)(d_params, d_stats)
    updates, d_opt = static.tx.update(d_grads, d_opt, d_params)
    d_params = optax.apply_updates(d_params, updates)

  def g_loss_fn(params):
    out = generate(params)
    fake_logits, _ = _disc_apply(disc, d_params, d_stats, out, False)
    l1 = losses.l1_loss(out, target)
    adv = losses.generator_adversarial_loss(fake_logits)
    return losses.weighted_generator_loss(l1, adv, weight), (l1, adv)

  (g_loss, (l1, adv)), g_grads = jax.value_and_grad(g_loss_fn, has_aux=True)(g_params)
  new_nets = {}
  for name in g_names:
    net = getattr(state, name)
    updates, opt_state = static.tx.update(g_grads[name], net.opt_state, net.params)
    new_nets[name] = net.replace(
      params=optax.apply_updates(net.params, updates), opt_state=opt_state
    )
  d_name = "disc_s" if phase == 1 else "disc_t"
  new_nets[d_name] = d_net.replace(params=d_params, opt_state=d_opt, batch_stats=d_stats)
  new_state = state.replace(step=state.step + 1, **new_nets)
  step_metrics = {
    f"g_loss_{suffix}": g_loss,
    f"d_loss_{suffix}": d_loss,
    f"l1_{suffix}": l1,
    f"adv_{suffix}": adv,
    f"g_grad_norm_{suffix}": optax.tree.norm(g_grads),
    f"d_grad_norm_{suffix}": optax.tree.norm(d_grads),
  }
  return new_state, step_metrics


def repaint(static: GanSetup, gen_s_params, gen_t_params, images, window_masks):
  """Every pixel repainted from its surroundings: each window of `window_masks` `[K, H, W, 1]` is
  hidden and inpainted in turn, and each pixel takes the mean of the inpaintings whose hole covered
  it. Returns `[B, H, W, 1]` in [-1, 1]."""
  structure = rtv.structure_of(images, static.rtv)

  def body(carry, mask):
    total, count = carry
    mask = jnp.broadcast_to(mask[None], images.shape)
    _, i_hat, _ = inpaint(static, gen_s_params, gen_t_params, images, structure, mask)
    return (total + i_hat * (1.0 - mask), count + (1.0 - mask)), None

  zeros = jnp.zeros_like(images)
  (total, count), _ = jax.lax.scan(body, (zeros, zeros), window_masks)
  return total / jnp.maximum(count, 1.0)


def eval_step(static: GanSetup, gen_s_params, gen_t_params, batch, window_masks):
  """Per-image PSNR and SSIM (on [0, 1]) of the repainted image against the original."""
  images = batch["image"]
  repainted = repaint(static, gen_s_params, gen_t_params, images, window_masks)
  a, b = (images + 1.0) / 2.0, (repainted + 1.0) / 2.0
  return {
    "psnr": metrics.psnr(b, a, 1.0),
    "ssim": metrics.ssim(b, a, 1.0),
    "weight": batch["weight"],
  }


def evaluate(config, static: GanSetup, gen_params, mesh) -> dict[str, dict[str, float]]:
  """Table 1: mean PSNR/SSIM of repainting held-out normal and abnormal images (fixed windows) with
  the generators `gen_params` ({"gen_s": ..., "gen_t": ...})."""
  size = config.data.image_size
  window_masks = jnp.asarray(
    masks_lib.window_masks(size, size, config.eval.window, config.eval.window)
  )
  # Per-image outputs replicated, so every process can read all of them (several hosts).
  step_fn = jax.jit(functools.partial(eval_step, static), out_shardings=sharding.replicated(mesh))
  table = {}
  for label, name in ((0, "normal"), (1, "abnormal")):
    iterator = input_pipeline.eval_iterator(config.data, mesh, config.eval.split, labels=(label,))
    sums = {"psnr": 0.0, "ssim": 0.0, "count": 0.0}
    for i, batch in enumerate(iterator):
      if config.eval.max_batches and i >= config.eval.max_batches:
        break
      numeric = {k: batch[k] for k in ("image", "weight")}
      out = jax.device_get(step_fn(gen_params["gen_s"], gen_params["gen_t"], numeric, window_masks))
      w = out["weight"]
      sums["psnr"] += float(np.sum(out["psnr"] * w))
      sums["ssim"] += float(np.sum(out["ssim"] * w))
      sums["count"] += float(np.sum(w))
    n = max(sums["count"], 1.0)
    table[name] = {"psnr": sums["psnr"] / n, "ssim": sums["ssim"] / n, "count": int(sums["count"])}
  return table


def make_image_grid(static: GanSetup, mesh, num: int):
  """The jitted `(gen params, images, rng) -> rows of (input, mask, structure, S_hat, I_hat,
  composite)` in [0, 1] of the first `num` images, `[num*H, 6*W]`; built once per run. The rows are
  replicated, so every process can read them (on several hosts no process holds all images)."""

  def panels(gen_s_params, gen_t_params, images, rng):
    images = images[:num]
    b, h, w, _ = images.shape
    mask = masks_lib.sample_masks(rng, b, h, w, static.masks)
    structure = rtv.structure_of(images, static.rtv)
    s_hat, i_hat, comp = inpaint(static, gen_s_params, gen_t_params, images, structure, mask)
    return jnp.stack([images * mask, mask * 2.0 - 1.0, structure, s_hat, i_hat, comp])

  step = jax.jit(panels, out_shardings=sharding.replicated(mesh))

  def grid(state: TrainState, images, rng) -> np.ndarray:
    p = np.asarray(jax.device_get(step(state.gen_s.params, state.gen_t.params, images, rng)))
    p = p[..., 0]  # [6, num, H, W]
    rows = [np.concatenate(list(p[:, i]), axis=1) for i in range(p.shape[1])]
    return np.clip((np.concatenate(rows, axis=0) + 1.0) / 2.0, 0.0, 1.0)

  return grid


def _checkpoint_manager(workdir: str, config) -> ocp.CheckpointManager:
  return checkpointing.manager(
    os.path.join(workdir, checkpointing.CHECKPOINTS),
    checkpointing.STAGE1_ITEMS,
    timeout_s=multihost.barrier_timeout(),
    save_interval_steps=config.checkpoint_every,
    max_to_keep=config.keep_checkpoints,
  )


def _save(manager, step: int, state: TrainState, data_state, force: bool = False) -> None:
  generator = {"gen_s": state.gen_s.params, "gen_t": state.gen_t.params}
  items = {
    STATE: ocp.args.StandardSave(state),
    GENERATOR: ocp.args.StandardSave(generator),
    DATA: ocp.args.JsonSave(data_state),
  }
  checkpointing.save(manager, step, items, force=force)


def structure_per_image(config, static: GanSetup) -> dict[str, np.ndarray]:
  """id -> RTV structure in [0, 1] (float16, `[S, S]`) of every training image of stage 1,
  unaugmented and letterboxed at `S = config.data.image_size`: `config.structure="per_image"`.
  Read by this process alone on its own devices (every process holds every structure)."""
  data = config.data
  indices = input_pipeline.selected_indices(data, data.train_split)
  local = sharding.make_mesh(jax.local_devices())
  extract = jax.jit(lambda images: rtv.structure_of(images, static.rtv))
  out = {}
  for batch in input_pipeline.batches_alone(data, local, data.train_split, indices):
    structure = np.asarray(jax.device_get(extract(batch["image"])))[..., 0]
    for i, weight in enumerate(np.asarray(batch["weight"])):
      if weight > 0:
        out[str(batch["id"][i])] = ((structure[i] + 1.0) / 2.0).astype(np.float16)
  return out


def _checked_structure_mode(config) -> str:
  """`config.structure`, with `data.crop` checked against the generator's depth."""
  crop, factor = config.data.get("crop", 0), 2**config.model.depth
  if crop and (crop % factor or crop >= config.data.image_size):
    raise UserInputError(
      f"config.data.crop={crop}: training crops must be smaller than config.data.image_size="
      f"{config.data.image_size} and a multiple of {factor} (2**config.model.depth)."
    )
  structure_mode = config.get("structure", "in_step")  # Runs stored before the field: in_step.
  if structure_mode not in rtv.STRUCTURE_MODES:
    raise UserInputError(
      f"config.structure={structure_mode!r}: use one of {', '.join(rtv.STRUCTURE_MODES)}."
    )
  return structure_mode


def _jitted_steps(static: GanSetup, mesh, keys) -> dict:
  """Phase -> its `train_step`, jitted once (named train_step_phase1 / 2)."""
  replicated = sharding.replicated(mesh)
  batch_shardings = {k: sharding.batch_sharding(mesh) for k in keys}
  steps = {}
  for phase in (1, 2):
    fn = functools.partial(train_step, static=static, phase=phase)
    fn.__name__ = f"train_step_phase{phase}"
    steps[phase] = jax.jit(
      fn,
      in_shardings=(replicated, batch_shardings, replicated),
      out_shardings=(replicated, replicated),
      donate_argnums=(0,),
    )
  return steps


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> TrainState:
  """Trains both phases (resuming from `workdir` if it holds a checkpoint), then writes Table 1."""
  if config.eval.split not in data_splits.split_names(config.data):  # Table 1: held out.
    config.eval.split = data_splits.resolve_eval_split(config.data)
  checkpointing.check_config(config, workdir, STAGE1_SHAPE_FIELDS)
  structure_mode = _checked_structure_mode(config)
  mesh = sharding.make_mesh()
  static = GanSetup.from_config(config)
  total_steps = config.phase1_steps + config.phase2_steps
  writer = writers.create(workdir, just_logging=jax.process_index() > 0)
  replicated = sharding.replicated(mesh)

  state = create_train_state(
    config, static, jax.random.PRNGKey(config.seed), config.data.image_size
  )
  state = jax.device_put(state, replicated)
  structures = None
  if structure_mode == "per_image":
    t0 = time.perf_counter()
    structures = structure_per_image(config, static)
    logging.info(
      "RTV structure of %d training images, once: %.1f s", len(structures), time.perf_counter() - t0
    )
  train_iter = input_pipeline.train_iterator(config.data, mesh, structures=structures)
  manager = _checkpoint_manager(workdir, config)
  state, resumed = checkpointing.restore_latest(manager, state, train_iter)
  if not resumed:
    for name in NETS:
      parameter_overview.log_parameter_overview(
        getattr(state, name).params, msg=f"{name} parameters"
      )
  start = int(jax.device_get(state.step))

  keys = input_pipeline.NUMERIC_KEYS + (("structure",) if structures is not None else ())
  steps = _jitted_steps(static, mesh, keys)
  image_grid = make_image_grid(static, mesh, config.grid_examples)
  first = {}  # The first batch this run sees: its images head every image grid.
  stop = total_steps if config.stop_at_step < 0 else min(config.stop_at_step, total_steps)

  def step(index: int, state: TrainState, batch: dict):
    first.setdefault("image", batch["image"])
    phase = 1 if index < config.phase1_steps else 2
    return steps[phase](state, batch, jax.random.fold_in(state.rng, index))

  def show_grid(done: int, state: TrainState) -> None:
    grid = image_grid(state, first["image"], jax.random.PRNGKey(config.seed + 1))
    writer.write_images(done, {"train/grid": grid[None, :, :, None]})
    if jax.process_index() == 0:
      image_io.save_grey(grid, os.path.join(workdir, "images", f"grid_{done:07d}.png"))

  def save(done: int, state: TrainState, force: bool) -> None:
    force = force or done in (config.phase1_steps, stop)
    _save(manager, done, state, train_iter.get_state(), force=force)

  state = training_loop.run(
    state,
    name="stage 1",
    start=start,
    stop=stop,
    total=total_steps,
    batch_size=config.data.batch_size,
    batches=({k: batch[k] for k in keys} for batch in train_iter),
    step=step,
    evaluate=show_grid,
    save=save,
    managers=[manager],
    writer=writer,
    log_every=config.log_every,
    eval_every=config.eval_every,
  )
  if stop == total_steps:
    gen_params = {"gen_s": state.gen_s.params, "gen_t": state.gen_t.params}
    run_evaluation(config, static, gen_params, mesh, workdir, writer, total_steps)
  return state


def run_evaluation(config, static, gen_params, mesh, workdir, writer, step) -> dict:
  """Table 1 of the generators `gen_params` ({"gen_s", "gen_t"}): logged, and written to
  `workdir/report/table1.csv`."""
  table = evaluate(config, static, gen_params, mesh)
  flat = {f"eval/{k}_{name}": v[k] for name, v in table.items() for k in ("psnr", "ssim")}
  writer.write_scalars(step, flat)
  writer.flush()
  if jax.process_index() == 0:
    path = tables.write_table1(table, workdir)
    for name, v in table.items():
      logging.info(
        "Table 1 %-8s PSNR %.3f dB  SSIM %.4f  (%d images)", name, v["psnr"], v["ssim"], v["count"]
      )
    logging.info("wrote %s", path)
  return table


def evaluate_checkpoint(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """`--mode=eval`: Table 1 for the latest (or `config.eval.checkpoint_step`) checkpoint."""
  mesh = sharding.make_mesh()
  static = GanSetup.from_config(config)
  step = config.eval.checkpoint_step if config.eval.checkpoint_step >= 0 else None
  generator = checkpointing.load_generator(workdir, step, mesh)
  writer = writers.create(workdir, just_logging=jax.process_index() > 0)
  return run_evaluation(config, static, generator.params, mesh, workdir, writer, generator.step)
