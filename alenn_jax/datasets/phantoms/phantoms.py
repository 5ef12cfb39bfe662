"""`phantoms`: the built-in default dataset, rendered procedurally (no files needed).

Half of each split is normal, half abnormal with one lesion (fracture, lytic focus, sclerotic focus
or metal hardware, in turn) whose true mask is `lesion_mask`. Every image follows from its split and
index, so a build is identical on every machine.
"""

import dataclasses

import tensorflow_datasets as tfds

from alenn_jax.datasets import common
from alenn_jax.datasets.phantoms import render

# Seeds of the splits are disjoint ranges, so no image appears in two splits.
_SPLIT_SEED_BASE = {"train": 0, "validation": 1_000_000, "test": 2_000_000}


@dataclasses.dataclass(eq=False)
class PhantomsConfig(common.ImageBuilderConfig):
  size: int = 128  # Side of the square images.
  num_train: int = 512
  num_validation: int = 128
  num_test: int = 128


def example(split: str, index: int, size: int) -> dict:
  """The `index`-th example of `split`: even indices normal, odd ones abnormal."""
  seed = _SPLIT_SEED_BASE[split] + index
  abnormal = index % 2 == 1
  lesion = render.LESION_KINDS[(index // 2) % len(render.LESION_KINDS)] if abnormal else None
  image, mask = render.render_phantom(seed, size, lesion)
  return {
    "image": common.encode_grey(image),
    "label": int(abnormal),
    "id": f"{split}/{index:06d}_{lesion or 'normal'}",
    "lesion_mask": common.encode_grey(mask),
    "lesion_kind": lesion or "none",
  }


class Phantoms(tfds.core.GeneratorBasedBuilder):
  """Radiograph-like limb phantoms with known lesion masks."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "First release."}
  BUILDER_CONFIGS = [
    PhantomsConfig(name="px128", description="128 px, 512/128/128 images."),
    PhantomsConfig(
      name="px64",
      description="64 px, 32/16/16 images, for tests.",
      size=64,
      num_train=32,
      num_validation=16,
      num_test=16,
    ),
    PhantomsConfig(
      name="px256",
      description="256 px, 1024/256/256 images.",
      size=256,
      num_train=1024,
      num_validation=256,
      num_test=256,
    ),
  ]
  DEFAULT_CONFIG_NAME = "px128"

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
      builder=self,
      description=__doc__,
      features=common.common_features(lesion_kind=tfds.features.Text()),
      metadata=tfds.core.MetadataDict(),
    )

  def _split_generators(self, dl_manager):
    del dl_manager
    self._labels = common.LabelCounter()
    cfg = self.builder_config
    return {
      "train": self._generate_examples("train", cfg.num_train),
      "validation": self._generate_examples("validation", cfg.num_validation),
      "test": self._generate_examples("test", cfg.num_test),
    }

  def _generate_examples(self, split: str, count: int):
    size = min(self.builder_config.size, self.builder_config.max_side)
    for index in range(count):
      ex = example(split, index, size)
      self._labels.add(split, ex["label"])
      yield ex["id"], ex
    self.info.metadata["label_counts"] = self._labels.as_dict()
    common.SkipCounter().write(self.info.metadata)
