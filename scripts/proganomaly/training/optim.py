"""Adam as a plain ``tf.Module``: slots exist from the start, so a checkpoint always holds the full optimiser state.

Same update as Keras/TF Adam: lr_t = lr·√(1-β2^t)/(1-β1^t), w ← w - lr_t·m/(√v + ε). Unlike the original, slots are
not pre-built by applying a zero gradient, so the iteration counter counts real updates only.
"""

from __future__ import annotations

import tensorflow as tf

from proganomaly.config import AdamConfig


def _variable(initial, name):
    # ONLY_FIRST_REPLICA lets every replica assign the (identical, all-reduced) update under MirroredStrategy.
    return tf.Variable(initial, trainable=False, name=name, aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)


class Adam(tf.Module):
    def __init__(self, variables: list[tf.Variable], cfg: AdamConfig, name: str):
        super().__init__(name=name)
        self.cfg = cfg
        self.iterations = _variable(tf.constant(0, tf.int64), "iterations")
        self.m = [_variable(tf.zeros_like(v), "m") for v in variables]
        self.v = [_variable(tf.zeros_like(v), "v") for v in variables]
        self._slot = {v.ref(): i for i, v in enumerate(variables)}

    def apply(self, grads, variables) -> None:
        """Apply one update; variables whose gradient is None (not wired into this phase) are left alone."""
        pairs = [(g, v) for g, v in zip(grads, variables, strict=True) if g is not None]
        if not pairs:
            return
        grads = [tf.cast(g, tf.float32) for g, _ in pairs]
        if self.cfg.clip_norm:
            grads, _ = tf.clip_by_global_norm(grads, self.cfg.clip_norm)
        b1, b2 = self.cfg.beta1, self.cfg.beta2
        self.iterations.assign_add(1)
        t = tf.cast(self.iterations, tf.float32)
        lr_t = self.cfg.learning_rate * tf.sqrt(1.0 - tf.pow(b2, t)) / (1.0 - tf.pow(b1, t))
        for g, (_, var) in zip(grads, pairs, strict=True):
            i = self._slot[var.ref()]
            m = self.m[i].assign(b1 * self.m[i] + (1.0 - b1) * g)
            v = self.v[i].assign(b2 * self.v[i] + (1.0 - b2) * tf.square(g))
            var.assign_sub(lr_t * m / (tf.sqrt(v) + self.cfg.epsilon))


def build_optimizers(nets, cfg) -> dict[str, Adam | None]:
    """One Adam per variable group of the networks (`cfg`: model's optimizers config); None for a group not trained."""
    groups = nets.variable_groups()
    return {
        name: Adam(groups[name], getattr(cfg, name), f"opt_{name}") if name in groups else None
        for name in ("generator", "discriminator", "encoder")
    }
