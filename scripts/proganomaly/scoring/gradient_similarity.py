"""A structural error: multi-scale gradient-magnitude similarity (MSGMS) between x and its reconstruction.

As RIAD (Zavrtanik et al. 2021) scores: grey images (channel mean, mapped to [0, 1]), a 3×3 median filter, Prewitt
gradient magnitudes g, and per pixel GMS = (2 g_x g_r + c) / (g_x² + g_r² + c), c = 0.0026, at `scales` scales (2×2
average pooling between them); each map is upsampled bilinearly (half-pixel centres) to the patch and the feature is
1 − GMS, averaged over scales (or one channel per scale). Borders are mirrored (reflect, edge pixel not repeated).
RIAD's final 21×21 mean filter is left to the stitching and KDE stages. The reconstruction is G(x) (1 pass) or the
inpainting composite (`source: inpainting`, K passes).
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from proganomaly.scoring.base import Scorer, ScorerError, Views, register
from proganomaly.scoring.inpainting import Inpainter

C = 0.0026
_PREWITT_X = np.array([[-1.0, 0.0, 1.0]] * 3) / 3
_PREWITT = np.stack([_PREWITT_X, _PREWITT_X.T[::-1]], axis=-1)[:, :, None, :]  # (3, 3, 1, 2): d/dx, d/dy


def _reflect(g):
    return tf.pad(g, [[0, 0], [1, 1], [1, 1], [0, 0]], mode="REFLECT")


def median3(g):
    """3×3 median of (N, H, W, 1), borders reflected."""
    patches = tf.image.extract_patches(_reflect(g), [1, 3, 3, 1], [1, 1, 1, 1], [1, 1, 1, 1], "VALID")
    return tf.math.top_k(patches, k=5).values[..., 4:5]


def gradient_magnitude(g):
    d = tf.nn.conv2d(_reflect(g), tf.constant(_PREWITT, g.dtype), 1, "VALID")
    return tf.sqrt(tf.reduce_sum(tf.square(d), axis=-1, keepdims=True))


def msgms_maps(x, y, scales: int, median: bool = True):
    """(N, S, S, scales): 1 − GMS of images x, y in [-1, 1] at each scale, upsampled to S."""
    size = x.shape[1]
    a = (tf.reduce_mean(x, axis=-1, keepdims=True) + 1.0) / 2.0
    b = (tf.reduce_mean(y, axis=-1, keepdims=True) + 1.0) / 2.0
    out = []
    for s in range(scales):
        if s:
            a, b = tf.nn.avg_pool2d(a, 2, 2, "VALID"), tf.nn.avg_pool2d(b, 2, 2, "VALID")
        ga = gradient_magnitude(median3(a) if median else a)
        gb = gradient_magnitude(median3(b) if median else b)
        gms = (2.0 * ga * gb + C) / (ga * ga + gb * gb + C)
        out.append(tf.image.resize(1.0 - gms, (size, size), method="bilinear") if s else 1.0 - gms)
    return tf.concat(out, axis=-1)


@register
class GradientSimilarity(Scorer):
    name = "gradient_similarity"
    definition = "1 - GMS(x, reconstruction) per pixel (RIAD's MSGMS; scoring.gradient_similarity)"
    histogram_range = (0.0, 1.0)

    def select_settings(self, full: dict) -> dict:
        own = {"gradient_similarity": full["gradient_similarity"]}
        if full["gradient_similarity"]["source"] == "inpainting":
            own.update(seed=full["seed"], inpainting=full["inpainting"])
        return own

    def setup(self, settings: dict) -> None:
        opts = settings["gradient_similarity"]
        self.scales, self.median, self.per_scale = opts["scales"], opts["median"], opts["per_scale"]
        size = int(self.trained.patch_size_px)
        if size >> (self.scales - 1) < 2:
            raise ScorerError(f"scoring.gradient_similarity.scales {self.scales} is too many for {size} px patches")
        self.channels = tuple(f"1-GMS/{2**s}" for s in range(self.scales)) if self.per_scale else ("1-MSGMS",)
        # The feature is 1 − GMS, a dissimilarity: only a larger value (less similar gradients) is anomalous.
        self.directions = (1,) * len(self.channels)
        self.inpainter = Inpainter(self.trained, settings) if opts["source"] == "inpainting" else None

    def reconstruction(self, views: Views):
        return views.reconstruction if self.inpainter is None else self.inpainter.composite(views)

    def features(self, views: Views):
        maps = msgms_maps(views.x, self.reconstruction(views), self.scales, self.median)
        return maps if self.per_scale else tf.reduce_mean(maps, axis=-1, keepdims=True)
