"""The compiled training step of one growth phase: one critic update and one generator (and encoder) update on one
batch, fused so that the generator's forward pass is computed once.

The generator tape records G's forward pass; the critic update runs with that tape paused, and the generator loss
then reads the *updated* critic, exactly as the original's D-step-then-G-step order, without recomputing G(x).
Randomness (masks, noise, z, GP mixing) is stateless, keyed on (seed, global step, purpose[, replica]), so a resumed
run draws the same numbers as an uninterrupted one.
"""

from __future__ import annotations

import tensorflow as tf

from proganomaly.config import ModelConfig, NoiseConfig
from proganomaly.model import losses as LS
from proganomaly.model.masks import mask_images
from proganomaly.model.networks import Networks, Phase

MASK, Z_NOISE, FAKE_NOISE, GP_MIX, BERG_Z = 1, 2, 3, 4, 5


def to_float(images) -> tf.Tensor:
    """uint8 [0, 255] → float32 [-1, 1] (float input is taken as already scaled)."""
    if images.dtype == tf.uint8:
        return tf.cast(images, tf.float32) / 127.5 - 1.0
    return tf.cast(images, tf.float32)


def noise(shape, cfg: NoiseConfig, seed):
    """Training noise, or None when off. uniform01 reproduces the original's (non-zero-mean) U[0, 1)."""
    kind = cfg.distribution
    if kind == "none":
        return None
    if kind == "uniform":
        return tf.random.stateless_uniform(shape, seed, minval=-cfg.scale, maxval=cfg.scale)
    if kind == "normal":
        return tf.random.stateless_normal(shape, seed, stddev=cfg.scale)
    if kind == "uniform01":
        return tf.random.stateless_uniform(shape, seed)
    raise ValueError(f"unknown noise distribution {kind!r}")


def step_seeds(seed: int, step) -> dict:
    """One stateless seed per purpose, distinct per replica under a distribution strategy."""
    base = tf.stack([tf.constant(seed, tf.int64), tf.cast(step, tf.int64)])
    ctx = tf.distribute.get_replica_context()
    if ctx is not None and ctx.num_replicas_in_sync > 1:
        base = tf.random.experimental.stateless_fold_in(base, 1000 + tf.cast(ctx.replica_id_in_sync_group, tf.int64))
    return {k: tf.random.experimental.stateless_fold_in(base, k) for k in (MASK, Z_NOISE, FAKE_NOISE, GP_MIX, BERG_Z)}


class Forward:
    """Lazily computed training-mode tensors of one batch (float32), keyed by the original's names."""

    def __init__(self, nets: Networks, phase: Phase, alpha, x, seeds, compute_dtype):
        self.nets, self.phase, self.alpha, self.seeds, self.cdt = nets, phase, alpha, seeds, compute_dtype
        self.cfg: ModelConfig = nets.cfg
        self.values = {"x": x}
        self._fake_calls = 0

    def __getitem__(self, name: str):
        if name not in self.values:
            if name in ("Ge_of_x", "G_of_x"):
                self.values["Ge_of_x"], self.values["G_of_x"] = self._ganomaly()
            else:
                self.values[name] = self._RECIPES[name](self)
        return self.values[name]

    def _add_fake_noise(self, img):
        self._fake_calls += 1
        seed = tf.random.experimental.stateless_fold_in(self.seeds[FAKE_NOISE], self._fake_calls)
        n = noise(tf.shape(img), self.cfg.fake_noise, seed)
        return img if n is None else img + n

    def _decode(self, z):
        ph = self.phase
        img = self.nets.decoder(tf.cast(z, self.cdt), ph.block, ph.transition, self.alpha)
        return self._add_fake_noise(tf.cast(img, tf.float32))

    def _encode(self, img):
        ph = self.phase
        return self.nets.encoder(tf.cast(img, self.cdt), ph.block, ph.transition, self.alpha)[0]

    def _masked(self):
        m = self.cfg.mask
        if m.percent <= 0:
            return self["x"]
        return mask_images(self["x"], self.seeds[MASK], percent=m.percent, shift=m.block_random_shift, fill=m.fill)[0]

    def _ganomaly(self):
        ph, x = self.phase, self["x_masked"]
        zn = noise((tf.shape(x)[0], self.cfg.latent_size), self.cfg.z_noise, self.seeds[Z_NOISE])
        z, img = self.nets.generate(tf.cast(x, self.cdt), ph.block, ph.transition, self.alpha, zn)
        return z, self._add_fake_noise(tf.cast(img, tf.float32))

    def _z(self):
        cfg = self.cfg
        shape = (tf.shape(self["x"])[0], cfg.latent_size)
        return tf.random.stateless_normal(
            shape, self.seeds[BERG_Z], mean=cfg.berg_latent_mean, stddev=cfg.berg_latent_stddev
        )

    _RECIPES = {  # noqa: RUF012
        "x_masked": _masked,
        "E_of_G_of_x": lambda f: f._encode(f["G_of_x"]),
        "z": _z,
        "G_of_z": lambda f: f._decode(f["z"]),
        "E_of_G_of_z": lambda f: f._encode(f["G_of_z"]),
        "G_of_E_of_G_of_z": lambda f: f._decode(f["E_of_G_of_z"]),
        "E_of_x": lambda f: f._encode(f["x"]),
        "G_of_E_of_x": lambda f: f._decode(f["E_of_x"]),
        "E_of_G_of_E_of_x": lambda f: f._encode(f["G_of_E_of_x"]),
    }


def _all_reduce(grads):
    ctx = tf.distribute.get_replica_context()
    if ctx is None or ctx.num_replicas_in_sync == 1:
        return grads
    kept = [g for g in grads if g is not None]
    summed = iter(ctx.all_reduce(tf.distribute.ReduceOp.SUM, kept))
    return [None if g is None else next(summed) for g in grads]


def make_replica_step(
    nets: Networks, optimizers: dict, phase: Phase, *, seed: int, global_batch: int, compute_dtype=tf.float32
):
    """The per-replica step ``(images, global_step, alpha) → dict of losses``; wrap in tf.function / strategy.run.

    optimizers: {"generator": Adam, "discriminator": Adam, "encoder": Adam or None}.
    """
    cfg = nets.cfg
    w = cfg.loss_weights
    ganomaly = cfg.architecture == "ganomaly"
    term_table = LS.GANOMALY_TERMS if ganomaly else LS.BERG_TERMS
    fake_table = LS.GANOMALY_FAKES if ganomaly else LS.BERG_FAKES
    train_encoder = nets.encoder is not None and optimizers.get("encoder") is not None
    enc_weights = [w.encoder] if train_encoder else []
    wanted = LS.wanted_terms(term_table, w.generator, *enc_weights)
    d_fakes = [k for k in fake_table if getattr(w.discriminator, k)]
    g_adv = [k for k in fake_table if getattr(w.generator, k) or (train_encoder and getattr(w.encoder, k, 0.0))]
    g_vars = nets.generator_variables
    e_vars = list(nets.encoder.trainable_variables) if train_encoder else []
    d_vars = list(nets.critic.trainable_variables)
    reduce = LS._reducer(global_batch)

    def step(images, global_step, alpha):
        def critic(img):
            return nets.critic(tf.cast(img, compute_dtype), phase.block, phase.transition, alpha)[0]

        x = to_float(images)
        seeds = step_seeds(seed, global_step)
        with tf.GradientTape(persistent=train_encoder) as tape:
            fwd = Forward(nets, phase, alpha, x, seeds, compute_dtype)
            if ganomaly:
                fwd["G_of_x"]  # G(x̃) is the model being trained: it always runs
            terms = LS.distance_terms(
                fwd, wanted, global_batch=global_batch, normalize=cfg.normalize_reconstruction_losses
            )
            fakes = {k: fwd[fake_table[k]] for k in dict.fromkeys(d_fakes + g_adv)}
            with tape.stop_recording():
                with tf.GradientTape() as d_tape:
                    u = tf.random.stateless_uniform((tf.shape(x)[0],), seeds[GP_MIX])
                    reg_d = LS.kernel_penalty(d_vars, w.discriminator.kernel_l1, w.discriminator.kernel_l2)
                    out = LS.critic_losses(
                        critic, x, {k: tf.stop_gradient(fakes[k]) for k in d_fakes}, w.discriminator, u,
                        global_batch=global_batch, gp_coefficient=cfg.gradient_penalty_coefficient,
                        gp_target=cfg.gradient_penalty_target, epsilon_drift=cfg.epsilon_drift, reg=reg_d,
                    )  # fmt: skip
                d_grads = d_tape.gradient(out["discriminator_total_loss"], d_vars)
                optimizers["discriminator"].apply(_all_reduce(d_grads), d_vars)
            # the generator's adversarial terms read the critic as just updated
            adv = {LS._logged(k) + "_for_generator": reduce(critic(fakes[k])) for k in g_adv}
            adv_by_key = {k: adv[LS._logged(k) + "_for_generator"] for k in g_adv}
            reg_g = LS.kernel_penalty(g_vars, w.generator.kernel_l1, w.generator.kernel_l2)
            g_total = LS.network_total(terms, adv_by_key, w.generator, reg_g)
            if train_encoder:
                reg_e = LS.kernel_penalty(e_vars, w.encoder.kernel_l1, w.encoder.kernel_l2)
                e_total = LS.network_total(terms, adv_by_key, w.encoder, reg_e)
        g_grads = tape.gradient(g_total, g_vars)
        optimizers["generator"].apply(_all_reduce(g_grads), g_vars)
        out.update(terms)
        out.update(adv)
        out["generator_reg_loss"] = reg_g
        out["generator_total_loss"] = g_total
        if train_encoder:
            e_grads = tape.gradient(e_total, e_vars)
            optimizers["encoder"].apply(_all_reduce(e_grads), e_vars)
            out["encoder_reg_loss"] = reg_e
            out["encoder_total_loss"] = e_total
        return out

    return step


def make_train_step(
    nets, optimizers, phase, *, seed, global_batch, compute_dtype=tf.float32, jit_compile=True, strategy=None
):
    """The compiled step of one phase (traced once: images have a static shape, step and alpha are tensors)."""
    replica_step = make_replica_step(
        nets, optimizers, phase, seed=seed, global_batch=global_batch, compute_dtype=compute_dtype
    )
    if strategy is None or strategy.num_replicas_in_sync == 1:
        return tf.function(replica_step, jit_compile=jit_compile, reduce_retracing=True)

    def distributed(images, global_step, alpha):
        per_replica = strategy.run(
            tf.function(replica_step, jit_compile=jit_compile), args=(images, global_step, alpha)
        )
        return {k: strategy.reduce(tf.distribute.ReduceOp.SUM, v, axis=None) for k, v in per_replica.items()}

    return tf.function(distributed)
