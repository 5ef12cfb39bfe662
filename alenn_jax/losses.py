"""Stage 1 losses after the paper's eq. 7-12, with our reading of two of them.

L_S = alpha * L1(S_hat, S) + (1 - alpha) * L_adv(G_s)   (alpha = 0.8)
L_I = beta  * L1(I_hat, I) + (1 - beta)  * L_adv(G_t)   (beta = 0.85)

Eq. 11-12 as printed add the *discriminator's* objective (eq. 8, 10) to the generator's L1; a
generator minimising the discriminator's log-likelihood of real images is not a GAN, so the
adversarial term of L_S / L_I is read as the generator's side of it, and each discriminator is
trained on eq. 8 / 10 (sign turned into a loss). Eq. 10 scores D_I(S) where the text means the
real image I; it is read as D_I(I).

Adversarial terms are the non-saturating GAN losses on discriminator logits:
  generator:      -log sigmoid(D(fake))                  = softplus(-D(fake))
  discriminator:  -log sigmoid(D(real)) - log(1 - sigmoid(D(fake)))
                = softplus(-D(real)) + softplus(D(fake))
Every loss is a mean over all elements, computed inside the differentiated function.
"""

import jax
import jax.numpy as jnp


def l1_loss(prediction: jax.Array, target: jax.Array) -> jax.Array:
  return jnp.mean(jnp.abs(prediction - target))


def generator_adversarial_loss(fake_logits: jax.Array) -> jax.Array:
  return jnp.mean(jax.nn.softplus(-fake_logits))


def discriminator_loss(real_logits: jax.Array, fake_logits: jax.Array) -> jax.Array:
  return jnp.mean(jax.nn.softplus(-real_logits)) + jnp.mean(jax.nn.softplus(fake_logits))


def weighted_generator_loss(l1: jax.Array, adversarial: jax.Array, weight: float) -> jax.Array:
  """weight * L1 + (1 - weight) * adversarial (eq. 11 with alpha, eq. 12 with beta)."""
  return weight * l1 + (1.0 - weight) * adversarial
