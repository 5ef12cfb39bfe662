"""The whole method in one command: stage 1, LE maps, every classifier with and without LE, report.

  python launch.py --config=configs/pipeline.py --workdir=W          # phantoms, about 15 min on CPU
  python launch.py --config=configs/pipeline.py:smoke --workdir=W    # tests: a few minutes
  python launch.py --config=configs/pipeline.py:small128 --workdir=W # phantoms at 128 px, one GPU
  python launch.py --config=configs/pipeline.py:real --workdir=W \\
      --config.data.name=fracatlas/hand --config.data.manual_dir=../shared/data/fracatlas
  python launch.py --config=configs/pipeline.py:full --workdir=W \\
      --config.data.manual_dir=/data/mura                            # MURA elbow, accelerators
  python launch.py --config=configs/pipeline.py:paper --workdir=W \\
      --config.data.manual_dir=/data/mura                            # the paper's method as written
  python launch.py --config=configs/pipeline.py:paper_small --workdir=W  # the same, CPU-sized

The `paper` presets run the method as the paper's text describes it: every addition of
`alenn_jax/additions.py` off (per-window repainting, |I - I_k| as it is, no reflected border,
no augmentation, one generator, one seed, no carved selection split). `paper` has `full`'s
networks and lengths, `paper_small` the `small` ones (the CPU demo's sizes).

`config.data` is shared by every stage (name, folders, splits; image_size for stage 1 and the LE
maps). Each stage's own fields stay reachable: --config.stage1.phase1_steps=...,
--config.localize.stride=..., --config.stage2.resnet50.num_train_steps=.... The fields the
pipeline sets itself (`alenn_jax/pipeline_fields.py`: the stages' shared data fields, splits,
folders, fusion) are left out of the stages' blocks: set config.data.name, not
config.stage1.data.name.
"""

import ml_collections

from alenn_jax import additions, input_pipeline, pipeline_fields
from configs import localize, stage1, stage2

BACKBONES = ("vgg19", "resnet50", "densenet121", "inception_v3")
SIZES = ("smoke", "small", "small128", "real", "full", "paper", "paper_small")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  size = arg or "small"
  if size not in SIZES:
    raise ValueError(f"configs/pipeline.py: unknown argument {arg!r}; use {', '.join(SIZES)}.")
  if size.startswith("paper"):
    return additions.turn_off(get_config("full" if size == "paper" else "small"))
  return pipeline_fields.strip_ruled(_build(size))


def _build(size: str) -> ml_collections.ConfigDict:
  phantoms128 = size == "small128"
  real = size == "real"
  if phantoms128 or real:  # Variants of the `small` networks and recipe.
    size = "small"
  config = ml_collections.ConfigDict()
  config.trainer = "pipeline"
  config.data = input_pipeline.data_config()
  config.test_split = ""  # Where Table 2, Figure 3/4 are scored ("": test if the data has one).
  config.backbones = BACKBONES
  config.fusions = ("none", "enhance")  # Table 2 compares the first (baseline) with the others.
  config.classifier_image_size_from_data = size != "full"  # Else each classifier's own size.
  config.seeds = 3 if size == "full" else 1  # Each classifier trained this often (seed, seed+1..).
  config.bootstrap_resamples = 2000  # Paired bootstrap of Table 2's LE effect (over images).
  config.stage1 = stage1.get_config(size)
  config.localize = localize.get_config(size)
  config.stage2 = ml_collections.ConfigDict(
    {b: stage2.get_config(f"{size},backbone={b}") for b in BACKBONES}
  )
  # Out-of-sample LE maps: K stage 1 generators, each trained without one fold of the train
  # patients, each image mapped by the one that never saw it. Costs K stage 1 runs (the maps cost
  # the same), so it is on for the accelerator-sized pipeline only; the CPU demo shows the gap
  # between in-sample and held-out normals instead (report.md, normal_le.csv).
  config.localize.folds = 3 if size == "full" else 1
  config.data.name = config.stage1.data.name
  config.data.image_size = config.stage1.data.image_size
  config.data.eval_split = config.stage1.data.eval_split
  if size == "small":
    _small(config, cpu_demo=not phantoms128)
  if real:
    _real(config)
  if phantoms128:
    _phantoms128(config)
  return config


def _small(config, cpu_demo: bool) -> None:
  """The CPU recipe: overlapping windows (stride < window, as the paper's text has it) repainted a
  group 16 px apart per pass (16 passes per 64-px image, as many as non-overlapping windows one by
  one), stage 1 trained on that grid (masks.weights[3]); sized to take about 15 minutes on a
  2-core CPU (BENCHMARKS.md, "The whole pipeline")."""
  config.localize.method = "multi_window"
  config.localize.window = config.stage1.masks.window
  config.localize.stride = config.localize.window // 2
  config.localize.gap = config.localize.window
  config.stage1.masks.weights = (0.2, 0.2, 0.2, 0.4)
  for b in BACKBONES:
    config.stage2[b].num_train_steps = 300
  if cpu_demo:
    # Zero padding and 500 steps: reflection costs 1.3x per generator pass on a CPU, and fewer
    # reflected steps to stay in time scored no better (BENCHMARKS.md, "LE-map levers").
    config.stage1.model.padding = "zero"
    config.stage1.phase1_steps = 200
    config.stage1.phase2_steps = 300
    config.stage1.eval_every = 250
    config.stage1.checkpoint_every = 100


def _real(config) -> None:
  """Real radiographs on a CPU (give data.name and data.manual_dir): D kept to each image's body
  (rulers, side markers, labels, film-edge bands and air hold no maximum and set no LE scale;
  every map is then scored on the body's pixels only), 32-px windows (stride 16, gap 32: as many
  passes per image as the demo's 16-px ones) and the repainting's slack at its most for them. All
  three were chosen on FracAtlas hand's `validation` split (BENCHMARKS.md, "FracAtlas hand against
  the image itself"). Classifiers: 2000 steps, class-balanced, VGG-19 at 1e-4 (chosen on the same
  split by validation kappa and AUC, no lesion masks; BENCHMARKS.md, "Table 2 on real films"): at
  the demo's 300 steps the validation kappa of every backbone was still near 0, the best
  checkpoint an untrained one; without class weights a 30%-abnormal split keeps P(abnormal) under
  0.5 and kappa at 0; VGG-19 (no BatchNorm) collapses to a constant output at 1e-3."""
  for b in BACKBONES:
    config.stage2[b].num_train_steps = 2000
    config.stage2[b].eval_every = 100
    config.stage2[b].class_balanced = True
  config.stage2.vgg19.optimizer.learning_rate = 1e-4
  window = 32
  config.stage1.masks.window = config.stage1.eval.window = window
  config.localize.window = window
  config.localize.stride = window // 2
  config.localize.gap = window
  config.localize.foreground = "body"
  config.localize.shift = (window - 1) // 2


def _phantoms128(config) -> None:
  """The phantoms at 128 px, where a fracture line is two pixels wide instead of one: the same
  16-px windows, reflection padding and 3.5x the demo's steps, for one GPU; the high-pass, blur
  and slack scaled with the image, not the window (chosen on `validation`; BENCHMARKS.md, "128 px
  on one H100")."""
  config.data.image_size = config.stage1.data.image_size = 128
  config.stage1.phase1_steps = 700
  config.stage1.phase2_steps = 1050
  config.stage1.checkpoint_every = 250
  config.localize.highpass = 4.0
  config.localize.smooth = 2.0
  config.localize.shift = 2
