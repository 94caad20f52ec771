"""Metrics from confusion areas, best grid cells, pooling over slides, and pixel-level AUROC / AP: the one metrics
layer (the report only selects and plots what is computed here). A new metric is one entry in `confusion_metrics`
(and METRICS, to report it at the best cells).

Every ratio whose denominator is zero is NaN (never a crash, never a silent 0): e.g. precision with no prediction,
recall on a slide whose annotation lies outside the tissue.
"""

from __future__ import annotations

import math
import zlib

import numpy as np
import pandas as pd
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score, roc_curve

AREAS = ("true_positive", "false_positive", "false_negative", "true_negative")
METRICS = ("precision", "recall", "f1", "f_beta", "iou", "dice", "accuracy", "specificity", "normal_in_polygons",
           "fp_per_tissue", "anomalous_share", "f1_flag_everything")  # fmt: skip


def _ratio(num, den):
    num, den = np.asarray(num, dtype=float), np.asarray(den, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)


def confusion_metrics(tp, fp, fn, tn, beta: float = 1.0) -> dict[str, np.ndarray]:
    """Precision, recall, F1, F-β, IoU, Dice, accuracy and specificity from areas (arrays or scalars), and the
    specificity side: normal_in_polygons = FP / normal tissue (1 − specificity), fp_per_tissue = FP / tissue,
    anomalous_share p = (TP + FN) / tissue and f1_flag_everything = 2p / (1 + p), the F1 of flagging all tissue.

    Without anomalous tissue (TP + FN = 0, a normal-only slide) recall, F1, F-β, IoU and Dice are undefined (NaN),
    not 0: there is nothing to find, so no score for finding it.
    """
    tp, fp, fn, tn = (np.asarray(a, dtype=float) for a in (tp, fp, fn, tn))
    b2 = beta * beta
    positive = tp + fn > 0
    share = _ratio(tp + fn, tp + fp + fn + tn)

    def found(values):
        return np.where(positive, values, np.nan)

    return {
        "precision": _ratio(tp, tp + fp),
        "recall": _ratio(tp, tp + fn),
        "f1": found(_ratio(2 * tp, 2 * tp + fp + fn)),
        "f_beta": found(_ratio((1 + b2) * tp, (1 + b2) * tp + b2 * fn + fp)),
        "iou": found(_ratio(tp, tp + fp + fn)),
        # Dice equals F1 for sets; kept under its own name because both communities look for theirs.
        "dice": found(_ratio(2 * tp, 2 * tp + fp + fn)),
        "accuracy": _ratio(tp + tn, tp + fp + fn + tn),
        "specificity": _ratio(tn, tn + fp),
        "normal_in_polygons": _ratio(fp, fp + tn),
        "fp_per_tissue": _ratio(fp, tp + fp + fn + tn),
        "anomalous_share": share,
        "f1_flag_everything": found(_ratio(2 * share, 1 + share)),
    }


def with_metrics(grid: pd.DataFrame, mpp: float | None, beta: float = 1.0) -> pd.DataFrame:
    """Add µm² areas (when mpp is known) and the metrics to a grid of px² areas."""
    out = grid.copy()
    if mpp is not None:
        for col in (*AREAS, "tissue_area"):
            out[f"{col}_um2"] = out[col] * mpp * mpp
    for name, values in confusion_metrics(*(out[c] for c in AREAS), beta=beta).items():
        out[name] = values
    out["beta"] = beta
    return out


def best_cell(grid: pd.DataFrame, metric: str) -> dict | None:
    """The cell with the highest `metric` (NaN ignored; ties go to the first cell in threshold-major order)."""
    values = grid[metric].to_numpy(dtype=float)
    if not np.isfinite(values).any():
        return None
    row = grid.iloc[int(np.nanargmax(values))]
    return {
        "threshold": float(row["threshold"]),
        "dilation": float(row["dilation"]),
        "value": float(row[metric]),
        **{m: _num(row[m]) for m in METRICS},
        **({"num_polygons": int(row["num_polygons"])} if "num_polygons" in row else {}),
    }


def _num(x) -> float | None:
    x = float(x)
    return None if math.isnan(x) else x


def pool_grids(grids: list[pd.DataFrame], beta: float = 1.0, by: tuple[str, ...] = ()) -> pd.DataFrame:
    """Sum areas (µm², so slides of different resolution add up) per cell (and `by` columns) over slides, then
    recompute metrics."""
    if not grids:
        raise ValueError("no slide grids to pool")
    keys = [*by, "threshold", "dilation", "dilation_mode"]
    # Plain columns sum level-0 px² (meaningful when the slides share an mpp); metrics use the µm² sums.
    cols = ["num_polygons", *AREAS, "tissue_area", *(f"{a}_um2" for a in AREAS), "tissue_area_um2"]
    both = pd.concat(grids, ignore_index=True)
    cols = [c for c in cols if c != "num_polygons" or c in both.columns]
    missing = [c for c in cols if c not in both.columns]
    if missing:
        raise ValueError(f"slide grids lack {missing} (written without an mpp?)")
    pooled = both.groupby(keys, sort=False, as_index=False)[cols].sum()
    pooled["num_slides"] = both.groupby(keys, sort=False).size().to_numpy()
    for name, values in confusion_metrics(*(pooled[f"{a}_um2"] for a in AREAS), beta=beta).items():
        pooled[name] = values
    pooled["beta"] = beta
    return pooled


PART_KEYS = ("level", "name")


def pool_part_grids(grids: list[pd.DataFrame], part_grids: list[pd.DataFrame], beta: float = 1.0) -> pd.DataFrame:
    """Per part (class or group), areas summed per cell over every slide, metrics recomputed.

    A slide that lacks a part still counts: its prediction on normal tissue is false positive and the rest of its
    normal tissue true negative for that part (TP = FN = 0), so a part's pooled FP and TN are those of the pooled
    all-classes grid, as at pixel level, where every slide's normal pixels are negatives for every part.
    """
    parts = list(dict.fromkeys(k for pg in part_grids for k in zip(pg["level"], pg["name"], strict=True)))
    filled = []
    for grid, pg in zip(grids, part_grids, strict=True):
        own = set(zip(pg["level"], pg["name"], strict=True))
        filled.append(pg)
        for level, name in (p for p in parts if p not in own):
            absent = grid.drop(columns=["num_polygons"], errors="ignore").copy()
            for col in ("true_positive", "false_negative"):
                absent[col] = 0.0
                if f"{col}_um2" in absent:
                    absent[f"{col}_um2"] = 0.0
            absent["tissue_area"] = absent[list(AREAS)].sum(axis=1)
            if "tissue_area_um2" in absent:
                absent["tissue_area_um2"] = absent[[f"{a}_um2" for a in AREAS]].sum(axis=1)
            filled.append(absent.assign(level=level, name=name))
    if not parts:
        return pd.DataFrame(columns=[*PART_KEYS, "threshold", "dilation", "dilation_mode", *AREAS])
    return pool_grids(filled, beta, by=PART_KEYS)


def best_part_cells(part_grid: pd.DataFrame, metric: str) -> dict[str, dict[str, dict | None]]:
    """{level: {name: best cell by `metric`}} of a part grid (grid order within each part is kept)."""
    out: dict[str, dict] = {}
    for (level, name), sub in part_grid.groupby(list(PART_KEYS), sort=False):
        out.setdefault(level, {})[name] = best_cell(sub.reset_index(drop=True), metric)
    return out


def part_pixel_scores(pixels: pd.DataFrame, columns: dict, maps, weights=None, curve_points: int = 200) -> dict:
    """{level: {name: {map: pixel_scores}}}: each part's pixels (bool column `columns[(level, name)]`) against
    normal pixels (`label` false); pixels of other parts are left out."""
    normal = ~pixels["label"].to_numpy(bool)
    out: dict[str, dict] = {}
    for (level, name), col in columns.items():
        positive = pixels[col].fillna(False).to_numpy(bool) if col in pixels else np.zeros(len(pixels), bool)
        keep = positive | normal
        w = None if weights is None else np.asarray(weights)[keep]
        out.setdefault(level, {})[name] = {
            m: pixel_scores(positive[keep], pixels[m].to_numpy()[keep], w, curve_points) for m in maps
        }
    return out


def area_record(row) -> dict:
    """The areas and metrics of one cell (a grid row) as JSON-ready numbers."""
    keys = [k for k in (*AREAS, *(f"{a}_um2" for a in AREAS), *METRICS) if k in row]
    return {k: _num(row[k]) for k in keys}


def cell_metrics(grid: pd.DataFrame, beta: float = 1.0) -> pd.DataFrame:
    """The grid with its cells' metrics (and false-positive rate) recomputed from its confusion areas.

    Areas in µm² are used when the grid has them (pooled grids, whose px² sums mix resolutions), else px².
    """
    missing = [c for c in ("threshold", "dilation", *AREAS) if c not in grid.columns]
    if missing:
        raise ValueError(f"grid table lacks column(s) {missing}; is it an evaluation grid.parquet?")
    um2 = [f"{a}_um2" for a in AREAS]
    tp, fp, fn, tn = (grid[c].to_numpy(np.float64) for c in (um2 if set(um2) <= set(grid.columns) else AREAS))
    out = grid.copy()
    for name, values in confusion_metrics(tp, fp, fn, tn, beta=beta).items():
        out[name] = values
    out["fpr"] = _ratio(fp, fp + tn)
    return out


def sample_pixels(n: int, max_pixels: int, seed: int, slide: str) -> np.ndarray:
    """Deterministic sorted subsample of range(n) (all of it when n <= max_pixels); the seed mixes in the slide."""
    if n <= max_pixels:
        return np.arange(n)
    rng = np.random.default_rng([seed, zlib.crc32(slide.encode())])
    return np.sort(rng.choice(n, size=max_pixels, replace=False))


def pixel_scores(labels, scores, weights=None, curve_points: int = 200) -> dict:
    """AUROC and average precision of `scores` against binary `labels`, plus subsampled ROC and PR curves.

    NaN scores are dropped (and counted). With one class only, AUROC and AP are undefined: NaN, no curves.
    """
    labels = np.asarray(labels, dtype=bool)
    scores = np.asarray(scores, dtype=np.float64)
    weights = None if weights is None else np.asarray(weights, dtype=np.float64)
    ok = np.isfinite(scores)
    dropped = int((~ok).sum())
    labels, scores = labels[ok], scores[ok]
    weights = None if weights is None else weights[ok]
    out = {"n_pixels": len(labels), "n_positive": int(labels.sum()), "n_nonfinite_dropped": dropped}
    if len(labels) == 0 or labels.all() or not labels.any():
        return out | {"auroc": None, "average_precision": None, "roc": None, "pr": None}
    fpr, tpr, thr = roc_curve(labels, scores, sample_weight=weights)
    prec, rec, pthr = precision_recall_curve(labels, scores, sample_weight=weights)
    roc_idx, pr_idx = _thin(len(fpr), curve_points), _thin(len(pthr), curve_points)
    return out | {
        "auroc": float(roc_auc_score(labels, scores, sample_weight=weights)),
        "average_precision": float(average_precision_score(labels, scores, sample_weight=weights)),
        "roc": {"fpr": fpr[roc_idx].tolist(), "tpr": tpr[roc_idx].tolist(), "threshold": _finite(thr[roc_idx])},
        "pr": {
            "precision": prec[pr_idx].tolist(),
            "recall": rec[pr_idx].tolist(),
            "threshold": _finite(pthr[pr_idx]),
        },
    }


def _thin(n: int, k: int) -> np.ndarray:
    """At most k indices of range(n), evenly spread, always keeping both ends."""
    if n <= k:
        return np.arange(n)
    return np.unique(np.round(np.linspace(0, n - 1, k)).astype(np.int64))


def _finite(values: np.ndarray) -> list:
    # roc_curve's first threshold is +inf, which JSON cannot hold.
    return [float(v) if np.isfinite(v) else None for v in values]
