"""One look for every report figure: Agg backend, seaborn theme, 150 dpi PNGs written atomically."""

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


def subplots(nrows: int = 1, ncols: int = 1, *, panel: tuple[float, float] = (4.5, 3.5), **kwargs):
    """A figure of nrows × ncols panels of `panel` inches each, laid out without overlapping text."""
    kwargs.setdefault("layout", "constrained")
    kwargs.setdefault("squeeze", False)
    return plt.subplots(nrows, ncols, figsize=(panel[0] * ncols, panel[1] * nrows), **kwargs)


def save(fig, path: str | Path) -> Path:
    """Write a figure as PNG (or SVG by suffix) atomically, then free it."""
    path = Path(path)
    with atomic_path(path, f".tmp{path.suffix}") as tmp:  # the suffix tells matplotlib the format
        fig.savefig(tmp)
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
