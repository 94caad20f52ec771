"""Context inpainting at inference (RIAD's disjoint masks, on the context encoder GANomaly is trained as).

The patch is cut into a grid of `block_px` squares; a seeded permutation deals them round-robin into `masks` groups,
so the K masks are complementary: together they hide every pixel exactly once. Each mask's hidden blocks are filled
as training fills them (`model.mask.fill`: dead pixels at −1, or the block's own pixels permuted, here by one fixed
seeded permutation so the fill is deterministic), the generator runs on all K masked copies in one batch, and each
pixel takes its value from the pass that hid it. The features are |x − x̃| per RGB channel of that composite x̃,
which is also served as the reconstruction. Cost: K generator passes per patch.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from proganomaly.scoring.base import Scorer, ScorerError, Views, register


def block_groups(size: int, block_px: int, masks: int, seed: int) -> np.ndarray:
    """(size/block_px, size/block_px) int: the mask (0..masks-1) that hides each block, balanced and seeded."""
    if size % block_px:
        raise ScorerError(f"scoring.inpainting.block_px {block_px} does not divide the {size} px patch")
    n = (size // block_px) ** 2
    if n < masks:
        raise ScorerError(f"scoring.inpainting.masks {masks} exceeds the {n} blocks of {block_px} px in {size} px")
    group = np.empty(n, np.int64)
    group[np.random.default_rng(seed).permutation(n)] = np.arange(n) % masks
    return group.reshape(size // block_px, size // block_px)


def pixel_masks(size: int, block_px: int, masks: int, seed: int) -> np.ndarray:
    """(masks, size, size) bool, every pixel True in exactly one mask."""
    groups = np.kron(block_groups(size, block_px, masks, seed), np.ones((block_px, block_px), np.int64))
    return groups[None] == np.arange(masks)[:, None, None]


def shuffle_sources(size: int, block_px: int, seed: int) -> np.ndarray:
    """(size·size,) flat source index of each pixel: its block's pixels permuted by one fixed seeded permutation."""
    rng = np.random.default_rng([seed, 1])
    src = np.arange(size * size).reshape(size, size)
    out = src.copy()
    for y in range(0, size, block_px):
        for x in range(0, size, block_px):
            block = src[y : y + block_px, x : x + block_px]
            out[y : y + block_px, x : x + block_px] = rng.permutation(block.ravel()).reshape(block.shape)
    return out.ravel()


class Inpainter:
    """The composite inpainting of a batch for given settings; shared by the scorers that read it."""

    def __init__(self, trained, settings: dict):
        opts, size = settings["inpainting"], int(trained.patch_size_px)
        self.key = ("inpainting", opts["block_px"], opts["masks"], settings["seed"])
        self.masks = pixel_masks(size, opts["block_px"], opts["masks"], settings["seed"])
        nets = getattr(trained, "nets", None)
        self.fill = nets.cfg.mask.fill if nets is not None else "dead"
        self.sources = shuffle_sources(size, opts["block_px"], settings["seed"])
        self.trained = trained

    def masked(self, x):
        """(K·N, S, S, 3): the K masked copies of the batch, mask-major."""
        k, s = self.masks.shape[0], self.masks.shape[1]
        if self.fill == "dead":
            filled = tf.fill(tf.shape(x), tf.constant(-1.0, x.dtype))
        else:
            flat = tf.reshape(x, (-1, s * s, 3))
            filled = tf.reshape(tf.gather(flat, tf.constant(self.sources), axis=1), tf.shape(x))
        hidden = tf.constant(self.masks)[:, None, :, :, None]  # (K, 1, S, S, 1)
        copies = tf.where(hidden, filled[None], x[None])
        return tf.reshape(copies, (k * tf.shape(x)[0], s, s, 3))

    def composite(self, views: Views):
        def run():
            k, s = self.masks.shape[0], self.masks.shape[1]
            recon = tf.cast(self.trained.reconstruct(self.masked(views.x)), tf.float32)
            recon = tf.reshape(recon, (k, -1, s, s, 3))
            weights = tf.constant(self.masks.astype(np.float32))[:, None, :, :, None]
            return tf.reduce_sum(recon * weights, axis=0)

        return views.memo(self.key, run)


@register
class Inpainting(Scorer):
    name = "inpainting"
    channels = ("R", "G", "B")
    definition = (
        "e = |x - x~| per pixel and RGB channel, x~ = each pixel's reconstruction from the pass whose complementary "
        "block mask hid it (scoring.inpainting)"
    )
    histogram_range = (0.0, 2.0)
    ridge = 0.0
    directions = (1, 1, 1)  # error magnitudes
    setting_keys = ("seed", "inpainting")

    def setup(self, settings: dict) -> None:
        self.inpainter = Inpainter(self.trained, settings)

    def features(self, views: Views):
        return tf.abs(views.x - self.inpainter.composite(views))

    def reconstruction(self, views: Views):
        return self.inpainter.composite(views)
