"""Building blocks of the progressive GAN: equalised-learning-rate dense/conv, pixel norm, minibatch stddev, fade-in.

Layers are small ``tf.Module``s holding float32 variables; the forward pass casts them to the input's dtype so that
a bfloat16 compute path keeps float32 master weights. Initial weights come from stateless RNG keyed on a seed, so the
same seed always builds the same network.
"""

from __future__ import annotations

import math

import tensorflow as tf


def _var(initial, name: str) -> tf.Variable:
    # ONLY_FIRST_REPLICA: under MirroredStrategy every replica applies the same all-reduced update.
    return tf.Variable(initial, name=name, aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)


def _normal(shape, seed: tuple[int, int], stddev: float = 1.0) -> tf.Tensor:
    return tf.random.stateless_normal(shape, seed=tf.constant(seed, tf.int64), stddev=stddev, dtype=tf.float32)


class Dense(tf.Module):
    """Fully connected layer. With ``equalized`` the kernel is N(0, 1) and scaled by √(2/fan_in) at run time."""

    def __init__(self, in_features: int, units: int, *, seed: tuple[int, int], equalized: bool = True, name=None):
        super().__init__(name=name)
        self.fan_in = int(in_features)
        self.scale = math.sqrt(2.0 / self.fan_in) if equalized else 1.0
        std = 1.0 if equalized else math.sqrt(2.0 / self.fan_in)  # he_normal when the scale is baked in
        self.kernel = _var(_normal((in_features, units), seed, std), "kernel")
        self.bias = _var(tf.zeros((units,)), "bias")

    def __call__(self, x: tf.Tensor) -> tf.Tensor:
        w = tf.cast(self.kernel * self.scale, x.dtype)
        return tf.matmul(x, w) + tf.cast(self.bias, x.dtype)


class Conv2D(tf.Module):
    """2-D convolution (NHWC, stride 1) with the same equalised-learning-rate scaling; padding "SAME" or "VALID"."""

    def __init__(
        self,
        in_channels: int,
        filters: int,
        kernel_size: int,
        *,
        seed: tuple[int, int],
        equalized: bool = True,
        padding: str = "SAME",
        name=None,
    ):
        super().__init__(name=name)
        k = int(kernel_size)
        self.fan_in = k * k * int(in_channels)
        self.scale = math.sqrt(2.0 / self.fan_in) if equalized else 1.0
        std = 1.0 if equalized else math.sqrt(2.0 / self.fan_in)
        self.padding = padding
        self.kernel = _var(_normal((k, k, in_channels, filters), seed, std), "kernel")
        self.bias = _var(tf.zeros((filters,)), "bias")

    def __call__(self, x: tf.Tensor) -> tf.Tensor:
        w = tf.cast(self.kernel * self.scale, x.dtype)
        y = tf.nn.conv2d(x, w, strides=1, padding=self.padding)
        return tf.nn.bias_add(y, tf.cast(self.bias, x.dtype))


def pixel_norm(x: tf.Tensor, epsilon: float = 1e-8) -> tf.Tensor:
    """x · rsqrt(mean over the last axis of x² + ε); used on feature maps and on the latent vector."""
    return x * tf.math.rsqrt(tf.reduce_mean(tf.square(x), axis=-1, keepdims=True) + epsilon)


def leaky_relu(x: tf.Tensor, alpha: float) -> tf.Tensor:
    # tf.nn.leaky_relu lets oneDNN fuse conv+bias+activation (max(x, αx) measured 2× slower at 16 px). In the fused
    # 64 px step grappler's remapper fails on it ("fanout ... exist for missing node"), see the training benchmark.
    return tf.nn.leaky_relu(x, alpha=alpha)


def minibatch_stddev(x: tf.Tensor, group_size: int = 4, averaging: bool = True) -> tf.Tensor:
    """Append the per-group standard deviation of the batch as one extra channel (Karras et al.).

    Example i belongs to group i mod (N/G) with G = min(group_size, N); when G does not divide N the whole batch is
    one group. Works with a dynamic batch size (inference signatures have none).
    """
    _, h, w, c = x.shape
    group_size = 4 if group_size <= 0 else int(group_size)
    n = tf.shape(x)[0]
    g = tf.minimum(group_size, n)
    g = tf.where(n % g == 0, g, n)
    xf = tf.cast(x, tf.float32)
    y = tf.reshape(xf, (g, n // g, h, w, c))
    var = tf.reduce_mean(tf.square(y - tf.reduce_mean(y, axis=0, keepdims=True)), axis=0)
    sd = tf.sqrt(var + 1e-8)  # (N/G, H, W, C)
    if averaging:
        sd = tf.reduce_mean(sd, axis=(1, 2, 3), keepdims=True)  # (N/G, 1, 1, 1)
        sd = tf.tile(sd, (g, h, w, 1))
    else:
        sd = tf.tile(tf.reduce_mean(sd, axis=-1, keepdims=True), (g, 1, 1, 1))
    return tf.concat([x, tf.cast(sd, x.dtype)], axis=-1)


def fade_in(alpha, new: tf.Tensor, old: tf.Tensor) -> tf.Tensor:
    """α·new + (1 − α)·old: α = 0 is the old (shrinking) path, α = 1 the new (growing) one."""
    alpha = tf.cast(alpha, new.dtype)
    return alpha * new + (1.0 - alpha) * old


def upsample2x(x: tf.Tensor) -> tf.Tensor:
    """Nearest-neighbour ×2 (a reshape/broadcast, cheaper than tf.image.resize and exactly equal to it)."""
    n, h, w, c = x.shape
    n = tf.shape(x)[0] if n is None else n
    y = tf.reshape(x, (n, h, 1, w, 1, c))
    y = tf.broadcast_to(y, (n, h, 2, w, 2, c))
    return tf.reshape(y, (n, 2 * h, 2 * w, c))


def downsample2x(x: tf.Tensor) -> tf.Tensor:
    """2×2 average pooling, stride 2."""
    return tf.nn.avg_pool2d(x, ksize=2, strides=2, padding="VALID")
