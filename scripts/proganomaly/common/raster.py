"""The one polygon rasteriser: which pixels of a grid have their centre inside a geometry.

Used for annotation labels of patches, the demo's pastes and the evaluation's label maps alike, so a pixel is
anomalous by one rule everywhere.
"""

from __future__ import annotations

import numpy as np
import shapely
from shapely.geometry.base import BaseGeometry


def rasterize(
    geom: BaseGeometry,
    shape: tuple[int, int],
    downsample: float | tuple[float, float] = 1.0,
    origin: tuple[float, float] = (0.0, 0.0),
) -> np.ndarray:
    """Boolean (h, w) mask: pixel (r, c) is set when its centre (x0 + (c+½)·sx, y0 + (r+½)·sy) lies in `geom`.

    `downsample` is the pixel size (sx, sy) in `geom`'s units (one number for square pixels), `origin` (x0, y0) the
    grid's top-left corner. A scanline fill (even-odd within each polygon, so holes are holes; OR across polygons, so
    overlapping annotations do not cancel), vectorised over all edge crossings of a polygon; the pixels where a
    rounding or a centre on the outline could matter (either side of every span end, and rows through a vertex) are
    then decided by shapely's exact predicate, so the result is `shapely.contains_xy` at the centres: a centre on
    the outline is outside.
    """
    h, w = shape
    sx, sy = downsample if isinstance(downsample, tuple) else (downsample, downsample)
    scale, shift = np.array([sx, sy], np.float64), np.array(origin, np.float64)
    span_rows, span_c0, span_c1, vertex_rows = [], [], [], []
    for poly in shapely.get_parts(geom):
        if poly.geom_type != "Polygon" or poly.is_empty:
            continue
        rings = [np.asarray(poly.exterior.coords), *(np.asarray(r.coords) for r in poly.interiors)]
        a = (np.vstack([r[:-1] for r in rings])[:, :2] - shift) / scale
        b = (np.vstack([r[1:] for r in rings])[:, :2] - shift) / scale
        near = np.round(a[:, 1] - 0.5)
        vertex_rows.append(near[np.abs(a[:, 1] - 0.5 - near) < 1e-6].astype(np.int64))
        lo, hi = np.minimum(a[:, 1], b[:, 1]), np.maximum(a[:, 1], b[:, 1])
        # Rows whose centre line y = r + ½ crosses the edge, half-open [lo, hi) so a vertex counts once.
        r0 = np.clip(np.ceil(lo - 0.5), 0, h).astype(np.int64)
        r1 = np.clip(np.ceil(hi - 0.5), 0, h).astype(np.int64)
        count = r1 - r0
        total = int(count.sum())
        if total == 0:
            continue
        edge = np.repeat(np.arange(len(a)), count)
        rows = r0[edge] + (np.arange(total) - np.repeat(np.cumsum(count) - count, count))
        t = (rows + 0.5 - a[edge, 1]) / (b[edge, 1] - a[edge, 1])
        xs = a[edge, 0] + t * (b[edge, 0] - a[edge, 0])
        order = np.lexsort((xs, rows))
        rows, xs = rows[order], xs[order]
        # Even-odd pairs of crossings are the spans; pixel c is inside [x_in, x_out) when x_in <= c + ½ < x_out.
        span_rows.append(rows[0::2])
        span_c0.append(np.clip(np.ceil(xs[0::2] - 0.5), 0, w).astype(np.int64))
        span_c1.append(np.clip(np.ceil(xs[1::2] - 0.5), 0, w).astype(np.int64))
    diff = np.zeros((h, w + 1), dtype=np.int32)
    if not span_rows:
        return diff[:, :w] > 0
    # Spans of one polygon are disjoint, so a cover count > 0 is the union over polygons.
    rows, c0, c1 = np.concatenate(span_rows), np.concatenate(span_c0), np.concatenate(span_c1)
    np.add.at(diff, (rows, c0), 1)
    np.add.at(diff, (rows, c1), -1)
    mask = diff.cumsum(axis=1, dtype=np.int32)[:, :w] > 0
    _decide_exactly(mask, geom, (sx, sy), origin, rows, c0, c1, np.concatenate(vertex_rows))
    return mask


def _decide_exactly(mask, geom, scale, origin, rows, c0, c1, vertex_rows) -> None:
    """Re-decide, in place, the pixels next to every span end and on rows through a vertex with contains_xy."""
    h, w = mask.shape
    vertex_rows = np.unique(vertex_rows[(vertex_rows >= 0) & (vertex_rows < h)])
    r = np.concatenate([np.repeat(rows, 4), np.repeat(vertex_rows, w)])
    c = np.concatenate([np.stack([c0 - 1, c0, c1 - 1, c1], axis=1).ravel(), np.tile(np.arange(w), vertex_rows.size)])
    keep = (c >= 0) & (c < w)
    r, c = r[keep], c[keep]
    x = origin[0] + (c + 0.5) * scale[0]
    y = origin[1] + (r + 0.5) * scale[1]
    inside = np.zeros(r.size, bool)
    for poly in shapely.get_parts(geom):  # per polygon: overlapping parts are a union, as in the fill
        if poly.geom_type == "Polygon" and not poly.is_empty:
            inside |= shapely.contains_xy(poly, x, y)
    mask[r, c] = inside
