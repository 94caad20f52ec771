"""The one mapping between stored uint8 pixels and the networks' [-1, 1] range (x / 127.5 − 1, as the original)."""

from __future__ import annotations

import numpy as np

SCALE = np.float32(1 / 127.5)


def to_unit(images):
    """uint8 [0, 255] → float32 [-1, 1]; numpy in, numpy out; a TensorFlow tensor in, a tensor out."""
    if isinstance(images, np.ndarray):
        return images.astype(np.float32) * SCALE - np.float32(1)
    import tensorflow as tf

    return tf.cast(images, tf.float32) * SCALE - 1.0


def to_unit_by_division(images):
    """uint8 → float32 [-1, 1] as training has always computed it: a true division by 127.5.

    Differs from `to_unit` in the last bit for 111 of the 256 values; training keeps it so that trained weights stay
    bit-identical, while calibration and serving use `to_unit` (which compiled graphs reproduce exactly).
    """
    if isinstance(images, np.ndarray):
        return images.astype(np.float32) / 127.5 - 1.0
    import tensorflow as tf

    return tf.cast(images, tf.float32) / 127.5 - 1.0


def to_uint8_float(x):
    """[-1, 1] → [0, 255] float32, clipped, not rounded (for averaging before the final rounding)."""
    if isinstance(x, np.ndarray):
        return np.clip((x.astype(np.float32) + 1) * 127.5, 0, 255).astype(np.float32)
    import tensorflow as tf

    return tf.clip_by_value((tf.cast(x, tf.float32) + 1.0) * 127.5, 0.0, 255.0)


def to_uint8(x):
    """[-1, 1] → uint8 [0, 255], clipped and rounded half to even (numpy and TensorFlow round alike)."""
    if isinstance(x, np.ndarray):
        return np.rint(to_uint8_float(x)).astype(np.uint8)
    import tensorflow as tf

    return tf.cast(tf.round(to_uint8_float(x)), tf.uint8)
