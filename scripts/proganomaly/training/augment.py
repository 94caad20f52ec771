"""Stain augmentation of the training batches (Tellez et al.'s HED jitter, in TensorFlow, seeded per batch) and the
appearance jitter of the calibrate patches (`apply_appearance`, below).

The form, units and citations are those of `proganomaly.data.stain.hed_jitter`, its numpy reference: per patch, the
H and E concentrations s (Ruifrok & Johnston deconvolution of OD = −ln((I + 1) / 256)) become α·s + β with
α ~ U(1 − σ, 1 + σ) and β ~ U(−σ, σ); DAB is left alone. The draws are stateless, keyed on (seed, batch index) with
the batch index counted before the trainer skips batches on resume, so a resumed run sees the same jitter as an
uninterrupted one, and the same seed gives the same batches.
"""

from __future__ import annotations

import numpy as np
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


# --- calibration under appearance augmentation (stain.calibration_copies, stain.calibration_jitter) ----------------
#
# Domain randomisation of the calibrate patches: each copy re-renders every patch as another lab and scanner might
# have, in the order light meets them (the form of `proganomaly.demo.appearance.apply_appearance`, with this module's
# OD convention −ln((I + 1) / 256)): the H and E concentrations scaled, their stain vectors turned about the grey axis,
# a Gaussian defocus on the transmitted light, a camera gain, a saturation change about the Rec. 601 luma.

# Columns of a draw table (one row per patch); each is U(lo, hi) of its `stain.calibration_jitter` range (the hue
# turns both from `hue_deg`, independently).
APPEARANCE_PARAMS = ("h_scale", "e_scale", "h_hue_deg", "e_hue_deg", "defocus_sigma", "brightness", "saturation")
JITTER_KEYS = ("h_scale", "e_scale", "hue_deg", "defocus_sigma", "brightness", "saturation")
_RANGE_OF = dict(zip(APPEARANCE_PARAMS, ("h_scale", "e_scale", "hue_deg", "hue_deg", *JITTER_KEYS[3:]), strict=True))
# Draw streams are keyed by (this constant, the master seed, the copy index): copy 0 is the unaugmented pass.
DRAW_KEY = 0xCA11B
LUMA = (0.299, 0.587, 0.114)
GREY_AXIS = (3.0**-0.5,) * 3
# Kernel half-width in σ, as scipy.ndimage.gaussian_filter's default truncate: the weights beyond are < e⁻⁸.
DEFOCUS_TRUNCATE = 4.0


class JitterError(ValueError):
    """A `stain.calibration_jitter` range that cannot be drawn from; the message names the key and the fix."""


def check_jitter(jitter: dict) -> dict:
    """The jitter ranges as {key: (lo, hi)} floats, refusing unknown or missing keys and lo > hi."""
    where = "stain.calibration_jitter"
    if set(jitter) != set(JITTER_KEYS):
        raise JitterError(f"{where}: expected the keys {list(JITTER_KEYS)}, got {sorted(jitter)}")
    out = {}
    for key in JITTER_KEYS:
        lo, hi = (float(v) for v in jitter[key])
        if not lo <= hi:
            raise JitterError(f"{where}.{key}: [{lo}, {hi}] is not a range; give [low, high] with low <= high")
        out[key] = (lo, hi)
    for key in ("h_scale", "e_scale", "brightness"):
        if out[key][0] <= 0:
            raise JitterError(f"{where}.{key}: {list(out[key])} must be > 0 (a factor)")
    if out["defocus_sigma"][0] < 0 or out["saturation"][0] < 0:
        raise JitterError(f"{where}: defocus_sigma and saturation ranges must be >= 0")
    return out


def appearance_draws(n: int, jitter: dict, seed: int, copy: int) -> np.ndarray:
    """(n, len(APPEARANCE_PARAMS)) float32: one appearance per patch of copy `copy`, row i for the i-th patch of the
    dataset, from a numpy stream keyed by (DRAW_KEY, seed, copy) alone (so independent of batching and devices)."""
    ranges = check_jitter(jitter)
    lo, hi = (np.array([ranges[_RANGE_OF[p]][i] for p in APPEARANCE_PARAMS]) for i in (0, 1))
    u = np.random.default_rng([DRAW_KEY, int(seed), int(copy)]).random((int(n), len(APPEARANCE_PARAMS)))
    return (lo + u * (hi - lo)).astype(np.float32)


def defocus_radius(jitter: dict) -> int:
    """Half-width (px) of the defocus kernels: scipy's int(4σ + 0.5) for the largest σ the ranges allow."""
    return int(DEFOCUS_TRUNCATE * check_jitter(jitter)["defocus_sigma"][1] + 0.5)


def turned_stains(hue_deg) -> tf.Tensor:
    """(N, 3, 3) per-image stain matrices: RGB_FROM_HED with its H row turned by hue_deg[:, 0] and its E row by
    hue_deg[:, 1] degrees about the grey axis (Rodrigues), the residual row as is."""
    axis = np.asarray(GREY_AXIS, np.float32)
    t = tf.cast(hue_deg, tf.float32) * (np.pi / 180.0)
    rows = []
    for j in range(2):
        r = RGB_FROM_HED[j]
        parallel = axis * (axis @ r)
        perp, cross = r - parallel, np.cross(axis, r)
        c, s = tf.cos(t[:, j : j + 1]), tf.sin(t[:, j : j + 1])
        rows.append(parallel[None, :] + perp[None, :] * c + cross[None, :] * s)
    rows.append(tf.broadcast_to(RGB_FROM_HED[2][None, :], tf.shape(rows[0])))
    return tf.stack(rows, axis=1)


def gaussian_blur(x, sigma, radius: int) -> tf.Tensor:
    """float (N, H, W, C) blurred per image by a separable Gaussian of σ = sigma[n] px, edges replicated (scipy's
    mode="nearest"), kernel taps |k| <= radius normalised to sum 1; σ = 0 leaves the image as it is."""
    if radius <= 0:
        return x
    k = tf.range(-radius, radius + 1, dtype=tf.float32)
    s = tf.maximum(tf.cast(sigma, tf.float32), 1e-6)[:, None]  # σ = 0: every tap but k = 0 underflows to 0
    w = tf.exp(-0.5 * (k[None, :] / s) ** 2)
    w = w / tf.reduce_sum(w, axis=1, keepdims=True)
    for axis in (1, 2):
        size = tf.shape(x)[axis]
        pos = tf.range(size)
        out = 0.0
        for i in range(2 * radius + 1):
            shifted = tf.gather(x, tf.clip_by_value(pos + i - radius, 0, size - 1), axis=axis)
            out += w[:, i, None, None, None] * shifted
        x = out
    return x


def apply_appearance(images, params, radius: int) -> tf.Tensor:
    """uint8 (N, H, W, 3) images re-rendered under per-image appearances `params` ((N, 7) float, the columns of
    APPEARANCE_PARAMS); `radius` from `defocus_radius`. The identity parameters return the images unchanged."""
    params = tf.cast(params, tf.float32)
    od = -tf.math.log((tf.cast(images, tf.float32) + 1.0) / (REF_I0 + 1.0))
    hed = tf.einsum("nhwc,cd->nhwd", od, tf.constant(HED_FROM_RGB))
    scale = tf.concat([params[:, 0:2], tf.ones_like(params[:, :1])], axis=1)
    od = tf.einsum("nhwd,ndc->nhwc", hed * scale[:, None, None, :], turned_stains(params[:, 2:4]))
    light = gaussian_blur(tf.exp(-od), params[:, 4], radius)
    light = light * params[:, 5, None, None, None]
    luma = tf.reduce_sum(light * tf.constant(LUMA), axis=-1, keepdims=True)
    light = luma + params[:, 6, None, None, None] * (light - luma)
    rgb = (REF_I0 + 1.0) * light - 1.0
    return tf.cast(tf.clip_by_value(tf.round(rgb), 0.0, 255.0), tf.uint8)
