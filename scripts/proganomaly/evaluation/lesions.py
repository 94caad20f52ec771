"""Lesion-level detection: does the prediction find each annotated region at all?

A lesion is one annotated region: one polygonal GeoJSON feature (after the class filter), or one connected piece
of a mask-image annotation, clipped to tissue (lesions with no area in tissue are left out). The rule: a lesion is
hit when the predicted polygons cover at least `min_overlap` (config evaluation.lesion_min_overlap, default 1 %) of
its area in tissue. Lesion sensitivity = lesions hit / lesions, over all lesions of the slides pooled (per class and
group: the lesions of that class / group).

FROC-style curve (per split pooled, at the operating dilation): per threshold, lesion sensitivity against the
false-positive area per mm² of normal tissue (FP area / normal tissue area, both summed over every slide of the
split, normal-only slides included).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import shapely

from proganomaly.evaluation import classes

TABLE_COLUMNS = ("lesion", "class", "group", "area")


def slide_lesions(path, annotation, tissue, class_filter=None, is_mask: bool = False):
    """(lesion geometries clipped to tissue, table lesion, class, group, area (level-0 px²)) of one slide."""
    if is_mask:
        parts = shapely.get_parts(annotation) if not annotation.is_empty else []
        found = [(g, classes.UNCLASSIFIED, classes.UNCLASSIFIED) for g in parts]
    else:
        found = classes.feature_regions(path, class_filter)
    geoms, rows = [], []
    for g, cls, group in found:
        inside = shapely.intersection(g, tissue)
        if inside.area > 0:
            rows.append({"lesion": len(geoms), "class": cls, "group": group, "area": float(inside.area)})
            geoms.append(inside)
    return geoms, pd.DataFrame(rows, columns=list(TABLE_COLUMNS))


def with_lesions(covered: pd.DataFrame, table: pd.DataFrame, mpp: float | None = None) -> pd.DataFrame:
    """The grid's per-cell lesion cover joined with the lesions' class, group and area (µm² too when mpp given)."""
    out = covered.merge(table, on="lesion", how="left")
    if mpp is not None:
        out["area_um2"] = out["area"] * mpp * mpp
        out["covered_um2"] = out["covered"] * mpp * mpp
    return out


def hits(covered, area, min_overlap: float) -> np.ndarray:
    """Whether each lesion is hit: covered ≥ min_overlap × area (a lesion with no area is never hit)."""
    covered, area = np.asarray(covered, dtype=float), np.asarray(area, dtype=float)
    # A relative slack of 1e-9 keeps exactly-at-the-rule covers hit despite floating-point sums.
    return (area > 0) & (covered >= min_overlap * area * (1 - 1e-9))


def sensitivity(table: pd.DataFrame, min_overlap: float) -> dict:
    """{lesions, hit, sensitivity (None without lesions), class: {name: ...}, group: {name: ...}} of a table of
    lesions at one cell (columns covered, area, class, group)."""

    def one(sub):
        hit = int(hits(sub["covered"], sub["area"], min_overlap).sum())
        return {"lesions": len(sub), "hit": hit, "sensitivity": hit / len(sub) if len(sub) else None}

    out = one(table) | {"min_overlap": min_overlap}
    for level in classes.LEVELS:
        out[level] = {str(name): one(sub) for name, sub in table.groupby(level, sort=False)} if len(table) else {}
    return out


def nearest(values, target: float) -> float:
    values = np.asarray(sorted(set(float(v) for v in values)))
    return float(values[np.argmin(np.abs(values - target))])


def froc(pooled: pd.DataFrame, lesion_grid: pd.DataFrame, dilation: float, min_overlap: float) -> dict:
    """Lesion sensitivity against FP area per mm² of normal tissue over the thresholds, at the grid dilation
    nearest `dilation`; `pooled` is the split's pooled grid (µm² areas), `lesion_grid` its slides' lesion grids
    concatenated (columns threshold, dilation, covered, area)."""
    d = nearest(pooled["dilation"], dilation)
    g = pooled[pooled["dilation"] == d].sort_values("threshold")
    fp, tn = g["false_positive_um2"].to_numpy(float), g["true_negative_um2"].to_numpy(float)
    with np.errstate(divide="ignore", invalid="ignore"):
        fp_rate = np.where(fp + tn > 0, fp / np.where(fp + tn > 0, fp + tn, 1.0), np.nan)
    sens = []
    for t in g["threshold"]:
        cell = lesion_grid[(lesion_grid["threshold"] == t) & (lesion_grid["dilation"] == d)]
        sens.append(float(hits(cell["covered"], cell["area"], min_overlap).mean()) if len(cell) else None)
    return {
        "definition": "per threshold at the dilation below: lesion sensitivity (lesions hit / lesions, hit = "
        f"covered ≥ {min_overlap:g} of the lesion) against false-positive area per mm² of normal tissue (FP / "
        "(FP + TN), areas summed over every slide of the split)",
        "dilation": d,
        "threshold": [float(t) for t in g["threshold"]],
        "fp_area_mm2_per_mm2": [None if not np.isfinite(v) else float(v) for v in fp_rate],
        "lesion_sensitivity": sens,
        "lesions": int(lesion_grid[["slide_id", "lesion"]].drop_duplicates().shape[0])
        if "slide_id" in lesion_grid and len(lesion_grid)
        else 0,
    }
