"""Outlines of anomaly regions and their soft edges (level-0 px of the image they are placed on)."""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import shapely
from scipy import ndimage
from shapely.affinity import rotate, scale
from shapely.geometry import Polygon

from proganomaly.common.raster import rasterize


class AnomalyError(ValueError):
    """An anomaly cannot be made or placed; the message says which and what to change."""


class Anomaly(NamedTuple):
    rgb: np.ndarray  # uint8 (H, W, 3)
    alpha: np.ndarray  # float32 (H, W) in [0, 1]
    mask: np.ndarray  # bool (H, W): alpha >= 0.5, the annotated region


def blob_outline(rng: np.random.Generator, size: float, aspect: tuple[float, float] = (0.55, 1.0)) -> Polygon:
    """A smooth irregular blob centred on (0, 0) whose longer bounding-box side is `size` px.

    A star-shaped ring whose radius is one plus a few low-frequency harmonics (kept positive, so the ring never
    crosses itself), squashed by a factor drawn from `aspect` and turned. Two weak higher harmonics roughen the
    outline so it does not read as a drawn ellipse.
    """
    theta = np.linspace(0.0, 2.0 * np.pi, 96, endpoint=False)
    radius = np.ones_like(theta)
    for k, amplitude in ((2, 0.15), (3, 0.1), (4, 0.075), (5, 0.06), (7, 0.03), (9, 0.02)):
        radius += rng.uniform(0.0, amplitude) * np.cos(k * theta + rng.uniform(0.0, 2.0 * np.pi))
    poly = Polygon(np.c_[radius * np.cos(theta), radius * np.sin(theta)])
    poly = rotate(scale(poly, 1.0, rng.uniform(*aspect)), rng.uniform(0.0, 180.0), origin=(0, 0))
    minx, miny, maxx, maxy = poly.bounds
    factor = size / max(maxx - minx, maxy - miny)
    return scale(poly, factor, factor, origin=(0, 0))


def band_outline(rng: np.random.Generator, size: float, aspect: tuple[float, float] = (0.2, 0.35)) -> Polygon:
    """A gently curved band centred on (0, 0), `size` px long, its width a fraction drawn from `aspect` of that.

    Near-parallel sides with rounded, slightly tapered ends, the shape a fold or a crease takes; a squashed blob
    would be a lens instead.
    """
    length, width = size, size * rng.uniform(*aspect)
    t = np.linspace(-1.0, 1.0, 48)
    bend = rng.uniform(-0.12, 0.12) * length
    centre = np.c_[t * length / 2, bend * (t**2 - 1 / 3) + 0.03 * length * np.sin(np.pi * t * rng.uniform(1, 2))]
    taper = np.sqrt(np.clip(1.0 - np.abs(t) ** 6, 0.0, 1.0))
    half = width / 2 * taper * (1.0 + 0.08 * np.sin(3 * t + rng.uniform(0, 6)))
    tangent = np.gradient(centre, axis=0)
    normal = np.c_[-tangent[:, 1], tangent[:, 0]] / np.hypot(tangent[:, 0], tangent[:, 1])[:, None]
    ring = np.r_[centre + half[:, None] * normal, (centre - half[:, None] * normal)[::-1]]
    poly = shapely.make_valid(Polygon(ring))
    if poly.geom_type != "Polygon":  # a tight bend can pinch the ring; keep its largest piece
        poly = max(poly.geoms, key=lambda g: g.area if g.geom_type == "Polygon" else 0.0)
    return rotate(poly, rng.uniform(0.0, 180.0), origin=(0, 0))


def rasterise(poly: Polygon, height: int, width: int, x0: int = 0, y0: int = 0) -> np.ndarray:
    """(height, width) bool mask of the window at (x0, y0) whose pixel centres lie inside `poly` (level-0 px).

    The project's one rasteriser (common.raster), so the anomaly written, its annotation and the evaluation's
    labels agree pixel for pixel.
    """
    return rasterize(poly, (height, width), 1.0, (x0, y0))


def window(poly: Polygon, shape: tuple[int, ...], pad: float) -> tuple[int, int, int, int]:
    """(y0, y1, x0, x1) of the bounding box of `poly` grown by `pad` px, clipped to an image of `shape`."""
    minx, miny, maxx, maxy = poly.bounds
    y0, x0 = max(0, math.floor(miny - pad)), max(0, math.floor(minx - pad))
    y1, x1 = min(shape[0], math.ceil(maxy + pad) + 1), min(shape[1], math.ceil(maxx + pad) + 1)
    if y1 <= y0 or x1 <= x0:
        raise AnomalyError(f"polygon with bounds {poly.bounds} lies outside the {shape[1]}×{shape[0]} image")
    return y0, y1, x0, x1


def feathered_alpha(poly: Polygon, shape: tuple[int, ...], feather_px: float) -> tuple[np.ndarray, np.ndarray]:
    """(alpha, mask) over an image of `shape`: a smooth ramp across the outline of `poly`, `feather_px` wide.

    alpha = smoothstep(0.5 + d / feather_px), d the signed distance of a pixel centre to the outline (positive
    inside, from two Euclidean distance transforms). A pixel's d differs from its 4-neighbour's by at most one, so
    alpha never steps by more than 1.5 / feather_px between neighbours; and alpha >= 0.5 exactly where d > 0,
    i.e. on the rasterised polygon that the annotation records.
    """
    if feather_px < 1:
        raise AnomalyError(f"feather_px={feather_px}: need at least 1 px of soft edge")
    y0, y1, x0, x1 = window(poly, shape, feather_px / 2 + 2)
    inside = rasterise(poly, y1 - y0, x1 - x0, x0, y0)
    # Padding with "outside" keeps the ramp inside the image when a polygon touches its border.
    d_in = ndimage.distance_transform_edt(np.pad(inside, 1))[1:-1, 1:-1]
    d_out = ndimage.distance_transform_edt(~inside)
    signed = np.where(inside, d_in - 0.5, 0.5 - d_out)
    t = np.clip(0.5 + signed / feather_px, 0.0, 1.0)
    alpha = np.zeros(shape[:2], np.float32)
    alpha[y0:y1, x0:x1] = t * t * (3.0 - 2.0 * t)
    mask = np.zeros(shape[:2], bool)
    mask[y0:y1, x0:x1] = inside
    return alpha, mask


def covered(poly: Polygon, tissue: np.ndarray) -> float:
    """Fraction of the pixels inside `poly` that are set in `tissue`; parts outside the image count as unset."""
    minx, miny, maxx, maxy = poly.bounds
    x0, y0 = math.floor(minx), math.floor(miny)
    inside = rasterise(poly, math.ceil(maxy) - y0 + 1, math.ceil(maxx) - x0 + 1, x0, y0)
    total = int(inside.sum())
    if not total:
        return 0.0
    # The part of the window inside the image; what lies beyond it is not tissue.
    cy0, cx0 = max(0, -y0), max(0, -x0)
    cy1 = min(inside.shape[0], tissue.shape[0] - y0)
    cx1 = min(inside.shape[1], tissue.shape[1] - x0)
    if cy1 <= cy0 or cx1 <= cx0:
        return 0.0
    hit = inside[cy0:cy1, cx0:cx1] & tissue[y0 + cy0 : y0 + cy1, x0 + cx0 : x0 + cx1]
    return float(hit.sum() / total)
