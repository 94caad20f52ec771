"""The device side of `stats`: moments, d² and histogram counts as TensorFlow ops, for the graphs that calibrate and
serve (the tensorflow env). Each has a numpy twin in `stats`; the tests hold them equal."""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from proganomaly.calibration.stats import check_directions


def tf_batch_moments(x):
    """(n, mean, M2) of the rows of a (…, d) tensor, in float64 on the device; merged on the host with `merge`."""
    d = x.shape[-1]
    rows = tf.cast(tf.reshape(x, (-1, d)), tf.float64)
    n = tf.shape(rows, out_type=tf.int64)[0]
    mean = tf.reduce_mean(rows, axis=0)
    c = rows - mean
    return n, mean, tf.matmul(c, c, transpose_a=True)


def tf_mahalanobis_d2(e, mean, precision, directions=None):
    """Squared Mahalanobis distance over the last axis in float32 (what the SavedModel computes and serves), the
    deviations clipped to their anomalous side as `one_sided` does when `directions` are given."""
    y = e - tf.constant(np.asarray(mean, np.float32))
    d = check_directions(directions, int(np.asarray(mean).size))
    if d is not None and d.any():  # all-zero directions leave the graph as it was
        lo, hi = np.where(d > 0, 0.0, -np.inf), np.where(d < 0, 0.0, np.inf)
        y = tf.minimum(tf.maximum(y, tf.constant(lo, tf.float32)), tf.constant(hi, tf.float32))
    p = tf.constant(np.asarray(precision, np.float32))
    # One (pixels, d) × (d, d) matmul instead of matvec's batch of per-pixel d×d products: the same sums, but matvec
    # ran as a BatchMatMul over every pixel and cost ~7× more (about 7 % of a 64 px serving call).
    d = y.shape[-1]
    py = tf.reshape(tf.matmul(tf.reshape(y, (-1, d)), p, transpose_b=True), tf.shape(y))
    return tf.reduce_sum(py * y, axis=-1)


def tf_bin_counts(values, edges: np.ndarray):
    """Counts of `values` in the bins (-inf, e0], (e0, e1], …, (e_last, inf): len(edges) + 1 int64 counts.

    Comparisons are exact (float32 values against float32 edges), so "d² > edge" thresholds can be counted exactly.
    """
    flat = tf.reshape(tf.cast(values, tf.float32), (1, -1))
    seq = tf.constant(np.asarray(edges, np.float32)[None, :])
    idx = tf.reshape(tf.searchsorted(seq, flat, side="left"), (-1,))
    # a segment sum with a constant segment count compiles under XLA, unlike bincount's data-dependent size
    counts = tf.math.unsorted_segment_sum(tf.ones_like(idx), idx, num_segments=len(edges) + 1)
    return tf.cast(counts, tf.int64)
