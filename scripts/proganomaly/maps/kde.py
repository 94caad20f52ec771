"""Density of flagged pixels: slide-level Gaussian KDE on the stitched flag map, and the original per-patch KDE.

Slide level (the default): a normalised convolution. With w the scored tissue (map pixels covered by a patch
interior and inside the tissue mask, 1 there, 0 elsewhere) and G a normalised Gaussian of σ = bandwidth (µm),

    kde = min(1, ((flags·w) ∗ G) / (w ∗ G) / ceiling),   NaN where (w ∗ G) < WEIGHT_FLOOR.

(flags·w) ∗ G alone is n·KDE(p), the Gaussian KDE of the flagged pixel centres times their number; dividing by
w ∗ G makes it the kernel-weighted fraction of the *scored tissue* around p that is flagged, a number in [0, 1]
whose meaning does not depend on the slide, and which glass, unscored pixels or the slide edge do not dilute: a
lesion at the tissue edge reads as flagged as one inside it. Where less than WEIGHT_FLOOR of the kernel's mass
(which is 1) falls on scored tissue (≈ 3σ beyond the tissue edge) there is no evidence nearby and the KDE is NaN
("not scored"). The fraction is divided by a fixed `ceiling` from the config and clipped to 1 (1 means "at least
`ceiling` of the neighbourhood is flagged"), the same rule for every slide. Every step runs tile by tile with a
margin (the kernel radius, 4σ by default; the size of the largest small object), so memory does not grow with the
map.

Per patch (spec 8.3, kept for comparison, unchanged from the original): a KDE on each patch's own flags, min-max
normalised per patch and scaled by the patch's flag count; the stitched result is not comparable across patches or
slides.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage, signal

from .stitching import DiskArray, bands

# Beyond this kernel radius an FFT convolution (overlap-add) is cheaper than the direct one.
_FFT_RADIUS = 16
_EIGHT = np.ones((3, 3), dtype=bool)
# Below this share of the (unit) kernel mass on scored tissue the KDE has no evidence and is NaN; for a straight
# tissue edge that is ≈ 3.1σ outside it (Φ(−3.09) = 1e-3).
WEIGHT_FLOOR = 1e-3


def gaussian_kernel1d(sigma: float, truncate: float = 4.0) -> np.ndarray:
    """The normalised 1-D Gaussian that scipy.ndimage.gaussian_filter uses (radius = int(truncate·σ + 0.5))."""
    radius = int(truncate * float(sigma) + 0.5)
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    k = np.exp(-0.5 * (x / sigma) ** 2)
    return k / k.sum()


def _smooth_window(window: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """Separable convolution with zeros outside `window` (scipy's mode="constant")."""
    out = np.asarray(window, np.float64)
    radius = len(kernel) // 2
    for axis in (0, 1):
        if radius > _FFT_RADIUS:
            shape = [1, 1]
            shape[axis] = len(kernel)
            out = signal.oaconvolve(out, kernel.reshape(shape), mode="same", axes=axis)
        else:
            out = ndimage.correlate1d(out, kernel, axis=axis, mode="constant", cval=0.0)
    return out


def smooth_tiled(src, dst, sigma: float, *, truncate: float = 4.0, tile: int = 1024, scale: float = 1.0) -> None:
    """dst = clip(scale · gaussian_filter(src, σ, mode="constant"), 0, 1 if scale != 1 else ∞), tile by tile.

    Overlap-save: each output tile is computed from its input window grown by the kernel radius, so the result equals
    the whole-map filter while only one window is in memory. σ = 0 copies (scaled).
    """
    kernel = gaussian_kernel1d(sigma, truncate) if sigma > 0 else np.ones(1)
    for window, inner, target in _overlap_save(src.shape[:2], len(kernel) // 2, tile):
        out = _smooth_window(src[window], kernel)[inner]
        # FFT round-off can leave values of ±1e-17 where the map is empty.
        dst[target] = np.clip(out * scale, 0.0, 1.0 if scale != 1.0 else None).astype(np.float32)


def _overlap_save(shape: tuple[int, int], margin: int, tile: int):
    """(input window, the output tile inside the window, the output tile in the map) slices, tile by tile."""
    h, w = shape
    for r0, r1 in bands(h, tile):
        for c0, c1 in bands(w, tile):
            wr0, wr1, wc0, wc1 = max(0, r0 - margin), min(h, r1 + margin), max(0, c0 - margin), min(w, c1 + margin)
            yield (
                (slice(wr0, wr1), slice(wc0, wc1)),
                (slice(r0 - wr0, r1 - wr0), slice(c0 - wc0, c1 - wc0)),
                (slice(r0, r1), slice(c0, c1)),
            )


def normalised_smooth_tiled(
    values,
    weight,
    dst,
    sigma: float,
    *,
    truncate: float = 4.0,
    tile: int = 1024,
    scale: float = 1.0,
    floor: float = WEIGHT_FLOOR,
) -> None:
    """dst = clip(scale · G∗(values·weight) / G∗weight, 0, 1), NaN where G∗weight < floor, tile by tile.

    G∗ is scipy's gaussian_filter(·, σ, mode="constant", truncate); NaN in `values` counts as 0 (weight should be 0
    there). Overlap-save as in `smooth_tiled`, so the result equals the whole-map filter; σ = 0 gives `values`
    where weight ≥ floor.
    """
    kernel = gaussian_kernel1d(sigma, truncate) if sigma > 0 else np.ones(1)
    for window, inner, target in _overlap_save(values.shape[:2], len(kernel) // 2, tile):
        wt = np.asarray(weight[window], np.float64)
        num = np.nan_to_num(np.asarray(values[window], np.float64), nan=0.0) * wt
        top, mass = _smooth_window(num, kernel)[inner], _smooth_window(wt, kernel)[inner]
        with np.errstate(invalid="ignore", divide="ignore"):
            ratio = np.where(mass >= floor, top / np.where(mass >= floor, mass, 1.0), np.nan)
        # FFT round-off can put the ratio a hair outside [0, 1]; np.clip keeps NaN.
        dst[target] = np.clip(ratio * scale, 0.0, 1.0).astype(dst.dtype)


def remove_small_tiled(src, dst, min_area_px: float, *, tile: int = 1024, max_margin: int = 4096) -> None:
    """Drop 8-connected flagged objects (src > 0) whose flagged area Σ src is below `min_area_px`, tile by tile.

    On a 0/1 map this is skimage's remove_small_objects(min_size, connectivity=2). An object that reaches the
    window margin (min_area_px px around the tile) has at least that many pixels and is kept; on a fractional map
    (downsample > 1 or averaged overlaps) a long, thin object with low flagged fractions can be kept this way.
    """
    h, w = src.shape[:2]
    if min_area_px <= 0:
        for r0, r1 in bands(h, tile):
            dst[r0:r1] = src[r0:r1]
        return
    m = min(max_margin, math.ceil(min_area_px) + 1)
    for r0, r1 in bands(h, tile):
        for c0, c1 in bands(w, tile):
            wr0, wr1, wc0, wc1 = max(0, r0 - m), min(h, r1 + m), max(0, c0 - m), min(w, c1 + m)
            win = np.asarray(src[wr0:wr1, wc0:wc1], np.float32)
            labels, n = ndimage.label(win > 0, structure=_EIGHT)
            if n:
                area = ndimage.sum_labels(win, labels, index=np.arange(1, n + 1))
                keep = np.concatenate([[False], area >= min_area_px])
                # Objects cut by a window edge that is not the slide edge may extend further: keep them.
                edges = []
                if wr0 > 0:
                    edges.append(labels[0])
                if wr1 < h:
                    edges.append(labels[-1])
                if wc0 > 0:
                    edges.append(labels[:, 0])
                if wc1 < w:
                    edges.append(labels[:, -1])
                if edges:
                    keep[np.unique(np.concatenate(edges))] = True
                keep[0] = False
                win = np.where(keep[labels], win, 0.0)
            dst[r0:r1, c0:c1] = win[r0 - wr0 : r1 - wr0, c0 - wc0 : c1 - wc0]


def slide_kde(
    flags,
    workdir,
    *,
    sigma_px: float,
    min_area_px: float,
    ceiling: float,
    truncate: float = 4.0,
    tile: int = 1024,
    weight=None,
) -> DiskArray:
    """The slide-level KDE heat map (float32 in [0, 1], NaN far from scored tissue) of a stitched flag-fraction map.

    weight: the scored tissue (array-like, 1 = covered by a patch interior and tissue, 0 = not), by default the
    finite pixels of `flags`. Flags outside it are dropped before small-object removal and smoothing.
    """
    if not 0 < ceiling <= 1:
        raise ValueError(f"stitching.kde.ceiling={ceiling} must be in (0, 1]")
    shape = flags.shape[:2]
    masked = DiskArray.create(f"{workdir}/flags_scored.npy", shape, np.float32)
    own_weight = weight is None
    if own_weight:
        weight = DiskArray.create(f"{workdir}/kde_weight.npy", shape, np.float32)
        for r0, r1 in bands(shape[0], tile):
            weight[r0:r1] = np.isfinite(flags[r0:r1]).astype(np.float32)
    for r0, r1 in bands(shape[0], tile):
        band = np.nan_to_num(np.asarray(flags[r0:r1], np.float32), nan=0.0)
        masked[r0:r1] = band * (np.asarray(weight[r0:r1], np.float32) > 0)
    cleaned = DiskArray.create(f"{workdir}/flags_cleaned.npy", shape, np.float32)
    remove_small_tiled(masked, cleaned, min_area_px, tile=tile)
    masked.path.unlink()
    kde = DiskArray.create(f"{workdir}/kde.npy", shape, np.float32)
    normalised_smooth_tiled(cleaned, weight, kde, sigma_px, truncate=truncate, tile=tile, scale=1.0 / ceiling)
    cleaned.path.unlink()
    if own_weight:
        weight.path.unlink()
    return kde


def scaling_rule(ceiling: float) -> str:
    """The KDE scaling rule in words, for maps.json."""
    return (
        "kde = min(1, (G_sigma * (flags w)) / (G_sigma * w) / ceiling) with a normalised Gaussian G_sigma (sigma = "
        "bandwidth_um) and w = scored tissue (covered by a patch interior and in the tissue mask), i.e. the "
        "kernel-weighted flagged fraction of the scored tissue around each pixel divided by ceiling = "
        f"{ceiling} (the same for every slide); NaN where G_sigma * w < {WEIGHT_FLOOR} (no scored tissue nearby)"
    )


def definition(ceiling: float) -> dict:
    """The KDE's definition as data, for maps.json."""
    return {
        "formula": "min(1, gaussian(flags * w) / gaussian(w) / ceiling); NaN where gaussian(w) < weight_floor",
        "weight": "w = 1 on scored tissue (map pixels covered by a patch interior and inside the tissue mask), else 0",
        "flags": "flag fraction per map pixel, 8-connected objects under min_object_um2 removed, outside w dropped",
        "gaussian": "normalised Gaussian, sigma = bandwidth_um, truncated at truncate * sigma, zeros beyond the map",
        "weight_floor": WEIGHT_FLOOR,
        "weight_floor_meaning": "share of the kernel mass (1) on scored tissue below which the KDE is NaN",
        "ceiling": ceiling,
    }


def grid_kde(points: np.ndarray, rows: np.ndarray, cols: np.ndarray, bandwidth: float) -> np.ndarray:
    """Gaussian KDE (sklearn's normalisation, 2-D) of (row, col) points on the grid rows × cols, exactly.

    The kernel factorises over the two axes, so the sum over points is one matrix product instead of a
    (grid × points) distance table.
    """
    pts = np.asarray(points, np.float64).reshape(-1, 2)
    a = np.exp(-0.5 * ((rows[:, None] - pts[None, :, 0]) / bandwidth) ** 2)
    b = np.exp(-0.5 * ((cols[:, None] - pts[None, :, 1]) / bandwidth) ** 2)
    return (a @ b.T) / (len(pts) * 2.0 * math.pi * bandwidth**2)


def patch_kde(
    flags: np.ndarray,
    *,
    bandwidth_px: float,
    bins: int,
    min_object_px: int,
    min_points: int,
    scaling_factor: float,
    scaling_power: float,
) -> np.ndarray:
    """The original per-patch KDE (spec 8.3) of one patch's boolean flags (H, W): float32 (H, W) in [0, 1].

    Kept: count before cleaning, 8-connected small-object removal, corner pixels forced on, KDE on a bins × bins grid
    over the patch, per-patch min-max, count scaling min(1, Ẑ·(count/factor)^power), bilinear resize. Dropped: the
    ±1 scaling and the grayscale inversion (see docs/deviations.md, inference).
    """
    from skimage.transform import resize

    f = np.asarray(flags) > 0
    h, w = f.shape
    count = int(f.sum())
    labels, n = ndimage.label(f, structure=_EIGHT)
    if n:
        sizes = np.bincount(labels.ravel())
        keep = sizes >= min_object_px
        keep[0] = False
        f = keep[labels]
    f[0, 0] = f[0, -1] = f[-1, 0] = f[-1, -1] = True
    points = np.argwhere(f)
    if len(points) > min_points:
        z = grid_kde(points, np.linspace(0, h - 1, bins), np.linspace(0, w - 1, bins), bandwidth_px)
        span = z.max() - z.min()
        z = (z - z.min()) / span if span > 0 else np.zeros_like(z)
    else:
        z = np.zeros((bins, bins))
    v = np.minimum(1.0, z * (count / scaling_factor) ** scaling_power)
    return np.clip(resize(v, (h, w), order=1, mode="edge", anti_aliasing=False), 0.0, 1.0).astype(np.float32)
