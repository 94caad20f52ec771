"""Exact area coverage of polygons on a pixel grid: the rasteriser of the fast evaluation grid.

`coverage` returns, for every pixel, the area of the pixel inside the polygons (in pixel units, so 0..1 for
non-overlapping polygons), computed exactly from the polygon edges rather than sampled at pixel centres: every edge
is cut at the grid lines, each piece adds its signed width to an accumulation buffer (split between its pixel and
the one below by where it lies in the pixel), and a running sum down each column turns the buffer into coverage (the
signed-area rasteriser of font renderers). Holes subtract because rings are oriented first (exterior
counter-clockwise, holes clockwise); overlapping polygons add up, which is why callers clamp to 1 for a union.

Coordinates as elsewhere in evaluation: shapely x is the column, y the row, pixel (r, c) the square
[c, c+1) × [r, r+1) of the grid; `Grid` maps level-0 px to a grid of `scale` level-0 px per pixel.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import shapely


@dataclasses.dataclass(frozen=True)
class Grid:
    """A raster: pixel (r, c) covers level-0 [x0 + c·scale, x0 + (c+1)·scale) × [y0 + r·scale, …)."""

    x0: float
    y0: float
    scale: float
    shape: tuple[int, int]

    def coarser(self, factor: int) -> Grid:
        """The grid of factor × factor blocks of this one (the last blocks may reach past its edge)."""
        h, w = self.shape
        return Grid(self.x0, self.y0, self.scale * factor, (-(-h // factor), -(-w // factor)))


def polygon_edges(geoms) -> np.ndarray:
    """(n, 4) edges x0, y0, x1, y1 of every ring of the (multi)polygons, exteriors counter-clockwise (positive
    shoelace area with y as the row axis), holes clockwise; edges that run along a column (no width) are dropped."""
    arr = np.asarray(geoms, dtype=object).ravel()
    arr = arr[~shapely.is_empty(arr)] if len(arr) else arr
    # Intersections can be collections holding lines and points (no area): only polygons have rings to trace.
    parts = shapely.get_parts(shapely.get_parts(arr))
    parts = parts[shapely.get_type_id(parts) == 3]
    rings = shapely.get_rings(shapely.orient_polygons(parts))
    if not len(rings):
        return np.zeros((0, 4))
    xy, ring = shapely.get_coordinates(rings, return_index=True)
    same = ring[1:] == ring[:-1]  # rings are closed, so consecutive coordinates of one ring form its edges
    edges = np.column_stack([xy[:-1][same], xy[1:][same]])
    return edges[edges[:, 0] != edges[:, 2]]


def to_grid(edges: np.ndarray, grid: Grid) -> np.ndarray:
    """Level-0 edges in the pixel units of `grid`."""
    shift = np.array([grid.x0, grid.y0, grid.x0, grid.y0])
    return (edges - shift) / grid.scale


def coverage(edges: np.ndarray, shape: tuple[int, int], out: np.ndarray | None = None) -> np.ndarray:
    """Float64 (h, w) area of each pixel covered by the oriented edges (grid pixel units; overlaps add up).

    With `out` (a float64 buffer of (h + 1) × w values, overwritten) the (h + 1, w) buffer itself is returned,
    C-contiguous so callers can ravel it without a copy; its last row is not coverage (edges below the grid are
    dropped), and callers weight it by zero. Reusing one buffer per grid saves the page faults of a fresh array per
    cell.
    """
    h, w = shape
    # Edges are cut at column boundaries and accumulated down each column (the pieces are found in transposed
    # coordinates, x ↔ y): a running sum down the columns is one vector add per row, several times faster than
    # numpy's running sum along each row.
    t = edges[:, [1, 0, 3, 2]]
    straight = t[:, 0] == t[:, 2]
    cols, rows, width, frac = _straight_pieces(t[straight], w)
    if not straight.all():
        pieces = _sloped_pieces(t[~straight], w, h)
        cols, rows, width, frac = (np.concatenate(p) for p in zip((cols, rows, width, frac), pieces, strict=True))
    # A piece covers the rest of its own pixel below it (1 - frac of its width) and every pixel below that.
    keep = rows < h
    cols, rows, width, frac = cols[keep], rows[keep], width[keep], frac[keep]
    above = rows < 0  # above the grid: every pixel of the column lies below it
    rows, frac = np.where(above, 0, rows), np.where(above, 0.0, frac)
    index = np.concatenate([rows * w + cols, (rows + 1) * w + cols])
    weight = np.concatenate([width * (1.0 - frac), width * frac])
    if out is None:
        acc = np.bincount(index, weight, minlength=(h + 1) * w).reshape(h + 1, w)
    else:
        acc = out.reshape(h + 1, w)
        acc.fill(0.0)
        np.add.at(out, index, weight)
    for r in range(1, h + 1):
        np.add(acc[r], acc[r - 1], out=acc[r])
    return acc if out is not None else acc[:h]


def _straight_pieces(e: np.ndarray, h: int):
    """Edges along a column cut at row boundaries: row, column, signed height and position in the column (called
    in transposed coordinates, so: edges along a row cut at column boundaries)."""
    lo, hi = np.minimum(e[:, 1], e[:, 3]), np.maximum(e[:, 1], e[:, 3])
    r0 = np.clip(np.floor(lo), 0, h).astype(np.int64)
    r1 = np.clip(np.ceil(hi), 0, h).astype(np.int64)
    n = np.maximum(r1 - r0, 0)
    which = np.repeat(np.arange(len(e)), n)
    rows = r0[which] + np.arange(n.sum()) - np.repeat(np.cumsum(n) - n, n)
    height = np.minimum(hi[which], rows + 1) - np.maximum(lo[which], rows)
    height *= np.sign(e[which, 3] - e[which, 1])
    x = e[which, 0]
    cols = np.floor(x).astype(np.int64)
    return rows, cols, height, x - cols


def _sloped_pieces(e: np.ndarray, h: int, w: int):
    """Edges cut at every grid line they cross inside the grid; each piece lies in one pixel (or left of it). Row,
    column, signed height and position in the column, like `_straight_pieces`."""
    x0, y0, x1, y1 = e.T
    ts, owner = [np.zeros(len(e)), np.ones(len(e))], [np.arange(len(e))] * 2
    for a, b, size in ((y0, y1, h), (x0, x1, w)):
        lo = np.maximum(np.floor(np.minimum(a, b)) + 1, 0)
        hi = np.minimum(np.ceil(np.maximum(a, b)) - 1, size)
        n = np.maximum(hi - lo + 1, 0).astype(np.int64)
        which = np.repeat(np.arange(len(e)), n)
        k = lo[which] + np.arange(n.sum()) - np.repeat(np.cumsum(n) - n, n)
        with np.errstate(divide="ignore", invalid="ignore"):
            ts.append((k - a[which]) / (b[which] - a[which]))
        owner.append(which)
    t, owner = np.concatenate(ts), np.concatenate(owner)
    order = np.lexsort((t, owner))
    t, owner = t[order], owner[order]
    same = owner[1:] == owner[:-1]
    ta, tb, which = t[:-1][same], t[1:][same], owner[:-1][same]
    ya, yb = y0[which] + ta * (y1[which] - y0[which]), y0[which] + tb * (y1[which] - y0[which])
    xm = x0[which] + (ta + tb) / 2 * (x1[which] - x0[which])
    rows = np.floor((ya + yb) / 2).astype(np.int64)
    inside = (rows >= 0) & (rows < h)
    cols = np.floor(xm).astype(np.int64)
    return rows[inside], cols[inside], (yb - ya)[inside], (xm - cols)[inside]
