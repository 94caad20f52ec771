"""The plain baseline every scorer must beat (issue 12): hand-crafted colour and texture statistics of each patch.

Twenty numbers per patch, no model: the mean and standard deviation of its haematoxylin, eosin and DAB densities
(Ruifrok–Johnston colour deconvolution with scikit-image's matrix, as `skimage.color.rgb2hed`), the mean and
standard deviation of its grey-level Sobel gradient magnitude at full and half resolution (2×2 block means; as
`skimage.filters.sobel`, borders mirrored), and the histogram of its rotation-invariant uniform local binary
patterns (P=8, R=1, diagonal neighbours interpolated bilinearly as `skimage.feature.local_binary_pattern`,
"uniform": ten codes) over all but the outermost ring of pixels. Computed in float64 on the patch alone, spread to
its pixels; the shared Gaussian (with a ridge: the LBP bins sum to one) scores them. tests/texture_reference.py
computes the same with scikit-image itself. The served reconstruction is still G(x): 1 generator pass per patch.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf
from skimage.color import hed_from_rgb

from proganomaly.scoring.base import Scorer, Views, per_patch, register

LBP_P, LBP_R = 8, 1
LBP_BINS = LBP_P + 2
GRADIENT_SCALES = (1, 2)
GREY = (0.2125, 0.7154, 0.0721)  # skimage.color.rgb2gray
FEATURE_NAMES = (
    *(f"{stain}_{stat}" for stat in ("mean", "std") for stain in ("hematoxylin", "eosin", "dab")),
    *(f"gradient_x{s}_{stat}" for s in GRADIENT_SCALES for stat in ("mean", "std")),
    *(f"lbp_{code}" for code in range(LBP_BINS)),
)
# Neighbour p at (row, col) offset (−R sin 2πp/P, R cos 2πp/P) rounded to 5 decimals, as scikit-image rounds them.
_OFFSETS = [
    (np.round(-LBP_R * np.sin(2 * np.pi * p / LBP_P), 5), np.round(LBP_R * np.cos(2 * np.pi * p / LBP_P), 5))
    for p in range(LBP_P)
]


def _moments(v, axes=(1, 2)):
    """(mean, population std) over `axes`."""
    mean = tf.reduce_mean(v, axis=axes, keepdims=True)
    std = tf.sqrt(tf.reduce_mean(tf.square(v - mean), axis=axes))
    return tf.squeeze(mean, axis=axes), std


def hed_moments(rgb):
    """rgb float64 (N, H, W, 3) in [0, 1] → (N, 6): means then stds of the H, E, D densities."""
    od = tf.math.log(tf.maximum(rgb, 1e-6)) / np.log(1e-6)
    stains = tf.maximum(tf.einsum("nhwc,cs->nhws", od, tf.constant(hed_from_rgb, tf.float64)), 0.0)
    mean, std = _moments(stains)
    return tf.concat([mean, std], axis=-1)


def sobel_magnitude(grey):
    """(N, H, W) → skimage.filters.sobel per image: sqrt((gx² + gy²) / 2), kernels [1, 0, -1] ⊗ [1, 2, 1] / 4."""
    g = tf.pad(grey[..., None], [[0, 0], [1, 1], [1, 1], [0, 0]], mode="SYMMETRIC")
    edge, smooth = np.array([1.0, 0.0, -1.0]), np.array([1.0, 2.0, 1.0]) / 4
    kernels = np.stack([np.outer(edge, smooth), np.outer(smooth, edge)], axis=-1)[:, :, None, :]
    d = tf.nn.conv2d(g, tf.constant(kernels, grey.dtype), 1, "VALID")
    return tf.sqrt(tf.reduce_sum(tf.square(d), axis=-1) / 2.0)


def block_mean(grey, factor: int):
    if factor == 1:
        return grey
    h, w = (grey.shape[1] // factor) * factor, (grey.shape[2] // factor) * factor
    return tf.nn.avg_pool2d(grey[:, :h, :w, None], factor, factor, "VALID")[..., 0]


def lbp_uniform(levels):
    """(N, H, W) integer grey levels (float64) → (N, H−2, W−2) uniform LBP codes 0..P+1 of the interior pixels."""
    h, w = levels.shape[1], levels.shape[2]

    def at(dr: int, dc: int):
        return levels[:, 1 + dr : h - 1 + dr, 1 + dc : w - 1 + dc]

    centre, bits = at(0, 0), []
    for rp, cp in _OFFSETS:
        r0, c0 = int(np.floor(rp)), int(np.floor(cp))
        r1, c1 = int(np.ceil(rp)), int(np.ceil(cp))
        dr, dc = rp - r0, cp - c0
        top = (1 - dc) * at(r0, c0) + dc * at(r0, c1)
        bottom = (1 - dc) * at(r1, c0) + dc * at(r1, c1)
        bits.append(tf.cast((1 - dr) * top + dr * bottom - centre >= 0, tf.int32))
    bits = tf.stack(bits, axis=0)
    changes = tf.reduce_sum(tf.abs(bits - tf.roll(bits, -1, axis=0)), axis=0)
    return tf.where(changes <= 2, tf.reduce_sum(bits, axis=0), LBP_P + 1)


def patch_features(images):
    """uint8 (N, H, W, 3) → float64 (N, 20) in FEATURE_NAMES' order."""
    rgb = tf.cast(images, tf.float64) / 255.0
    grey = tf.einsum("nhwc,c->nhw", rgb, tf.constant(GREY, tf.float64))
    gradients = []
    for factor in GRADIENT_SCALES:
        gradients += list(_moments(sobel_magnitude(block_mean(grey, factor))))
    codes = lbp_uniform(tf.round(grey * 255.0))
    # A one-hot sum, not bincount: the same exact counts, and XLA can compile it (export.jit_compile).
    counts = tf.reduce_sum(tf.one_hot(codes, LBP_BINS, dtype=tf.int32), axis=(1, 2))
    histogram = tf.cast(counts, tf.float64) / float(codes.shape[1] * codes.shape[2])
    return tf.concat([hed_moments(rgb), tf.stack(gradients, axis=-1), histogram], axis=-1)


@register
class TextureBaseline(Scorer):
    name = "texture_baseline"
    channels = FEATURE_NAMES
    definition = "20 colour and texture statistics of each patch (HED, Sobel at 2 scales, uniform LBP), on its pixels"
    histogram_range = (0.0, 1.0)
    ridge = 1e-3  # the LBP bins sum to one, so their covariance is singular without it
    directions = None  # colour, texture and LBP statistics are anomalous on either side

    def features(self, views: Views):
        return per_patch(patch_features(views.images), int(self.trained.patch_size_px))
