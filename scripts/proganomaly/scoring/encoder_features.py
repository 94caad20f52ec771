"""Feature-space novelty, PaDiM-style, with the model's own networks instead of an ImageNet backbone.

The activations of the network that encodes x (GANomaly's Ge, Berg's E) or of the critic, at the configured depths
below the input resolution (0 = the patch's own resolution, 1 = half, …), are upsampled to pixels (nearest or
bilinear) and concatenated; a fixed seeded subset of `channels` of them is kept (PaDiM's random dimension
reduction). The shared Gaussian then gives each pixel the Mahalanobis distance of its feature vector (one global
Gaussian, not PaDiM's per-location one: patches are tiled anywhere on the slide, so a location has no meaning).
Cost: one encoder (or critic) pass per patch, plus G(x) for the served reconstruction (for GANomaly Ge is G's
first half, which the trace shares when the features are Ge's).
"""

from __future__ import annotations

import itertools

import numpy as np
import tensorflow as tf

from proganomaly.scoring.base import Scorer, ScorerError, Views, register
from proganomaly.scoring.critic import CriticView


def layer_channels(net, block: int, depth: int) -> int:
    """Channels of the per-block activation `depth` below the input (the last conv of that block, or the base's
    first conv at the 4×4 base)."""
    b = block - depth
    return int(net.convs[b][-1 if b else 0].kernel.shape[-1])


def channel_subset(counts: list[int], keep: int, seed: int) -> list[np.ndarray]:
    """Per layer, the sorted indices of its kept channels: `keep` of all, chosen once by `seed` (0: all)."""
    total = sum(counts)
    chosen = (
        np.arange(total)
        if not keep or keep >= total
        else np.sort(np.random.default_rng([seed, 2]).choice(total, keep, replace=False))
    )
    starts = np.cumsum([0, *counts])
    return [chosen[(chosen >= a) & (chosen < b)] - a for a, b in itertools.pairwise(starts)]


@register
class EncoderFeatures(Scorer):
    name = "encoder_features"
    definition = "a seeded subset of the encoder's (or critic's) activations per location, upsampled to pixels"
    histogram_range = (-5.0, 5.0)
    setting_keys = ("seed", "encoder_features")
    directions = None  # activations: unusual on either side

    def setup(self, settings: dict) -> None:
        opts, trained = settings["encoder_features"], self.trained
        self.block, self.size, self.upsample = trained.block, int(trained.patch_size_px), opts["upsample"]
        self.depths = list(opts["layers"])
        if max(self.depths) > self.block:
            raise ScorerError(
                f"scoring.encoder_features.layers {self.depths}: a {self.size} px model has depths 0..{self.block}"
            )
        self.critic_view = CriticView(trained, self.name) if opts["network"] == "critic" else None
        net = self.critic_view.critic if self.critic_view else trained.nets.image_encoder()
        self.net, self.needs_fit = net, bool(self.critic_view and self.critic_view.needs_fit)
        counts = [layer_channels(net, self.block, d) for d in self.depths]
        self.subsets = channel_subset(counts, opts["channels"], settings["seed"])
        self.channels = tuple(
            f"{opts['network']}{d}:{c}" for d, idx in zip(self.depths, self.subsets, strict=True) for c in idx
        )

    def fit(self, batches) -> None:
        self.state = self.critic_view.fit(batches)

    def activations(self, views: Views) -> list:
        """The network's per-block activations of the batch, indexed by block."""
        if self.critic_view:
            return self.critic_view.outputs(views, self.state)[1]
        return views.memo(("image_encoder", id(self.net)), lambda: self.net(views.x, self.block, False))[1]

    def features(self, views: Views):
        skips, out = self.activations(views), []
        for depth, idx in zip(self.depths, self.subsets, strict=True):
            if not len(idx):
                continue
            a = tf.gather(tf.cast(skips[self.block - depth], tf.float32), tf.constant(idx), axis=-1)
            if depth:
                method = "nearest" if self.upsample == "nearest" else "bilinear"
                a = tf.image.resize(a, (self.size, self.size), method=method)
            out.append(a)
        return tf.concat(out, axis=-1)
