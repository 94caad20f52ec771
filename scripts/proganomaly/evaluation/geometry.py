"""Masks to exact polygons, dilation, clipping to tissue, and boxes to a grid (polygons: `common.raster`).

Coordinates: shapely x is the column, y the row. A mask pixel (r, c) is the unit square [c, c+1) × [r, r+1) in
"pixel-edge" coordinates; multiply by the map's downsample to get level-0 px. Polygons made from masks follow the
pixel boundaries exactly (contour tolerance 0), so a polygon's area equals its pixel count times downsample².
An optional Douglas–Peucker tolerance (`simplify`, config `evaluation.contour_tolerance_px`) trades that exactness
for fewer vertices: the area then moves by at most perimeter × tolerance (map px), the stated contour tolerance.
"""

from __future__ import annotations

import numpy as np
import scipy.ndimage as ndi
import shapely
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from shapely.geometry import Polygon
from shapely.geometry.base import BaseGeometry

EMPTY = shapely.MultiPolygon()


def mask_polygons(mask: np.ndarray, x0: float = 0.0, y0: float = 0.0) -> list[Polygon]:
    """One exact polygon (with holes) per 4-connected component of `mask`, in pixel-edge coordinates + (x0, y0).

    Boundary pixel edges are oriented with the foreground on their left, chained into rings (turning left at
    saddle corners, so diagonal neighbours stay separate as in 4-connectivity) and reduced to their corners, all
    with vectorised numpy (pointer jumping instead of a per-vertex walk). Components touching only diagonally become
    separate polygons sharing a corner; rings that pinch at a corner are repaired with make_valid (area kept).
    """
    m = np.pad(np.asarray(mask, dtype=bool), 1)
    if not m.any():
        return []
    labels, _ = ndi.label(m)
    w = m.shape[1]
    nv = w + 1  # vertex (i, j) is the top-left corner of padded pixel (i, j); id = i * nv + j
    # Horizontal edges on corner row i between pixel rows i-1 and i; +x when the foreground is the lower row.
    hi, hj = np.nonzero(m[1:, :] != m[:-1, :])
    hi += 1
    h_pos = m[hi, hj]
    # Vertical edges on corner column j between pixel columns j-1 and j; +y when the foreground is the left column.
    vi, vj = np.nonzero(m[:, 1:] != m[:, :-1])
    vj += 1
    v_pos = m[vi, vj - 1]
    # direction: 0 +x, 1 +y, 2 -x, 3 -y (a left turn is d+1 with y as the row axis)
    start = np.concatenate([hi * nv + np.where(h_pos, hj, hj + 1), np.where(v_pos, vi, vi + 1) * nv + vj])
    direction = np.concatenate([np.where(h_pos, 0, 2), np.where(v_pos, 1, 3)]).astype(np.int64)
    fg_pixel = np.concatenate([np.where(h_pos, hi, hi - 1) * w + hj, vi * w + np.where(v_pos, vj - 1, vj)])
    step = np.array([1, nv, -1, -nv])
    end = start + step[direction]
    key = start * 4 + direction
    order = np.argsort(key)
    sorted_key = key[order]
    nxt = np.full(len(key), -1, dtype=np.int64)
    for turn in (1, 0, 3):  # left, straight, right: the first edge leaving the end vertex in that order
        want = end * 4 + (direction + turn) % 4
        pos = np.minimum(np.searchsorted(sorted_key, want), len(key) - 1)
        found = (sorted_key[pos] == want) & (nxt < 0)
        nxt[found] = order[pos[found]]
    prev = np.empty_like(nxt)
    prev[nxt] = np.arange(len(nxt))
    ring = _cycle_min(nxt)
    rank = _steps_to_end(np.where(nxt == ring, np.arange(len(nxt)), nxt), nxt != ring)
    corner = direction != direction[prev]
    idx = np.flatnonzero(corner)
    idx = idx[np.lexsort((-rank[idx], ring[idx]))]
    ring_id, first = np.unique(ring[idx], return_index=True)
    xy = np.column_stack([start[idx] % nv - 1 + x0, start[idx] // nv - 1 + y0]).astype(float)
    component = labels.ravel()[fg_pixel[ring_id]]
    signed = _signed_areas(xy, first)
    # Outer ring (counter-clockwise with y as the row axis, positive area) first, then the holes, per component.
    ring_order = np.lexsort((signed < 0, component))
    bounds = np.append(first, len(idx))
    rings = [xy[bounds[r] : bounds[r + 1]] for r in ring_order]
    polys, comp_sorted = [], component[ring_order]
    cuts = np.flatnonzero(np.diff(comp_sorted)) + 1
    for members in np.split(np.arange(len(rings)), cuts):
        polys.append(Polygon(rings[members[0]], [rings[k] for k in members[1:]]))
    return _repaired(polys)


def _cycle_min(nxt: np.ndarray) -> np.ndarray:
    """Smallest edge index in each edge's cycle of the permutation `nxt` (pointer jumping, O(n log n))."""
    best, jump = np.arange(len(nxt)), nxt.copy()
    span = 1
    while span < len(nxt):
        best = np.minimum(best, best[jump])
        jump = jump[jump]
        span *= 2
    return best


def _steps_to_end(succ: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """Distance to the end of each chain (an end points to itself) by pointer jumping."""
    dist, jump = weight.astype(np.int64), succ.copy()
    span = 1
    while span < len(succ):
        dist = dist + dist[jump]
        jump = jump[jump]
        span *= 2
    return dist


def _signed_areas(xy: np.ndarray, first: np.ndarray) -> np.ndarray:
    """Shoelace area of each ring of concatenated vertices (ring k starts at first[k], implicitly closed)."""
    bounds = np.append(first, len(xy))
    nxt = np.arange(1, len(xy) + 1)
    nxt[bounds[1:] - 1] = first  # the last vertex of each ring wraps to its first
    cross = xy[:, 0] * xy[nxt, 1] - xy[nxt, 0] * xy[:, 1]
    return 0.5 * np.add.reduceat(cross, first)


def _repaired(polys: list[BaseGeometry]) -> list[Polygon]:
    arr = np.asarray(polys, dtype=object)
    if len(arr) == 0:
        return []
    bad = ~shapely.is_valid(arr)
    if bad.any():
        arr[bad] = shapely.make_valid(arr[bad])
    return [p for g in arr for p in shapely.get_parts(g) if p.geom_type == "Polygon" and not p.is_empty]


def threshold_polygons(values: np.ndarray, threshold: float, block: int = 64) -> list[Polygon]:
    """Exact polygons of `values > threshold` (pixel-edge coordinates of the map), fast on sparse large maps.

    A block-maximum map finds the few regions that can hold pixels above the threshold, so labelling and contour
    tracing only touch those regions instead of the whole map for every threshold.
    """
    values = np.asarray(values)
    return blocks_polygons(block_max(values, block), values, threshold, block)


def block_max(values: np.ndarray, block: int) -> np.ndarray:
    """Maximum of each block×block tile; NaN is ignored (a block of NaN only is NaN, below every threshold)."""
    h, w = values.shape
    hb, wb = -(-h // block), -(-w // block)
    if (h, w) != (hb * block, wb * block):
        values = np.pad(values, ((0, hb * block - h), (0, wb * block - w)), constant_values=np.nan)
    # Reducing the contiguous axis first is several times faster than max(axis=(1, 3)) on a strided view.
    tiles = np.fmax.reduce(values.reshape(hb, block, wb, block), axis=3)
    return np.fmax.reduce(tiles, axis=1)


def blocks_polygons(coarse: np.ndarray, values: np.ndarray, threshold: float, block: int) -> list[Polygon]:
    """`threshold_polygons` with a precomputed `block_max` (so a threshold sweep computes it once)."""
    h, w = values.shape
    clabels, _ = ndi.label(coarse > threshold)
    polys: list[Polygon] = []
    for k, sl in enumerate(ndi.find_objects(clabels), start=1):
        if sl is None:
            continue
        r0, r1 = sl[0].start * block, min(sl[0].stop * block, h)
        c0, c1 = sl[1].start * block, min(sl[1].stop * block, w)
        # 4-connected fine components lie inside one 4-connected coarse component; masking by the component's
        # blocks keeps pieces of other components (inside this bounding box) out.
        own = np.repeat(np.repeat(clabels[sl] == k, block, axis=0), block, axis=1)[: r1 - r0, : c1 - c0]
        polys += mask_polygons((values[r0:r1, c0:c1] > threshold) & own, c0, r0)
    return polys


def disjoint_pieces(polys) -> np.ndarray:
    """Interior-disjoint pieces covering the union of `polys`: only groups whose bounding boxes chain together
    are unioned, so isolated polygons (most of them at small dilations) skip the expensive overlay."""
    arr = np.asarray(polys, dtype=object)
    arr = arr[~shapely.is_empty(arr)] if len(arr) else arr
    if len(arr) <= 1:
        return arr
    i, j = shapely.STRtree(arr).query(arr)
    n = len(arr)
    _, group = connected_components(coo_matrix((np.ones(len(i), dtype=np.int8), (i, j)), shape=(n, n)), directed=False)
    order = np.argsort(group, kind="stable")
    bounds = np.flatnonzero(np.diff(group[order])) + 1
    pieces = [
        members[0] if len(members) == 1 else shapely.union_all(members) for members in np.split(arr[order], bounds)
    ]
    return np.asarray(pieces, dtype=object)


def simplify(polys: list[Polygon], tolerance: float) -> list[Polygon]:
    """Douglas–Peucker with topology preserved; 0 returns the polygons unchanged."""
    if tolerance <= 0 or not polys:
        return list(polys)
    return list(shapely.simplify(np.asarray(polys, dtype=object), tolerance, preserve_topology=True))


def scale_coords(geoms, factor: float):
    """Scale about the origin (map px → level-0 px)."""
    arr = np.asarray(geoms, dtype=object)
    return shapely.transform(arr, lambda xy: xy * factor)


def dilation_origins(polys, origin: str) -> np.ndarray:
    """(n, 2) scaling origins: the area centroid ("centroid") or the bounding-box centre ("center")."""
    arr = np.asarray(polys, dtype=object)
    if len(arr) == 0:
        return np.zeros((0, 2))
    if origin == "centroid":
        return shapely.get_coordinates(shapely.centroid(arr))
    if origin == "center":
        b = shapely.bounds(arr)
        return np.column_stack([(b[:, 0] + b[:, 2]) / 2, (b[:, 1] + b[:, 3]) / 2])
    raise ValueError(f"dilation origin must be 'centroid' or 'center', got {origin!r}")


def scale_polygons(polys, factor: float, origins: np.ndarray) -> np.ndarray:
    """Scale each polygon by `factor` about its own origin (one vectorised coordinate pass for all of them)."""
    arr = np.asarray(polys, dtype=object)
    if len(arr) == 0 or factor == 1:
        return arr
    # transform hands all coordinates over at once, in get_coordinates order, so `index` lines them up.
    _, index = shapely.get_coordinates(arr, return_index=True)
    o = origins[index]
    return shapely.transform(arr, lambda xy: o + factor * (xy - o))


def buffer_polygons(polys, distance: float) -> np.ndarray:
    """Grow each polygon by `distance` (same units as its coordinates); mitred joins keep staircases square."""
    arr = np.asarray(polys, dtype=object)
    if len(arr) == 0 or distance == 0:
        return arr
    return shapely.buffer(arr, distance, join_style="mitre", mitre_limit=2.0)


def boxes_region(x, y, width, height) -> BaseGeometry:
    """Exact union of axis-aligned boxes [x, x+width) × [y, y+height).

    The box edges define a compressed grid whose cells are either fully covered or not; the covered cells are
    polygonised exactly and mapped back to real coordinates. Much faster than union_all of thousands of boxes.
    """
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    x1, y1 = x + np.asarray(width, dtype=float), y + np.asarray(height, dtype=float)
    if len(x) == 0:
        return EMPTY
    xs, ys = np.unique(np.concatenate([x, x1])), np.unique(np.concatenate([y, y1]))
    ci0, ci1 = np.searchsorted(xs, x), np.searchsorted(xs, x1)
    ri0, ri1 = np.searchsorted(ys, y), np.searchsorted(ys, y1)
    # 2-D difference array: +1/−1 at box corners, cumulative sums give the cover count per cell.
    diff = np.zeros((len(ys) + 1, len(xs) + 1), dtype=np.int32)
    np.add.at(diff, (ri0, ci0), 1)
    np.add.at(diff, (ri0, ci1), -1)
    np.add.at(diff, (ri1, ci0), -1)
    np.add.at(diff, (ri1, ci1), 1)
    cover = diff.cumsum(0, dtype=np.int32).cumsum(1, dtype=np.int32)[: len(ys) - 1, : len(xs) - 1] > 0
    polys = mask_polygons(cover)
    # Map compressed-grid edge indices back to coordinates; the mapping is monotone, so topology is kept.
    out = shapely.transform(
        np.asarray(polys, dtype=object),
        lambda xy: np.column_stack([xs[xy[:, 0].astype(np.int64)], ys[xy[:, 1].astype(np.int64)]]),
    )
    return shapely.union_all(out)


def boxes_mask(x, y, width, height, shape: tuple[int, int], downsample: float) -> np.ndarray:
    """Rasterised union of boxes on a map grid (pixel-centre rule), without building polygons."""
    h, w = shape
    c0 = np.clip(np.ceil(np.asarray(x) / downsample - 0.5), 0, w).astype(np.int64)
    c1 = np.clip(np.ceil((np.asarray(x) + np.asarray(width)) / downsample - 0.5), 0, w).astype(np.int64)
    r0 = np.clip(np.ceil(np.asarray(y) / downsample - 0.5), 0, h).astype(np.int64)
    r1 = np.clip(np.ceil((np.asarray(y) + np.asarray(height)) / downsample - 0.5), 0, h).astype(np.int64)
    diff = np.zeros((h + 1, w + 1), dtype=np.int32)
    np.add.at(diff, (r0, c0), 1)
    np.add.at(diff, (r0, c1), -1)
    np.add.at(diff, (r1, c0), -1)
    np.add.at(diff, (r1, c1), 1)
    return diff.cumsum(0, dtype=np.int32).cumsum(1, dtype=np.int32)[:h, :w] > 0
