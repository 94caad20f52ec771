"""Artefacts of slide making and scanning: out-of-focus blur, marker ink, tissue fold.

Every kind has the signature `kind(rgb, poly, rng, *, source=None, tissue=None, feather_px=None) -> Anomaly`; see
the package docstring.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

from proganomaly.demo.anomalies.geometry import Anomaly, feathered_alpha, window
from proganomaly.demo.anomalies.pixels import blend, check_rgb, sample, smooth_noise, white

BLUR_FEATHER_PX = 24.0  # wide: focus drifts off gradually in a real scan
INK_FEATHER_PX = 6.0
FOLD_FEATHER_PX = 6.0  # a fold's edges are where the tissue bends or ends, sharp in a real one


def blur(rgb, poly, rng, *, source=None, tissue=None, feather_px=None, sigma=(1.5, 3.5)) -> Anomaly:
    """Artefact: the region out of focus, in place (Gaussian blur of sigma 1.5–3.5 px at its centre).

    The blur itself, not a mix of sharp and blurred images, grows with alpha (sigma x alpha, interpolated between
    five precomputed levels), so the focus drifts off smoothly as a real focus error does, without ghosting.
    """
    check_rgb(rgb)
    source = rgb if source is None else source
    feather = feather_px or BLUR_FEATHER_PX
    alpha, mask = feathered_alpha(poly, rgb.shape, feather)
    s = rng.uniform(*sigma)
    y0, y1, x0, x1 = window(poly, rgb.shape, feather / 2 + 2)
    # Blur a larger window than is written, so its edges do not drag the frame's border in.
    pad = math.ceil(4 * s)
    py0, py1, px0, px1 = max(0, y0 - pad), min(rgb.shape[0], y1 + pad), max(0, x0 - pad), min(rgb.shape[1], x1 + pad)
    patch = source[py0:py1, px0:px1].astype(np.float64)
    n_levels = 5
    levels = [patch] + [
        ndimage.gaussian_filter(patch, (s * i / (n_levels - 1), s * i / (n_levels - 1), 0), mode="reflect")
        for i in range(1, n_levels)
    ]
    levels = np.stack([lv[y0 - py0 : y1 - py0, x0 - px0 : x1 - px0] for lv in levels])
    pos = alpha[y0:y1, x0:x1].astype(np.float64) * (n_levels - 1)
    lo = np.minimum(np.floor(pos).astype(int), n_levels - 2)
    frac = (pos - lo)[..., None]
    rows, cols = np.indices(lo.shape)
    content = (1 - frac) * levels[lo, rows, cols] + frac * levels[lo + 1, rows, cols]
    # content already carries the ramp, so it is written where alpha > 0 with full weight.
    weight = (alpha > 0).astype(np.float32)
    return Anomaly(blend(rgb, weight, content, y0, x0), alpha, mask)


def ink(rgb, poly, rng, *, source=None, tissue=None, feather_px=None) -> Anomaly:
    """Artefact: blue-green marker ink, a semi-transparent dye over the tissue (its optical density adds).

    The dye passes little red and most green and blue, like the teal ink at the edge of the demo slide; its
    density varies slowly across the stroke.
    """
    check_rgb(rgb)
    feather = feather_px or INK_FEATHER_PX
    alpha, mask = feathered_alpha(poly, rgb.shape, feather)
    y0, y1, x0, x1 = window(poly, rgb.shape, feather / 2 + 2)
    transmit = np.array([rng.uniform(0.25, 0.45), rng.uniform(0.6, 0.78), rng.uniform(0.62, 0.82)])
    strength = rng.uniform(0.7, 1.1)
    unevenness = 1.0 + 0.2 * smooth_noise(rng, (y1 - y0, x1 - x0), sigma=12.0)
    density = np.clip(strength * unevenness, 0.2, 1.6)[..., None]
    content = rgb[y0:y1, x0:x1].astype(np.float64) * transmit**density
    return Anomaly(blend(rgb, alpha, content, y0, x0), alpha, mask)


def fold(rgb, poly, rng, *, source=None, tissue=None, feather_px=None) -> Anomaly:
    """Artefact: a tissue fold, the neighbouring tissue flipped over onto the region (a double layer).

    The overlying layer is the mirror image of the tissue beside the band (reflected about a line one half-width
    off its long axis), slightly out of focus since it lies above the focal plane; both layers absorb, so their
    optical densities add and the band is darker and more saturated than either. Meant for an elongated region.
    """
    check_rgb(rgb)
    source = rgb if source is None else source
    feather = feather_px or FOLD_FEATHER_PX
    alpha, mask = feathered_alpha(poly, rgb.shape, feather)
    y0, y1, x0, x1 = window(poly, rgb.shape, feather / 2 + 2)
    # Long axis from the minimum rotated rectangle; n is the unit normal across the band.
    corners = np.asarray(poly.minimum_rotated_rectangle.exterior.coords)[:4]
    e1, e2 = corners[1] - corners[0], corners[2] - corners[1]
    long_edge, short_edge = (e1, e2) if np.hypot(*e1) >= np.hypot(*e2) else (e2, e1)
    half_width = np.hypot(*short_edge) / 2
    n = np.array([-long_edge[1], long_edge[0]]) / np.hypot(*long_edge)
    n *= 1 if rng.integers(2) else -1
    c = np.array([poly.centroid.x, poly.centroid.y]) + half_width * n
    ys, xs = np.mgrid[y0:y1, x0:x1].astype(np.float64) + 0.5
    offset = (xs - c[0]) * n[0] + (ys - c[1]) * n[1]
    mirrored = sample(source, ys - 2 * offset * n[1] - 0.5, xs - 2 * offset * n[0] - 0.5)
    mirrored = ndimage.gaussian_filter(mirrored, (rng.uniform(0.8, 1.6),) * 2 + (0,), mode="reflect")
    layer = np.clip(mirrored / white(source), 1e-3, 1.0)
    thickness = np.clip(rng.uniform(0.85, 1.1) + 0.1 * smooth_noise(rng, layer.shape[:2], 10.0), 0.5, 1.3)
    content = rgb[y0:y1, x0:x1].astype(np.float64) * layer ** thickness[..., None]
    return Anomaly(blend(rgb, alpha, content, y0, x0), alpha, mask)
