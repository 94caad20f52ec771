"""Tissue mask on a slide thumbnail: HSV saturation (median-filtered), threshold, closing, small objects and holes removed.

Stained tissue is coloured and glass is grey or white, so saturation separates them better than brightness does (the
original thresholded gray levels, which also keeps dark pen marks, dust and shadows at the slide edge).
All sizes are given in µm and µm² and converted with the thumbnail's resolution, so one setting fits every scanner.
"""

from __future__ import annotations

import math

import numpy as np
import scipy.ndimage as ndi
from skimage.filters import threshold_otsu


def saturation(rgb: np.ndarray) -> np.ndarray:
    """HSV saturation (max − min) / max of an RGB uint8 image, float32 in [0, 1] (0 for black)."""
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    # Pairwise maxima: numpy's reduction over a length-3 last axis is an order of magnitude slower.
    hi = np.maximum(np.maximum(r, g), b).astype(np.float32)
    lo = np.minimum(np.minimum(r, g), b).astype(np.float32)
    return np.divide(hi - lo, hi, out=np.zeros_like(hi), where=hi > 0)


def choose_threshold(sat: np.ndarray, method: str, saturation_threshold: float) -> float:
    """The saturation above which a pixel is tissue.

    ``otsu``: Otsu's threshold, but never below ``saturation_threshold``: on a blank slide Otsu would split the
    noise of the glass in two and call half of it tissue. ``saturation``: the fixed threshold.
    """
    if method == "saturation":
        return float(saturation_threshold)
    if method != "otsu":
        raise ValueError(f"unknown tissue method {method!r} (use otsu or saturation)")
    if sat.size == 0 or float(sat.max()) == float(sat.min()):
        return float(saturation_threshold)
    return max(float(threshold_otsu(sat)), float(saturation_threshold))


def disk(radius: int) -> np.ndarray:
    r = np.arange(-radius, radius + 1)
    return (r[:, None] ** 2 + r[None, :] ** 2) <= radius**2


def close_mask(mask: np.ndarray, radius_px: int) -> np.ndarray:
    """Binary closing with a disk.

    The border is padded by repeating the edge pixels: zero padding would erode tissue cut by the slide's edge, and
    reflection would mirror tissue near the edge and bridge the gap to its own mirror image.
    """
    if radius_px < 1:
        return mask.copy()
    padded = np.pad(mask, radius_px, mode="edge")
    closed = ndi.binary_closing(padded, structure=disk(radius_px))
    return closed[radius_px:-radius_px, radius_px:-radius_px]


def remove_small_objects(mask: np.ndarray, min_px: float) -> np.ndarray:
    """Drop 8-connected pieces of tissue with fewer than ``min_px`` pixels."""
    if min_px <= 1 or not mask.any():
        return mask.copy()
    labels, _ = ndi.label(mask, structure=np.ones((3, 3), bool))
    sizes = np.bincount(labels.ravel())
    keep = sizes >= min_px
    keep[0] = False
    return keep[labels]


def fill_small_holes(mask: np.ndarray, max_px: float) -> np.ndarray:
    """Fill 4-connected holes (background not reaching the border) with fewer than ``max_px`` pixels."""
    if max_px <= 1 or mask.all():
        return mask.copy()
    labels, _ = ndi.label(~mask)
    sizes = np.bincount(labels.ravel())
    border = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    fill = sizes < max_px
    fill[0] = False
    fill[border] = False
    return mask | fill[labels]


def detect_tissue(
    thumb: np.ndarray,
    thumb_mpp: float,
    *,
    method: str,
    saturation_threshold: float,
    closing_um: float,
    min_object_um2: float,
    min_hole_um2: float,
) -> tuple[np.ndarray, dict]:
    """Tissue mask (bool, thumbnail shape) and a record of what was done, in px of the thumbnail and in µm."""
    # A 3×3 median removes isolated noisy pixels (JPEG ringing, sensor noise on glass) that the closing would
    # otherwise merge into blobs, without moving tissue edges.
    sat = ndi.median_filter(saturation(thumb), size=3, mode="nearest")
    threshold = choose_threshold(sat, method, saturation_threshold)
    mask = sat > threshold
    px_area = thumb_mpp**2
    radius_px = round(closing_um / thumb_mpp)
    mask = close_mask(mask, radius_px)
    min_object_px = min_object_um2 / px_area
    min_hole_px = min_hole_um2 / px_area
    mask = fill_small_holes(remove_small_objects(mask, min_object_px), min_hole_px)
    info = {
        "method": method,
        "threshold": threshold,
        "saturation_threshold": saturation_threshold,
        "closing_um": closing_um,
        "closing_radius_px": radius_px,
        "min_object_um2": min_object_um2,
        "min_object_px": math.ceil(min_object_px),
        "min_hole_um2": min_hole_um2,
        "min_hole_px": math.ceil(min_hole_px),
        "thumbnail_mpp": thumb_mpp,
        "tissue_fraction": float(mask.mean()) if mask.size else 0.0,
    }
    return mask, info


def outline_overlay(thumb: np.ndarray, mask: np.ndarray, patches: np.ndarray | None = None) -> np.ndarray:
    """Thumbnail with kept patches tinted blue and the tissue outline drawn in green, for the report."""
    out = thumb.astype(np.float32)
    if patches is not None:
        tint = np.array([40, 90, 220], np.float32)
        out[patches] = 0.7 * out[patches] + 0.3 * tint
    edge = mask & ~ndi.binary_erosion(mask, structure=np.ones((3, 3), bool), border_value=1)
    edge = ndi.binary_dilation(edge) if max(mask.shape) >= 400 else edge  # visible at report size
    out[edge] = (0, 200, 0)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)
