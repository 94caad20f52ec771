"""One look for every report figure: Agg backend, seaborn theme, 150 dpi PNGs written atomically, each with an SVG
twin beside it (same name, .svg) for print and editing; the report shows the PNG (the rules declare only it)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # rule jobs run headless; must precede pyplot

import matplotlib.pyplot as plt
import seaborn as sns

from proganomaly.common.io import atomic_path

DPI = 150
# Colours for the two sides of every comparison: ground truth vs. prediction, normal vs. anomalous.
ANNOTATION_COLOR = "#1b9e77"
PREDICTION_COLOR = "#d95f02"
NORMAL_COLOR = "#7570b3"
ANOMALY_COLOR = "#e7298a"
TAU_COLOR = "#d62728"
CHANNEL_COLORS = {"R": "#d62728", "G": "#2ca02c", "B": "#1f77b4"}

sns.set_theme(context="notebook", style="whitegrid", font_scale=0.9)
plt.rcParams.update({"figure.dpi": DPI, "savefig.dpi": DPI, "savefig.bbox": "tight", "axes.titleweight": "bold"})
# SVG element ids from a fixed salt and no date: a rerun writes the same SVG.
plt.rcParams["svg.hashsalt"] = "proganomaly"
VECTOR_SUFFIX = ".svg"


def subplots(nrows: int = 1, ncols: int = 1, *, panel: tuple[float, float] = (4.5, 3.5), **kwargs):
    """A figure of nrows × ncols panels of `panel` inches each, laid out without overlapping text."""
    kwargs.setdefault("layout", "constrained")
    kwargs.setdefault("squeeze", False)
    return plt.subplots(nrows, ncols, figsize=(panel[0] * ncols, panel[1] * nrows), **kwargs)


def vector_twin(path: str | Path) -> Path:
    """The SVG written beside a PNG figure."""
    return Path(path).with_suffix(VECTOR_SUFFIX)


def save(fig, path: str | Path, vector: bool = True) -> Path:
    """Write a figure atomically in the format of its suffix (PNG for report items) and, for a raster format, its
    SVG twin beside it (vector_twin) unless `vector` is False; then free it."""
    path = Path(path)
    targets = [path]
    if vector and path.suffix.lower() != VECTOR_SUFFIX:
        targets.append(vector_twin(path))
    for target in targets:
        # The suffix tells matplotlib the format; no date in the metadata, so reruns write the same bytes.
        metadata = {"Date": None} if target.suffix.lower() == VECTOR_SUFFIX else None
        with atomic_path(target, f".tmp{target.suffix}") as tmp:
            fig.savefig(tmp, metadata=metadata)
    plt.close(fig)
    return path


def message_figure(title: str, message: str):
    """A small figure that states why there is nothing to plot (the report item must exist either way)."""
    fig, axes = subplots(panel=(6.0, 2.0))
    ax = axes[0, 0]
    ax.set_axis_off()
    ax.set_title(title)
    ax.text(0.5, 0.5, message, ha="center", va="center", wrap=True, transform=ax.transAxes)
    return fig


def curve_axes(ax_roc, ax_pr, title: str, labels: tuple[str, str, str, str], legend_size: float) -> None:
    """Titles, labels, limits and legends of a ROC / precision–recall pair.

    labels: ROC x, ROC y, PR x, PR y axis labels.
    """
    ax_roc.plot([0, 1], [0, 1], color="0.6", linestyle=":", linewidth=1)
    ax_roc.set_title(f"ROC: {title}")
    ax_pr.set_title(f"Precision–recall: {title}")
    for ax, (xlabel, ylabel) in ((ax_roc, labels[:2]), (ax_pr, labels[2:])):
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.set_xlim(-0.02, 1.02)
        ax.set_ylim(-0.02, 1.02)
        ax.set_aspect("equal")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=legend_size, loc="lower right" if ax is ax_roc else "lower left")
