"""Compute dtypes and the dynamic loss scale that float16 training needs.

float16 has 5 exponent bits: small gradients underflow to zero in the backward pass. The loss is multiplied by a
scale S before differentiation and the gradients divided by S after (in float32); when any gradient is not finite
the update of that network is skipped and S halved, and after `growth_interval` finite steps in a row S doubles
(the scheme of Keras's LossScaleOptimizer, written out because the optimisers here are plain tf.Modules). bfloat16
has float32's exponent range and needs none of this.
"""

from __future__ import annotations

import tensorflow as tf

COMPUTE_DTYPES = {"float32": tf.float32, "bfloat16": tf.bfloat16, "float16": tf.float16}


def _variable(initial, name):
    # ONLY_FIRST_REPLICA: every replica computes the same update from the all-reduced gradients.
    return tf.Variable(initial, trainable=False, name=name, aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)


class LossScale(tf.Module):
    """Dynamic loss scale; its state is checkpointed with the run, so a resumed run scales as an uninterrupted one."""

    def __init__(self, initial: float = 2.0**15, growth_interval: int = 2000, name: str = "loss_scale"):
        super().__init__(name=name)
        self.growth_interval = int(growth_interval)
        self.scale = _variable(tf.constant(initial, tf.float32), "scale")
        self.good_steps = _variable(tf.constant(0, tf.int64), "good_steps")

    def scaled(self, loss):
        return tf.cast(loss, tf.float32) * self.scale

    def unscale(self, grads):
        """(gradients / S, whether all of them are finite)."""
        kept = [g for g in grads if g is not None]
        finite = tf.reduce_all([tf.reduce_all(tf.math.is_finite(g)) for g in kept]) if kept else tf.constant(True)
        inv = 1.0 / self.scale
        return [None if g is None else tf.cast(g, tf.float32) * inv for g in grads], finite

    def update(self, finite) -> None:
        good = self.good_steps + 1
        grow = good >= self.growth_interval
        self.scale.assign(
            tf.where(finite, tf.where(grow, self.scale * 2.0, self.scale), tf.maximum(self.scale * 0.5, 1.0))
        )
        self.good_steps.assign(tf.where(finite & ~grow, good, tf.zeros_like(good)))
