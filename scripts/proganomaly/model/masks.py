"""GANomaly context masking of the generator's input, vectorised over the batch and drawn from stateless RNG.

Block areas follow the original: m = int(r²·p), then blocks of area a = min(max(1, m // 2), m) until m is used up.
Each block is an h×w rectangle (h = max(int(√a'), 1) rows, w = a' // h columns, a' = a + U_int[-shift, shift))
whose corner is drawn uniformly in [0, r) per axis and pulled back inside the image. Fixed quirks: h lies along rows
and w along columns, and a pixel covered by several blocks counts as masked (the union, not "exactly one").
"""

from __future__ import annotations

import math

import tensorflow as tf


def block_areas(resolution: int, percent: float) -> list[int]:
    """Areas of the mask blocks at a resolution, largest first ([] when nothing is masked)."""
    m = int(resolution * resolution * percent)
    areas = []
    while m > 0:
        a = min(max(1, m // 2), m)
        areas.append(a)
        m -= a
    return areas


def _rectangles(n: int, size: int, area: int, shift: int, seed):
    """(top, left, height, width) int32 tensors of shape (n,) for one block across the batch."""
    s = tf.random.split(seed, 3)
    a = tf.fill((n,), area)
    if shift > 0:
        a = a + tf.random.stateless_uniform((n,), s[0], minval=-shift, maxval=shift, dtype=tf.int32)
    a = tf.clip_by_value(a, 1, size * size)
    h = tf.maximum(tf.cast(tf.sqrt(tf.cast(a, tf.float32)), tf.int32), 1)
    h = tf.minimum(h, size)
    w = tf.clip_by_value(a // h, 1, size)
    start = tf.random.stateless_uniform((2, n), s[1], minval=0, maxval=size, dtype=tf.int32)
    top = start[0] + tf.minimum(0, size - (start[0] + h))
    left = start[1] + tf.minimum(0, size - (start[1] + w))
    return top, left, h, w, s[2]


def _inside(size: int, top, left, h, w):
    """(n, size, size) bool: the rectangle's pixels."""
    idx = tf.range(size)[None, :]
    rows = (idx >= top[:, None]) & (idx < (top + h)[:, None])
    cols = (idx >= left[:, None]) & (idx < (left + w)[:, None])
    return rows[:, :, None] & cols[:, None, :]


def _shuffle_within(x, inside, seed):
    """Permute each image's pixels inside its rectangle, leaving the rest in place.

    Rectangle pixels sorted by raster order (destinations) are paired with the same pixels sorted by a random key
    (sources); outside pixels sort after them in raster order in both lists, so they map to themselves.
    """
    n, hh, ww, c = x.shape
    n = tf.shape(x)[0] if n is None else n
    hw = hh * ww
    flat_in = tf.reshape(inside, (n, hw))
    raster = tf.cast(tf.range(hw), tf.float32)[None, :] / hw
    outside = 1.0 - tf.cast(flat_in, tf.float32)
    key = tf.random.stateless_uniform((n, hw), seed)
    dst = tf.argsort(2.0 * outside + raster, axis=1, stable=True)
    src = tf.argsort(2.0 * outside + tf.where(flat_in, key, raster), axis=1, stable=True)
    perm = tf.gather(src, tf.argsort(dst, axis=1), batch_dims=1)  # out[p] = x[perm[p]]
    return tf.reshape(tf.gather(tf.reshape(x, (n, hw, c)), perm, batch_dims=1), tf.shape(x))


def _shuffle_fixed_size(x, top, left, h: int, w: int, seed):
    """The same permutation-within-rectangle for rectangles of one static size: only the h·w block pixels are
    gathered, permuted (argsort of h·w random keys) and mapped back, instead of sorting every image's H·W pixels."""
    n, size, _, c = x.shape
    n = tf.shape(x)[0] if n is None else n
    rows = top[:, None] + tf.range(h)[None, :]
    cols = left[:, None] + tf.range(w)[None, :]
    block = tf.gather(tf.gather(x, rows, axis=1, batch_dims=1), cols, axis=2, batch_dims=1)  # (n, h, w, c)
    perm = tf.argsort(tf.random.stateless_uniform((n, h * w), seed), axis=1)
    block = tf.reshape(tf.gather(tf.reshape(block, (n, h * w, c)), perm, batch_dims=1), (n, h, w, c))
    # back to image coordinates: pixel (r, c) inside the rectangle reads block[r - top, c - left]
    rr = tf.clip_by_value(tf.range(size)[None, :] - top[:, None], 0, h - 1)
    cc = tf.clip_by_value(tf.range(size)[None, :] - left[:, None], 0, w - 1)
    return tf.gather(tf.gather(block, rr, axis=1, batch_dims=1), cc, axis=2, batch_dims=1)


def mask_images(x: tf.Tensor, seed, *, percent: float, shift: int = 0, fill: str = "shuffle"):
    """Masked copy of x (N, r, r, C) and the (N, r, r) bool mask; seed is a stateless RNG seed (2 int32/int64)."""
    size = x.shape[1]
    if x.shape[2] != size:
        raise ValueError(f"masking expects square images, got {x.shape}")
    if fill not in ("shuffle", "dead"):
        raise ValueError(f"model.mask.fill must be shuffle or dead, got {fill!r}")
    n = tf.shape(x)[0]
    areas = block_areas(size, percent)
    mask = tf.zeros((n, size, size), tf.bool)
    out = x
    seeds = tf.random.split(tf.cast(seed, tf.int64), max(len(areas), 1))
    for k, area in enumerate(areas):
        top, left, h, w, fill_seed = _rectangles(n, size, area, shift, seeds[k])
        inside = _inside(size, top, left, h, w)
        mask = mask | inside
        if fill == "shuffle" and area > 1:  # a one-pixel block permutes to itself
            if shift == 0:
                hs = max(int(math.sqrt(area)), 1)
                shuffled = _shuffle_fixed_size(x, top, left, min(hs, size), min(max(area // hs, 1), size), fill_seed)
            else:
                shuffled = _shuffle_within(x, inside, fill_seed)
            # Each block permutes the unmasked image's pixels; where blocks overlap the later block's values win.
            out = tf.where(inside[..., None], shuffled, out)
    if fill == "dead":
        out = tf.where(mask[..., None], tf.constant(-1.0, x.dtype), x)
    return out, mask
