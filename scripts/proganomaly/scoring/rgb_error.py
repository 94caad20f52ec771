"""P-CEAD's score: the RGB reconstruction error |x − G(x)| per pixel and channel."""

from __future__ import annotations

import tensorflow as tf

from proganomaly.scoring.base import Scorer, Views, register


@register
class RgbError(Scorer):
    name = "rgb_error"
    channels = ("R", "G", "B")
    definition = "e = |x - G(x)| per pixel and RGB channel, x = uint8 / 127.5 - 1, G in inference mode"
    # |x − G(x)| of images in [-1, 1] lies in [0, 2] unless the linear output overshoots.
    histogram_range = (0.0, 2.0)
    directions = (1, 1, 1)  # error magnitudes: only a larger error is anomalous

    def features(self, views: Views):
        return tf.abs(views.x - views.reconstruction)
