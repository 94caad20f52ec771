"""The training-mode tensors of one batch, computed lazily by name from the architecture's recipes.

Randomness (masks, noise, z) is stateless, keyed on (seed, global step, purpose[, replica]), so a resumed run draws
the same numbers as an uninterrupted one.
"""

from __future__ import annotations

import tensorflow as tf

from proganomaly.config import ModelConfig, NoiseConfig
from proganomaly.model.masks import mask_images

# Stateless-seed purposes (the fold-in constants are part of the numbers: never renumber them).
PURPOSES = {"mask": 1, "z_noise": 2, "fake_noise": 3, "gp_mix": 4, "berg_z": 5}


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
    return {k: tf.random.experimental.stateless_fold_in(base, k) for k in PURPOSES.values()}


class Forward:
    """Lazily computed training-mode tensors of one batch (float32), keyed by the original's names.

    The architecture's `recipes` say how each name is computed from others, through the helpers below.
    """

    def __init__(self, nets, phase, alpha, x, seeds, compute_dtype):
        self.nets, self.phase, self.alpha, self.seeds, self.cdt = nets, phase, alpha, seeds, compute_dtype
        self.cfg: ModelConfig = nets.cfg
        self.values = {"x": x}
        self._fake_calls = 0

    def __getitem__(self, name: str):
        if name not in self.values:
            made = self.nets.recipes[name](self)
            if isinstance(made, dict):
                self.values.update(made)
            else:
                self.values[name] = made
        return self.values[name]

    def seed(self, purpose: str):
        return self.seeds[PURPOSES[purpose]]

    def add_fake_noise(self, img):
        self._fake_calls += 1
        seed = tf.random.experimental.stateless_fold_in(self.seed("fake_noise"), self._fake_calls)
        n = noise(tf.shape(img), self.cfg.fake_noise, seed)
        return img if n is None else img + n

    def decode(self, z):
        """Decoder image of latent z, with fake noise."""
        ph = self.phase
        img = self.nets.decoder(tf.cast(z, self.cdt), ph.block, ph.transition, self.alpha)
        return self.add_fake_noise(tf.cast(img, tf.float32))

    def encode(self, img):
        """E(img)."""
        ph = self.phase
        return self.nets.encoder(tf.cast(img, self.cdt), ph.block, ph.transition, self.alpha)[0]

    def generate(self, img):
        """(latent, image) of the architecture's image-to-image generator, with latent noise and fake noise."""
        ph = self.phase
        zn = noise((tf.shape(img)[0], self.cfg.latent_size), self.cfg.z_noise, self.seed("z_noise"))
        z, out = self.nets.generate(tf.cast(img, self.cdt), ph.block, ph.transition, self.alpha, zn)
        return z, self.add_fake_noise(tf.cast(out, tf.float32))

    def masked(self):
        """x with the context masks applied (x itself when masking is off)."""
        m = self.cfg.mask
        if m.percent <= 0:
            return self["x"]
        return mask_images(self["x"], self.seed("mask"), percent=m.percent, shift=m.block_random_shift, fill=m.fill)[0]
