"""The fast threshold × dilation grid: confusion areas from exact pixel coverage instead of polygon overlays.

Once per slide, the tissue, the annotation (clipped to tissue) and every part are rasterised on the map grid
(cropped to the tissue's bounding box) as exact area coverage (`coverage`): each pixel holds the area of it inside
the region. Per cell, the dilated prediction is rasterised the same way, overlaps clamped to one pixel, and every
area is a dot product: prediction ∩ tissue = Σ pred · tissue, TP = Σ pred · annotation, a part's TP = Σ pred · part.

Where it can differ from the exact polygon overlay (the stated tolerance is grid.RASTER_TOLERANCE):
- a pixel crossed both by the prediction's outline and by a tissue / annotation outline counts the product of the
  two coverages (where inside the pixel each lies is not known): at most ¼ of the pixel, usually far less;
- a pixel crossed by the outlines of two overlapping dilated polygons counts min(sum of their coverages, 1);
- at scale factors f ≥ 2 the prediction is rasterised on blocks of s × s map px, s the largest power of two ≤ f
  (every pixel of the undilated map then spans at least one block), against the exact coverage of those blocks, so
  the two effects above act on larger pixels; the pixel staircase of the undilated polygons, itself a ±½ px
  approximation of the KDE level set, is scaled to f px by the dilation anyway;
- `num_polygons` counts the 4-connected components of the pixels at least half covered by the prediction and by
  tissue (exact without dilation; dilated polygons a sliver apart may merge).
Pixels crossed by one outline only are exact, so an undilated prediction (pixel-edge polygons) is exact up to the
products at tissue / annotation outlines. Buffer mode and a contour tolerance > 0 build the polygons with shapely,
as the exact path does, and rasterise their edges.
"""

from __future__ import annotations

import math

import numpy as np
import scipy.ndimage as ndi
import scipy.sparse as sp

from proganomaly.evaluation import coverage as cov
from proganomaly.evaluation import geometry

# Raster block ≤ f / (2 · BLOCK_RATIO) map px at scale factor f: 0.5 keeps a block within one scaled map pixel.
BLOCK_RATIO = 0.5


class Targets:
    """Exact coverage of the tissue, the annotation and each part on the tissue's bounding box, per block size."""

    def __init__(self, region, parts: dict, downsample: float, lesions=()):
        # The tissue may reach past the map (patches at the slide's edge), and dilated predictions with it.
        x0, y0, x1, y1 = region.tissue.bounds if not region.tissue.is_empty else (0, 0, 0, 0)
        c0, r0 = math.floor(x0 / downsample), math.floor(y0 / downsample)
        c1, r1 = math.ceil(x1 / downsample), math.ceil(y1 / downsample)
        self.grid = cov.Grid(c0 * downsample, r0 * downsample, downsample, (r1 - r0, c1 - c0))
        self.pixel_area = downsample * downsample
        self.keys = list(parts)
        self._edges = [cov.polygon_edges([g]) for g in (region.tissue, region.annotation, *parts.values())]
        # Lesions (annotated regions, one per feature, inside the annotation) may overlap each other, so each gets
        # its own sparse column of coverage rather than a label image.
        self._lesion_edges = [cov.polygon_edges([g]) for g in lesions]
        self._levels: dict = {}

    def level(self, factor: int):
        """(grid, scratch buffer, tissue coverage, flat indices of annotated pixels, (n, 1 + parts) annotation and
        part coverage, tissue pixels, scratch, sparse (n, lesions) lesion coverage) on blocks of factor × factor map
        px, flat over the (h + 1, w) layout of `coverage(out=)`."""
        if factor not in self._levels:
            grid = self.grid.coarser(factor)
            buffer = np.empty((grid.shape[0] + 1) * grid.shape[1])
            tissue_edges, annotation_edges, *part_edges = self._edges
            tissue = self._cover(tissue_edges, grid, buffer).copy()
            # Parts lie inside the annotation (both from the same features, clipped to tissue), so the annotated
            # pixels index them all and only the tissue needs a dense array.
            index = np.flatnonzero(self._cover(annotation_edges, grid, buffer) > 0)
            # Column-major, so each target's values are written contiguously.
            inside = np.empty((len(index), 1 + len(part_edges)), order="F")
            inside[:, 0] = buffer[index]
            for k, e in enumerate(part_edges, start=1):
                inside[:, k] = self._cover(e, grid, buffer)[index]
            lesion = sp.csc_matrix((len(index), len(self._lesion_edges)))
            if self._lesion_edges:
                cols = [sp.csc_matrix(self._cover(e, grid, buffer)[index][:, None]) for e in self._lesion_edges]
                lesion = sp.hstack(cols, format="csr")
            in_tissue = tissue >= 0.5
            scratch = (np.empty(len(tissue), dtype=bool), np.empty(len(tissue), np.int32))
            self._levels[factor] = (grid, buffer, tissue, index, inside, in_tissue, scratch, lesion)
        return self._levels[factor]

    @staticmethod
    def _cover(edges, grid: cov.Grid, buffer: np.ndarray) -> np.ndarray:
        # Exact at every block size: coverage of a coarser grid is the area inside each block, not a resampling.
        cov.coverage(cov.to_grid(edges, grid), grid.shape, out=buffer)[-1] = 0.0  # below the grid
        return np.clip(buffer, 0.0, 1.0, out=buffer)


def block_factor(mode: str, dilation: float) -> int:
    """Raster block size (map px) for a dilation: the largest power of two ≤ f for scale factors, else 1."""
    if mode != "scale" or dilation < 2 * BLOCK_RATIO:
        return 1
    return 2 ** math.floor(math.log2(dilation / (2 * BLOCK_RATIO)))


def mask_edges(kde: np.ndarray, threshold: float, origin: str):
    """Horizontal pixel edges of the components of `kde > threshold` (runs along a row merged), as
    (x_start, x_end, y, component) in map px, oriented like `coverage.polygon_edges`, and each component's scaling
    origin (the exact polygons' centroid or bounding-box centre)."""
    mask = kde > threshold
    labels, n = ndi.label(mask)
    if n == 0:
        return np.zeros((0, 4)), np.zeros((0, 2))
    m = np.zeros((mask.shape[0] + 2, mask.shape[1]), dtype=np.int8)
    m[1:-1] = mask
    step = m[1:] - m[:-1]  # +1 where row r is foreground and row r - 1 is not
    r, c = np.nonzero(step)
    sign = step[r, c].astype(np.int64)
    comp = labels[np.where(sign > 0, r, r - 1), c]
    # A new run starts wherever the row, the side or the component changes, or a column is skipped.
    new = np.ones(len(c), dtype=bool)
    new[1:] = (r[1:] != r[:-1]) | (sign[1:] != sign[:-1]) | (comp[1:] != comp[:-1]) | (c[1:] != c[:-1] + 1)
    start = np.flatnonzero(new)
    end = np.append(start[1:], len(c)) - 1
    left, right = c[start].astype(float), c[end] + 1.0
    # Foreground below the edge: the shoelace-positive ring runs along it in +x.
    down = sign[start] > 0
    edges = np.column_stack([np.where(down, left, right), np.where(down, right, left), r[start], comp[start] - 1])
    edges = edges.astype(float)
    return edges, edge_origins(edges, n, origin)


def edge_origins(edges: np.ndarray, n: int, origin: str) -> np.ndarray:
    """(n, 2) origins of the components from their horizontal edges: area centroid by Green's theorem (area
    −Σ y·dx, first moments −Σ y·(x1² − x0²)/2 and −Σ y²/2·dx), or bounding-box centre."""
    x0, x1, y = edges[:, 0], edges[:, 1], edges[:, 2]
    comp = edges[:, 3].astype(np.int64)
    if origin == "centroid":
        area = -np.bincount(comp, y * (x1 - x0), minlength=n)
        mx = -np.bincount(comp, y * (x1 * x1 - x0 * x0) / 2, minlength=n)
        my = -np.bincount(comp, y * y / 2 * (x1 - x0), minlength=n)
        return np.column_stack([mx / area, my / area])
    if origin == "center":
        lo, hi = np.full((n, 2), np.inf), np.full((n, 2), -np.inf)
        for k, (a, b) in enumerate(((np.minimum(x0, x1), np.maximum(x0, x1)), (y, y))):
            np.minimum.at(lo[:, k], comp, a)
            np.maximum.at(hi[:, k], comp, b)
        return (lo + hi) / 2
    raise ValueError(f"dilation origin must be 'centroid' or 'center', got {origin!r}")


def scaled_edges(edges: np.ndarray, origins: np.ndarray, factor: float, downsample: float) -> np.ndarray:
    """`mask_edges` scaled by `factor` about their components' origins, in level-0 px (x0, y0, x1, y1)."""
    o = origins[edges[:, 3].astype(np.int64)]
    xa = o[:, 0] + factor * (edges[:, 0] - o[:, 0])
    xb = o[:, 0] + factor * (edges[:, 1] - o[:, 0])
    y = o[:, 1] + factor * (edges[:, 2] - o[:, 1])
    return np.column_stack([xa, y, xb, y]) * downsample


def cell(edges: np.ndarray, targets: Targets, factor: int) -> dict:
    """Areas (level-0 px²) of the prediction given by level-0 edges: prediction ∩ tissue, TP, per-part TP, the
    area of each lesion it covers, and the number of its components in tissue."""
    grid, buffer, tissue, index, inside, in_tissue, (covered, labels), lesion = targets.level(factor)
    pred = cov.coverage(cov.to_grid(edges, grid), grid.shape, out=buffer).ravel()
    # Overlapping polygons add up; a pixel is covered once (coverage is never below 0 beyond rounding).
    np.minimum(pred, 1.0, out=pred)
    px = targets.pixel_area * factor * factor
    hits = pred[index] @ inside if len(index) else np.zeros(1 + len(targets.keys))
    lesion_cover = lesion.T @ pred[index] if len(index) else np.zeros(lesion.shape[1])
    # Pixel majority: components joined only through slivers of a pixel do not merge.
    np.greater_equal(pred, 0.5, out=covered)
    covered &= in_tissue
    shape = (grid.shape[0] + 1, grid.shape[1])
    return {
        "pred_area": float(pred @ tissue) * px,
        "true_positive": float(hits[0]) * px,
        "part_tp": dict(zip(targets.keys, (float(v) * px for v in hits[1:]), strict=True)),
        "lesion_cover": np.asarray(lesion_cover, dtype=float).ravel() * px,
        "num_polygons": int(ndi.label(covered.reshape(shape), output=labels.reshape(shape))),
    }


def threshold_cells(kde, downsample: float, threshold: float, spec, targets: Targets, mpp: float, polygons):
    """The cells of one threshold, one dict per dilation (see `cell`). `polygons(threshold)` gives the exact
    level-0 polygons, used when the mask's own edges do not apply (buffer mode, contour tolerance > 0)."""
    if spec.dilation_mode == "scale" and spec.contour_tolerance_px == 0:
        edges, origins = mask_edges(kde, threshold, spec.dilation_origin)
        return [
            cell(scaled_edges(edges, origins, f, downsample), targets, block_factor("scale", f)) for f in spec.dilations
        ]
    polys = polygons(threshold)
    origins = geometry.dilation_origins(polys, spec.dilation_origin)
    out = []
    for f in spec.dilations:
        if spec.dilation_mode == "scale":
            grown = geometry.scale_polygons(polys, f, origins)
        else:
            grown = geometry.buffer_polygons(polys, f / mpp)
        out.append(cell(cov.polygon_edges(grown), targets, block_factor(spec.dilation_mode, f)))
    return out
