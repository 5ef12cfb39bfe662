"""Stage 1 losses on hand-made arrays."""

import math

import jax.numpy as jnp
from absl.testing import absltest

from alenn_jax import losses


class LossesTest(absltest.TestCase):
  def test_l1(self):
    self.assertAlmostEqual(
      float(losses.l1_loss(jnp.array([1.0, -1.0, 0.5]), jnp.zeros(3))), 2.5 / 3
    )

  def test_adversarial_losses_at_known_logits(self):
    # D(fake) = 0: the generator loss is log 2; D(real) = D(fake) = 0: D loss is 2 log 2.
    self.assertAlmostEqual(float(losses.generator_adversarial_loss(jnp.zeros(4))), math.log(2), 6)
    self.assertAlmostEqual(
      float(losses.discriminator_loss(jnp.zeros(4), jnp.zeros(4))), 2 * math.log(2), 6
    )
    # A confident, correct discriminator has almost no loss; the generator then pays a lot.
    self.assertLess(float(losses.discriminator_loss(jnp.full(4, 20.0), jnp.full(4, -20.0))), 1e-8)
    self.assertAlmostEqual(float(losses.generator_adversarial_loss(jnp.full(4, -20.0))), 20.0, 5)
    # -log sigmoid(x) at x = 1 and 2.
    want = (math.log1p(math.exp(-1.0)) + math.log1p(math.exp(-2.0))) / 2
    self.assertAlmostEqual(float(losses.generator_adversarial_loss(jnp.array([1.0, 2.0]))), want, 6)

  def test_weighted_generator_loss_is_eq_11_and_12(self):
    self.assertAlmostEqual(
      float(losses.weighted_generator_loss(0.5, 2.0, 0.8)), 0.8 * 0.5 + 0.2 * 2.0
    )
    self.assertAlmostEqual(float(losses.weighted_generator_loss(0.5, 2.0, 0.85)), 0.425 + 0.3, 6)


if __name__ == "__main__":
  absltest.main()
