"""Putting anomalies of several kinds on a slide's tissue, and their QuPath GeoJSON annotation features."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import shapely
from shapely.affinity import translate
from shapely.geometry import Polygon

from proganomaly.demo.anomalies.geometry import AnomalyError, covered, rasterise, window
from proganomaly.demo.anomalies.pixels import check_rgb, nuclei_density
from proganomaly.demo.anomalies.registry import KINDS

DERMIS_QUANTILE = 0.5  # cell islands go where the nuclei density is below the tissue's median (dermis)


class PlacedAnomaly(NamedTuple):
    kind: str
    classification: str
    polygon: Polygon  # level-0 px of the image it was placed on


def _placement_order(kinds: Sequence[str]) -> list[int]:
    """Indices of `kinds` in the order they are placed: site-constrained kinds first, then the largest.

    Greedy placement fails on the last, hardest regions once the tissue fills up; placing them while it is empty
    lets far more regions fit.
    """
    return sorted(range(len(kinds)), key=lambda i: (KINDS[kinds[i]].site == "tissue", -KINDS[kinds[i]].size_px[1]))


def _find_spot(rng, spec, size_range, site_yx, site, tissue, halos, taken, *, min_on_tissue, gap_px, margin_px,
               max_tries):  # fmt: skip
    """A valid polygon for one region, or None: centred on a random site pixel, on tissue, apart from `halos`.

    `taken` marks the pixels within `gap_px` of a placed region's halo: a centre there cannot give a valid region
    (the outlines are star-shaped about their centre), so it is refused before any geometry is built.
    """
    h, w = tissue.shape
    lo, hi = size_range
    for _ in range(max_tries):
        py, px = site_yx[int(rng.integers(len(site_yx)))]
        if taken[py, px]:
            continue
        cy, cx = py + 0.5, px + 0.5
        blob = spec.outline(rng, rng.uniform(lo, hi), spec.aspect)
        minx, miny, maxx, maxy = blob.bounds
        if cx + minx < margin_px or cy + miny < margin_px or cx + maxx > w - margin_px or cy + maxy > h - margin_px:
            continue
        # Vertices rounded first: GeoJSON stores these numbers, and the mask must be rasterised from them.
        candidate = shapely.set_precision(translate(blob, cx, cy), 0.01)
        if not candidate.is_valid:
            continue
        halo = candidate.buffer(spec.feather_px / 2)
        if any(halo.distance(other) < gap_px for other in halos):
            continue
        if covered(candidate, tissue) < min_on_tissue:
            continue
        if site is not tissue and covered(candidate, site) < min_on_tissue:
            continue
        return candidate
    return None


def _mark(taken: np.ndarray, poly: Polygon) -> None:
    """Set the pixels of `taken` whose centres lie inside `poly` (clipped to the image)."""
    y0, y1, x0, x1 = window(poly, taken.shape, 1)
    taken[y0:y1, x0:x1] |= rasterise(poly, y1 - y0, x1 - x0, x0, y0)


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
    attempts: int = 1,
) -> tuple[np.ndarray, list[PlacedAnomaly]]:
    """Put one anomaly of each entry of `kinds` (repeats allowed) on the tissue of `rgb`; return (image, placed).

    `tissue` is a level-0 bool mask of `rgb`'s shape. Regions keep `gap_px` between their soft edges and
    `margin_px` from the border, cover at least `min_on_tissue` tissue, and `cell_islands` go where the nuclei
    density is below the tissue's median (dermis). All content is taken from the input image, so no anomaly copies
    another. `sizes` overrides KINDS' default size range per kind. When a region finds no room, the whole layout is
    drawn again from the same stream, up to `attempts` times (so the result still depends on the seed alone).
    `placed` is in the order of `kinds`.
    """
    check_rgb(rgb)
    if tissue.shape != rgb.shape[:2] or tissue.dtype != bool:
        raise AnomalyError(f"tissue must be a bool mask of shape {rgb.shape[:2]}, got {tissue.shape} {tissue.dtype}")
    unknown = sorted(set(kinds) - set(KINDS))
    if unknown:
        raise AnomalyError(f"unknown anomaly kinds {unknown}; known: {sorted(KINDS)}")
    if not tissue.any():
        raise AnomalyError("the image shows no tissue to place anomalies on")
    sizes = sizes or {}
    density = dermis = None
    if any(KINDS[k].site == "dermis" for k in kinds):
        density = nuclei_density(rgb, tissue)
        dermis = tissue & (density <= np.quantile(density[tissue], DERMIS_QUANTILE))
    sites = {"tissue": tissue, "dermis": dermis}
    site_pixels = {name: np.argwhere(mask) for name, mask in sites.items() if mask is not None}
    order = _placement_order(kinds)
    for attempt in range(attempts):
        polygons: dict[int, Polygon] = {}
        halos, taken = [], np.zeros(tissue.shape, bool)
        for i in order:
            spec = KINDS[kinds[i]]
            poly = _find_spot(rng, spec, sizes.get(kinds[i], spec.size_px), site_pixels[spec.site], sites[spec.site],
                              tissue, halos, taken, min_on_tissue=min_on_tissue, gap_px=gap_px, margin_px=margin_px,
                              max_tries=max_tries)  # fmt: skip
            if poly is None:
                break
            polygons[i] = poly
            halos.append(poly.buffer(spec.feather_px / 2))
            _mark(taken, halos[-1].buffer(gap_px))
        if len(polygons) == len(kinds):
            break
        if attempt == attempts - 1:
            lo, hi = sizes.get(kinds[i], KINDS[kinds[i]].size_px)
            raise AnomalyError(
                f"placed only {len(polygons)} of {len(kinds)} anomalies: no room for {kinds[i]!r} of {lo}-{hi} px on "
                f"tissue after {max_tries} tries ({attempts} layout(s)); ask for fewer or smaller anomalies"
            )
    out, placed = rgb, []
    # Applied in placement order so that each region's random draws follow its placement, whatever `kinds` says.
    for i in order:
        spec = KINDS[kinds[i]]
        extra = {"density": density} if kinds[i] == "cell_islands" else {}
        out = spec.apply(out, polygons[i], rng, source=rgb, tissue=tissue, **extra).rgb
    placed = [PlacedAnomaly(k, KINDS[k].classification, polygons[i]) for i, k in enumerate(kinds)]
    return out, placed


def annotation_features(placed: Sequence[PlacedAnomaly], slide_id: str | None = None) -> list[dict]:
    """QuPath GeoJSON annotation features, one per placed anomaly, classified by kind.

    Besides QuPath's `classification`, each feature carries `anomaly_group` (one of GROUPS) and `anomaly_kind`, so
    evaluation can group classes from the GeoJSON alone. With `slide_id`, features get deterministic UUID ids.
    """
    from proganomaly.data.geojson import feature, feature_id

    feats = []
    for index, p in enumerate(placed):
        spec = KINDS[p.kind]
        fid = feature_id(slide_id, "annotation", index) if slide_id is not None else None
        feat = feature(p.polygon, spec.classification, list(spec.color), fid=fid)
        feat["properties"].update(anomaly_group=spec.group, anomaly_kind=p.kind)
        feats.append(feat)
    return feats
