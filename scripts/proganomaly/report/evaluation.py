"""Evaluation figures from the threshold × dilation grids (results/eval/{slide}/grid.parquet) and metrics.json.

Every number shown is the evaluation stage's (`evaluation.metrics`, computed from the grid's confusion areas, all
clipped to tissue; undefined ratios are NaN, never 0): this module only selects and plots.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from proganomaly.evaluation.metrics import AREAS, cell_metrics
from proganomaly.report import style

METRIC_LABELS = {"f1": "F1 score", "iou": "IoU (Jaccard)", "precision": "precision", "recall": "recall"}


def metric_matrix(grid: pd.DataFrame, metric: str) -> pd.DataFrame:
    """threshold (rows, ascending) × dilation (columns, ascending) matrix of one metric."""
    return (
        grid.pivot_table(index="threshold", columns="dilation", values=metric, aggfunc="first")
        .sort_index(axis=0)
        .sort_index(axis=1)
    )


def best_cell(matrix: pd.DataFrame) -> tuple[int, int] | None:
    """(row, column) of the maximum (first in row-major order on ties), or None when all cells are NaN."""
    values = matrix.to_numpy(np.float64)
    if not np.isfinite(values).any():
        return None
    i = int(np.nanargmax(np.where(np.isfinite(values), values, -np.inf)))
    return divmod(i, values.shape[1])


def _dilation_label(grid: pd.DataFrame) -> str:
    mode = str(grid["dilation_mode"].iloc[0]) if "dilation_mode" in grid.columns and len(grid) else "scale"
    return "dilation (buffer distance, µm)" if mode == "buffer" else "dilation (scale factor about the origin)"


def plot_grid_heatmaps(grid: pd.DataFrame, title: str, metrics=("f1", "iou")):
    """One annotated heat map per metric over threshold × dilation; the best cell is outlined and starred."""
    grid = grid if set(metrics) <= set(grid.columns) else cell_metrics(grid)
    n_t, n_d = grid["threshold"].nunique(), grid["dilation"].nunique()
    fig, axes = style.subplots(1, len(metrics), panel=(1.4 + 0.62 * n_d, 1.3 + 0.36 * n_t))
    for ax, metric in zip(axes[0], metrics, strict=True):
        m = metric_matrix(grid, metric)
        style.sns.heatmap(
            m, ax=ax, vmin=0, vmax=1, cmap="viridis", annot=n_t * n_d <= 200, fmt=".2f", annot_kws={"fontsize": 7},
            xticklabels=[f"{v:g}" for v in m.columns], yticklabels=[f"{v:.3g}" for v in m.index],
            cbar_kws={"label": METRIC_LABELS.get(metric, metric)},
        )  # fmt: skip
        best = best_cell(m)
        if best is not None:
            r, c = best
            ax.add_patch(style.plt.Rectangle((c, r), 1, 1, fill=False, edgecolor="red", linewidth=2.2))
            ax.plot(c + 0.88, r + 0.22, marker="*", color="red", markersize=7, markeredgecolor="white", linestyle="")
            ax.set_title(
                f"{METRIC_LABELS.get(metric, metric)}: best {m.iat[r, c]:.3f}\n"
                f"at threshold {m.index[r]:.3g}, dilation {m.columns[c]:g}",
                fontsize=9,
            )
        else:
            ax.set_title(f"{METRIC_LABELS.get(metric, metric)}: undefined (no annotation or prediction)", fontsize=9)
        ax.set_xlabel(_dilation_label(grid))
        ax.set_ylabel("threshold on the KDE heat map (0–1)")
        ax.tick_params(axis="x", labelrotation=0)
        ax.tick_params(axis="y", labelrotation=0)
    fig.suptitle(title)
    return fig


def operating_dilation(grid: pd.DataFrame) -> float:
    """The dilation of the best-F1 cell (the curve family shown in ROC / PR); the smallest if F1 is undefined."""
    m = metric_matrix(grid if "f1" in grid.columns else cell_metrics(grid), "f1")
    best = best_cell(m)
    return float(m.columns[best[1]] if best else m.columns[0])


SCORE_LABELS = {"mahalanobis_d2": "d² per pixel", "anomaly_map": "anomaly map", "kde": "KDE heat map"}


def plot_pixel_curves(metrics: dict[str, dict]):
    """Pixel-level ROC (top) and precision–recall (bottom) per score map, one curve per slide and pooled (black).

    The points are the evaluation stage's (metrics.json `pixel.{score}.roc|pr`, subsampled sklearn curves); AUROC
    and AP in the legends are its values too. A slide with one class only has no curve.
    """
    scores = [k for k in SCORE_LABELS if any((m.get("pixel") or {}).get(k) for m in metrics.values())]
    if not scores:
        return style.message_figure("Pixel-level ROC and PR", "metrics.json holds no pixel-level curves.")
    fig, axes = style.subplots(2, len(scores), panel=(4.0, 4.0))
    pooled = sorted((n for n in metrics if n.startswith("pooled")), key=lambda n: n.endswith("test"))
    names = [n for n in metrics if n not in pooled] + pooled
    palette = style.sns.color_palette("tab10", max(len(names), 1))
    for j, score in enumerate(scores):
        ax_roc, ax_pr = axes[0, j], axes[1, j]
        for i, name in enumerate(names):
            res = (metrics[name].get("pixel") or {}).get(score) or {}
            if not res.get("roc"):
                continue
            # The reported set (test pooled) in black; any other pooled split dashed grey.
            color = "black" if name.endswith("test") and name in pooled else "0.4" if name in pooled else palette[i]
            kw = {"color": color, "linewidth": 2.0 if name in pooled else 1.2,
                  "linestyle": "--" if name in pooled and color != "black" else "-"}  # fmt: skip
            ax_roc.plot(res["roc"]["fpr"], res["roc"]["tpr"], label=f"{name} (AUROC {res['auroc']:.3f})", **kw)
            ax_pr.plot(
                res["pr"]["recall"], res["pr"]["precision"], label=f"{name} (AP {res['average_precision']:.3f})", **kw
            )
        style.curve_axes(
            ax_roc,
            ax_pr,
            SCORE_LABELS[score],
            ("false-positive rate (fraction of normal pixels)", "true-positive rate (recall)",
             "recall (fraction of annotated pixels)", "precision (fraction of flagged pixels)"),
            legend_size=7,
        )  # fmt: skip
    fig.suptitle("Pixel-level curves over tissue pixels, all classes (per slide and pooled per split)")
    return fig


def metrics_summary(metrics: dict[str, dict]) -> pd.DataFrame:
    """One row per slide (and pooled split): metrics at the operating point, oracle best F1 / IoU cells, pixel
    AUROC and AP per score (all classes)."""
    keep = ("operating_point.", "at_operating_point.all.", "best_f1.", "best_iou.", "tissue_area_um2",
            "annotation_in_tissue_um2")  # fmt: skip
    rows = []
    for name, m in metrics.items():
        flat = flatten_metrics(m, skip=("provenance", "chosen_on", "reason"))
        row = {"slide": name}
        for prefix in keep:
            row.update({_oracle(k): v for k, v in flat.items() if k.startswith(prefix)})
        for score, label in SCORE_LABELS.items():
            for stat in ("auroc", "average_precision"):
                if f"pixel.{score}.{stat}" in flat:
                    row[f"{stat} ({label})"] = flat[f"pixel.{score}.{stat}"]
        rows.append(row)
    return pd.DataFrame(rows)


def _oracle(key: str) -> str:
    return f"oracle {key}" if key.startswith(("best_f1.", "best_iou.")) else key


def best_rows(grids: dict[str, pd.DataFrame], metric: str = "f1") -> pd.DataFrame:
    """Per slide (and pooled) the cell maximising `metric`, with all metrics and areas at that cell."""
    rows = []
    for name, grid in grids.items():
        g = cell_metrics(grid).reset_index(drop=True)
        values = g[metric].to_numpy(np.float64)
        if np.isfinite(values).any():
            rows.append({"slide": name, **g.iloc[int(np.nanargmax(values))].to_dict()})
        else:
            rows.append({"slide": name})
    cols = ["slide", "threshold", "dilation", "precision", "recall", "f1", "iou", "fpr", *AREAS]
    return pd.DataFrame(rows).reindex(columns=cols)


def flatten_metrics(metrics: dict, skip=("provenance",)) -> dict:
    """Scalar entries of a metrics.json, nested keys joined with '.', for one table row."""
    out = {}

    def walk(prefix, value):
        if isinstance(value, dict):
            for k, v in value.items():
                if k not in skip:
                    walk(f"{prefix}.{k}" if prefix else str(k), v)
        elif value is None or isinstance(value, (bool, int, float, str)):
            out[prefix] = value

    walk("", metrics)
    return out
