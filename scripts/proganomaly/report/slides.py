"""Per-slide panels: thumbnail, d² map, KDE heat map over the thumbnail, predicted polygons against annotations.

Maps come from the stitched pyramidal TIFFs (`results/slides/{slide}/maps/*.tif`); the smallest pyramid level that is
still at least `max_px` on its long side is read, so a gigapixel slide costs a few MB here. Axes are in mm of the
slide (level-0 px × level-0 mpp), so every panel and both polygon sets share one coordinate frame.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib.colors as mcolors
import numpy as np
import shapely

from proganomaly.report import style


def read_map(path: str | Path, max_px: int = 1200) -> np.ndarray:
    """The coarsest pyramid level of a map TIFF whose long side is still ≥ max_px (level 0 if none is smaller)."""
    import tifffile

    with tifffile.TiffFile(path) as tif:
        levels = tif.series[0].levels
        chosen = levels[0]
        for level in levels:
            if max(level.shape[:2]) >= max_px:
                chosen = level
        return chosen.asarray()


def _extent_mm(level0_size: tuple[int, int], mpp: float) -> list[float]:
    w, h = level0_size
    return [0.0, w * mpp / 1000.0, h * mpp / 1000.0, 0.0]


def polygon_rings(geoms, mpp: float) -> tuple[list[np.ndarray], int]:
    """Exterior and interior rings of (multi)polygons in level-0 px as (n, 2) arrays in mm, and the polygon count."""
    rings, n = [], 0
    for geom in geoms:
        for part in shapely.get_parts(geom):
            if part.geom_type != "Polygon" or part.is_empty:
                continue
            n += 1
            for ring in (part.exterior, *part.interiors):
                rings.append(np.asarray(ring.coords)[:, :2] * mpp / 1000.0)
    return rings, n


def _draw_polygons(ax, geoms, mpp, color, label, fill_alpha=0.0, linestyle="-"):
    from matplotlib.collections import PolyCollection

    rings, n = polygon_rings(geoms, mpp)
    if rings:
        face = mcolors.to_rgba(color, fill_alpha)
        ax.add_collection(PolyCollection(rings, facecolors=face, edgecolors=color, linewidths=1.3, linestyle=linestyle))
    ax.plot([], [], color=color, linestyle=linestyle, label=f"{label} ({n} polygon{'s' if n != 1 else ''})")


def layout(aspect: float) -> tuple[int, int]:
    """Panels stacked in one column for wide slides (long strips read best full width), else 2 × 2."""
    return (4, 1) if aspect > 1.6 else (2, 2)


def plot_slide_panels(
    slide_id: str,
    *,
    thumbnail: np.ndarray,
    d2: np.ndarray,
    kde: np.ndarray,
    level0_size: tuple[int, int],
    mpp: float,
    tau: float | None = None,
    annotations=(),
    predicted=(),
    operating_point: str = "",
):
    """The four panels of one slide; images may be at any (common or not) downsample of level 0."""
    extent = _extent_mm(level0_size, mpp)
    aspect = level0_size[0] / max(level0_size[1], 1)
    nrows, ncols = layout(aspect)
    width = 9.0 if ncols == 1 else 5.0
    # image height at the panel width (less room for colour bar and labels), plus title and axis labels
    panel_h = max(min(0.8 * width / aspect, 6.0), 1.2) + 0.9
    fig, axes = style.subplots(nrows, ncols, panel=(width, panel_h), sharex=True, sharey=True)
    ax_thumb, ax_d2, ax_kde, ax_poly = axes.ravel()

    ax_thumb.imshow(thumbnail, extent=extent, interpolation="lanczos")
    ax_thumb.set_title("Thumbnail")

    d2 = np.asarray(d2, np.float64)
    positive = d2[d2 > 0]
    ax_d2.imshow(thumbnail, extent=extent, alpha=0.25)
    if positive.size:
        lo = max(float(np.percentile(positive, 1)), 1e-3)
        hi = max(float(np.percentile(positive, 99.9)), lo * 10, tau * 2 if tau else 0.0)
        im = ax_d2.imshow(
            np.ma.masked_less_equal(d2, 0), extent=extent, cmap="magma", interpolation="nearest",
            norm=mcolors.LogNorm(vmin=lo, vmax=hi),
        )  # fmt: skip
        cbar = fig.colorbar(im, ax=ax_d2, label="d² (log scale)", shrink=0.9)
        if tau:
            cbar.ax.axhline(tau, color="cyan", linewidth=2)
            cbar.ax.text(
                -0.2, tau, "τ", color="black", ha="right", va="center", transform=cbar.ax.get_yaxis_transform()
            )
    ax_d2.set_title("Anomaly map: squared Mahalanobis distance per pixel")

    ax_kde.imshow(thumbnail, extent=extent)
    kde = np.asarray(kde, np.float64)
    im = ax_kde.imshow(
        np.ma.masked_less(kde, 0.01), extent=extent, cmap="turbo", vmin=0, vmax=1, alpha=0.6, interpolation="bilinear"
    )
    fig.colorbar(im, ax=ax_kde, label="KDE heat map (0–1)", shrink=0.9)
    ax_kde.set_title("KDE heat map of flagged pixels over the thumbnail")

    ax_poly.imshow(thumbnail, extent=extent)
    _draw_polygons(ax_poly, annotations, mpp, style.ANNOTATION_COLOR, "annotation", 0.15)
    _draw_polygons(ax_poly, predicted, mpp, style.PREDICTION_COLOR, "predicted", 0.0, "--")
    ax_poly.set_title("Predicted polygons vs annotations" + (f" ({operating_point})" if operating_point else ""))
    ax_poly.legend(fontsize=8, loc="upper right", framealpha=0.85)
    for ax in axes.ravel():
        ax.set_xlim(extent[0], extent[1])
        ax.set_ylim(extent[2], extent[3])
        ax.set_xlabel("x (mm)")
        ax.set_ylabel("y (mm)")
        ax.grid(False)
    fig.suptitle(f"Slide {slide_id}")
    return fig
