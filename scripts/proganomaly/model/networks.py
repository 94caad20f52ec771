"""The progressive building blocks: the vector→image decoder (Gd, Berg's G) and the image→vector encoders (D, E, Ge).

Which of them a model holds, and how they are wired, is its architecture's business (`model.architectures`).

Every network holds the layers of all blocks; a growth phase is just which of them a call wires in, selected by the
Python ints ``block`` and ``transition`` (so each phase traces its own graph) and the tensor ``alpha``.

Channel plan, with f = model.filters, k = model.kernel_sizes and P = f[0][0]:
  decoder  projection z → 4×4×P; base conv k[0][0]: P(+skip)→f[0][0], conv k[0][1]: →f[0][1];
           block b: conv k[b][0]: f[b-1][1](+skip)→f[b][0], conv k[b][1]: →f[b][1]; toRGB[b]: f[b][1]→3.
  encoder  fromRGB[b]: 3→f[b][1]; block b: conv k[b][1]: f[b][1]→f[b][0], conv k[b][0]: →f[b-1][1], avg-pool;
           base: [minibatch stddev] conv k[0][1]: →f[0][0], a true VALID conv k[0][0]: →P, flatten, dense.
For the paper's filter lists this is the original's plan exactly; it also stays consistent when f[b][0] ≠ f[b][1].
"""

from __future__ import annotations

import dataclasses

import tensorflow as tf

from proganomaly.config import ModelConfig
from proganomaly.model import layers as L


@dataclasses.dataclass(frozen=True)
class Phase:
    """One growth phase: g = 0 is the 4×4 base, odd g fades block (g+1)//2 in, even g > 0 is stable at that block."""

    index: int

    @property
    def block(self) -> int:
        return (self.index + 1) // 2

    @property
    def transition(self) -> bool:
        return self.index % 2 == 1

    @property
    def resolution(self) -> int:
        return 4 * 2**self.block

    @property
    def name(self) -> str:
        return f"{self.resolution}px-{'fade' if self.transition else 'stable'}"


def num_blocks(patch_size_px: int) -> int:
    """Blocks B such that the last works at patch_size_px = 4·2^(B-1)."""
    b = max(int(patch_size_px).bit_length() - 2, 1)
    if 4 * 2 ** (b - 1) != patch_size_px:
        raise ValueError(f"patch size {patch_size_px} is not 4 times a power of two (tiling.patch_size_px)")
    return b


def phases(blocks: int) -> list[Phase]:
    return [Phase(g) for g in range(2 * blocks - 1)]


def _seed(seed: int, net: int, layer: int) -> tuple[int, int]:
    return (int(seed), net * 100003 + layer)


class Decoder(tf.Module):
    """z (N, latent) [+ skips] → image (N, r, r, 3) of the phase's resolution."""

    def __init__(self, cfg: ModelConfig, blocks: int, skip_channels: list[int], *, seed: int, net: int, name=None):
        super().__init__(name=name)
        self.cfg, self.blocks, self.skip_channels = cfg, blocks, skip_channels
        f, k, eq = cfg.filters, cfg.kernel_sizes, cfg.equalized_learning_rate
        self.p = f[0][0]
        n = iter(range(10_000))
        self.projection = L.Dense(cfg.latent_size, 16 * self.p, seed=_seed(seed, net, next(n)), equalized=eq)
        self.convs, self.to_rgb = [], []
        for b in range(blocks):
            c_in = (self.p if b == 0 else f[b - 1][1]) + skip_channels[b]
            self.convs.append(
                [
                    L.Conv2D(c_in, f[b][0], k[b][0], seed=_seed(seed, net, next(n)), equalized=eq),
                    L.Conv2D(f[b][0], f[b][1], k[b][1], seed=_seed(seed, net, next(n)), equalized=eq),
                ]
            )
            self.to_rgb.append(L.Conv2D(f[b][1], 3, 1, seed=_seed(seed, net, next(n)), equalized=eq))

    def _norm(self, x):
        return L.pixel_norm(x, self.cfg.pixel_norm_epsilon) if self.cfg.use_pixel_norm else x

    def _block(self, b: int, x, skips):
        if skips is not None and self.skip_channels[b]:
            x = tf.concat([x, skips[b]], axis=-1)
        for conv in self.convs[b]:
            x = self._norm(L.leaky_relu(conv(x), self.cfg.leaky_relu_alpha))
        return x

    def _rgb(self, b: int, x):
        y = self.to_rgb[b](x)
        return tf.tanh(y) if self.cfg.final_activation == "tanh" else y

    def __call__(self, z, block: int, transition: bool, alpha=1.0, skips=None):
        cfg = self.cfg
        x = L.pixel_norm(z, cfg.pixel_norm_epsilon) if cfg.normalize_latents else z
        x = L.leaky_relu(self.projection(x), cfg.leaky_relu_alpha)
        x = self._norm(tf.reshape(x, (-1, 4, 4, self.p)))
        x = self._block(0, x, skips)
        last = block - 1 if transition else block
        for b in range(1, last + 1):
            x = self._block(b, L.upsample2x(x), skips)
        if not transition:
            return self._rgb(block, x)
        # toRGB is 1×1 and upsampling is nearest, so toRGB-then-upsample equals the original's upsample-then-toRGB.
        old = L.upsample2x(self._rgb(block - 1, x))
        new = self._rgb(block, self._block(block, L.upsample2x(x), skips))
        return L.fade_in(alpha, new, old)


class ImageEncoder(tf.Module):
    """Image (N, r, r, 3) → logits (N, units), plus the per-block pre-pool activations (U-Net skips)."""

    def __init__(self, cfg: ModelConfig, blocks: int, units: int, *, stddev: bool, seed: int, net: int, name=None):
        super().__init__(name=name)
        self.cfg, self.blocks, self.stddev = cfg, blocks, stddev
        f, k, eq = cfg.filters, cfg.kernel_sizes, cfg.equalized_learning_rate
        n = iter(range(10_000))
        self.from_rgb, self.convs = [], []
        for b in range(blocks):
            self.from_rgb.append(L.Conv2D(3, f[b][1], 1, seed=_seed(seed, net, next(n)), equalized=eq))
            if b == 0:
                c_in = f[0][1] + (1 if stddev else 0)
                convs = [
                    L.Conv2D(c_in, f[0][0], k[0][1], seed=_seed(seed, net, next(n)), equalized=eq),
                    L.Conv2D(f[0][0], f[0][0], k[0][0], seed=_seed(seed, net, next(n)), equalized=eq, padding="VALID"),
                ]
            else:
                convs = [
                    L.Conv2D(f[b][1], f[b][0], k[b][1], seed=_seed(seed, net, next(n)), equalized=eq),
                    L.Conv2D(f[b][0], f[b - 1][1], k[b][0], seed=_seed(seed, net, next(n)), equalized=eq),
                ]
            self.convs.append(convs)
        side = 4 - k[0][0] + 1
        if side < 1:
            raise ValueError(f"model.kernel_sizes[0][0]={k[0][0]} is larger than the 4×4 base")
        self.logits = L.Dense(side * side * f[0][0], units, seed=_seed(seed, net, next(n)), equalized=eq)

    def _act(self, x):
        return L.leaky_relu(x, self.cfg.leaky_relu_alpha)

    def _block(self, b: int, x):
        for conv in self.convs[b]:
            x = self._act(conv(x))
        return x

    def trunk(self, x, block: int, transition: bool, alpha=1.0):
        """Every block above the base: the 4×4 activation that enters the base, and the per-block skips so far."""
        skips = [None] * (block + 1)
        h = self._act(self.from_rgb[block](x))
        if block > 0:
            h = skips[block] = self._block(block, h)
            h = L.downsample2x(h)
            if transition:
                old = self._act(self.from_rgb[block - 1](L.downsample2x(x)))
                h = L.fade_in(alpha, h, old)
            for b in range(block - 1, 0, -1):
                h = skips[b] = self._block(b, h)
                h = L.downsample2x(h)
        return h, skips

    def stddev_channel(self, h):
        """The minibatch-stddev channel training appends to the base input h: (N, 4, 4, 1), batch-dependent."""
        ms = self.cfg.minibatch_stddev
        return L.minibatch_stddev(h, ms.group_size, ms.averaging)[..., -1:]

    def __call__(self, x, block: int, transition: bool, alpha=1.0, stddev_value=None):
        """(logits, skips). With `stddev_value` (a scalar) the stddev channel is that constant instead of the batch's
        statistic, so each example's output depends on that example alone (inference; training passes None)."""
        h, skips = self.trunk(x, block, transition, alpha)
        if self.stddev:
            if stddev_value is None:
                h = tf.concat([h, self.stddev_channel(h)], axis=-1)
            else:
                h = tf.concat([h, tf.fill(tf.concat([tf.shape(h)[:3], [1]], 0), tf.cast(stddev_value, h.dtype))], -1)
        h = skips[0] = self._act(self.convs[0][0](h))
        h = self._act(self.convs[0][1](h))
        h = tf.reshape(h, (-1, h.shape[1] * h.shape[2] * h.shape[3]))
        return tf.cast(self.logits(h), tf.float32), skips
