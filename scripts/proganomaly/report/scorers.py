"""The scorer comparison of the detection benchmark (tests/benchmarks/bench_detection.py): one table and one figure
of pixel AUROC / AP per scorer, training variant and anomaly group, on validation and on test, mean ± sd over seeds.

The numbers are the benchmark's (its JSON `summary`, committed as docs/detection-benchmark.json): this module only
selects and plots. The benchmark is a separate run of the whole workflow per seed and scorer; it is shown in the
report so a reader sees which scorer the configuration uses and why (chosen on the validation columns only).
"""

from __future__ import annotations

import math

import pandas as pd

from proganomaly.report import style

MAP_LABELS = {"mahalanobis_d2": "d²", "kde": "KDE heat map"}
SPLITS = ("validation", "test")
# The pixel-AUROC targets of issue 12 on the test slides, per group.
TARGETS = {"foreign stain": 0.95, "same-stain tissue": 0.90, "artefacts": 0.85}


def benchmark_key(label: str) -> tuple[str, tuple[str, ...] | None, str | None]:
    """(scorer, parts, settings) of a benchmark row label: `name`, `combined=a+b`, each optionally `@SETTINGS`
    (tests/benchmarks/bench_detection.py scorer_overrides); parts None when the label names none."""
    spec, _, setting = label.partition("@")
    name, _, parts = spec.partition("=")
    return name, (tuple(parts.split("+")) if parts else None), (setting or None)


def configured_labels(summary: dict, scorer: str, parts=None, default_parts=()) -> set[str]:
    """Labels of the benchmark's "default" variant that ran exactly the configured scorer.

    A plain `combined` row ran the schema's default parts (`default_parts`), so it is the configured scorer only when
    the configuration's parts (`parts`, scoring.combined.scorers) are those; `combined=a+b` ran parts a, b. Rows with
    @SETTINGS ran other stage settings (τ, KDE ...) and are never the configuration's.
    """
    want = tuple(parts or default_parts) if scorer == "combined" else None
    out = set()
    for label in summary.get("default") or {}:
        name, ran, setting = benchmark_key(label)
        if name != scorer or setting is not None:
            continue
        if scorer == "combined" and tuple(ran or default_parts) != want:
            continue
        out.add(label)
    return out


def _parts(summary: dict, level: str) -> list[str]:
    """Part keys of one level ("group" or "class") in first-seen order, with "all" first."""
    seen = ["all"]
    for scorers in summary.values():
        for parts in scorers.values():
            seen += [p for p in parts if p.startswith(f"{level}:") and p not in seen]
    return seen


def part_label(part: str) -> str:
    return "all anomalies" if part == "all" else part.split(":", 1)[1]


def comparison_table(summary: dict, map_name: str = "mahalanobis_d2", level: str = "group") -> pd.DataFrame:
    """A row per variant × scorer × part (all anomalies, then each group or class): 'mean ± sd' of pixel AUROC and
    AP per split (validation first) and the number of seeds."""
    rows = []
    for part in _parts(summary, level):
        for variant, scorers in summary.items():
            for scorer, parts in scorers.items():
                per_split = parts.get(part)
                if not per_split:
                    continue
                row = {"anomalies": part_label(part), "variant": variant, "scorer": scorer}
                for split in SPLITS:
                    res = (per_split.get(split) or {}).get(map_name) or {}
                    row[f"AUROC {split}"] = _pm(res.get("auroc_mean"), res.get("auroc_sd"))
                    row[f"AP {split}"] = _pm(res.get("ap_mean"), res.get("ap_sd"))
                row["seeds"] = max(((per_split.get(s) or {}).get(map_name) or {}).get("n", 0) for s in SPLITS)
                rows.append(row)
    return pd.DataFrame(rows)


def plot_comparison(summary: dict, map_name: str = "mahalanobis_d2", chosen: str | set[str] | None = None):
    """One panel per group (and all anomalies): a row per variant/scorer, pixel AUROC on validation (circle) and test
    (square) with ± sd bars; chance at 0.5, the issue's target per group dashed, the configured scorer in bold.

    chosen: the benchmark label(s) of the configured scorer in the "default" variant (configured_labels)."""
    chosen = {chosen} if isinstance(chosen, str) else set(chosen or ())
    parts = _parts(summary, "group")
    labels = [(v, s) for v, scorers in summary.items() for s in scorers]
    if not labels:
        return style.message_figure("Scorer comparison", "The detection benchmark summary holds no rows.")
    fig, axes = style.subplots(1, len(parts), panel=(3.2, 0.32 * len(labels) + 1.4), sharey=True)
    for ax, part in zip(axes[0], parts, strict=True):
        for i, (variant, scorer) in enumerate(labels):
            per_split = summary[variant][scorer].get(part) or {}
            for split, marker, color, dy in (("validation", "o", style.NORMAL_COLOR, -0.15),
                                             ("test", "s", style.ANOMALY_COLOR, 0.15)):  # fmt: skip
                res = (per_split.get(split) or {}).get(map_name) or {}
                mean, sd = res.get("auroc_mean"), res.get("auroc_sd") or 0.0
                if mean is None:
                    continue
                ax.errorbar(mean, i + dy, xerr=sd, fmt=marker, color=color, markersize=4, capsize=2,
                            label=split if i == 0 else None)  # fmt: skip
        ax.axvline(0.5, color="0.6", linestyle=":", linewidth=1)
        target = TARGETS.get(part_label(part))
        if target is not None:
            ax.axvline(target, color=style.TAU_COLOR, linestyle="--", linewidth=1)
        ax.set_xlim(0.0, 1.0)
        ax.set_title(part_label(part))
        ax.set_xlabel(f"pixel AUROC of {MAP_LABELS.get(map_name, map_name)}")
    axes[0, 0].set_yticks(range(len(labels)))
    axes[0, 0].set_yticklabels([s if v == "default" else f"{s} [{v}]" for v, s in labels])
    axes[0, 0].invert_yaxis()
    for tick, (variant, scorer) in zip(axes[0, 0].get_yticklabels(), labels, strict=True):
        if variant == "default" and scorer in chosen:
            tick.set_fontweight("bold")
    axes[0, 0].legend(fontsize=7, loc="lower left")
    return fig


def _pm(mean, sd) -> str | None:
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return None
    return f"{mean:.3f}" if sd is None or (isinstance(sd, float) and math.isnan(sd)) else f"{mean:.3f} ± {sd:.3f}"
