"""The threshold × dilation grid of polygon confusion areas for one slide.

Prediction and annotation are both clipped to the tissue region, so TP + FP + FN + TN equals the tissue area in
every cell. Areas are in level-0 px² (and µm² via the slide's mpp). Two methods give the same areas within a stated
tolerance (`GridSpec.method`):
- "raster" (the default; `rastergrid`): exact pixel coverage of the dilated prediction on the map grid, dot products
  with the exact coverage of tissue, annotation and parts; seconds per slide.
- "exact": shapely overlays of the polygons (polygonised once per threshold on pixel edges, dilated by a
  coordinate transform, unioned where bounding boxes chain); minutes per slide on a noisy map. Used for the one
  cell of the operating point (`operating.evaluate_point`) and as the reference of the raster method's tests.
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
import pandas as pd
import shapely
from shapely.geometry.base import BaseGeometry

from proganomaly.evaluation import geometry, rastergrid

log = logging.getLogger(__name__)

AREA_COLUMNS = ("true_positive", "false_positive", "false_negative", "true_negative")
# The raster method's stated tolerance, for every area of every cell, all classes and per part: |raster − exact| ≤
# max(RASTER_TOLERANCE × (exact prediction area + annotation area), RASTER_BLOCKS × area of one raster block (see
# rastergrid.block_factor)). The first term is the one that binds on slide-sized maps (bench_evaluation.py), the
# second on maps of a few thousand pixels (tests/test_evaluation.py checks both on synthetic slides).
RASTER_TOLERANCE = 2e-3
RASTER_BLOCKS = 4.0


def raster_tolerance(exact_pred_area, annotation_area: float, dilation, spec, downsample: float):
    """The stated bound on |raster − exact| of a cell's areas (arrays broadcast)."""
    block = np.array([rastergrid.block_factor(spec.dilation_mode, f) for f in np.atleast_1d(dilation)], dtype=float)
    relative = RASTER_TOLERANCE * (np.asarray(exact_pred_area, dtype=float) + annotation_area)
    return np.maximum(relative, RASTER_BLOCKS * (block * downsample) ** 2)


@dataclasses.dataclass(frozen=True)
class GridSpec:
    """How the grid is swept: the geometric part of the evaluation config (no defaults: they live in the schema)."""

    thresholds: tuple[float, ...]
    dilations: tuple[float, ...]
    dilation_mode: str  # "scale": factor about an origin; "buffer": distance in µm
    dilation_origin: str  # "centroid", or "center" (bounding-box centre, as the original Beam job)
    contour_tolerance_px: float  # Douglas-Peucker tolerance in map px; 0 keeps pixel boundaries exact
    block_px: int = 64  # speed only: block size of the coarse map that skips empty regions
    method: str = "raster"  # or "exact"; the raster method agrees within raster_tolerance (module docstring)

    @classmethod
    def from_config(cls, ev) -> GridSpec:
        return cls(
            thresholds=tuple(float(t) for t in ev.thresholds),
            dilations=tuple(float(d) for d in ev.dilations),
            dilation_mode=ev.dilation_mode,
            dilation_origin=ev.dilation_origin,
            contour_tolerance_px=float(ev.contour_tolerance_px),
            method=ev.grid_method,
        )


@dataclasses.dataclass(frozen=True)
class Region:
    """Tissue and annotation of one slide in level-0 px; the annotation is already clipped to tissue."""

    tissue: BaseGeometry
    annotation: BaseGeometry

    @classmethod
    def clipped(cls, tissue: BaseGeometry, annotation: BaseGeometry) -> Region:
        return cls(tissue=tissue, annotation=shapely.intersection(annotation, tissue))


def dilate(polys, value: float, spec: GridSpec, origins: np.ndarray, mpp: float) -> np.ndarray:
    """The prediction polygons at one dilation value (a factor, or a buffer distance in µm)."""
    if spec.dilation_mode == "scale":
        return geometry.scale_polygons(polys, value, origins)
    if spec.dilation_mode == "buffer":
        return geometry.buffer_polygons(polys, value / mpp)
    raise ValueError(f"dilation_mode must be 'scale' or 'buffer', got {spec.dilation_mode!r}")


def clipped_pieces(pred, region: Region) -> np.ndarray:
    """The prediction as interior-disjoint pieces (so areas add up) clipped to the tissue; pieces inside the tissue
    skip the clipping overlay."""
    pieces = geometry.disjoint_pieces(pred)
    if len(pieces):
        inside = shapely.contains(region.tissue, pieces)
        pieces[~inside] = shapely.intersection(pieces[~inside], region.tissue)
        pieces = pieces[~shapely.is_empty(pieces)]
    return pieces


def overlap(pieces: np.ndarray, target: BaseGeometry) -> np.ndarray:
    """The pieces' parts inside a prepared target; only pieces touching it are intersected."""
    if not len(pieces) or target.is_empty:
        return np.empty(0, dtype=object)
    hit = pieces[shapely.intersects(target, pieces)]
    return shapely.intersection(hit, target) if len(hit) else hit


def overlap_area(pieces: np.ndarray, target: BaseGeometry) -> float:
    inside = overlap(pieces, target)
    return float(shapely.area(inside).sum()) if len(inside) else 0.0


def polygon_count(pieces: np.ndarray) -> int:
    parts = shapely.get_parts(pieces) if len(pieces) else np.empty(0, dtype=object)
    return int(((shapely.get_type_id(parts) == 3) & (shapely.area(parts) > 0)).sum()) if len(parts) else 0


def cell_areas(pred, region: Region, tissue_area: float, annotation_area: float) -> dict:
    """Exact confusion areas of one prediction (polygons, possibly overlapping) against a region (prepared
    geometries)."""
    pieces = clipped_pieces(pred, region)
    pred_area = float(shapely.area(pieces).sum()) if len(pieces) else 0.0
    tp = overlap_area(pieces, region.annotation) if annotation_area > 0 else 0.0
    return confusion(pred_area, tp, tissue_area, annotation_area, polygon_count(pieces))


def threshold_polygons_l0(kde: np.ndarray, threshold: float, downsample: float, spec: GridSpec, coarse=None):
    """Polygons of `kde > threshold` in level-0 px (exact pixel boundaries unless spec.contour_tolerance_px > 0)."""
    if coarse is None:
        coarse = geometry.block_max(kde, spec.block_px)
    polys = geometry.blocks_polygons(coarse, kde, threshold, spec.block_px)
    polys = geometry.simplify(polys, spec.contour_tolerance_px)
    return geometry.scale_coords(polys, downsample)


def evaluate_grid(
    kde: np.ndarray, downsample: float, region: Region, spec: GridSpec, mpp: float, progress=None
) -> pd.DataFrame:
    """The full threshold × dilation grid (threshold-major), one row per cell, areas in level-0 px²."""
    return evaluate_grids(kde, downsample, region, spec, mpp, {}, progress)[0]


def evaluate_grids(
    kde: np.ndarray, downsample: float, region: Region, spec: GridSpec, mpp: float, parts: dict, progress=None
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The grid, and the same grid against every part {(level, name): region in tissue} (one row per part and
    cell, columns level, name, threshold, dilation, dilation_mode, the four areas and tissue_area = their sum)."""
    grid, part, _ = evaluate_all(kde, downsample, region, spec, mpp, parts, (), progress)
    return grid, part


def evaluate_all(
    kde: np.ndarray, downsample: float, region: Region, spec: GridSpec, mpp: float, parts: dict, lesions=(),
    progress=None,
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:  # fmt: skip
    """`evaluate_grids` plus, per cell, the area of each lesion (annotated region in tissue, `lesions[k]`) that the
    prediction covers: one row per cell and lesion, columns threshold, dilation, lesion (its index), covered (px²)."""
    if spec.method not in ("raster", "exact"):
        raise ValueError(f"grid method must be 'raster' or 'exact', got {spec.method!r}")
    tissue_area, annotation_area = float(region.tissue.area), float(region.annotation.area)
    part_area = {k: float(g.area) for k, g in parts.items()}
    cells = _raster_cells if spec.method == "raster" else _exact_cells
    rows, part_rows, lesion_rows = [], [], []
    for t, f, pred_area, tp, part_tp, num, covered in cells(kde, downsample, region, spec, mpp, parts, lesions,
                                                              progress):  # fmt: skip
        cell = confusion(pred_area, tp, tissue_area, annotation_area, num)
        key = {"threshold": float(t), "dilation": float(f)}
        rows.append(key | cell)
        part_rows += [key | part_row(k, part_tp[k], part_area[k], cell) for k in parts]
        lesion_rows += [key | {"lesion": k, "covered": float(c)} for k, c in enumerate(covered)]
    df = pd.DataFrame(rows)
    df.insert(2, "dilation_mode", spec.dilation_mode)
    df["tissue_area"] = tissue_area
    cols = ["level", "name", "threshold", "dilation", "dilation_mode", *AREA_COLUMNS, "tissue_area"]
    pdf = pd.DataFrame(part_rows).reindex(columns=cols)
    pdf["dilation_mode"] = spec.dilation_mode
    pdf["tissue_area"] = pdf[list(AREA_COLUMNS)].sum(axis=1)
    ldf = pd.DataFrame(lesion_rows).reindex(columns=["threshold", "dilation", "lesion", "covered"])
    ldf["lesion"] = ldf["lesion"].astype(np.int64)
    return df, pdf, ldf


def confusion(pred_area: float, tp: float, tissue_area: float, annotation_area: float, num: int) -> dict:
    """The four areas of a cell from its prediction area and TP (both inside tissue)."""
    fp = max(pred_area - tp, 0.0)
    fn = max(annotation_area - tp, 0.0)
    tn = tissue_area - tp - fp - fn
    # Exact up to floating-point noise; anything bigger is a bug (the original's negative TN), never clamped away.
    if tn < -1e-6 * max(tissue_area, 1.0):
        raise AssertionError(f"negative true-negative area {tn} (tissue {tissue_area}); prediction not clipped?")
    return {"num_polygons": num, "true_positive": tp, "false_positive": fp, "false_negative": fn,
            "true_negative": max(tn, 0.0)}  # fmt: skip


def part_row(key: tuple[str, str], tp: float, area: float, cell: dict) -> dict:
    """A part's areas (see evaluation.classes): TP and FN from the part's own region, FP and TN those of the cell
    (normal tissue is the same for every part)."""
    return {"level": key[0], "name": key[1], "true_positive": tp, "false_positive": cell["false_positive"],
            "false_negative": max(area - tp, 0.0), "true_negative": cell["true_negative"]}  # fmt: skip


def _raster_cells(kde, downsample, region, spec, mpp, parts, lesions, progress):
    targets = rastergrid.Targets(region, parts, downsample, lesions)
    coarse = geometry.block_max(kde, spec.block_px)

    def polygons(t):
        return threshold_polygons_l0(kde, t, downsample, spec, coarse)

    for t in spec.thresholds:
        for f, c in zip(spec.dilations, rastergrid.threshold_cells(kde, downsample, t, spec, targets, mpp, polygons),
                        strict=True):  # fmt: skip
            yield t, f, c["pred_area"], c["true_positive"], c["part_tp"], c["num_polygons"], c["lesion_cover"]
        if progress is not None:
            progress.update(len(spec.dilations))


def _exact_cells(kde, downsample, region, spec, mpp, parts, lesions, progress):
    coarse = geometry.block_max(kde, spec.block_px)
    shapely.prepare(region.tissue)
    shapely.prepare(region.annotation)
    for target in (*parts.values(), *lesions):
        shapely.prepare(target)
    for t in spec.thresholds:
        polys = threshold_polygons_l0(kde, t, downsample, spec, coarse)
        origins = geometry.dilation_origins(polys, spec.dilation_origin)
        for f in spec.dilations:
            pieces = clipped_pieces(dilate(polys, f, spec, origins, mpp), region)
            pred_area = float(shapely.area(pieces).sum()) if len(pieces) else 0.0
            tp = overlap_area(pieces, region.annotation) if not region.annotation.is_empty else 0.0
            # Parts lie inside the annotation: cut the prediction to it once, so each part meets small pieces only.
            inside = overlap(pieces, region.annotation) if parts or len(lesions) else pieces
            part_tp = {k: overlap_area(inside, g) for k, g in parts.items()}
            covered = [overlap_area(inside, g) for g in lesions]
            yield t, f, pred_area, tp, part_tp, polygon_count(pieces), covered
        if progress is not None:
            progress.update(len(spec.dilations))


def predicted_polygons(
    kde: np.ndarray, downsample: float, region: Region, spec: GridSpec, mpp: float, threshold: float, dilation: float
) -> list[BaseGeometry]:
    """The prediction at one operating point, clipped to tissue, as separate polygons (for GeoJSON export)."""
    polys = threshold_polygons_l0(kde, threshold, downsample, spec)
    pred = dilate(polys, dilation, spec, geometry.dilation_origins(polys, spec.dilation_origin), mpp)
    if len(pred) == 0:
        return []
    clipped = shapely.intersection(geometry.disjoint_pieces(pred), region.tissue)
    return [p for p in shapely.get_parts(clipped) if p.geom_type == "Polygon" and not p.is_empty]
