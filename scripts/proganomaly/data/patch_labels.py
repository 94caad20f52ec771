"""Pixel labels of patches from annotation polygons (level-0 coordinates).

A patch with top-left (x, y) and level-0 extent (w, h) is an image of S×S px; pixel (r, c) covers level-0
[x + c·w/S, x + (c+1)·w/S) × [y + r·h/S, y + (r+1)·h/S) and is labelled anomalous when its centre lies inside an
annotation (rows follow y, columns follow x, as in `slide.read_region`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import shapely
from shapely.geometry.base import BaseGeometry

from proganomaly.common.raster import rasterize


class LabelError(ValueError):
    """Patches cannot be matched to their level-0 extent."""


def union_of(geoms: list[BaseGeometry]) -> BaseGeometry:
    """One prepared geometry for fast point-in-polygon tests (empty when there are no annotations)."""
    geom = shapely.union_all(geoms) if geoms else shapely.Polygon()
    shapely.prepare(geom)
    return geom


def patch_labels(geom: BaseGeometry, x, y, w, h, size: int) -> np.ndarray:
    """Boolean (N, size, size) labels of N patches given their top-left corners and level-0 extents."""
    x, y, w, h = (np.atleast_1d(np.asarray(v, np.float64)) for v in (x, y, w, h))
    out = np.zeros((x.size, size, size), bool)
    if geom.is_empty:
        return out
    boxes = shapely.box(x, y, x + w, y + h)
    for i in np.flatnonzero(shapely.intersects(geom, boxes)):
        out[i] = rasterize(geom, (size, size), (w[i] / size, h[i] / size), (x[i], y[i]))
    return out


def extent_lookup(patch_tables: dict[str, str | Path]) -> dict[tuple[str, int, int], tuple[int, int]]:
    """{(slide_id, x, y): (width, height)} from the tiling stage's patch tables, keyed by slide id."""
    import pandas as pd

    lookup = {}
    for slide_id, path in patch_tables.items():
        try:
            table = pd.read_parquet(path, columns=["slide_id", "x", "y", "width", "height"])
        except FileNotFoundError:
            raise LabelError(f"{path}: patch table of {slide_id} does not exist (run tile_slide)") from None
        for row in table.itertuples(index=False):
            lookup[(str(row.slide_id), int(row.x), int(row.y))] = (int(row.width), int(row.height))
    return lookup


def extents_of(lookup: dict, slide_ids, xs, ys) -> tuple[np.ndarray, np.ndarray]:
    """Level-0 (width, height) of a batch of patches; a patch missing from its table is an error, not a guess."""
    w, h = np.empty(len(xs), np.int64), np.empty(len(xs), np.int64)
    for i, (s, x, y) in enumerate(zip(slide_ids, xs, ys, strict=True)):
        s = s.decode() if isinstance(s, bytes) else str(s)
        try:
            w[i], h[i] = lookup[(s, int(x), int(y))]
        except KeyError:
            raise LabelError(
                f"patch ({s}, x={int(x)}, y={int(y)}) of the records is not in its patch table (tiles/{s}.patches.parquet of this detector); "
                "the records are stale: rerun write_records for this slide"
            ) from None
    return w, h
