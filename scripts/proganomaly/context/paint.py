"""Per-patch scores painted onto a slide's shared map grid, so a per-patch detector gives a per-pixel map.

Each patch paints its stride cell (the stride × stride square centred in it, as the QuPath tiles: geojson.tile_cells),
so that patches on one stride grid tile the tissue without overlap, like the patch interiors the pixel detectors
score; stride None paints the whole patch. Where cells overlap, a map pixel takes the area-weighted mean of the
patches over it (the stitching's convention: map pixel (r, c) covers level-0 [c·ds, (c+1)·ds) × [r·ds, (r+1)·ds));
pixels no cell reaches are NaN, "not scored", never a confident 0.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from proganomaly.context.neighbourhood import ContextError
from proganomaly.data.geojson import tile_cells
from proganomaly.maps.stitching import MapGrid, overlap_weights


def paint_patch_scores(
    grid: MapGrid,
    table: pd.DataFrame,
    scores: np.ndarray,
    *,
    stride: float | None = None,
    out: np.ndarray | None = None,
    area: np.ndarray | None = None,
) -> np.ndarray:
    """float32 (grid.height, grid.width) map of the per-patch `scores` (one per table row; NaN scores paint nothing).

    out / area: optional preallocated float32 arrays of the map's shape (e.g. np.memmap for a large slide) for the
    weighted sums and the covered area; `out` is returned holding the map.
    """
    scores = np.asarray(scores, np.float64).ravel()
    if len(scores) != len(table):
        raise ContextError(f"{len(scores)} scores for {len(table)} patches")
    shape = (max(grid.height, 1), max(grid.width, 1))
    for name, a in (("out", out), ("area", area)):
        if a is not None and tuple(a.shape) != shape:
            raise ContextError(f"{name} has shape {tuple(a.shape)}, the map grid {shape}")
    out = np.zeros(shape, np.float32) if out is None else out
    area = np.zeros(shape, np.float32) if area is None else area
    out[...] = 0.0
    area[...] = 0.0
    boxes = tile_cells(table, stride) if len(table) else np.zeros((0, 4))
    ds = grid.downsample
    for (x0, y0, x1, y1), v in zip(boxes.tolist(), scores.tolist(), strict=True):
        if not np.isfinite(v):
            continue
        r0, wy = overlap_weights(y0, y1 - y0, 1, ds, grid.height_l0)
        c0, wx = overlap_weights(x0, x1 - x0, 1, ds, grid.width_l0)
        if not (wy.shape[0] and wx.shape[0]):
            continue
        w = np.outer(wy[:, 0], wx[:, 0]).astype(np.float32)
        out[r0 : r0 + w.shape[0], c0 : c0 + w.shape[1]] += w * np.float32(v)
        area[r0 : r0 + w.shape[0], c0 : c0 + w.shape[1]] += w
    with np.errstate(invalid="ignore", divide="ignore"):
        out[...] = np.where(area > 0, out / np.where(area > 0, area, 1.0), np.nan)
    return out
