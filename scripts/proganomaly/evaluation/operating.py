"""The operating point (one threshold × dilation cell): chosen on the pooled validation slides, applied to every
evaluated slide, so the reported test metrics at that point are never tuned on the test slides themselves.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd

from proganomaly.evaluation import metrics
from proganomaly.evaluation.grid import GridSpec, Region, evaluate_grids

CHOSEN_ON = "validation"


def fixed(ev, reason: str) -> dict:
    """The configured fixed cell, with the reason it is used."""
    return {
        "source": "fixed",
        "threshold": float(ev.operating_threshold),
        "dilation": float(ev.operating_dilation),
        "reason": reason,
    }


def choose(grids: dict[str, pd.DataFrame], ev) -> dict:
    """The operating point from the validation slides' grids {slide: grid with µm² areas}, every validation slide
    with an annotation file (normal-only slides, whose file has zero features, included).

    `best_f1_within_budget` (the default): among the cells whose share of normal tissue inside the predicted
    polygons, pooled over all validation slides, is at most `ev.fp_budget`, the best pooled F1; without anomalous
    tissue on any validation slide (normal-only slides only), the most sensitive cell within the budget (lowest
    threshold, then largest dilation). When no cell meets the budget: the cell with the least normal tissue inside
    (best F1 on ties), with a "warning". `best_f1` / `best_iou`: the best cell of the pooled grid, no budget.
    Falls back to the fixed cell, saying why, when that is configured, when there are no validation slides, or when
    the metric is undefined in every pooled cell.
    """
    if ev.operating_point == "fixed":
        return fixed(ev, "evaluation.operating_point is 'fixed'")
    if not grids:
        return fixed(
            ev,
            f"no annotated {CHOSEN_ON} slides to choose on; evaluation.operating_threshold and "
            "evaluation.operating_dilation used instead",
        )
    pooled = metrics.pool_grids(list(grids.values()), beta=ev.beta)
    if ev.operating_point == "best_f1_within_budget":
        normal = [s for s, g in grids.items() if normal_only(g)]
        # What is drawn on a normal slide is what the budget limits. On annotated slides the polygons' spill around
        # a lesion is normal tissue too, but F1's precision already charges it; counting it against a budget meant
        # for normal slides would forbid every polygon around every lesion.
        budget_on = metrics.pool_grids([grids[s] for s in normal], beta=ev.beta) if normal else pooled
        return _within_budget(pooled, list(grids), float(ev.fp_budget), budget_on, normal)
    metric = ev.operating_point.removeprefix("best_")
    cell = metrics.best_cell(pooled, metric)
    if cell is None:
        return fixed(ev, f"{metric} undefined in every cell of the pooled {CHOSEN_ON} grid")
    return {
        "source": f"{ev.operating_point} of the pooled {CHOSEN_ON} slides",
        "threshold": cell["threshold"],
        "dilation": cell["dilation"],
        "chosen_on": {"split": CHOSEN_ON, "slides": list(grids), "metric": metric, "cell": cell},
    }


def normal_only(grid: pd.DataFrame) -> bool:
    """A slide grid without anomalous tissue (its annotation file has zero features)."""
    return bool((grid["true_positive_um2"] + grid["false_negative_um2"]).max() <= 0)


def _within_budget(pooled: pd.DataFrame, slides: list[str], budget: float, budget_on: pd.DataFrame,
                   normal_slides: list[str]) -> dict:  # fmt: skip
    keys = ["threshold", "dilation", "dilation_mode"]
    aligned = pooled[keys].merge(budget_on[[*keys, "normal_in_polygons"]], on=keys, how="left", validate="1:1")
    normal = aligned["normal_in_polygons"].to_numpy(float)
    # No normal tissue at all: nothing can be a false positive, so every cell is within budget.
    normal = np.where(np.isfinite(normal), normal, 0.0)
    ok = normal <= budget
    annotated = bool((pooled["true_positive_um2"] + pooled["false_negative_um2"]).max() > 0)
    source = f"best_f1_within_budget of the pooled {CHOSEN_ON} slides"
    out: dict = {
        "fp_budget": budget,
        "budget_on": (
            f"normal tissue of the normal-only {CHOSEN_ON} slides {normal_slides}"
            if normal_slides
            else f"normal tissue of all {CHOSEN_ON} slides (none is normal-only)"
        ),
    }
    if not ok.any():
        # The least normal tissue inside; among equals the best F1, then the first cell.
        tied = np.flatnonzero(normal == normal.min())
        f1 = pooled["f1"].to_numpy(float)[tied]
        row = int(tied[int(np.nanargmax(f1))]) if np.isfinite(f1).any() else int(tied[0])
        metric = "normal_in_polygons"
        out["reason"] = out["warning"] = (
            f"no cell of the pooled {CHOSEN_ON} grid keeps the normal tissue inside the predicted polygons within "
            f"evaluation.fp_budget = {budget:g} (least: {normal.min():.4g}); the cell with the least is used. Raise "
            "the thresholds' range or the budget, or treat this operating point as a non-detection"
        )
    elif annotated and np.isfinite(pooled["f1"].to_numpy(float)[ok]).any():
        inside = pooled[ok]
        row = int(inside.index[int(np.nanargmax(inside["f1"].to_numpy(float)))])
        metric = "f1"
    else:
        # Normal slides only: the most sensitive cell the budget allows.
        inside = pooled[ok].sort_values(["threshold", "dilation"], ascending=[True, False], kind="stable")
        row = int(inside.index[0])
        metric = "sensitivity (lowest threshold, then largest dilation)"
        out["reason"] = f"no anomalous tissue on the {CHOSEN_ON} slides: the most sensitive cell within the budget"
    out["normal_in_polygons_within_budget_slides"] = float(normal[row])
    cell = metrics.best_cell(pooled.loc[[row]].reset_index(drop=True), "normal_in_polygons") or {}
    return {
        "source": source,
        "threshold": float(pooled.at[row, "threshold"]),
        "dilation": float(pooled.at[row, "dilation"]),
        **out,
        "chosen_on": {"split": CHOSEN_ON, "slides": slides, "metric": metric, "cell": cell},
    }


def evaluate_point(kde, downsample: float, region: Region, spec: GridSpec, mpp: float, parts: dict, op: dict,
                   beta: float) -> tuple[pd.DataFrame, pd.DataFrame]:  # fmt: skip
    """The one-cell grid and part grid at the operating point, with µm² areas and metrics, by exact polygon
    overlays (the reported numbers, and the areas of the exported polygons); the grid's raster cell at the same
    point agrees within grid.RASTER_TOLERANCE."""
    one = dataclasses.replace(
        spec, thresholds=(float(op["threshold"]),), dilations=(float(op["dilation"]),), method="exact"
    )
    grid, part = evaluate_grids(kde, downsample, region, one, mpp, parts)
    return metrics.with_metrics(grid, mpp, beta), metrics.with_metrics(part, mpp, beta)


def point_record(grid: pd.DataFrame, part: pd.DataFrame) -> dict:
    """{all: areas and metrics, class: {name: ...}, group: {name: ...}} of a one-cell grid and part grid."""
    cols = ("tissue_area", "tissue_area_um2")
    out = {"all": _record(grid.iloc[0], cols) | {"num_polygons": int(grid["num_polygons"].iloc[0])}}
    for level in ("class", "group"):
        out[level] = {r["name"]: _record(r, cols) for _, r in part[part["level"] == level].iterrows()}
    return out


def _record(row, extra) -> dict:
    return metrics.area_record(row) | {k: float(row[k]) for k in extra if k in row}


def record_frames(record: dict, op: dict, mode: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Inverse of point_record (for pooling over slides): a one-cell grid and its part grid."""
    key = {"threshold": float(op["threshold"]), "dilation": float(op["dilation"]), "dilation_mode": mode}
    grid = pd.DataFrame([key | record["all"]])
    rows = [key | {"level": lv, "name": n} | r for lv in ("class", "group") for n, r in record.get(lv, {}).items()]
    cols = [*metrics.PART_KEYS, *key, *metrics.AREAS, *(f"{a}_um2" for a in metrics.AREAS)]
    return grid, pd.DataFrame(rows).reindex(columns=[*cols, "tissue_area", "tissue_area_um2"])


def pooled_record(grids: list[pd.DataFrame], parts: list[pd.DataFrame], beta: float) -> dict:
    """Areas at the operating point summed over slides (parts absent from a slide as in pool_part_grids)."""
    grid = metrics.pool_grids(grids, beta)
    part = metrics.pool_part_grids(grids, parts, beta)
    return point_record(grid, part)
