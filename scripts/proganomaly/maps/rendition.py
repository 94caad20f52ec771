"""uint16 renditions of float maps, for viewers that do not read 32-bit float samples (OpenSlide and its users).

Contract: count 0 means "no data" (the float map's NaN: not scored); a value v is stored as 1 + round(v / scale)
clipped to 1..65535, so v = (count − 1) × scale. Fractions in [0, 1] (flags, kde) get the fixed scale 1/65534
(count 1 = 0.0, 65535 = 1.0), comparable across slides; unbounded maps (d², anomaly) get their own maximum / 65534.
The scale, offset and nodata count are recorded in maps.json and in the file's OME description. Reduced pyramid
levels average only the counts that are not NODATA (see pyramid.downscale2), so edges keep their values.
"""

from __future__ import annotations

import numpy as np

NODATA = 0
OFFSET = 1
FULL = 65535
STEPS = FULL - OFFSET  # counts available for values: 1..65535 hold 0..STEPS × scale


def slide_scale(array, fraction: bool, band_rows: int = 1024) -> float:
    """Value of one count: 1/65534 for a [0, 1] fraction, else the map's finite maximum / 65534 (band by band)."""
    if fraction:
        return 1.0 / STEPS
    hi = 0.0
    for r0 in range(0, array.shape[0], band_rows):
        band = np.asarray(array[r0 : r0 + band_rows], np.float64)
        finite = band[np.isfinite(band)]
        if finite.size:
            hi = max(hi, float(finite.max()))
    return hi / STEPS if hi > 0 else 1.0 / STEPS


def quantise(values: np.ndarray, scale: float) -> np.ndarray:
    """uint16 counts of float values: NaN → NODATA, else OFFSET + round(v / scale) clipped to OFFSET..FULL."""
    v = np.asarray(values, np.float64)
    counts = np.clip(np.rint(np.nan_to_num(v / scale, nan=0.0)), 0, STEPS) + OFFSET
    return np.where(np.isnan(v), NODATA, counts).astype(np.uint16)


def dequantise(counts: np.ndarray, scale: float) -> np.ndarray:
    """The float values of uint16 counts (NaN for NODATA): what a reader of a rendition does."""
    c = np.asarray(counts, np.float64)
    return np.where(c == NODATA, np.nan, (c - OFFSET) * scale)


def description(scale: float) -> str:
    """The rendition contract in words, for the OME description."""
    return f"uint16 rendition: value = (count - {OFFSET}) x {scale!r}; count {NODATA} = no data (not scored)"


class Quantised:
    """A lazy uint16 view of a float array-like: what the pyramid writer reads tile by tile."""

    def __init__(self, array, scale: float):
        self.array, self.scale = array, scale
        self.shape, self.dtype = tuple(array.shape), np.dtype(np.uint16)

    def __getitem__(self, key) -> np.ndarray:
        return quantise(self.array[key], self.scale)
