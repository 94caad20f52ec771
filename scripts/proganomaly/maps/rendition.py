"""uint16 renditions of float maps, for viewers that do not read 32-bit float samples (OpenSlide and its users).

A rendition stores round(value / scale) clipped to 0..65535, NaN as 0, so value ≈ count × scale. Fractions in [0, 1]
(flags, kde) get the fixed scale 1/65535, comparable across slides; unbounded maps (d², anomaly) get their own
maximum / 65535, recorded in maps.json and in the file's OME description.
"""

from __future__ import annotations

import numpy as np

FULL = 65535


def slide_scale(array, fraction: bool, band_rows: int = 1024) -> float:
    """Value of one count: 1/65535 for a [0, 1] fraction, else the map's finite maximum / 65535 (band by band)."""
    if fraction:
        return 1.0 / FULL
    hi = 0.0
    for r0 in range(0, array.shape[0], band_rows):
        band = np.asarray(array[r0 : r0 + band_rows], np.float64)
        finite = band[np.isfinite(band)]
        if finite.size:
            hi = max(hi, float(finite.max()))
    return hi / FULL if hi > 0 else 1.0 / FULL


class Quantised:
    """A lazy uint16 view of a float array-like: what the pyramid writer reads tile by tile."""

    def __init__(self, array, scale: float):
        self.array, self.scale = array, scale
        self.shape, self.dtype = tuple(array.shape), np.dtype(np.uint16)

    def __getitem__(self, key) -> np.ndarray:
        values = np.asarray(self.array[key], np.float64) / self.scale
        return np.clip(np.nan_to_num(np.rint(values), nan=0.0), 0, FULL).astype(np.uint16)
