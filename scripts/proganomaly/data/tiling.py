"""The patch grid in level-0 coordinates, scored against a thumbnail tissue mask.

A patch is ``patch_size_px`` pixels at ``target_mpp``, i.e. a level-0 square of ``round(patch_size_px · target_mpp /
slide_mpp)`` px; the grid is anchored at (0, 0), steps by the stride converted the same way, and drops partial patches
at the right and bottom edges. Each patch's tissue fraction is the exact area fraction of the (piecewise-constant)
thumbnail mask under the patch, read from a summed-area table, so nothing of level-0 size is ever allocated.
"""

from __future__ import annotations

import dataclasses
import time

import numpy as np
import pandas as pd

from proganomaly.data.slide import Slide
from proganomaly.data.tissue import detect_tissue, outline_overlay

PATCH_COLUMNS = {
    "slide_id": "str",
    "x": "int64",
    "y": "int64",
    "width": "int64",
    "height": "int64",
    "tissue_fraction": "float32",
}
# The area fractions come from floating-point sums; a patch exactly at the threshold must not fall below it by 1 ulp.
_EPS = 1e-9


class TilingError(ValueError):
    """Tiling produced nothing usable; the message names the slide and the parameters to change.

    When raised by tile_slide, ``.result`` holds the (empty) TilingResult with its thumbnail and mask.
    """

    result: TilingResult | None = None


def level0_extent(px: int, target_mpp: float | None, slide_mpp: float) -> int:
    """Level-0 px covered by ``px`` pixels at ``target_mpp`` (None: the slide's own resolution)."""
    if target_mpp is None:
        return int(px)
    extent = round(px * target_mpp / slide_mpp)
    if extent < 1:
        raise TilingError(f"{px} px at {target_mpp} µm/px is less than one level-0 pixel of a {slide_mpp} µm/px slide")
    return int(extent)


def grid_origins(length: int, size: int, stride: int) -> np.ndarray:
    """Top-left coordinates along one axis of every whole patch: 0, stride, … while origin + size ≤ length."""
    if size < 1 or stride < 1:
        raise ValueError(f"patch size {size} and stride {stride} must be ≥ 1")
    return np.arange(0, max(length - size + 1, 0), stride, dtype=np.int64)


def thumbnail_downsample(thumbnail_mpp: float, slide_mpp: float) -> float:
    """Level-0 px per thumbnail px; never below 1 (a thumbnail finer than level 0 would be an upsampled copy)."""
    return max(thumbnail_mpp / slide_mpp, 1.0)


def summed_area(mask: np.ndarray) -> np.ndarray:
    """(h+1, w+1) table whose [i, j] is the sum of mask[:i, :j]."""
    table = np.zeros((mask.shape[0] + 1, mask.shape[1] + 1), np.float64)
    table[1:, 1:] = np.cumsum(np.cumsum(mask, axis=0, dtype=np.float64), axis=1)
    return table


def _integral(table: np.ndarray, v: float | np.ndarray, u: np.ndarray) -> np.ndarray:
    """Integral of the mask over [0, v) × [0, u) for fractional (v, u): bilinear in the table, which is exact."""
    h, w = table.shape[0] - 1, table.shape[1] - 1
    v = np.clip(v, 0, h)
    u = np.clip(u, 0, w)
    i0 = np.minimum(np.floor(v).astype(np.int64), max(h - 1, 0))
    j0 = np.minimum(np.floor(u).astype(np.int64), max(w - 1, 0))
    a, b = v - i0, u - j0
    i1, j1 = np.minimum(i0 + 1, h), np.minimum(j0 + 1, w)
    return (
        table[i0, j0] * (1 - a) * (1 - b)
        + table[i1, j0] * a * (1 - b)
        + table[i0, j1] * (1 - a) * b
        + table[i1, j1] * a * b
    )


def tissue_fractions(table: np.ndarray, downsample: float, y: int, xs: np.ndarray, size: int) -> np.ndarray:
    """Tissue fraction of the patches [x, x+size) × [y, y+size) (level 0) for one grid row, from the mask's table."""
    v0, v1 = y / downsample, (y + size) / downsample
    u0, u1 = xs / downsample, (xs + size) / downsample
    area = (v1 - v0) * (u1 - u0)
    inside = _integral(table, v1, u1) - _integral(table, v0, u1) - _integral(table, v1, u0) + _integral(table, v0, u0)
    return np.clip(inside / area, 0.0, 1.0)


def score_grid(
    mask: np.ndarray, downsample: float, dimensions: tuple[int, int], size: int, stride: int, min_fraction: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """Origins (x, y) and tissue fractions of the grid patches with fraction ≥ min_fraction, in row-major order.

    Rows whose band of the mask holds no tissue are skipped after one lookup, so the work follows the tissue.
    Also returns the number of candidate patches (the whole grid).
    """
    width, height = dimensions
    xs, ys = grid_origins(width, size, stride), grid_origins(height, size, stride)
    table = summed_area(mask)
    full_width = np.array([table.shape[1] - 1], np.float64)
    keep_x, keep_y, keep_f = [], [], []
    for y in ys:
        v0, v1 = y / downsample, (y + size) / downsample
        band = _integral(table, v1, full_width) - _integral(table, v0, full_width)
        if band[0] <= 0 and min_fraction > 0:
            continue
        fractions = tissue_fractions(table, downsample, int(y), xs, size)
        hit = fractions >= min_fraction - _EPS
        keep_x.append(xs[hit])
        keep_y.append(np.full(int(hit.sum()), y, np.int64))
        keep_f.append(fractions[hit])
    if not keep_x:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float64), len(xs) * len(ys)
    return np.concatenate(keep_x), np.concatenate(keep_y), np.concatenate(keep_f), len(xs) * len(ys)


def patch_table(slide_id: str, xs: np.ndarray, ys: np.ndarray, size: int, fractions: np.ndarray) -> pd.DataFrame:
    """The contract's patch table: slide_id, x, y, width, height (level-0 px), tissue_fraction."""
    n = len(xs)
    table = pd.DataFrame(
        {
            "slide_id": [slide_id] * n,
            "x": np.asarray(xs, np.int64),
            "y": np.asarray(ys, np.int64),
            "width": np.full(n, size, np.int64),
            "height": np.full(n, size, np.int64),
            "tissue_fraction": np.asarray(fractions, np.float32),
        }
    )
    return table.astype(PATCH_COLUMNS)


def coverage(shape: tuple[int, int], downsample: float, xs: np.ndarray, ys: np.ndarray, size: int) -> np.ndarray:
    """Boolean raster (thumbnail shape) of the thumbnail pixels touched by the given patches (for the overlay)."""
    h, w = shape
    diff = np.zeros((h + 1, w + 1), np.int32)
    r0 = np.clip(np.floor(ys / downsample).astype(np.int64), 0, h)
    c0 = np.clip(np.floor(xs / downsample).astype(np.int64), 0, w)
    r1 = np.clip(np.ceil((ys + size) / downsample).astype(np.int64), 0, h)
    c1 = np.clip(np.ceil((xs + size) / downsample).astype(np.int64), 0, w)
    for rr, cc, sign in ((r0, c0, 1), (r0, c1, -1), (r1, c0, -1), (r1, c1, 1)):
        np.add.at(diff, (rr, cc), sign)
    return np.cumsum(np.cumsum(diff, axis=0), axis=1)[:h, :w] > 0


@dataclasses.dataclass
class TilingResult:
    patches: pd.DataFrame
    thumbnail: np.ndarray
    mask: np.ndarray
    downsample: float
    qc: dict


def tile_slide(slide: Slide, slide_id: str, tiling, tissue_of: TilingResult | None = None) -> TilingResult:
    """Tissue mask on a thumbnail and the scored patch grid of one open slide.

    ``tiling`` is a ``proganomaly.config.TilingConfig``. ``tissue_of``: an earlier result on the same slide with the
    same tissue settings, whose thumbnail and mask are reused (several patch grids over one tissue mask). Raises
    TilingError when no patch passes the thresholds.
    """
    start = time.perf_counter()
    tissue = tiling.tissue
    if tissue_of is None:
        ds = thumbnail_downsample(tiling.thumbnail_mpp, slide.mpp)
        thumb = slide.thumbnail(ds)
        t_thumb = time.perf_counter() - start
        mask, info = detect_tissue(
            thumb,
            slide.mpp * ds,
            method=tissue.method,
            saturation_threshold=tissue.saturation_threshold,
            closing_um=tissue.closing_um,
            min_object_um2=tissue.min_object_um2,
            min_hole_um2=tissue.min_hole_um2,
        )
    else:
        ds, thumb, mask, info = tissue_of.downsample, tissue_of.thumbnail, tissue_of.mask, tissue_of.qc["tissue"]
        t_thumb = 0.0
    size = level0_extent(tiling.patch_size_px, tiling.target_mpp, slide.mpp)
    stride = level0_extent(tiling.stride_px, tiling.target_mpp, slide.mpp)
    xs, ys, fractions, candidates = score_grid(mask, ds, slide.dimensions, size, stride, tiling.min_tissue_fraction)
    width, height = slide.dimensions
    qc = {
        "slide_id": slide_id,
        "slide_file": str(slide.path),
        "dimensions": {"width": width, "height": height},
        "levels": [{"width": lv.width, "height": lv.height, "downsample": list(lv.downsample)} for lv in slide.levels],
        "mpp": slide.mpp,
        "mpp_source": slide.mpp_source,
        "thumbnail_downsample": ds,
        "thumbnail_level": slide.best_level(ds),
        "thumbnail_shape": {"width": int(thumb.shape[1]), "height": int(thumb.shape[0])},
        "tissue": info,
        "tissue_fraction": info["tissue_fraction"],
        "patch": {
            "patch_size_px": tiling.patch_size_px,
            "stride_px": tiling.stride_px,
            "target_mpp": tiling.target_mpp,
            "size_level0_px": size,
            "stride_level0_px": stride,
            "min_tissue_fraction": tiling.min_tissue_fraction,
        },
        "candidate_patches": candidates,
        "patch_count": len(xs),
        "patch_tissue_fraction_mean": float(fractions.mean()) if len(xs) else None,
        "seconds": {"thumbnail": round(t_thumb, 3), "total": round(time.perf_counter() - start, 3)},
    }
    result = TilingResult(patch_table(slide_id, xs, ys, size, fractions), thumb, mask, ds, qc)
    if len(xs) == 0:
        error = TilingError(
            f"slide '{slide_id}' ({slide.path}): no tissue patches at the given thresholds: the tissue mask covers "
            f"{info['tissue_fraction']:.2%} of the slide (saturation threshold {info['threshold']:.3f}, method "
            f"{tissue.method}) and no {size}-px patch of the {candidates}-patch grid reaches "
            f"tiling.min_tissue_fraction={tiling.min_tissue_fraction}. Lower tiling.min_tissue_fraction, "
            "tiling.tissue.saturation_threshold or tiling.tissue.min_object_um2 (or check that the slide holds "
            "tissue, and its mpp)"
        )
        error.result = result  # so that the caller can still save the mask for inspection
        raise error
    return result


def render_overlay(slide: Slide, result: TilingResult, long_side_px: int = 800) -> np.ndarray:
    """Report image: the slide with the tissue outline and kept patches, about ``long_side_px`` on its long side.

    Small slides have tiny tissue thumbnails, so the picture is read again at a finer downsample (never finer than
    level 0, never coarser than the tissue thumbnail) and the mask is enlarged to it by nearest neighbour.
    """
    width, height = slide.dimensions
    ds = min(max(max(width, height) / long_side_px, 1.0), result.downsample)
    view = result.thumbnail if ds == result.downsample else slide.thumbnail(ds)
    rows = np.minimum(
        ((np.arange(view.shape[0]) + 0.5) * ds / result.downsample).astype(np.int64), len(result.mask) - 1
    )
    cols = np.minimum(
        ((np.arange(view.shape[1]) + 0.5) * ds / result.downsample).astype(np.int64), result.mask.shape[1] - 1
    )
    mask = result.mask[np.ix_(rows, cols)]
    covered = None
    for size, p in result.patches.groupby("width"):  # several grids (detectors) may share one slide's overlay
        cells = coverage(mask.shape, ds, p["x"].to_numpy(), p["y"].to_numpy(), int(size))
        covered = cells if covered is None else covered | cells
    return outline_overlay(view, mask, covered)
