"""Anomalies of tissue: foreign stain (IHC) and same-stain tissue (magnified tissue, cell islands in dermis).

Every kind has the signature `kind(rgb, poly, rng, *, source=None, tissue=None, feather_px=None) -> Anomaly`; see
the package docstring.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage
from shapely.affinity import scale, translate

from proganomaly.demo.anomalies.geometry import Anomaly, AnomalyError, covered, feathered_alpha, window
from proganomaly.demo.anomalies.pixels import (
    blend,
    check_rgb,
    glass_or_ink,
    ihc_image,
    nuclei_density,
    orient,
    sample,
)

IHC_FEATHER_PX = 8.0
MAGNIFIED_FEATHER_PX = 16.0  # wide: a sharp change of scale at the outline would itself be the tell
CELL_ISLANDS_FEATHER_PX = 12.0
UNSHARP_AMOUNT = 0.5
GRAIN_SIGMA_PX = 1.0  # what a Gaussian of this width removes is the pixel grain that magnification loses
DONOR_QUANTILES = (0.9, 1.0)  # cell islands are cut from the tenth of the tissue densest in nuclei (epidermis)


def ihc(rgb, poly, rng, *, source=None, tissue=None, feather_px=None) -> Anomaly:
    """Foreign stain: a randomly turned crop of scikit-image's IHC image (DAB brown on haematoxylin), blended in."""
    check_rgb(rgb)
    feather = feather_px or IHC_FEATHER_PX
    alpha, mask = feathered_alpha(poly, rgb.shape, feather)
    y0, y1, x0, x1 = window(poly, rgb.shape, feather / 2 + 2)
    donor = ihc_image()
    turned = np.rot90(donor[:, ::-1] if rng.integers(2) else donor, int(rng.integers(4)))
    h, w = y1 - y0, x1 - x0
    if h > turned.shape[0] or w > turned.shape[1]:
        raise AnomalyError(f"ihc region of {w}×{h} px is larger than the {donor.shape[1]}×{donor.shape[0]} IHC image")
    inside = mask[y0:y1, x0:x1]
    # The IHC image has white gaps; of a few random crops keep the one that is most stained under the region.
    best = None
    for _ in range(32):
        sy, sx = int(rng.integers(turned.shape[0] - h + 1)), int(rng.integers(turned.shape[1] - w + 1))
        crop = turned[sy : sy + h, sx : sx + w]
        stained = float((crop[inside].min(axis=1) < 200).mean()) if inside.any() else 0.0
        if best is None or stained > best[0]:
            best = (stained, crop)
    return Anomaly(blend(rgb, alpha, best[1].astype(np.float64), y0, x0), alpha, mask)


def magnified(rgb, poly, rng, *, source=None, tissue=None, feather_px=None, zoom=(1.5, 2.0)) -> Anomaly:
    """Same-stain tissue: nearby tissue of the slide itself magnified 1.5–2×, so cells and nuclei are enlarged.

    The donor footprint (the region shrunk by the zoom) is centred within about one region size of the target and
    must lie on tissue, so the stain and the tissue type stay those of the neighbourhood and only the scale differs.
    """
    check_rgb(rgb)
    source = rgb if source is None else source
    feather = feather_px or MAGNIFIED_FEATHER_PX
    alpha, mask = feathered_alpha(poly, rgb.shape, feather)
    y0, y1, x0, x1 = window(poly, rgb.shape, feather / 2 + 2)
    z = rng.uniform(*zoom)
    cx, cy = poly.centroid.x, poly.centroid.y
    size = max(poly.bounds[2] - poly.bounds[0], poly.bounds[3] - poly.bounds[1])
    footprint = scale(poly, 1 / z, 1 / z, origin="centroid")
    best = None
    for _ in range(64):
        r, phi = rng.uniform(0.0, size), rng.uniform(0.0, 2.0 * np.pi)
        dx, dy = r * np.cos(phi), r * np.sin(phi)
        score = covered(translate(footprint, dx, dy), tissue) if tissue is not None else 1.0
        if best is None or score > best[0]:
            best = (score, dx, dy)
        if score >= 0.98:
            break
    _, dx, dy = best
    ys, xs = np.mgrid[y0:y1, x0:x1].astype(np.float64)
    # Pixel centres (i + 0.5) map onto the donor about the centroid; the sampler indexes pixel centres at i.
    src_y = cy + dy + (ys + 0.5 - cy) / z - 0.5
    src_x = cx + dx + (xs + 0.5 - cx) / z - 0.5
    content = sample(source, src_y, src_x, order=3)
    # Interpolation widens every edge by the zoom, which reads as blur; an unsharp mask of that width restores
    # crisp edges, so the region differs in scale and not also in focus.
    soft = ndimage.gaussian_filter(content, (0.6 * z, 0.6 * z, 0), mode="reflect")
    content = content + UNSHARP_AMOUNT * (content - soft)
    # Magnifying also enlarges and smooths the scanner's pixel grain, which texture statistics (LBP) pick up as
    # readily as blur; the donor's own grain at native scale is put back so that only the tissue's scale changes.
    native = sample(source, ys + dy, xs + dx, order=0)
    content = content + native - ndimage.gaussian_filter(native, (GRAIN_SIGMA_PX, GRAIN_SIGMA_PX, 0), mode="reflect")
    return Anomaly(blend(rgb, alpha, content, y0, x0), alpha, mask)


def cell_islands(rgb, poly, rng, *, source=None, tissue=None, feather_px=None, density=None) -> Anomaly:
    """Same-stain tissue: a piece of the slide's most nuclei-dense tissue (epidermis) set into the region.

    The donor is the turned window, among candidates centred in the densest tenth of the tissue (`nuclei_density`),
    whose area under the region is densest and free of glass and ink, so the island is cells throughout. Placing it
    in dermis is the caller's choice (place_anomalies does so).
    """
    check_rgb(rgb)
    source = rgb if source is None else source
    feather = feather_px or CELL_ISLANDS_FEATHER_PX
    alpha, mask = feathered_alpha(poly, rgb.shape, feather)
    y0, y1, x0, x1 = window(poly, rgb.shape, feather / 2 + 2)
    h, w = y1 - y0, x1 - x0
    density = nuclei_density(source, tissue) if density is None else density
    on = tissue if tissue is not None else np.ones(density.shape, bool)
    if not on.any():
        raise AnomalyError("cell_islands: the slide shows no tissue to take cells from")
    lo, hi = np.quantile(density[on][:: max(1, on.sum() // 200_000)], DONOR_QUANTILES)
    donor_ys, donor_xs = np.nonzero(on & (density >= lo) & (density <= hi))
    inside = mask[y0:y1, x0:x1]
    best = None
    for _ in range(48):
        k, turns, flip = int(rng.integers(donor_ys.size)), int(rng.integers(4)), bool(rng.integers(2))
        # A turned window of the target's shape, read from around the donor pixel.
        th, tw = (w, h) if turns % 2 else (h, w)
        sy, sx = donor_ys[k] - th // 2, donor_xs[k] - tw // 2
        if sy < 0 or sx < 0 or sy + th > source.shape[0] or sx + tw > source.shape[1]:
            continue
        dens = orient(density[sy : sy + th, sx : sx + tw], turns, flip)
        ok = orient(on[sy : sy + th, sx : sx + tw], turns, flip)
        # Ink and glass gaps (cracks, lumina) would make the island read as something else, so they cost a lot.
        flaws = orient(glass_or_ink(source[sy : sy + th, sx : sx + tw]), turns, flip)[inside].mean()
        score = float(np.where(ok, dens, 0.0)[inside].mean() * (1.0 - 5.0 * flaws))
        if best is None or score > best[0]:
            best = (score, sy, sx, th, tw, turns, flip)
    if best is None:
        raise AnomalyError(f"cell_islands: no donor window of {w}×{h} px fits inside the slide")
    _, sy, sx, th, tw, turns, flip = best
    content = orient(source[sy : sy + th, sx : sx + tw], turns, flip).astype(np.float64)
    return Anomaly(blend(rgb, alpha, content, y0, x0), alpha, mask)
