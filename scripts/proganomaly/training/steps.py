"""The compiled training step of one growth phase: one critic update and one generator (and encoder) update on one
batch, fused so that the generator's forward pass is computed once.

The generator tape records G's forward pass; the critic update runs with that tape paused, and the generator loss
then reads the *updated* critic, exactly as the original's D-step-then-G-step order, without recomputing G(x).
Which tensors and loss terms exist is the architecture's (`nets.terms`, `nets.fakes`, `nets.recipes`).
"""

from __future__ import annotations

import tensorflow as tf

from proganomaly.common.pixels import to_unit_by_division
from proganomaly.model import losses as LS
from proganomaly.model.networks import Phase
from proganomaly.training.forward import PURPOSES, Forward, step_seeds

STEP_KEYS = [
    "D(x)", "epsilon_drift_penalty", "discriminator_reg_loss", "discriminator_total_loss",
    "generator_reg_loss", "generator_total_loss", "encoder_reg_loss", "encoder_total_loss",
]  # fmt: skip


def to_float(images) -> tf.Tensor:
    """uint8 [0, 255] → float32 [-1, 1] (float input is taken as already scaled)."""
    if images.dtype == tf.uint8:
        return to_unit_by_division(images)
    return tf.cast(images, tf.float32)


def loss_fields(nets, train_encoder: bool) -> list[str]:
    """The keys a step returns for these networks and loss weights, in log-column order."""
    w = nets.loss_weights()
    enc = [w.encoder] if train_encoder else []
    keys = [f"{k}_{n}" for k, n in LS.wanted_terms(nets.terms, w.generator, *enc)]
    for k in nets.fakes:
        name = LS._logged(k)
        if getattr(w.discriminator, k):
            keys += [name, f"{name}-D(x)", f"{name}_gradient_penalty", f"{name}_wgan_gp"]
        if getattr(w.generator, k) or (enc and getattr(w.encoder, k, 0.0)):
            keys.append(f"{name}_for_generator")
    return STEP_KEYS + keys


def _all_reduce(grads):
    ctx = tf.distribute.get_replica_context()
    if ctx is None or ctx.num_replicas_in_sync == 1:
        return grads
    kept = [g for g in grads if g is not None]
    summed = iter(ctx.all_reduce(tf.distribute.ReduceOp.SUM, kept))
    return [None if g is None else next(summed) for g in grads]


def _replicas() -> int:
    ctx = tf.distribute.get_replica_context()
    return 1 if ctx is None else ctx.num_replicas_in_sync


class _Updates:
    """Gradient → all-reduce → (loss-scaled: unscale, skip when not finite) → Adam, for each network of a step."""

    def __init__(self, optimizers: dict, loss_scale):
        self.optimizers, self.loss_scale, self.finite = optimizers, loss_scale, []

    def target(self, loss):
        """What to differentiate (computed where the tape records)."""
        return loss if self.loss_scale is None else self.loss_scale.scaled(loss)

    def apply(self, name: str, tape, target, variables) -> None:
        grads = _all_reduce(tape.gradient(target, variables))
        if self.loss_scale is None:
            self.optimizers[name].apply(grads, variables)
            return
        grads, finite = self.loss_scale.unscale(grads)
        self.finite.append(finite)

        def update():
            self.optimizers[name].apply(grads, variables)
            return tf.constant(True)

        tf.cond(finite, update, lambda: tf.constant(False))

    def finish(self) -> None:
        if self.loss_scale is not None:
            self.loss_scale.update(tf.reduce_all(self.finite))


def make_replica_step(nets, optimizers: dict, phase: Phase, *, seed: int, global_batch: int, compute_dtype=tf.float32,
                      loss_scale=None):  # fmt: skip
    """The per-replica step ``(images, global_step, alpha) → dict of losses``; wrap in tf.function / strategy.run.

    optimizers: {"generator": Adam, "discriminator": Adam, "encoder": Adam or None}; loss_scale: a
    precision.LossScale for float16, else None.
    """
    cfg = nets.cfg
    w = nets.loss_weights()
    train_encoder = nets.encoder is not None and optimizers.get("encoder") is not None
    enc_weights = [w.encoder] if train_encoder else []
    wanted = LS.wanted_terms(nets.terms, w.generator, *enc_weights)
    d_fakes = [k for k in nets.fakes if getattr(w.discriminator, k)]
    g_adv = [k for k in nets.fakes if getattr(w.generator, k) or (train_encoder and getattr(w.encoder, k, 0.0))]
    g_vars = nets.generator_variables
    e_vars = list(nets.encoder.trainable_variables) if train_encoder else []
    d_vars = list(nets.critic.trainable_variables)
    reduce = LS._reducer(global_batch)

    def step(images, global_step, alpha):
        def critic(img):
            return nets.critic(tf.cast(img, compute_dtype), phase.block, phase.transition, alpha)[0]

        x = to_float(images)
        seeds = step_seeds(seed, global_step)
        updates = _Updates(optimizers, loss_scale)
        # Each replica's gradients are summed across replicas: its share of a kernel penalty is 1/replicas.
        replicas = _replicas()
        with tf.GradientTape(persistent=train_encoder) as tape:
            fwd = Forward(nets, phase, alpha, x, seeds, compute_dtype)
            nets.train_forward(fwd)
            terms = LS.distance_terms(
                fwd, wanted, nets.terms, global_batch=global_batch, normalize=cfg.normalize_reconstruction_losses
            )
            fakes = {k: fwd[nets.fakes[k]] for k in dict.fromkeys(d_fakes + g_adv)}
            with tape.stop_recording():
                with tf.GradientTape() as d_tape:
                    u = tf.random.stateless_uniform((tf.shape(x)[0],), seeds[PURPOSES["gp_mix"]])
                    reg_d = LS.kernel_penalty(d_vars, w.discriminator.kernel_l1, w.discriminator.kernel_l2, replicas)
                    out = LS.critic_losses(
                        critic, x, {k: tf.stop_gradient(fakes[k]) for k in d_fakes}, w.discriminator, u,
                        global_batch=global_batch, gp_coefficient=cfg.gradient_penalty_coefficient,
                        gp_target=cfg.gradient_penalty_target, epsilon_drift=cfg.epsilon_drift, reg=reg_d,
                    )  # fmt: skip
                    d_target = updates.target(out["discriminator_total_loss"])
                updates.apply("discriminator", d_tape, d_target, d_vars)
            # the generator's adversarial terms read the critic as just updated
            adv = {LS._logged(k) + "_for_generator": reduce(critic(fakes[k])) for k in g_adv}
            adv_by_key = {k: adv[LS._logged(k) + "_for_generator"] for k in g_adv}
            reg_g = LS.kernel_penalty(g_vars, w.generator.kernel_l1, w.generator.kernel_l2, replicas)
            g_total = LS.network_total(terms, adv_by_key, w.generator, reg_g)
            g_target = updates.target(g_total)
            if train_encoder:
                reg_e = LS.kernel_penalty(e_vars, w.encoder.kernel_l1, w.encoder.kernel_l2, replicas)
                e_total = LS.network_total(terms, adv_by_key, w.encoder, reg_e)
                e_target = updates.target(e_total)
        updates.apply("generator", tape, g_target, g_vars)
        out.update(terms)
        out.update(adv)
        out["generator_reg_loss"] = reg_g
        out["generator_total_loss"] = g_total
        if train_encoder:
            updates.apply("encoder", tape, e_target, e_vars)
            out["encoder_reg_loss"] = reg_e
            out["encoder_total_loss"] = e_total
        updates.finish()
        return out

    return step


def make_train_step(
    nets, optimizers, phase, *, seed, global_batch, compute_dtype=tf.float32, jit_compile=True, strategy=None,
    loss_scale=None,
):  # fmt: skip
    """The compiled step of one phase (traced once: images have a static shape, step and alpha are tensors)."""
    replica_step = make_replica_step(
        nets, optimizers, phase, seed=seed, global_batch=global_batch, compute_dtype=compute_dtype,
        loss_scale=loss_scale,
    )  # fmt: skip
    if strategy is None or strategy.num_replicas_in_sync == 1:
        return tf.function(replica_step, jit_compile=jit_compile, reduce_retracing=True)

    def distributed(images, global_step, alpha):
        per_replica = strategy.run(
            tf.function(replica_step, jit_compile=jit_compile), args=(images, global_step, alpha)
        )
        return {k: strategy.reduce(tf.distribute.ReduceOp.SUM, v, axis=None) for k, v in per_replica.items()}

    return tf.function(distributed)
