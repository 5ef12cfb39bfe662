"""alenn_jax: ALENN (Zhang & Hu 2021) in JAX.

Weakly-supervised lesion localization and lesion-enhanced classification of radiographs: RTV
structure extraction (`rtv`), a two-step inpainting GAN trained on normal images, sliding-window
lesion-enhancement maps, and classifiers trained with and without them.
"""
