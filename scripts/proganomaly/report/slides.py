"""Per-slide panels: thumbnail, d² map, KDE heat map over the thumbnail, predicted polygons against annotations.

Maps come from the stitched pyramidal TIFFs (`results/detectors/{detector}/slides/{slide}/maps/*.tif`); the smallest pyramid level that is
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


def operating_point_text(metrics: dict) -> str:
    """'KDE > t, dilation d' of the first mapping (breadth first) in a metrics JSON that states both: the chosen
    cell of at_operating_point.json; "" when none does."""
    stack = [metrics]
    while stack:
        node = stack.pop(0)
        if {"threshold", "dilation"} <= set(node):
            return f"KDE > {float(node['threshold']):.3g}, dilation {float(node['dilation']):g}"
        stack += [v for k, v in node.items() if isinstance(v, dict) and k != "provenance"]
    return ""


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
            # NaN (not scored) and 0 are masked alike: neither has a colour on the log scale.
            np.ma.masked_where(~(d2 > 0), d2), extent=extent, cmap="magma", interpolation="nearest",
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
        np.ma.masked_where(~(kde >= 0.01), kde),  # NaN: no scored tissue nearby, shown as the thumbnail
        extent=extent, cmap="turbo", vmin=0, vmax=1, alpha=0.6, interpolation="bilinear",
    )  # fmt: skip
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


# ---------------------------------------------------------------------------------------------------------- overlay

# Share of the image width a scale bar aims for, and the KDE layer's opacity over the thumbnail.
SCALE_BAR_FRACTION = 0.2
OVERLAY_ALPHA = 0.45


def scale_bar_um(width_um: float, fraction: float = SCALE_BAR_FRACTION) -> float:
    """A 1-2-5 × 10^k length in µm, the largest not above `fraction` of the image width (at least the smallest)."""
    if not width_um > 0:
        raise ValueError(f"image width must be > 0 µm, got {width_um}")
    target = width_um * fraction
    k = np.floor(np.log10(target))
    for step in (5.0, 2.0, 1.0):
        if step * 10**k <= target:
            return float(step * 10**k)
    return float(10**k)  # pragma: no cover (1 × 10^k ≤ target by the choice of k)


def _length_label(um: float) -> str:
    return f"{um / 1000:g} mm" if um >= 1000 else f"{um:g} µm"


def kde_layer(kde: np.ndarray) -> np.ma.MaskedArray:
    """The KDE as drawn over the thumbnail: NaN (not scored) masked, so it is transparent and the slide shows."""
    kde = np.asarray(kde, np.float64)
    return np.ma.masked_invalid(kde)


def plot_overlay(
    slide_id: str,
    *,
    thumbnail: np.ndarray,
    kde: np.ndarray,
    level0_size: tuple[int, int],
    mpp: float,
    annotations=(),
    predicted=(),
    split: str = "",
    operating_point: str = "",
    note: str = "",
):
    """One picture of a slide: the thumbnail, the KDE heat map semi-transparent on top (not-scored pixels, NaN,
    transparent), the predicted polygons (dashed) and the true ones (solid), a legend and a scale bar.

    Images may be at any downsample of level 0; coordinates are mm of the slide (level-0 px × mpp), so both polygon
    sets (level-0 px) and both images share one frame.
    """
    from matplotlib.offsetbox import AnchoredOffsetbox, AuxTransformBox, HPacker, TextArea, VPacker
    from matplotlib.patches import Patch, Rectangle

    extent = _extent_mm(level0_size, mpp)
    width_mm, height_mm = extent[1], extent[2]
    aspect = level0_size[0] / max(level0_size[1], 1)
    width = 9.0
    fig, axes = style.subplots(1, 1, panel=(width, max(min(width / aspect, 9.0), 2.5) + 1.2))
    ax = axes[0, 0]
    ax.imshow(thumbnail, extent=extent, interpolation="lanczos")
    im = ax.imshow(
        kde_layer(kde), extent=extent, cmap="turbo", vmin=0, vmax=1, alpha=OVERLAY_ALPHA, interpolation="nearest"
    )
    cbar = fig.colorbar(im, ax=ax, shrink=0.8, pad=0.02)
    cbar.set_label("KDE heat map of flagged pixels (0–1)")
    cbar.solids.set_alpha(1.0)
    _draw_polygons(ax, annotations, mpp, style.ANNOTATION_COLOR, "true (annotation)", 0.12)
    _draw_polygons(ax, predicted, mpp, style.PREDICTION_COLOR, "predicted at operating point", 0.0, "--")
    handles, labels = ax.get_legend_handles_labels()
    handles.append(Patch(facecolor="none", edgecolor="0.5", linestyle=":"))
    labels.append("not scored: no heat-map colour")
    ax.legend(handles, labels, fontsize=8, loc="upper right", framealpha=0.85)

    # Scale bar in µm of the slide, drawn in data units (mm) so it stays true at any figure size.
    bar_um = scale_bar_um(width_mm * 1000)
    box = AuxTransformBox(ax.transData)
    box.add_artist(Rectangle((0, 0), bar_um / 1000, height_mm * 0.012, facecolor="black", edgecolor="white", lw=0.5))
    label = TextArea(_length_label(bar_um), textprops={"fontsize": 9, "color": "black"})
    packed = VPacker(children=[box, HPacker(children=[label], align="center")], align="center", pad=0, sep=3)
    bar = AnchoredOffsetbox(loc="lower left", child=packed, pad=0.4, borderpad=0.6, frameon=True)
    bar.patch.set_alpha(0.8)
    bar.set_gid(f"scale-bar-{bar_um:g}um")
    ax.add_artist(bar)

    ax.set_xlim(extent[0], extent[1])
    ax.set_ylim(extent[2], extent[3])
    ax.set_xticks([])
    ax.set_yticks([])
    ax.grid(False)
    title = f"Slide {slide_id}" + (f" ({split} split)" if split else "")
    sub = operating_point or "not evaluated: no predicted polygons"
    ax.set_title(f"{title}\n{sub}" + (f"\n{note}" if note else ""), fontsize=10)
    return fig
