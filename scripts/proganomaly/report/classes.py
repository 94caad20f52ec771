"""Per-class evaluation figures and tables from the pooled metrics.json of each split. Every number is the
evaluation stage's: this module only selects and plots.
"""

from __future__ import annotations

import pandas as pd

from proganomaly.report import style
from proganomaly.report.evaluation import SCORE_LABELS

LEVEL_LABELS = {"class": "class", "group": "group"}
POINT_METRICS = ("precision", "recall", "f1", "iou")


def part_names(metrics: dict, level: str = "class") -> list[str]:
    return list(((metrics.get("per_class") or {}).get(level) or {}).keys())


def plot_class_curves(metrics: dict, title: str, level: str = "class"):
    """Pixel-level ROC (top) and precision–recall (bottom) per score map, one curve per class (or group), each
    against normal tissue; the all-classes curve in black. Points, AUROC and AP are metrics.json's."""
    parts = (metrics.get("per_class") or {}).get(level) or {}
    scores = [k for k in SCORE_LABELS if any((p.get("pixel") or {}).get(k, {}).get("roc") for p in parts.values())]
    if not scores:
        return style.message_figure(title, f"No {level} has both its pixels and normal pixels in these slides.")
    fig, axes = style.subplots(2, len(scores), panel=(4.0, 4.0))
    palette = style.sns.color_palette("tab10", max(len(parts), 1))
    for j, score in enumerate(scores):
        ax_roc, ax_pr = axes[0, j], axes[1, j]
        curves = [(name, p["pixel"].get(score) or {}, palette[i], "-") for i, (name, p) in enumerate(parts.items())]
        # Dashed, so a class that is all the annotations (one class) stays visible under it.
        curves.append(("all classes", (metrics.get("pixel") or {}).get(score) or {}, "black", "--"))
        for name, res, color, dash in curves:
            if not res.get("roc"):
                continue
            ax_roc.plot(res["roc"]["fpr"], res["roc"]["tpr"], color=color, linewidth=1.4, linestyle=dash,
                        label=f"{name} (AUROC {res['auroc']:.3f})")  # fmt: skip
            ax_pr.plot(res["pr"]["recall"], res["pr"]["precision"], color=color, linewidth=1.4, linestyle=dash,
                       label=f"{name} (AP {res['average_precision']:.3f})")  # fmt: skip
        style.curve_axes(
            ax_roc,
            ax_pr,
            SCORE_LABELS[score],
            ("false-positive rate (normal pixels)", f"true-positive rate ({level} pixels)",
             f"recall ({level} pixels)", f"precision ({level} vs normal pixels)"),
            legend_size=6.5,
        )  # fmt: skip
    fig.suptitle(title)
    return fig


def class_table(pooled: dict[str, dict]) -> pd.DataFrame:
    """One row per split × (all classes, each class, each group): pixel AUROC / AP of each map, the oracle best
    cell by F1 (that split's own best) and precision / recall / F1 / IoU at the validation-chosen operating point."""
    rows = []
    for split, m in pooled.items():
        groups = m.get("annotation_classes") or {}
        at_op = m.get("at_operating_point") or {}
        entries = [("all", "all classes", "", {"pixel": m.get("pixel") or {}, "oracle_best_f1": m.get("best_f1")},
                    at_op.get("all") or {})]  # fmt: skip
        for level in ("class", "group"):
            for name, part in ((m.get("per_class") or {}).get(level) or {}).items():
                group = groups.get(name, "") if level == "class" else name
                entries.append((level, name, group, part, (at_op.get(level) or {}).get(name) or {}))
        for level, name, group, part, point in entries:
            row = {"split": split, "level": level, "name": name, "group": group}
            for score, label in SCORE_LABELS.items():
                res = (part.get("pixel") or {}).get(score) or {}
                row[f"AUROC ({label})"] = res.get("auroc")
                row[f"AP ({label})"] = res.get("average_precision")
            best = part.get("oracle_best_f1") or {}
            row["oracle best-cell F1"] = best.get("f1")
            row["oracle cell (threshold, dilation)"] = (
                f"{best['threshold']:g}, {best['dilation']:g}" if "threshold" in best else None
            )
            for k in POINT_METRICS:
                row[f"{k} at operating point"] = point.get(k)
            rows.append(row)
    return pd.DataFrame(rows)


def operating_point_text(op: dict) -> str:
    """One sentence: where the operating point came from."""
    if not op:
        return "No operating point was chosen."
    text = f"Operating point: KDE > {op['threshold']:g}, dilation {op['dilation']:g} ({op['source']})"
    if op.get("reason"):
        text += f": {op['reason']}"
    if op.get("chosen_on"):
        text += f"; chosen on {', '.join(op['chosen_on'].get('slides', []))}"
    return text + "."
