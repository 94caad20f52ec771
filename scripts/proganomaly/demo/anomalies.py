"""The anomaly classes of the demo benchmark: foreign stain, same-stain tissue and artefacts (issue 12, Deliver 1).

Pure functions on arrays. Every kind has the same signature,

    kind(rgb, poly, rng, *, source=None, tissue=None, feather_px=None) -> Anomaly

and returns a new uint8 RGB image together with the per-pixel blend weight `alpha` in [0, 1] and the annotated mask
(alpha >= 0.5, which is exactly the pixels whose centres lie inside `poly`, level-0 px). The weight rises smoothly
across the outline over `feather_px` pixels, half outside and half inside, so no seam gives a region away; pixels
where alpha is 0 are returned unchanged, bit for bit. `source` is the image that content is taken from (the slide
before any anomaly was added; it defaults to `rgb`) so that one anomaly never copies another.

KINDS is the registry (kind -> function, QuPath classification, class group, default sizes); place_anomalies puts
several kinds on a slide's tissue and annotation_features turns the result into QuPath GeoJSON features.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable, Sequence
from typing import NamedTuple

import numpy as np
import shapely
from scipy import ndimage
from shapely.affinity import rotate, scale, translate
from shapely.geometry import Polygon, mapping
from skimage import color

GROUPS = ("foreign stain", "same-stain tissue", "artefacts")
DENSITY_DOWNSAMPLE = 2  # nuclei (~12 px across at 0.5 µm/px) are still separate blobs at half resolution
DENSITY_SIGMA_PX = 16.0  # level-0 px; a few nuclei wide, so single nuclei do not count as "dense tissue"
NUCLEI_QUANTILE = 0.8  # haematoxylin above this quantile of the tissue's is nucleus
NUCLEUS_AREA_PX = (40, 600)
UNSHARP_AMOUNT = 0.5
GRAIN_SIGMA_PX = 1.0  # what a Gaussian of this width removes is the pixel grain that magnification loses  # level-0 px²: single nuclei, not specks and not confluent dark sheets
DONOR_QUANTILES = (0.9, 1.0)  # cell islands are cut from the tenth of the tissue densest in nuclei (epidermis)
DERMIS_QUANTILE = 0.5  # and placed where the density is below the tissue's median (dermis)


class Anomaly(NamedTuple):
    rgb: np.ndarray  # uint8 (H, W, 3)
    alpha: np.ndarray  # float32 (H, W) in [0, 1]
    mask: np.ndarray  # bool (H, W): alpha >= 0.5, the annotated region


class PlacedAnomaly(NamedTuple):
    kind: str
    classification: str
    polygon: Polygon  # level-0 px of the image it was placed on


class AnomalyError(ValueError):
    """An anomaly cannot be made or placed; the message says which and what to change."""


# ---------------------------------------------------------------------------------------------------------- geometry


def blob_outline(rng: np.random.Generator, size: float, aspect: tuple[float, float] = (0.55, 1.0)) -> Polygon:
    """A smooth irregular blob centred on (0, 0) whose longer bounding-box side is `size` px.

    The same family as the demo cohort's pasted pieces: a star-shaped ring whose radius is one plus a few
    low-frequency harmonics (kept positive, so the ring never crosses itself), squashed by a factor drawn from
    `aspect` and turned. Two weak higher harmonics roughen the outline so it does not read as a drawn ellipse.
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
    """(height, width) bool mask of the window at (x0, y0) whose pixel centres lie inside `poly` (level-0 px)."""
    ys, xs = np.mgrid[y0 : y0 + height, x0 : x0 + width]
    return shapely.contains_xy(poly, xs + 0.5, ys + 0.5)


def _window(poly: Polygon, shape: tuple[int, ...], pad: float) -> tuple[int, int, int, int]:
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
    y0, y1, x0, x1 = _window(poly, shape, feather_px / 2 + 2)
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


# ---------------------------------------------------------------------------------------------------- pixel helpers


def _check_rgb(rgb: np.ndarray, name: str = "rgb") -> None:
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise AnomalyError(f"{name} must be uint8 RGB (H, W, 3), got {rgb.shape} {rgb.dtype}")


def _blend(rgb: np.ndarray, alpha: np.ndarray, content: np.ndarray, y0: int, x0: int) -> np.ndarray:
    """A copy of `rgb` with `content` (float, the window at y0, x0) mixed in by alpha; untouched where alpha is 0."""
    out = rgb.copy()
    h, w = content.shape[:2]
    a = alpha[y0 : y0 + h, x0 : x0 + w, None].astype(np.float64)
    window = out[y0 : y0 + h, x0 : x0 + w]
    mixed = np.rint(np.clip(a * content + (1.0 - a) * window, 0, 255)).astype(np.uint8)
    window[...] = np.where(a > 0, mixed, window)
    return out


def _sample(image: np.ndarray, ys: np.ndarray, xs: np.ndarray, order: int = 1) -> np.ndarray:
    """`image` (H, W, 3) read at fractional pixel coordinates, mirrored at its borders; float64."""
    coords = np.stack([ys, xs])
    return np.stack(
        [
            ndimage.map_coordinates(image[..., c].astype(np.float64), coords, order=order, mode="mirror")
            for c in range(3)
        ],
        axis=-1,
    )


def _white(source: np.ndarray) -> np.ndarray:
    """The slide's glass colour per channel (its brightest percentile), the reference for optical density."""
    return np.maximum(np.percentile(source[::7, ::7].reshape(-1, 3), 99.5, axis=0), 1.0)


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    """Zero-mean, unit-std Gaussian-smoothed noise: the slow unevenness of ink or of a fold's thickness."""
    field = ndimage.gaussian_filter(rng.standard_normal(shape), sigma, mode="reflect")
    return (field - field.mean()) / max(field.std(), 1e-9)


def nuclei_density(
    rgb: np.ndarray, tissue: np.ndarray | None = None, downsample: int = DENSITY_DOWNSAMPLE
) -> np.ndarray:
    """Nuclei per level-0 px, smoothed over a few nuclei (float32, `rgb`'s height and width).

    Nuclei are the connected blobs of nucleus size where the haematoxylin channel (HED colour deconvolution) is in
    the tissue's top fifth; counting blobs rather than summing haematoxylin keeps out the dark, structureless keratin
    of a hair shaft and blue-green ink, which are haematoxylin-rich but hold no separate nuclei. High in the
    epidermis, low in collagenous dermis and on glass.
    """
    _check_rgb(rgb)
    h, w = rgb.shape[:2]
    small = rgb[::downsample, ::downsample]
    haem = color.rgb2hed(small)[..., 0]
    stained = tissue[::downsample, ::downsample] if tissue is not None else small.min(-1) < 200
    if not stained.any():
        return np.zeros((h, w), np.float32)
    dark = ndimage.binary_opening(haem > np.quantile(haem[stained], NUCLEI_QUANTILE))
    labels, _ = ndimage.label(dark)
    area = np.bincount(labels.ravel()) * downsample**2
    keep = (area >= NUCLEUS_AREA_PX[0]) & (area <= NUCLEUS_AREA_PX[1])
    keep[0] = False
    centres = np.rint(ndimage.center_of_mass(keep[labels], labels, np.flatnonzero(keep))).astype(int).reshape(-1, 2)
    counts = np.zeros(haem.shape)
    np.add.at(counts, (centres[:, 0], centres[:, 1]), 1.0 / downsample**2)
    smooth = ndimage.gaussian_filter(counts, DENSITY_SIGMA_PX / downsample, mode="constant")
    # Slicing by the step rounds up, so the repeated map covers every level-0 row and column.
    full = np.repeat(np.repeat(smooth, downsample, 0), downsample, 1)[:h, :w]
    return full.astype(np.float32)


@functools.cache
def _ihc_image() -> np.ndarray:
    from skimage import data

    return data.immunohistochemistry()


# ------------------------------------------------------------------------------------------------------------- kinds


def ihc(rgb, poly, rng, *, source=None, tissue=None, feather_px=None) -> Anomaly:
    """Foreign stain: a randomly turned crop of scikit-image's IHC image (DAB brown on haematoxylin), blended in."""
    _check_rgb(rgb)
    alpha, mask = feathered_alpha(poly, rgb.shape, feather_px or KINDS["ihc"].feather_px)
    y0, y1, x0, x1 = _window(poly, rgb.shape, (feather_px or KINDS["ihc"].feather_px) / 2 + 2)
    donor = _ihc_image()
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
    return Anomaly(_blend(rgb, alpha, best[1].astype(np.float64), y0, x0), alpha, mask)


def magnified(rgb, poly, rng, *, source=None, tissue=None, feather_px=None, zoom=(1.5, 2.0)) -> Anomaly:
    """Same-stain tissue: nearby tissue of the slide itself magnified 1.5–2×, so cells and nuclei are enlarged.

    The donor footprint (the region shrunk by the zoom) is centred within about one region size of the target and
    must lie on tissue, so the stain and the tissue type stay those of the neighbourhood and only the scale differs.
    """
    _check_rgb(rgb)
    source = rgb if source is None else source
    feather = feather_px or KINDS["magnified"].feather_px
    alpha, mask = feathered_alpha(poly, rgb.shape, feather)
    y0, y1, x0, x1 = _window(poly, rgb.shape, feather / 2 + 2)
    z = rng.uniform(*zoom)
    cx, cy = poly.centroid.x, poly.centroid.y
    size = max(poly.bounds[2] - poly.bounds[0], poly.bounds[3] - poly.bounds[1])
    footprint = scale(poly, 1 / z, 1 / z, origin="centroid")
    best = None
    for _ in range(64):
        r, phi = rng.uniform(0.0, size), rng.uniform(0.0, 2.0 * np.pi)
        dx, dy = r * np.cos(phi), r * np.sin(phi)
        candidate = translate(footprint, dx, dy)
        score = _covered(candidate, tissue) if tissue is not None else 1.0
        if best is None or score > best[0]:
            best = (score, dx, dy)
        if score >= 0.98:
            break
    _, dx, dy = best
    ys, xs = np.mgrid[y0:y1, x0:x1].astype(np.float64)
    # Pixel centres (i + 0.5) map onto the donor about the centroid; the sampler indexes pixel centres at i.
    src_y = cy + dy + (ys + 0.5 - cy) / z - 0.5
    src_x = cx + dx + (xs + 0.5 - cx) / z - 0.5
    content = _sample(source, src_y, src_x, order=3)
    # Interpolation widens every edge by the zoom, which reads as blur; an unsharp mask of that width restores
    # crisp edges, so the region differs in scale and not also in focus.
    soft = ndimage.gaussian_filter(content, (0.6 * z, 0.6 * z, 0), mode="reflect")
    content = content + UNSHARP_AMOUNT * (content - soft)
    # Magnifying also enlarges and smooths the scanner's pixel grain, which texture statistics (LBP) pick up as
    # readily as blur; the donor's own grain at native scale is put back so that only the tissue's scale changes.
    native = _sample(source, ys + dy, xs + dx, order=0)
    content = content + native - ndimage.gaussian_filter(native, (GRAIN_SIGMA_PX, GRAIN_SIGMA_PX, 0), mode="reflect")
    return Anomaly(_blend(rgb, alpha, content, y0, x0), alpha, mask)


def cell_islands(rgb, poly, rng, *, source=None, tissue=None, feather_px=None, density=None) -> Anomaly:
    """Same-stain tissue: a piece of the slide's most nuclei-dense tissue (epidermis) set into the region.

    The donor is the turned window, among candidates centred in the densest tenth of the tissue (by haematoxylin
    density, `nuclei_density`), whose area under the region is densest and free of glass and ink, so the island is
    cells throughout.
    Placing it in dermis is the caller's choice (place_anomalies does so).
    """
    _check_rgb(rgb)
    source = rgb if source is None else source
    feather = feather_px or KINDS["cell_islands"].feather_px
    alpha, mask = feathered_alpha(poly, rgb.shape, feather)
    y0, y1, x0, x1 = _window(poly, rgb.shape, feather / 2 + 2)
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
        dens = _orient(density[sy : sy + th, sx : sx + tw], turns, flip)
        ok = _orient(on[sy : sy + th, sx : sx + tw], turns, flip)
        # Ink and glass gaps (cracks, lumina) would make the island read as something else, so they cost a lot.
        flaws = _orient(_glass_or_ink(source[sy : sy + th, sx : sx + tw]), turns, flip)[inside].mean()
        score = float(np.where(ok, dens, 0.0)[inside].mean() * (1.0 - 5.0 * flaws))
        if best is None or score > best[0]:
            best = (score, sy, sx, th, tw, turns, flip)
    if best is None:
        raise AnomalyError(f"cell_islands: no donor window of {w}×{h} px fits inside the slide")
    _, sy, sx, th, tw, turns, flip = best
    content = _orient(source[sy : sy + th, sx : sx + tw], turns, flip).astype(np.float64)
    return Anomaly(_blend(rgb, alpha, content, y0, x0), alpha, mask)


def _glass_or_ink(rgb: np.ndarray) -> np.ndarray:
    """Pixels that are bare glass (bright, unstained) or blue-green marker ink, not stained cells."""
    hsv = color.rgb2hsv(rgb)
    teal = (hsv[..., 0] > 0.3) & (hsv[..., 0] < 0.65) & (hsv[..., 1] > 0.15)
    return teal | (rgb.min(axis=-1) > 200)


def _orient(a: np.ndarray, turns: int, flip: bool) -> np.ndarray:
    return np.rot90(a[:, ::-1] if flip else a, turns)


def blur(rgb, poly, rng, *, source=None, tissue=None, feather_px=None, sigma=(1.5, 3.5)) -> Anomaly:
    """Artefact: the region out of focus, in place (Gaussian blur of sigma 1.5–3.5 px at its centre).

    The blur itself, not a mix of sharp and blurred images, grows with alpha (sigma x alpha, interpolated between
    five precomputed levels), so the focus drifts off smoothly as a real focus error does, without ghosting.
    """
    _check_rgb(rgb)
    source = rgb if source is None else source
    feather = feather_px or KINDS["blur"].feather_px
    alpha, mask = feathered_alpha(poly, rgb.shape, feather)
    s = rng.uniform(*sigma)
    y0, y1, x0, x1 = _window(poly, rgb.shape, feather / 2 + 2)
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
    return Anomaly(_blend(rgb, weight, content, y0, x0), alpha, mask)


def ink(rgb, poly, rng, *, source=None, tissue=None, feather_px=None) -> Anomaly:
    """Artefact: blue-green marker ink, a semi-transparent dye over the tissue (its optical density adds).

    The dye passes little red and most green and blue, like the teal ink at the edge of the demo slide; its
    density varies slowly across the stroke.
    """
    _check_rgb(rgb)
    feather = feather_px or KINDS["ink"].feather_px
    alpha, mask = feathered_alpha(poly, rgb.shape, feather)
    y0, y1, x0, x1 = _window(poly, rgb.shape, feather / 2 + 2)
    transmit = np.array([rng.uniform(0.25, 0.45), rng.uniform(0.6, 0.78), rng.uniform(0.62, 0.82)])
    strength = rng.uniform(0.7, 1.1)
    unevenness = 1.0 + 0.2 * _smooth_noise(rng, (y1 - y0, x1 - x0), sigma=12.0)
    density = np.clip(strength * unevenness, 0.2, 1.6)[..., None]
    window = rgb[y0:y1, x0:x1].astype(np.float64)
    content = window * transmit**density
    return Anomaly(_blend(rgb, alpha, content, y0, x0), alpha, mask)


def fold(rgb, poly, rng, *, source=None, tissue=None, feather_px=None) -> Anomaly:
    """Artefact: a tissue fold, the neighbouring tissue flipped over onto the region (a double layer).

    The overlying layer is the mirror image of the tissue beside the band (reflected about a line one half-width
    off its long axis), slightly out of focus since it lies above the focal plane; both layers absorb, so their
    optical densities add and the band is darker and more saturated than either. Meant for an elongated region.
    """
    _check_rgb(rgb)
    source = rgb if source is None else source
    feather = feather_px or KINDS["fold"].feather_px
    alpha, mask = feathered_alpha(poly, rgb.shape, feather)
    y0, y1, x0, x1 = _window(poly, rgb.shape, feather / 2 + 2)
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
    mirrored = _sample(source, ys - 2 * offset * n[1] - 0.5, xs - 2 * offset * n[0] - 0.5)
    mirrored = ndimage.gaussian_filter(mirrored, (rng.uniform(0.8, 1.6),) * 2 + (0,), mode="reflect")
    layer = np.clip(mirrored / _white(source), 1e-3, 1.0)
    thickness = np.clip(rng.uniform(0.85, 1.1) + 0.1 * _smooth_noise(rng, layer.shape[:2], 10.0), 0.5, 1.3)
    content = rgb[y0:y1, x0:x1].astype(np.float64) * layer ** thickness[..., None]
    return Anomaly(_blend(rgb, alpha, content, y0, x0), alpha, mask)


# ---------------------------------------------------------------------------------------------------------- registry


@dataclasses.dataclass(frozen=True)
class AnomalyKind:
    apply: Callable[..., Anomaly]
    classification: str  # the QuPath classification name of its annotations
    group: str  # one of GROUPS
    color: tuple[int, int, int]  # QuPath display colour
    size_px: tuple[int, int]  # default longer side, level-0 px at ~0.5 µm/px
    aspect: tuple[float, float]  # shorter / longer side of the outline
    feather_px: float  # width of the soft edge across the outline
    site: str = "tissue"  # "tissue", or "dermis": below the tissue's median nuclei density
    outline: Callable[..., Polygon] = blob_outline  # (rng, size, aspect) -> Polygon centred on (0, 0)


# Sizes are level-0 px at ~0.5 µm/px: a region must hold whole 64-px patches, not only patches that straddle its edge,
# or a patch model sees mostly the seam. Feathers are wide where a sharp edge would itself be the tell (blur, zoom).
KINDS: dict[str, AnomalyKind] = {
    "ihc": AnomalyKind(ihc, "IHC tissue", "foreign stain", (150, 90, 30), (128, 224), (0.55, 1.0), 8.0),
    "magnified": AnomalyKind(
        magnified, "Magnified tissue", "same-stain tissue", (200, 0, 200), (128, 224), (0.55, 1.0), 16.0
    ),
    "cell_islands": AnomalyKind(
        cell_islands, "Cell islands", "same-stain tissue", (110, 0, 170), (96, 176), (0.55, 1.0), 12.0, "dermis"
    ),
    "blur": AnomalyKind(blur, "Out-of-focus blur", "artefacts", (130, 130, 130), (128, 256), (0.5, 1.0), 24.0),
    "ink": AnomalyKind(ink, "Marker ink", "artefacts", (0, 170, 170), (128, 256), (0.35, 1.0), 6.0),
    # A fold's edges are where the tissue bends or ends, sharp in a real one; a narrow soft edge keeps that look.
    "fold": AnomalyKind(
        fold, "Tissue fold", "artefacts", (160, 110, 40), (224, 352), (0.2, 0.35), 6.0, outline=band_outline
    ),
}


# --------------------------------------------------------------------------------------------------------- placement


def _covered(poly: Polygon, tissue: np.ndarray) -> float:
    """Fraction of the pixels inside `poly` that are tissue; parts outside the image count as not tissue."""
    minx, miny, maxx, maxy = poly.bounds
    x0, y0 = math.floor(minx), math.floor(miny)
    inside = rasterise(poly, math.ceil(maxy) - y0 + 1, math.ceil(maxx) - x0 + 1, x0, y0)
    if not inside.any():
        return 0.0
    ys, xs = np.nonzero(inside)
    ys, xs = ys + y0, xs + x0
    ok = (ys >= 0) & (xs >= 0) & (ys < tissue.shape[0]) & (xs < tissue.shape[1])
    return float(tissue[ys[ok], xs[ok]].sum() / ys.size)


def place_anomalies(
    rgb: np.ndarray,
    tissue: np.ndarray,
    kinds: Sequence[str],
    rng: np.random.Generator,
    *,
    sizes: dict[str, tuple[int, int]] | None = None,
    min_on_tissue: float = 0.9,
    gap_px: float = 32.0,
    margin_px: float = 16.0,
    max_tries: int = 4000,
) -> tuple[np.ndarray, list[PlacedAnomaly]]:
    """Put one anomaly of each entry of `kinds` (repeats allowed) on the tissue of `rgb`; return (image, placed).

    `tissue` is a level-0 bool mask of `rgb`'s shape. Regions keep `gap_px` between their soft edges and
    `margin_px` from the border, cover at least `min_on_tissue` tissue, and `cell_islands` go where the nuclei
    density is below the tissue's median (dermis). All content is taken from the input image, so no anomaly copies
    another. `sizes` overrides KINDS' default size range per kind.
    """
    _check_rgb(rgb)
    if tissue.shape != rgb.shape[:2] or tissue.dtype != bool:
        raise AnomalyError(f"tissue must be a bool mask of shape {rgb.shape[:2]}, got {tissue.shape} {tissue.dtype}")
    unknown = sorted(set(kinds) - set(KINDS))
    if unknown:
        raise AnomalyError(f"unknown anomaly kinds {unknown}; known: {sorted(KINDS)}")
    sizes = sizes or {}
    density = dermis = None
    if any(KINDS[k].site == "dermis" or k == "cell_islands" for k in kinds):
        density = nuclei_density(rgb, tissue)
        dermis = tissue & (density <= np.quantile(density[tissue], DERMIS_QUANTILE)) if tissue.any() else tissue
    h, w = tissue.shape
    out, placed, halos = rgb, [], []
    for kind in kinds:
        spec = KINDS[kind]
        lo, hi = sizes.get(kind, spec.size_px)
        site = dermis if spec.site == "dermis" else tissue
        poly = None
        for _ in range(max_tries):
            blob = spec.outline(rng, rng.uniform(lo, hi), spec.aspect)
            minx, miny, maxx, maxy = blob.bounds
            if maxx - minx > w - 2 * margin_px or maxy - miny > h - 2 * margin_px:
                continue
            cx = rng.uniform(margin_px - minx, w - margin_px - maxx)
            cy = rng.uniform(margin_px - miny, h - margin_px - maxy)
            # Vertices rounded first: GeoJSON stores these numbers, and the mask must be rasterised from them.
            candidate = shapely.set_precision(translate(blob, cx, cy), 0.01)
            if not candidate.is_valid:
                continue
            halo = candidate.buffer(spec.feather_px / 2)
            if any(halo.distance(other) < gap_px for other in halos):
                continue
            if _covered(candidate, tissue) < min_on_tissue:
                continue
            if site is not tissue and _covered(candidate, site) < min_on_tissue:
                continue
            poly = candidate
            break
        if poly is None:
            raise AnomalyError(
                f"placed only {len(placed)} of {len(kinds)} anomalies: no room for {kind!r} of {lo}-{hi} px on "
                f"tissue after {max_tries} tries; ask for fewer or smaller anomalies"
            )
        extra = {"density": density} if kind == "cell_islands" else {}
        out = spec.apply(out, poly, rng, source=rgb, tissue=tissue, **extra).rgb
        placed.append(PlacedAnomaly(kind, spec.classification, poly))
        halos.append(poly.buffer(spec.feather_px / 2))
    return out, placed


def annotation_features(placed: Sequence[PlacedAnomaly]) -> list[dict]:
    """QuPath GeoJSON annotation features, one per placed anomaly, classified by kind."""
    by_name = {spec.classification: spec for spec in KINDS.values()}
    return [
        {
            "type": "Feature",
            "geometry": mapping(p.polygon),
            "properties": {
                "objectType": "annotation",
                "classification": {"name": p.classification, "color": list(by_name[p.classification].color)},
            },
        }
        for p in placed
    ]
