"""Stain augmentation of the training batches: Tellez et al.'s HED jitter, in TensorFlow, seeded per batch.

The form, units and citations are those of `proganomaly.data.stain.hed_jitter`, its numpy reference: per patch, the
H and E concentrations s (Ruifrok & Johnston deconvolution of OD = −ln((I + 1) / 256)) become α·s + β with
α ~ U(1 − σ, 1 + σ) and β ~ U(−σ, σ); DAB is left alone. The draws are stateless, keyed on (seed, batch index) with
the batch index counted before the trainer skips batches on resume, so a resumed run sees the same jitter as an
uninterrupted one, and the same seed gives the same batches.
"""

from __future__ import annotations

import tensorflow as tf

from proganomaly.data.stain import HED_FROM_RGB, REF_I0, RGB_FROM_HED


def jitter_draws(n, sigma: float, seed) -> tuple[tf.Tensor, tf.Tensor]:
    """(α, β), each (n, 2) float32 for H and E, from the stateless seed (a shape-(2,) int tensor)."""
    seeds = tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), 2)
    alpha = tf.random.stateless_uniform([n, 2], seeds[0], 1.0 - sigma, 1.0 + sigma)
    beta = tf.random.stateless_uniform([n, 2], seeds[1], -sigma, sigma)
    return alpha, beta


def apply_hed_jitter(images, alpha, beta) -> tf.Tensor:
    """uint8 (N, H, W, 3) images with their H and E concentrations mapped to α·s + β (per image)."""
    od = -tf.math.log((tf.cast(images, tf.float32) + 1.0) / (REF_I0 + 1.0))
    hed = tf.einsum("nhwc,cd->nhwd", od, tf.constant(HED_FROM_RGB))
    he = hed[..., :2] * alpha[:, None, None, :] + beta[:, None, None, :]
    od = tf.einsum("nhwd,dc->nhwc", tf.concat([he, hed[..., 2:]], axis=-1), tf.constant(RGB_FROM_HED))
    rgb = (REF_I0 + 1.0) * tf.exp(-od) - 1.0
    return tf.cast(tf.clip_by_value(tf.round(rgb), 0.0, 255.0), tf.uint8)


def hed_jitter(images, sigma: float, seed) -> tf.Tensor:
    alpha, beta = jitter_draws(tf.shape(images)[0], sigma, seed)
    return apply_hed_jitter(images, alpha, beta)


def stain_jitter(ds: tf.data.Dataset, sigma: float, seed: int) -> tf.data.Dataset:
    """The batched uint8 dataset with each batch HED-jittered; σ = 0 returns ``ds`` itself (no op at all)."""
    if sigma <= 0:
        return ds
    base = tf.constant(int(seed), tf.int64)

    def jitter(index, images):
        return hed_jitter(images, float(sigma), tf.stack([base, index]))

    ds = ds.enumerate().map(jitter, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return ds.prefetch(tf.data.AUTOTUNE)
