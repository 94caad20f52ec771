"""Area (box) resampling of uint8 images: exact block means for whole factors, overlap-weighted otherwise."""

from __future__ import annotations

import functools
import math

import numpy as np
import scipy.sparse


@functools.lru_cache(maxsize=32)
def area_weights(n_in: int, n_out: int, scale: float) -> scipy.sparse.csr_matrix:
    """Sparse (n_out × n_in) averaging matrix: output i is the mean of input [i·scale, (i+1)·scale) ∩ [0, n_in).

    Input pixels are weighted by their overlap with the interval, so non-integer scales are exact area averages.
    Cached (every patch of a slide uses the same one); treat the result as read-only.
    """
    starts = np.arange(n_out, dtype=np.float64) * scale
    ends = np.minimum(starts + scale, n_in)
    first = np.floor(starts).astype(np.int64)
    span = math.ceil(scale) + 1
    j = first[:, None] + np.arange(span)[None, :]
    overlap = np.clip(np.minimum(ends[:, None], j + 1) - np.maximum(starts[:, None], j), 0.0, None)
    overlap[j >= n_in] = 0.0
    total = overlap.sum(axis=1, keepdims=True)
    if np.any(total <= 0):
        raise ValueError(f"area_weights: {n_out} outputs at scale {scale} run past {n_in} inputs")
    weights = overlap / total
    rows = np.repeat(np.arange(n_out), span)
    keep = weights.ravel() > 0
    return scipy.sparse.csr_matrix(
        (weights.ravel()[keep], (rows[keep], j.ravel()[keep])), shape=(n_out, n_in), dtype=np.float64
    )


def area_resize(image: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """Area (box) resampling of an (H, W[, C]) uint8 image to (out_h, out_w[, C]), rounded half up to uint8.

    Whole-block factors (the usual case: 2^k) are summed in integers, exactly; other factors use area_weights.
    """
    h, w = image.shape[:2]
    flat = image.reshape(h, w, -1)
    c = flat.shape[2]
    if h % out_h == 0 and w % out_w == 0:
        fy, fx = h // out_h, w // out_w
        # Strided slice sums: several times faster than numpy's reduction over small strided axes.
        wide = flat.astype(np.uint32)
        cols = sum(wide[:, k::fx] for k in range(fx))
        sums = sum(cols[k::fy] for k in range(fy))
        n = fy * fx
        return ((sums + n // 2) // n).astype(np.uint8).reshape((out_h, out_w, *image.shape[2:]))
    wy, wx = area_weights(h, out_h, h / out_h), area_weights(w, out_w, w / out_w)
    # Both products on C-contiguous operands (scipy copies transposed ones, which costs more than the product).
    rows = wy @ flat.reshape(h, w * c).astype(np.float64)  # (out_h, w·c)
    cols = wx @ np.ascontiguousarray(rows.reshape(out_h, w, c).transpose(1, 0, 2)).reshape(w, out_h * c)
    out = cols.reshape(out_w, out_h, c).transpose(1, 0, 2)
    return to_uint8(out.reshape((out_h, out_w, *image.shape[2:])))


def to_uint8(values: np.ndarray) -> np.ndarray:
    """Round half up (as integer block averages do); the epsilon absorbs float error in weights like 1/3."""
    return np.clip(np.floor(values + (0.5 + 1e-6)), 0, 255).astype(np.uint8)


def as_rgb(seg: np.ndarray) -> np.ndarray:
    """A decoded (rows, cols, samples) block as RGB uint8; alpha is composited over white like a glass slide."""
    if seg.shape[-1] == 1:
        return np.repeat(seg, 3, axis=-1)
    if seg.shape[-1] == 4:
        alpha = seg[..., 3:4] / 255.0
        return to_uint8(seg[..., :3] * alpha + 255.0 * (1.0 - alpha))
    return np.ascontiguousarray(seg[..., :3])
