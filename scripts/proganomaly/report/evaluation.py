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


def operating_cell(matrix: pd.DataFrame, op: dict | None) -> tuple[int, int] | None:
    """(row, column) of the operating point's cell in a metric matrix (the nearest grid values), or None."""
    if not op or op.get("threshold") is None or op.get("dilation") is None or matrix.empty:
        return None
    r = int(np.argmin(np.abs(matrix.index.to_numpy(float) - float(op["threshold"]))))
    c = int(np.argmin(np.abs(matrix.columns.to_numpy(float) - float(op["dilation"]))))
    return r, c


def flag_everything_f1(grid: pd.DataFrame) -> float | None:
    """F1 of flagging all tissue, 2p / (1 + p), p the anomalous share of the grid's tissue (None without it)."""
    g = grid.iloc[:1]
    cols = [f"{a}_um2" for a in AREAS] if {f"{a}_um2" for a in AREAS} <= set(grid.columns) else list(AREAS)
    tp, fp, fn, tn = (float(g[c].iloc[0]) for c in cols) if len(g) else (0.0,) * 4
    total = tp + fp + fn + tn
    if total <= 0 or tp + fn <= 0:
        return None
    p = (tp + fn) / total
    return 2 * p / (1 + p)


def _fmt(value) -> str:
    return "–" if value is None or not np.isfinite(value) else f"{value:.3f}"


def plot_grid_heatmaps(grid: pd.DataFrame, title: str, metrics=("f1", "iou"), operating_point: dict | None = None):
    """One heat map per metric over threshold × dilation; the best cell (an oracle) is outlined in red and starred,
    the operating point (chosen on validation) is outlined in white and circled. F1 titles give the F1 of flagging
    everything beside the best and the operating point's F1."""
    grid = grid if set(metrics) <= set(grid.columns) else cell_metrics(grid)
    n_t, n_d = grid["threshold"].nunique(), grid["dilation"].nunique()
    everything = flag_everything_f1(grid)
    # Dense threshold grids (the default spans 0–1): shorter rows keep the figure readable.
    row_in = 0.36 if n_t <= 30 else 0.2
    fig, axes = style.subplots(1, len(metrics), panel=(1.4 + 0.62 * n_d, 1.3 + row_in * n_t))
    for ax, metric in zip(axes[0], metrics, strict=True):
        m = metric_matrix(grid, metric)
        style.sns.heatmap(
            m, ax=ax, vmin=0, vmax=1, cmap="viridis", annot=n_t * n_d <= 200, fmt=".2f", annot_kws={"fontsize": 7},
            xticklabels=[f"{v:g}" for v in m.columns], yticklabels=[f"{v:.3g}" for v in m.index],
            cbar_kws={"label": METRIC_LABELS.get(metric, metric)},
        )  # fmt: skip
        best = best_cell(m)
        op = operating_cell(m, operating_point)
        extra = ""
        if op is not None:
            r, c = op
            ax.add_patch(style.plt.Rectangle((c, r), 1, 1, fill=False, edgecolor="white", linewidth=2.2, ls="--"))
            ax.plot(c + 0.5, r + 0.5, marker="o", color="none", markersize=9, markeredgecolor="white", linestyle="")
            extra = f"\noperating point (white): {_fmt(m.iat[r, c])} at {m.index[r]:.3g}, {m.columns[c]:g}"
        if metric == "f1":
            extra += f"; flag everything: {_fmt(everything)}"
        if best is not None:
            r, c = best
            ax.add_patch(style.plt.Rectangle((c, r), 1, 1, fill=False, edgecolor="red", linewidth=2.2))
            ax.plot(c + 0.88, r + 0.22, marker="*", color="red", markersize=7, markeredgecolor="white", linestyle="")
            ax.set_title(
                f"{METRIC_LABELS.get(metric, metric)}: best (oracle, red) {m.iat[r, c]:.3f}\n"
                f"at threshold {m.index[r]:.3g}, dilation {m.columns[c]:g}{extra}",
                fontsize=9,
            )
        else:
            ax.set_title(
                f"{METRIC_LABELS.get(metric, metric)}: undefined (no annotation or prediction){extra}", fontsize=9
            )
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


SPECIFICITY_COLUMNS = {
    "normal_tissue_in_polygons": "normal tissue in polygons",
    "normal_tissue_flagged": "normal tissue flagged (pixel flags)",
    "kde_above_0.25": "normal tissue with KDE > 0.25",
    "fp_area_mm2_per_mm2": "FP mm² per mm² tissue",
    "fp_area_mm2": "FP mm² per slide",
    "fp_area_mm2_per_slide": "FP mm² per slide",
    "lesion_sensitivity": "lesion sensitivity",
    "f1_at_operating_point": "F1 at operating point",
    "f1_flag_everything": "F1 flagging everything",
    "best_f1": "oracle best F1",
    "warning": "warning",
}


def specificity_row(m: dict) -> dict:
    """The specificity columns of one row from a metrics dict's "specificity" object (slide or pooled)."""
    spec = m.get("specificity") or {}
    row = {label: spec[key] for key, label in SPECIFICITY_COLUMNS.items() if key in spec}
    if "warnings" in spec:
        row["warning"] = "; ".join(spec["warnings"]) or None
    if "normal_only" in spec or "normal_only" in m:
        row["normal only"] = bool(spec.get("normal_only", m.get("normal_only")))
    elif "normal_only_slides" in spec:
        row["normal only"] = ", ".join(spec["normal_only_slides"]) or None
    return row


def metrics_summary(metrics: dict[str, dict]) -> pd.DataFrame:
    """One row per slide (and pooled split): the specificity numbers (normal tissue in polygons and flagged, FP
    area, lesion sensitivity, F1 at the operating point beside the F1 of flagging everything, warnings), metrics at
    the operating point, oracle best F1 / IoU cells, pixel AUROC and AP per score (all classes)."""
    keep = ("operating_point.", "at_operating_point.all.", "best_f1.", "best_iou.", "tissue_area_um2",
            "annotation_in_tissue_um2")  # fmt: skip
    rows = []
    for name, m in metrics.items():
        flat = flatten_metrics(m, skip=("provenance", "chosen_on", "reason", "specificity", "warning"))
        row = {"slide": name, **specificity_row(m)}
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
    cols = ["slide", "threshold", "dilation", "precision", "recall", "f1", "f1_flag_everything", "iou", "fpr",
            "normal_in_polygons", "fp_per_tissue", *AREAS]  # fmt: skip
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


def plot_froc(frocs: dict[str, dict]):
    """Lesion sensitivity against false-positive area per mm² of normal tissue over the thresholds, one curve per
    pooled split (pool_metrics' specificity.froc), the operating point's threshold marked."""
    frocs = {k: v for k, v in frocs.items() if v and v.get("threshold")}
    if not frocs:
        return style.message_figure("FROC", "no pooled split has lesions and thresholds to plot.")
    fig, axes = style.subplots(1, 1, panel=(5.5, 4.5))
    ax = axes[0, 0]
    for i, (name, f) in enumerate(frocs.items()):
        x = np.array([np.nan if v is None else v for v in f["fp_area_mm2_per_mm2"]], dtype=float)
        y = np.array([np.nan if v is None else v for v in f["lesion_sensitivity"]], dtype=float)
        color = style.sns.color_palette("tab10")[i % 10]
        ax.plot(
            x, y, marker=".", color=color, label=f"{name} (dilation {f['dilation']:g}, {f.get('lesions', 0)} lesions)"
        )
        op = f.get("operating_threshold")
        if op is not None and len(f["threshold"]):
            k = int(np.argmin(np.abs(np.asarray(f["threshold"], float) - float(op))))
            ax.plot(x[k], y[k], marker="o", markersize=10, color="none", markeredgecolor=color, linestyle="")
    ax.set_xscale("symlog", linthresh=1e-3)
    ax.set_xlim(left=0)
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("false-positive area per mm² of normal tissue")
    ax.set_ylabel("lesion sensitivity (annotated regions hit)")
    ax.legend(fontsize=7, loc="lower right")
    fig.suptitle("FROC over the KDE thresholds (circle: operating point)")
    return fig
