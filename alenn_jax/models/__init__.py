"""Flax Linen models: the stage 1 inpainting networks (and, later, the stage 2 backbones)."""
