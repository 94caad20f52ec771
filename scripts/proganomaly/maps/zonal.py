"""Zonal statistics: a map's values inside level-0 polygons (the measurements of predicted polygons)."""

from __future__ import annotations

import math

import numpy as np
import shapely


def mean_inside(values: np.ndarray, geoms, downsample: float) -> list[float]:
    """Mean of the finite map pixels whose centres ((c+½)·ds, (r+½)·ds) lie in each geometry (NaN if none).

    Only the pixels of each geometry's bounding box are tested, so the cost follows the polygons, not the map.
    """
    h, w = values.shape[:2]
    means = []
    for geom in geoms:
        if geom.is_empty:
            means.append(float("nan"))
            continue
        minx, miny, maxx, maxy = geom.bounds
        c0, r0 = max(math.floor(minx / downsample), 0), max(math.floor(miny / downsample), 0)
        c1, r1 = min(math.ceil(maxx / downsample), w), min(math.ceil(maxy / downsample), h)
        if c1 <= c0 or r1 <= r0:
            means.append(float("nan"))
            continue
        ys, xs = np.mgrid[r0:r1, c0:c1]
        shapely.prepare(geom)
        inside = shapely.contains_xy(geom, (xs + 0.5) * downsample, (ys + 0.5) * downsample)
        window = np.asarray(values[r0:r1, c0:c1], np.float64)[inside]
        window = window[np.isfinite(window)]
        means.append(float(window.mean()) if window.size else float("nan"))
    return means
