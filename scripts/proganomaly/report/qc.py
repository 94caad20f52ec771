"""Data & QC: patches per slide and resolution (from the records manifests) and the slide table (sheet + tiling QC)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from proganomaly.report import style

SPLIT_ORDER = ("train", "calibrate", "threshold", "validation", "test")


def patch_counts(manifests: list[dict]) -> pd.DataFrame:
    """Long table (slide_id, resolution_px, count) from records manifests, in the given slide order."""
    rows = [
        {"slide_id": m["slide_id"], "resolution_px": int(size), "count": int(entry["count"])}
        for m in manifests
        for size, entry in m["resolutions"].items()
    ]
    if not rows:
        return pd.DataFrame({"slide_id": [], "resolution_px": [], "count": []})
    return pd.DataFrame(rows).sort_values(["resolution_px"], kind="stable").reset_index(drop=True)


def plot_patch_counts(counts: pd.DataFrame, splits: dict[str, str]):
    """Left: tissue patches per slide at the final resolution, coloured by split; right: slide × resolution counts.

    Every patch is written at every resolution, so the right panel's rows must be constant: a row that is not
    shows a stale or partial record set at a glance.
    """
    fig, axes = style.subplots(1, 2, panel=(5.5, 1.2 + 0.45 * max(counts["slide_id"].nunique(), 3)))
    ax_bar, ax_heat = axes[0]
    slides = list(dict.fromkeys(counts["slide_id"]))
    final = counts[counts["resolution_px"] == counts["resolution_px"].max()].set_index("slide_id").loc[slides]
    present = [s for s in SPLIT_ORDER if s in set(splits.values())] + sorted(set(splits.values()) - set(SPLIT_ORDER))
    palette = dict(zip(present, style.sns.color_palette("Set2", len(present)), strict=True))
    bars = ax_bar.barh(slides, final["count"], color=[palette[splits.get(s, "?")] for s in slides])
    ax_bar.bar_label(bars, fmt="{:,.0f}", padding=3, fontsize=8)
    ax_bar.invert_yaxis()
    ax_bar.set_xlabel(f"tissue patches at {int(counts['resolution_px'].max())} px (count)")
    ax_bar.set_ylabel("slide")
    ax_bar.set_title("Patches per slide")
    ax_bar.margins(x=0.15)
    handles = [style.plt.Rectangle((0, 0), 1, 1, color=palette[s]) for s in present]
    ax_bar.legend(handles, present, title="split", loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8)

    table = counts.pivot(index="slide_id", columns="resolution_px", values="count").loc[slides]
    style.sns.heatmap(
        table, ax=ax_heat, annot=True, fmt=",d", cmap="Blues", cbar_kws={"label": "patches (count)"}, linewidths=0.5
    )
    ax_heat.set_xlabel("resolution (px)")
    ax_heat.set_ylabel("")
    ax_heat.set_title("Patches per resolution")
    return fig


def slide_table(sheet: pd.DataFrame, qcs: dict[str, dict]) -> pd.DataFrame:
    """One row per slide of the sheet: split, annotations, size, mpp (and where it came from), tissue and patches."""
    rows = []
    for slide_id, row in sheet.iterrows():
        qc = qcs.get(slide_id, {})
        dims = qc.get("dimensions", {})
        mpp = qc.get("mpp")
        width, height = dims.get("width"), dims.get("height")
        area_mm2 = width * height * mpp**2 / 1e6 if width and height and mpp else None
        tissue = qc.get("tissue_fraction")
        rows.append(
            {
                "slide": slide_id,
                "split": row["split"],
                "annotated": isinstance(row.get("annotations"), str) and bool(row.get("annotations")),
                "size (px)": f"{width:,} × {height:,}" if width else None,
                "mpp (µm/px)": mpp,
                "mpp source": qc.get("mpp_source"),
                "area (mm²)": area_mm2,
                "tissue (%)": 100.0 * tissue if tissue is not None else None,
                "tissue area (mm²)": area_mm2 * tissue if area_mm2 is not None and tissue is not None else None,
                "patches kept": qc.get("patch_count"),
                "grid candidates": qc.get("candidate_patches"),
            }
        )
    return pd.DataFrame(rows)


def split_summary(table: pd.DataFrame) -> pd.DataFrame:
    """Slides, patches and tissue area per split, in workflow order."""
    g = table.groupby("split", sort=False).agg(
        slides=("slide", "count"),
        annotated=("annotated", "sum"),
        patches=("patches kept", "sum"),
        tissue_mm2=("tissue area (mm²)", "sum"),
    )
    order = [s for s in SPLIT_ORDER if s in g.index] + [s for s in g.index if s not in SPLIT_ORDER]
    g = g.loc[order].reset_index().rename(columns={"tissue_mm2": "tissue area (mm²)"})
    g["annotated"] = g["annotated"].astype(np.int64)
    return g
