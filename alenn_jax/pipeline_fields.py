"""What a pipeline config (`configs/pipeline.py`) sets in its stages' blocks.

The pipeline shares `config.data` with every stage and wires the stages together (splits, the
windows stage 1 is trained on, folders). Those nested fields are *ruled*: the presets leave them
out of the nested blocks (`strip_ruled`), `pipeline.resolve` fills them in, and one set by hand is
refused with the name of the field to set instead (`ruling_field` gives it for an override).
A leaf module: the config files and the launcher read it without importing any job.
"""

import ml_collections

# Fields of config.data that every stage shares (image_size is shared by stage 1 and stage 2a;
# each classifier has its own, 224 or 299 px in the full configs).
SHARED_DATA_FIELDS = (
  "name",
  "data_dir",
  "manual_dir",
  "group_by",
  "train_split",
  "eval_split",
  "selection_fraction",
  "paper_selection",
  "seed",
)


def ruled_fields(config: ml_collections.ConfigDict) -> dict[str, str]:
  """Nested field -> the pipeline field that sets it: what `resolve` and `stages` write into a
  stage's block. The pipeline presets leave these out of the nested blocks; setting one is
  refused with the name of the field to set instead."""
  ruled = {}
  blocks = ["stage1", "localize"] + [f"stage2.{b}" for b in config.stage2]
  for block in blocks:
    shared = SHARED_DATA_FIELDS
    if not block.startswith("stage2") or config.classifier_image_size_from_data:
      shared = (*shared, "image_size")
    ruled.update({f"{block}.data.{f}": f"data.{f}" for f in shared})
  ruled["stage1.data.folds"] = ruled["stage1.data.holdout_fold"] = "localize.folds"
  ruled["stage1.masks.grid_stride"] = "localize.stride"
  ruled["stage1.masks.grid_gap"] = "localize.gap"
  ruled["localize.init_from"] = "the pipeline's workdir (W/stage1)"
  ruled["localize.report.split"] = "test_split"
  for b in config.stage2:
    ruled[f"stage2.{b}.eval.split"] = "test_split"
    ruled[f"stage2.{b}.fusion"] = "fusions"
    ruled[f"stage2.{b}.le_workdir"] = "the pipeline's workdir (W/localize)"
  return ruled


def parent(config, path: str):
  """(block, key) of a dotted path: `parent(c, "a.b.c")` is `(c.a.b, "c")`."""
  *head, last = path.split(".")
  for key in head:
    config = config[key]
  return config, last


def strip_ruled(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Deletes the ruled fields from a pipeline config's nested blocks (in place), so that an
  override of one names the field that rules it instead of being silently overwritten."""
  for path in ruled_fields(config):
    block, key = parent(config, path)
    if key in block:
      del block[key]
  return config


def ruling_field(path: str) -> str | None:
  """For an override's path (`stage1.data.name`, `stage2.vgg19.fusion`): the pipeline field that
  sets it, or None. Every backbone's block is ruled alike (image_size aside: `full` gives each
  classifier its own)."""
  parts = path.split(".")
  if len(parts) > 2 and parts[0] == "stage2":
    parts[1] = "*"
  every = ml_collections.ConfigDict({"stage2": {"*": {}}, "classifier_image_size_from_data": True})
  return ruled_fields(every).get(".".join(parts))
