"""The threshold × dilation grid, metrics, pooling, pixel scores and the two rule scripts end to end."""

import functools
import json
import runpy
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import scipy.ndimage as ndi
import shapely
import tifffile
from shapely import affinity
from shapely.geometry import MultiPolygon, Polygon, box
from sklearn.metrics import (
    average_precision_score,
    f1_score,
    jaccard_score,
    precision_score,
    recall_score,
    roc_auc_score,
)

from proganomaly.config import config_params, validate_config
from proganomaly.evaluation import geometry, metrics
from proganomaly.evaluation.grid import (
    GridSpec,
    Region,
    cell_areas,
    evaluate_all,
    evaluate_grid,
    evaluate_grids,
    predicted_polygons,
    raster_tolerance,
)

ROOT = Path(__file__).resolve().parents[1]
AREAS = ["true_positive", "false_positive", "false_negative", "true_negative"]


def spec(thresholds=(0.5,), dilations=(1.0,), mode="scale", origin="centroid", tol=0.0, method="exact"):
    """A grid spec; "exact" by default, so the tests of the grid's definitions pin the reference method (the raster
    method is compared with it in test_raster_grid_matches_exact_within_tolerance)."""
    return GridSpec(tuple(thresholds), tuple(dilations), mode, origin, tol, method=method)


def areas_of(pred, tissue, annotation):
    region = Region.clipped(tissue, annotation)
    return cell_areas(np.asarray(pred, dtype=object), region, tissue.area, region.annotation.area)


def test_two_overlapping_squares():
    # prediction [0,4]², annotation [2,6]², tissue [0,10]²: TP 4, FP 12, FN 12, TN 100 − 28.
    got = areas_of([box(0, 0, 4, 4)], box(0, 0, 10, 10), box(2, 2, 6, 6))
    assert [got[k] for k in AREAS] == [4, 12, 12, 72]
    assert got["num_polygons"] == 1


def test_annotation_with_a_hole():
    ann = box(0, 0, 6, 6).difference(box(2, 2, 4, 4))  # area 32
    got = areas_of([box(1, 1, 5, 5)], box(0, 0, 10, 10), ann)  # 16, of which the 4 of the hole are FP
    assert [got[k] for k in AREAS] == [12, 4, 20, 64]


def test_multipolygon_annotation_and_overlapping_predictions():
    ann = MultiPolygon([box(0, 0, 2, 2), box(6, 6, 8, 8)])
    pred = [box(1, 1, 3, 3), box(2, 2, 3, 7), box(5, 5, 7, 7)]  # overlapping: the union counts once
    got = areas_of(pred, box(0, 0, 10, 10), ann)
    union = shapely.union_all(pred)
    assert got["true_positive"] == 1 + 1
    assert got["false_positive"] == union.area - 2
    assert got["false_negative"] == 8 - 2
    assert sum(got[k] for k in AREAS) == 100


def test_clipping_by_tissue_region_keeps_tn_non_negative():
    # The original's quirk: an annotation outside the tissue made FN too big and TN negative.
    tissue = box(0, 0, 4, 4)
    got = areas_of([box(3, 0, 8, 1)], tissue, box(0, 0, 10, 10))
    assert [got[k] for k in AREAS] == [1, 0, 15, 0]
    got = areas_of([box(-5, -5, 1, 1)], tissue, box(2, 2, 20, 20))
    assert [got[k] for k in AREAS] == [0, 1, 4, 11]


def test_empty_prediction_gives_nan_precision_not_a_crash():
    got = areas_of([], box(0, 0, 10, 10), box(0, 0, 5, 5))
    assert [got[k] for k in AREAS] == [0, 0, 25, 75] and got["num_polygons"] == 0
    m = metrics.confusion_metrics(*(got[k] for k in AREAS))
    assert np.isnan(m["precision"]) and m["recall"] == 0 and m["f1"] == 0 and m["specificity"] == 1
    none = metrics.confusion_metrics(0, 0, 0, 0)
    assert all(np.isnan(v) for v in none.values())


def test_dilation_of_a_known_square_in_the_grid():
    kde = np.zeros((20, 20), np.float32)
    kde[8:10, 8:10] = 1.0  # a 2×2 map square; downsample 4 → level-0 [32, 40]², centroid (36, 36)
    tissue, ann = box(0, 0, 80, 80), box(36, 36, 80, 80)
    grid = evaluate_grid(kde, 4.0, Region.clipped(tissue, ann), spec(dilations=(1, 2, 3)), mpp=0.5)
    tp_fp = (grid.true_positive + grid.false_positive).to_numpy()
    np.testing.assert_allclose(tp_fp, [64, 256, 576])  # (8f)²
    np.testing.assert_allclose(grid.true_positive, [16, 64, 144])  # one quarter lies in the annotation
    np.testing.assert_allclose(grid[AREAS].sum(axis=1), 6400)


def test_bbox_centre_origin_and_buffer_mode():
    kde = np.zeros((30, 30), np.float32)
    kde[10:13, 10:11] = kde[10:11, 10:13] = 1.0  # an L: centroid ≠ bounding-box centre
    tissue, ann = box(0, 0, 30, 30), box(0, 0, 11.5, 30)
    (ell,) = geometry.mask_polygons(kde > 0.5)
    for origin in ("centroid", "center"):
        grid = evaluate_grid(kde, 1.0, Region.clipped(tissue, ann), spec(dilations=(2.0,), origin=origin), mpp=1.0)
        ref = affinity.scale(ell, 2, 2, origin=origin)
        assert grid.true_positive[0] == pytest.approx(ref.intersection(ann).area)
    grid = evaluate_grid(kde, 1.0, Region.clipped(tissue, ann), spec(dilations=(0, 2.0), mode="buffer"), mpp=0.5)
    grown = ell.buffer(4.0, join_style="mitre", mitre_limit=2.0)  # 2 µm at 0.5 µm/px = 4 px
    assert grid.true_positive[1] == pytest.approx(grown.intersection(ann).area)
    assert (grid.true_positive + grid.false_positive)[0] == ell.area


@pytest.mark.parametrize("method", ["exact", "raster"])
@pytest.mark.parametrize("seed", range(3))
def test_grid_agrees_with_pixel_counting_and_sums_to_tissue(seed, method):
    rng = np.random.default_rng(seed)
    kde = ndi.gaussian_filter(rng.random((48, 64)), 3).astype(np.float32)
    kde = (kde - kde.min()) / (kde.max() - kde.min())
    ann_mask = ndi.gaussian_filter(rng.random((48, 64)), 3) > 0.5
    ds = 2.0
    # Tissue: a patch grid (8-px map patches) with some patches missing.
    gy, gx = np.mgrid[0:6, 0:8]
    keep = rng.random(gx.shape) < 0.7
    px, py = gx[keep] * 16, gy[keep] * 16
    tissue = geometry.boxes_region(px, py, np.full(px.shape, 16), np.full(py.shape, 16))
    tissue_mask = geometry.boxes_mask(px, py, np.full(px.shape, 16), np.full(py.shape, 16), kde.shape, ds)
    ann = shapely.union_all(geometry.scale_coords(geometry.mask_polygons(ann_mask), ds))
    thresholds = (0.0, 0.3, 0.5, 0.7)
    grid = evaluate_grid(kde, ds, Region.clipped(tissue, ann), spec(thresholds, (1, 1.5, 4), method=method), mpp=0.25)
    assert len(grid) == 12 and list(grid.threshold) == [t for t in thresholds for _ in range(3)]
    np.testing.assert_allclose(grid[AREAS].sum(axis=1), tissue.area)
    assert (grid[AREAS] >= 0).all().all()
    # Without dilation the polygons are exact pixel sets: areas are pixel counts × ds² (the raster method too: the
    # annotation and the tissue follow pixel edges here, so no pixel holds two outlines).
    for t in thresholds:
        row = grid[(grid.threshold == t) & (grid.dilation == 1)].iloc[0]
        pred = (kde > t) & tissue_mask
        truth = ann_mask & tissue_mask
        expect = [
            (pred & truth).sum(),
            (pred & ~truth).sum(),
            (~pred & truth).sum(),
            (tissue_mask & ~pred & ~truth).sum(),
        ]
        np.testing.assert_allclose([row[k] for k in AREAS], np.array(expect) * ds * ds)
        labels = ndi.label(pred)[1]
        assert row.num_polygons >= labels


def test_metrics_match_sklearn_on_pixel_sets():
    rng = np.random.default_rng(0)
    y, p = rng.random(500) < 0.3, rng.random(500) < 0.4
    tp, fp, fn, tn = (y & p).sum(), (~y & p).sum(), (y & ~p).sum(), (~y & ~p).sum()
    m = metrics.confusion_metrics(tp, fp, fn, tn, beta=2.0)
    assert m["precision"] == pytest.approx(precision_score(y, p))
    assert m["recall"] == pytest.approx(recall_score(y, p))
    assert m["f1"] == pytest.approx(f1_score(y, p)) and m["dice"] == pytest.approx(f1_score(y, p))
    assert m["iou"] == pytest.approx(jaccard_score(y, p))
    assert m["accuracy"] == pytest.approx((y == p).mean())
    assert m["specificity"] == pytest.approx(recall_score(~y, ~p))
    from sklearn.metrics import fbeta_score

    assert m["f_beta"] == pytest.approx(fbeta_score(y, p, beta=2.0))


def grid_frame(values):
    rows = [
        {"threshold": t, "dilation": d, "dilation_mode": "scale", "num_polygons": 1, "tissue_area": 100.0}
        | dict(zip(AREAS, v, strict=True))
        for (t, d), v in values.items()
    ]
    return pd.DataFrame(rows)


def test_pool_sums_areas_then_recomputes_and_best_cell():
    a = metrics.with_metrics(grid_frame({(0.1, 1): (10, 10, 0, 80), (0.2, 1): (5, 0, 5, 90)}), mpp=1.0)
    b = metrics.with_metrics(grid_frame({(0.1, 1): (0, 0, 10, 90), (0.2, 1): (0, 0, 0, 100)}), mpp=2.0)
    pooled = metrics.pool_grids([a, b])
    first = pooled.iloc[0]
    # µm² sums: slide b counts four times per px² at 2 µm/px.
    assert [first[f"{k}_um2"] for k in AREAS] == [10, 10, 40, 80 + 360]
    assert first.f1 == pytest.approx(2 * 10 / (20 + 10 + 40)) and first.num_slides == 2
    assert metrics.best_cell(pooled, "f1")["threshold"] == 0.2
    assert metrics.best_cell(a, "f1")["threshold"] == 0.1  # pooling changes the best cell
    nan_grid = metrics.with_metrics(grid_frame({(0.1, 1): (0, 0, 0, 100)}), mpp=1.0)
    assert metrics.best_cell(nan_grid, "f1") is None


def test_pixel_scores_match_sklearn_and_weights_act_as_counts():
    rng = np.random.default_rng(2)
    y = rng.random(3000) < 0.2
    s = y * 0.5 + rng.random(3000)
    s[:5] = np.nan
    res = metrics.pixel_scores(y, s, curve_points=50)
    ok = np.isfinite(s)
    assert res["auroc"] == pytest.approx(roc_auc_score(y[ok], s[ok]))
    assert res["average_precision"] == pytest.approx(average_precision_score(y[ok], s[ok]))
    assert res["n_nonfinite_dropped"] == 5 and len(res["roc"]["fpr"]) <= 50
    assert res["roc"]["fpr"][0] == 0 and res["roc"]["tpr"][-1] == 1
    json.dumps(res)  # curve thresholds hold no infinities
    w = rng.integers(1, 4, 3000)
    weighted = metrics.pixel_scores(y[ok], s[ok], w[ok])
    repeated = metrics.pixel_scores(np.repeat(y[ok], w[ok]), np.repeat(s[ok], w[ok]))
    assert weighted["auroc"] == pytest.approx(repeated["auroc"])
    assert weighted["average_precision"] == pytest.approx(repeated["average_precision"])
    one_class = metrics.pixel_scores(np.zeros(10, bool), np.arange(10.0))
    assert one_class["auroc"] is None and one_class["roc"] is None


def test_pixel_sample_is_deterministic_and_sorted():
    a = metrics.sample_pixels(10_000, 1000, seed=7, slide="s1")
    assert np.array_equal(a, metrics.sample_pixels(10_000, 1000, seed=7, slide="s1"))
    assert not np.array_equal(a, metrics.sample_pixels(10_000, 1000, seed=7, slide="s2"))
    assert len(np.unique(a)) == 1000 and np.all(np.diff(a) > 0)
    assert np.array_equal(metrics.sample_pixels(50, 1000, seed=7, slide="s1"), np.arange(50))


def synthetic_region(seed: int, shape=(48, 64), ds=4.0):
    """A noisy map that is high along the map's edges, a patch grid with gaps whose last column reaches past the
    map, and two annotation classes (one with holes) in one group."""
    rng = np.random.default_rng(seed)
    kde = ndi.gaussian_filter(rng.random(shape), 2)
    kde = (kde - kde.min()) / (kde.max() - kde.min())
    kde[:, :3] = kde[:2, :] = 0.9  # predictions touching the map's edges
    kde = kde.astype(np.float32)
    gy, gx = np.mgrid[0 : shape[0] // 8, 0 : shape[1] // 8 + 1]
    keep = rng.random(gx.shape) < 0.75
    px, py = gx[keep] * 8 * ds, gy[keep] * 8 * ds
    tissue = geometry.boxes_region(px, py, np.full(px.shape, 8 * ds), np.full(py.shape, 8 * ds))
    centres = rng.uniform(0, 1, (6, 2)) * np.array([shape[1], shape[0]]) * ds
    blobs = shapely.buffer(shapely.points(centres), rng.uniform(10, 40, 6))
    blobs[0] = blobs[0].difference(shapely.buffer(blobs[0].centroid, 6))  # a hole
    a, b = shapely.union_all(blobs[:3]), shapely.union_all(blobs[3:])
    parts = {("class", "A"): a, ("class", "B"): b, ("group", "AB"): shapely.union_all([a, b])}
    parts = {k: shapely.intersection(g, tissue) for k, g in parts.items()}
    return kde, ds, Region.clipped(tissue, shapely.union_all(blobs)), parts


@pytest.mark.parametrize(
    ("mode", "origin", "tol", "dilations"),
    [
        ("scale", "centroid", 0.0, (1, 1.1, 1.5, 2, 3, 5, 10, 30)),
        ("scale", "center", 0.0, (1, 1.5, 4, 9)),
        ("scale", "centroid", 0.5, (1, 2, 6)),
        ("buffer", "centroid", 0.0, (0, 1, 4, 20)),
    ],
)
@pytest.mark.parametrize("seed", range(3))
def test_raster_grid_matches_exact_within_tolerance(seed, mode, origin, tol, dilations):
    """The stated tolerance of the raster method (grid.raster_tolerance) for every area of every cell, all classes and
    per part."""
    kde, ds, region, parts = synthetic_region(seed)
    thresholds = (0.2, 0.5, 0.7)
    specs = {m: spec(thresholds, dilations, mode, origin, tol, m) for m in ("exact", "raster")}
    exact, raster = (evaluate_grids(kde, ds, region, specs[m], 0.5, parts) for m in ("exact", "raster"))
    pred = (exact[0].true_positive + exact[0].false_positive).to_numpy()
    bound = raster_tolerance(pred, region.annotation.area, exact[0].dilation, specs["raster"], ds) + 1e-6
    for a in AREAS:
        np.testing.assert_array_less(np.abs(raster[0][a] - exact[0][a]), bound)
        per_part = np.abs(raster[1][a] - exact[1][a]).to_numpy().reshape(len(pred), len(parts))
        np.testing.assert_array_less(per_part, np.broadcast_to(bound[:, None], per_part.shape))
    assert list(raster[1].name) == list(exact[1].name)
    np.testing.assert_allclose(raster[0][AREAS].sum(axis=1), region.tissue.area)
    undilated = exact[0].dilation == (1 if mode == "scale" else 0)
    if tol == 0:  # pixel-edge polygons: the undilated prediction's components are the raster's
        assert (raster[0].num_polygons[undilated] == exact[0].num_polygons[undilated]).all()


def test_predicted_polygons_match_the_grid_cell():
    rng = np.random.default_rng(4)
    kde = ndi.gaussian_filter(rng.random((40, 40)), 2).astype(np.float32)
    kde /= kde.max()
    region = Region.clipped(box(0, 0, 30 * 4, 40 * 4), box(20, 20, 100, 100))
    s = spec((0.8,), (1.5,))
    cell = evaluate_grid(kde, 4.0, region, s, mpp=0.5).iloc[0]
    polys = predicted_polygons(kde, 4.0, region, s, 0.5, 0.8, 1.5)
    assert sum(p.area for p in polys) == pytest.approx(cell.true_positive + cell.false_positive)
    assert len(polys) == cell.num_polygons
    assert all(region.tissue.buffer(1e-6).contains(p) for p in polys)


# --- the rule scripts, run with a stand-in for Snakemake's `snakemake` object -------------------------------------


class Files(SimpleNamespace):
    def __getitem__(self, key):
        return getattr(self, key)


def write_slide(root, slide, seed, two_classes=False):
    """Synthetic inputs of one slide: maps at downsample 4, a patch grid, QC record and annotations."""
    rng = np.random.default_rng(seed)
    h, w, ds = 64, 80, 4
    kde = np.zeros((h, w), np.float32)
    kde[20:36, 30:50] = 0.2
    kde[24:32, 36:44] = 0.6
    kde = ndi.gaussian_filter(kde, 1.5)
    maps = root / "slides" / slide / "maps"
    maps.mkdir(parents=True)
    tifffile.imwrite(maps / "kde.tif", kde, tile=(16, 16))
    tifffile.imwrite(maps / "flags.tif", (kde > 0.1).astype(np.float32))
    tifffile.imwrite(maps / "mahalanobis_d2.tif", (kde * 50 + rng.random((h, w))).astype(np.float32))
    tifffile.imwrite(maps / "anomaly_map.tif", rng.random((h, w, 3)).astype(np.float32), photometric="rgb")
    (root / "slides" / slide / "maps.json").write_text(
        json.dumps({"downsample": ds, "width": w, "height": h, "mpp": 2.0})
    )
    gy, gx = np.mgrid[0:4, 0:5]
    patches = pd.DataFrame({"x": gx.ravel() * 64, "y": gy.ravel() * 64, "width": 64, "height": 64})
    patches = patches[~((patches.x == 0) & (patches.y == 0))]
    tiles = root / "tiles"
    tiles.mkdir(exist_ok=True)
    patches.to_parquet(tiles / f"{slide}.patches.parquet")
    (tiles / f"{slide}.qc.json").write_text(json.dumps({"mpp": 0.5, "dimensions": {"width": 320, "height": 256}}))
    feature = {
        "type": "Feature",
        "geometry": {"type": "Polygon", "coordinates": [[[140, 90], [190, 90], [190, 130], [140, 130], [140, 90]]]},
        "properties": {"objectType": "annotation", "classification": {"name": "Tumor"}},
    }
    features = [feature]
    if two_classes:
        # A second class near the map's low corner, and a group on the first (top-level, as the demo writes it).
        feature["anomaly_group"] = "same-stain tissue"
        ring = [[20, 200], [60, 200], [60, 240], [20, 240], [20, 200]]
        features.append({"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [ring]},
                         "properties": {"objectType": "annotation", "classification": {"name": "Ink"}}})  # fmt: skip
    ann = root / f"{slide}.geojson"
    ann.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    return Files(
        kde=str(maps / "kde.tif"),
        flags=str(maps / "flags.tif"),
        mahalanobis_d2=str(maps / "mahalanobis_d2.tif"),
        anomaly_map=str(maps / "anomaly_map.tif"),
        maps=str(root / "slides" / slide / "maps.json"),
        patches=str(tiles / f"{slide}.patches.parquet"),
        qc=str(tiles / f"{slide}.qc.json"),
        annotations=[str(ann)],
    )


@functools.cache
def rule_config_keys() -> dict[str, list[str]]:
    """The config paths each rule passes as params, as Snakemake parses the workflow."""
    out = subprocess.run(
        [sys.executable, "tests/slurm/workflow_rules.py"], capture_output=True, text=True, check=True, cwd=ROOT
    ).stdout
    return {rule["name"]: rule["config_keys"] for rule in json.loads(out)}


def run_script(name, inputs, outputs, config, log, wildcards=None):
    """Run a rule script as Snakemake would: it sees only the config its rule lists in params."""
    params = config_params(config, *rule_config_keys()[name])
    snake = SimpleNamespace(input=inputs, output=outputs, params=params, rule=name, log=[str(log)], wildcards=wildcards)
    stderr = sys.stderr
    try:
        runpy.run_path(f"scripts/{name}.py", init_globals={"snakemake": snake})
    finally:
        sys.stderr = stderr  # setup_logging points stderr at the rule's log


def eval_outputs(root, slide):
    d = root / slide
    d.mkdir(parents=True)
    names = [("grid", "grid.parquet"), ("csv", "grid.csv"), ("class_grid", "class_grid.parquet"),
             ("metrics", "metrics.json"), ("pixels", "pixels.parquet"), ("lesion_grid", "lesion_grid.parquet")]  # fmt: skip
    return Files(**{k: str(d / f) for k, f in names})


def test_rule_scripts_end_to_end(tmp_path):
    config = validate_config(
        {"evaluation": {"thresholds": [0.0, 0.05, 0.1, 0.3], "dilations": [1, 2, 30], "max_pixels": 2000}}
    )
    slides = {"v1": "validation", "s1": "test", "s2": "test"}
    ins, outs = {}, {}
    for i, slide in enumerate(slides):
        ins[slide] = write_slide(tmp_path / "in", slide, i, two_classes=slide != "s2")
        outs[slide] = eval_outputs(tmp_path / "eval", slide)
        run_script("evaluate_slide", ins[slide], outs[slide], config, tmp_path / f"{slide}.log", Files(slide=slide))
    grid = pd.read_parquet(outs["s1"].grid)
    assert len(grid) == 12 and pd.read_csv(outs["s1"].csv).shape == grid.shape
    np.testing.assert_allclose(grid[AREAS].sum(axis=1), 19 * 64 * 64)  # tissue: 19 patches
    np.testing.assert_allclose(grid.true_positive_um2, grid.true_positive * 0.25)
    m = json.loads(open(outs["s1"].metrics).read())
    assert m["cells"] == 12 and m["best_f1"]["value"] == pytest.approx(grid.f1.max()) and m["best_cells_are_oracle"]
    assert m["pixel"]["mahalanobis_d2"]["auroc"] > 0.5 and "provenance" in m
    assert m["annotation_classes"] == {"Tumor": "same-stain tissue", "Ink": "Ink"}
    assert set(m["per_class"]["class"]) == {"Tumor", "Ink"} and set(m["per_class"]["group"]) == {
        "same-stain tissue",
        "Ink",
    }
    # Per class, against normal pixels only, as sklearn on the same sampled pixels.
    px = pd.read_parquet(outs["s1"].pixels)
    keep = px["class:Tumor"] | ~px["label"]
    want = roc_auc_score(px["class:Tumor"][keep], px["kde"][keep])
    assert m["per_class"]["class"]["Tumor"]["pixel"]["kde"]["auroc"] == pytest.approx(want)
    # Per-class grid: FP and TN are the all-classes ones; TP + FN is the class's area in tissue.
    cg = pd.read_parquet(outs["s1"].class_grid)
    tumor = cg[(cg.level == "class") & (cg.name == "Tumor")].reset_index(drop=True)
    np.testing.assert_allclose(tumor.false_positive, grid.false_positive)
    np.testing.assert_allclose(tumor.true_positive + tumor.false_negative, 50 * 40)
    assert m["per_class"]["class"]["Tumor"]["oracle_best_f1"]["f1"] == pytest.approx(tumor.f1.max())

    op_path = tmp_path / "eval" / "operating_point.json"
    run_script("choose_operating_point", Files(grids=[outs["v1"].grid]), [str(op_path)], config, tmp_path / "op.log")
    op = json.loads(op_path.read_text())
    val = pd.read_parquet(outs["v1"].grid)
    assert op["chosen_on"]["slides"] == ["v1"] and op["threshold"] == val.loc[val.f1.idxmax(), "threshold"]
    export_all(slides, ins, outs, op_path, config, tmp_path)
    gj = json.loads(open(outs["s1"].geojson).read())
    assert gj["type"] == "FeatureCollection" and gj["features"]
    props = gj["features"][0]["properties"]
    assert props["objectType"] == "annotation" and props["classification"]["name"] == "Anomaly (predicted)"
    assert gj["proganomaly"]["operating_point"]["threshold"] == op["threshold"]
    # The test slide's polygons and metrics are the validation-chosen cell of its own grid.
    cell = grid[(grid.threshold == op["threshold"]) & (grid.dilation == op["dilation"])].iloc[0]
    exported = sum(shapely.geometry.shape(f["geometry"]).area for f in gj["features"])
    # The point's numbers are exact; the grid's raster cell agrees within the stated tolerance.
    scale = cell.true_positive + cell.false_positive + cell.true_positive + cell.false_negative
    grid_spec = GridSpec((), (), "scale", "centroid", 0.0)
    bound = raster_tolerance(exported, cell.true_positive + cell.false_negative, op["dilation"], grid_spec, 4.0)[0]
    assert exported == pytest.approx(cell.true_positive + cell.false_positive, abs=bound)
    at = json.loads(open(outs["s1"].at_point).read())
    # F1 = 2TP / (prediction + annotation): each area off by at most `bound` moves it by at most 4 · bound / scale.
    assert at["all"]["f1"] == pytest.approx(cell.f1, abs=4 * bound / scale)
    assert at["all"]["num_polygons"] == len(gj["features"])
    assert at["all"]["true_positive"] + at["all"]["false_positive"] == pytest.approx(exported)
    tcell = tumor[(tumor.threshold == op["threshold"]) & (tumor.dilation == op["dilation"])].iloc[0]
    assert at["class"]["Tumor"]["f1"] == pytest.approx(
        tcell.f1, abs=4 * bound / (tcell.true_positive * 2 + tcell.false_positive + tcell.false_negative)
    )

    pooled_dir = tmp_path / "eval" / "pooled" / "test"
    pooled_dir.mkdir(parents=True)
    pooled_out = Files(grid=str(pooled_dir / "grid.parquet"), csv=str(pooled_dir / "grid.csv"),
                       class_grid=str(pooled_dir / "class_grid.parquet"), metrics=str(pooled_dir / "metrics.json"))  # fmt: skip
    test = ["s1", "s2"]
    pool_in = Files(
        grids=[outs[s].grid for s in test],
        class_grids=[outs[s].class_grid for s in test],
        metrics=[outs[s].metrics for s in test],
        pixels=[outs[s].pixels for s in test],
        at_point=[outs[s].at_point for s in test],
        lesion_grids=[outs[s].lesion_grid for s in test],
        operating_point=str(op_path),
    )
    run_script("pool_metrics", pool_in, pooled_out, config, tmp_path / "pool.log", Files(split="test"))
    pooled = pd.read_parquet(pooled_out.grid)
    g2 = pd.read_parquet(outs["s2"].grid)
    np.testing.assert_allclose(pooled.true_positive_um2, grid.true_positive_um2 + g2.true_positive_um2)
    pm = json.loads(open(pooled_out.metrics).read())
    assert pm["split"] == "test" and pm["slides"] == test and pm["pixel"]["kde"]["auroc"] is not None
    # s2 has no Ink: its normal pixels still count as Ink's negatives, its prediction on normal tissue as FP.
    both = pd.concat([pd.read_parquet(outs[s].pixels) for s in test], ignore_index=True)
    ink = both["class:Ink"].fillna(False).astype(bool)
    keep = ink | ~both["label"]
    want = roc_auc_score(ink[keep], both["kde"][keep], sample_weight=both["weight"][keep])
    assert pm["per_class"]["class"]["Ink"]["pixel"]["kde"]["auroc"] == pytest.approx(want)
    pcg = pd.read_parquet(pooled_out.class_grid)
    pink = pcg[(pcg.level == "class") & (pcg.name == "Ink")].reset_index(drop=True)
    np.testing.assert_allclose(pink.false_positive_um2, pooled.false_positive_um2)
    s2_at = json.loads(open(outs["s2"].at_point).read())
    fp = at["all"]["false_positive_um2"] + s2_at["all"]["false_positive_um2"]
    tp = at["class"]["Ink"]["true_positive_um2"]
    fn = at["class"]["Ink"]["false_negative_um2"]
    assert pm["at_operating_point"]["class"]["Ink"]["f1"] == pytest.approx(2 * tp / (2 * tp + fp + fn), nan_ok=True)


def test_operating_point_falls_back_to_fixed_without_validation(tmp_path):
    config = validate_config({"evaluation": {"operating_threshold": 0.05, "operating_dilation": 2}})
    out = tmp_path / "operating_point.json"
    run_script("choose_operating_point", Files(grids=[]), [str(out)], config, tmp_path / "op.log")
    op = json.loads(out.read_text())
    assert op["source"] == "fixed" and (op["threshold"], op["dilation"]) == (0.05, 2.0)
    assert "no annotated validation slides" in op["reason"]


def test_mask_image_annotation_matches_geojson(tmp_path):
    from PIL import Image

    from proganomaly.evaluation import inputs as eval_io

    mask = np.zeros((16, 20), np.uint8)
    mask[4:10, 5:12] = 255
    mask[6, 7] = 0
    Image.fromarray(mask).save(tmp_path / "ann.png")
    geom, repairs = eval_io.read_annotation(tmp_path / "ann.png", mask_downsample=8.0)
    assert repairs == [] and geom.area == (mask > 0).sum() * 64
    inferred, _ = eval_io.read_annotation(tmp_path / "ann.png", level0_width=160)
    assert inferred.equals(geom)
    with pytest.raises(eval_io.EvaluationInputError, match=r"ann\.png.*annotation_mask_downsample"):
        eval_io.read_annotation(tmp_path / "ann.png")


def test_map_shape_mismatch_is_a_clear_error(tmp_path):
    from proganomaly.evaluation import inputs as eval_io

    tifffile.imwrite(tmp_path / "kde.tif", np.zeros((4, 5), np.float32))
    with pytest.raises(eval_io.EvaluationInputError, match=r"kde.tif.*\(4, 5\).*\(5, 4\)"):
        eval_io.read_map(tmp_path / "kde.tif", (5, 4))
    with pytest.raises(eval_io.EvaluationInputError, match="missing"):
        eval_io.read_map(tmp_path / "nope.tif")


def test_polygon_with_hole_prediction_area():
    kde = np.zeros((12, 12), np.float32)
    kde[2:10, 2:10] = 1
    kde[5:7, 5:7] = 0
    (poly,) = geometry.threshold_polygons(kde, 0.5)
    assert isinstance(poly, Polygon) and poly.area == 60 and len(poly.interiors) == 1
    got = areas_of([poly], box(0, 0, 12, 12), box(4, 4, 8, 8))
    assert [got[k] for k in AREAS] == [12, 48, 4, 80]


def test_part_areas_by_hand():
    # Tissue 10×10; class A the left 2×10 strip, class B the right 2×10 strip (group AB holds both).
    tissue, a, b = box(0, 0, 10, 10), box(0, 0, 2, 10), box(8, 0, 10, 10)
    region = Region.clipped(tissue, shapely.union_all([a, b]))
    parts = {("class", "A"): a, ("class", "B"): b, ("group", "AB"): shapely.union_all([a, b])}
    kde = np.zeros((10, 10), np.float32)
    kde[:, 1:5] = 1  # prediction: x in [1, 5): 1 column over A, 3 over normal tissue
    grid, part = evaluate_grids(kde, 1.0, region, spec((0.5,), (1.0,)), 1.0, parts)
    assert [grid.iloc[0][k] for k in AREAS] == [10, 30, 30, 30]
    got = {n: [r[k] for k in AREAS] for n, r in part.set_index("name").iterrows()}
    # FP and TN are normal tissue's (the other class's strip is neither); TP/FN the class's own.
    assert got == {"A": [10, 30, 10, 30], "B": [0, 30, 20, 30], "AB": [10, 30, 30, 30]}
    assert part.set_index("name").loc["A", "tissue_area"] == 80  # tissue minus B's strip


def test_class_regions_and_groups(tmp_path):
    from proganomaly.evaluation import classes

    def feat(x, name=None, group=None):
        f = {"type": "Feature", "geometry": shapely.geometry.mapping(box(x, 0, x + 1, 1)),
             "properties": {"objectType": "annotation"}}  # fmt: skip
        if name:
            f["properties"]["classification"] = {"name": name}
        if group:
            f["anomaly_group"] = group
        return f

    path = tmp_path / "a.geojson"
    feats = [feat(0, "ihc", "foreign stain"), feat(2, "ihc", "foreign stain"), feat(4, "blur"), feat(6)]
    path.write_text(json.dumps({"type": "FeatureCollection", "features": feats}))
    regions, groups = classes.class_regions(path)
    assert groups == {"ihc": "foreign stain", "blur": "blur", "Unclassified": "Unclassified"}
    assert regions["ihc"].area == 2 and regions["blur"].area == 1
    parts = classes.part_regions(regions, groups)
    assert parts[("group", "foreign stain")].area == 2 and len(parts) == 6
    assert classes.class_regions(path, ["blur"])[1] == {"blur": "blur"}
    feats.append(feat(8, "ihc", "artefact"))
    path.write_text(json.dumps({"type": "FeatureCollection", "features": feats}))
    with pytest.raises(classes.AnnotationClassError, match=r"'ihc'.*artefact"):
        classes.class_regions(path)


def area_cols(tp, fp, fn, tn) -> dict:
    tissue = np.sum([tp, fp, fn, tn], axis=0)
    return dict(zip(AREAS, [tp, fp, fn, tn], strict=True)) | {"tissue_area": tissue}


def test_part_pixel_scores_and_pooling_of_absent_classes():
    rng = np.random.default_rng(0)
    n = 3000
    label = rng.random(n) < 0.3
    a = label & (rng.random(n) < 0.5)
    px = pd.DataFrame({"label": label, "class:A": a, "kde": rng.random(n) + a * 0.5, "w": rng.random(n) + 0.5})
    res = metrics.part_pixel_scores(px, {("class", "A"): "class:A"}, ["kde"], px["w"])["class"]["A"]["kde"]
    keep = a | ~label
    assert res["auroc"] == pytest.approx(roc_auc_score(a[keep], px.kde[keep], sample_weight=px.w[keep]))
    assert res["average_precision"] == pytest.approx(
        average_precision_score(a[keep], px.kde[keep], sample_weight=px.w[keep])
    )
    # Pooling per class: slide 2 lacks class A, so it adds its FP and TN only.
    key = {"threshold": [0.5], "dilation": [1.0], "dilation_mode": ["scale"]}
    g1 = metrics.with_metrics(pd.DataFrame(key | area_cols([4.0], [2.0], [6.0], [8.0])), 1.0)
    g2 = metrics.with_metrics(pd.DataFrame(key | area_cols([1.0], [3.0], [1.0], [5.0])), 1.0)
    p1 = metrics.with_metrics(
        pd.DataFrame(key | {"level": ["class"], "name": ["A"]} | area_cols([3.0], [2.0], [1.0], [8.0])), 1.0
    )
    p2 = p1.iloc[:0]
    pooled = metrics.pool_part_grids([g1, g2], [p1, p2]).iloc[0]
    assert [pooled[f"{k}_um2"] for k in AREAS] == [3.0, 5.0, 1.0, 13.0]
    assert pooled.f1 == pytest.approx(6 / (6 + 5 + 1))


def test_operating_point_is_the_pooled_validation_best():
    from proganomaly.evaluation import operating

    ev = SimpleNamespace(**validate_config({})["evaluation"])
    key = {"threshold": [0.1, 0.2], "dilation": [1.0, 1.0], "dilation_mode": ["scale"] * 2}
    # Each slide alone prefers a different cell; pooled (areas summed) the second cell wins.
    g1 = metrics.with_metrics(pd.DataFrame(key | area_cols([10.0, 9.0], [1.0, 0.0], [0.0, 1.0], [89, 90])), 1.0)
    g2 = metrics.with_metrics(pd.DataFrame(key | area_cols([1.0, 1.0], [9.0, 0.0], [0.0, 0.0], [90, 99])), 1.0)
    op = operating.choose({"v1": g1, "v2": g2}, ev)
    assert (op["threshold"], op["dilation"]) == (0.2, 1.0) and op["chosen_on"]["slides"] == ["v1", "v2"]
    assert operating.choose({}, ev)["source"] == "fixed"
    assert (
        operating.choose({"v1": g1}, SimpleNamespace(**(vars(ev) | {"operating_point": "fixed"})))["source"] == "fixed"
    )


# --- normal-only slides, specificity, lesions, the budgeted operating point ------------------------------------------


def write_normal_slide(root, slide, seed):
    """A slide reviewed with nothing anomalous: the annotation file has zero features."""
    files = write_slide(root, slide, seed)
    Path(files.annotations[0]).write_text(json.dumps({"type": "FeatureCollection", "features": []}))
    return files


def tissue_pixels(shape=(64, 80)) -> np.ndarray:
    """write_slide's tissue on its map grid: 64-px patches at downsample 4 (16 map px), all but the top-left one."""
    m = np.zeros(shape, bool)
    m[:64, :80] = True
    m[:16, :16] = False
    return m


def test_flag_everything_f1_matches_sklearn():
    from sklearn.metrics import f1_score

    truth = np.random.default_rng(3).random(5000) < 0.1
    p = truth.mean()
    got = metrics.confusion_metrics(truth.sum(), (~truth).sum(), 0, 0)
    assert float(got["f1_flag_everything"]) == pytest.approx(f1_score(truth, np.ones_like(truth)))
    assert float(got["f1_flag_everything"]) == pytest.approx(2 * p / (1 + p))
    # Normal-only: recall and F1 undefined (NaN), the share of normal tissue inside still defined.
    none = metrics.confusion_metrics(0.0, 5.0, 0.0, 15.0)
    assert all(np.isnan(none[k]) for k in ("recall", "f1", "iou", "f1_flag_everything"))
    assert float(none["normal_in_polygons"]) == 0.25 and float(none["precision"]) == 0.0


def test_lesion_cover_exact_and_raster_agree_with_shapely():
    from proganomaly.evaluation import lesions

    kde = np.zeros((40, 40), np.float32)
    kde[10:20, 10:20] = 0.9  # prediction: the square [10, 20)² (map px, downsample 1)
    tissue = box(0, 0, 40, 40)
    a, b, c = box(15, 15, 25, 25), box(19.95, 5, 30, 12), box(30, 30, 38, 38)  # 25 %, 0.5 % and 0 % covered
    region = Region.clipped(tissue, shapely.union_all([a, b, c]))
    for method in ("exact", "raster"):
        sp = spec((0.5,), (1.0, 2.0), method=method)
        _, _, lg = evaluate_all(kde, 1.0, region, sp, 1.0, {}, [a, b, c])
        for d in (1.0, 2.0):
            pred = affinity.scale(box(10, 10, 20, 20), d, d, origin=(15, 15))
            want = [pred.intersection(g).area for g in (a, b, c)]
            got = lg[lg.dilation == d].sort_values("lesion")["covered"].to_numpy()
            # Raster: within the grid's stated tolerance (here the outlines coincide, its worst case).
            bound = raster_tolerance(pred.area, region.annotation.area, d, sp, 1.0)[0] if method == "raster" else 1e-9
            np.testing.assert_allclose(got, want, atol=bound)
    hit = lesions.hits([25.0, 0.5, 0.0], [100.0, 70.25, 64.0], 0.01)
    assert hit.tolist() == [True, False, False]
    table = pd.DataFrame({"lesion": [0, 1, 2], "class": ["T", "T", "I"], "group": ["g", "g", "I"],
                          "area": [100.0, 70.25, 64.0], "covered": [25.0, 0.5, 0.0]})  # fmt: skip
    sens = lesions.sensitivity(table, 0.01)
    assert (sens["lesions"], sens["hit"], sens["sensitivity"]) == (3, 1, pytest.approx(1 / 3))
    assert sens["class"]["T"]["sensitivity"] == 0.5 and sens["group"]["I"]["sensitivity"] == 0.0


def export_all(slides, ins, outs, op_path, config, tmp_path) -> None:
    """Run export_predictions for every slide at op_path's cell; outs[slide] gains .geojson and .at_point."""
    for slide in slides:
        d = Path(outs[slide].grid).parent
        outs[slide].geojson, outs[slide].at_point = str(d / "predicted.geojson"), str(d / "at_operating_point.json")
        exp_in = Files(**vars(ins[slide]), operating_point=str(op_path))
        exp_out = Files(geojson=outs[slide].geojson, metrics=outs[slide].at_point)
        run_script("export_predictions", exp_in, exp_out, config, tmp_path / f"x{slide}.log", Files(slide=slide))


def budget_grid(cells):
    """A one-slide grid from (threshold, dilation, tp, fp, fn, tn) rows, with µm² areas (mpp 1)."""
    df = pd.DataFrame(cells, columns=["threshold", "dilation", *AREAS]).assign(dilation_mode="scale")
    return metrics.with_metrics(df.assign(tissue_area=df[list(AREAS)].sum(axis=1)), 1.0)


def test_operating_point_within_the_fp_budget():
    from proganomaly.evaluation import operating

    ev = SimpleNamespace(**validate_config({})["evaluation"])
    assert ev.operating_point == "best_f1_within_budget" and ev.fp_budget == 0.01
    # Annotated slide: flagging almost everything has the best F1 but covers 90 % of normal tissue.
    a = budget_grid([(0.0, 1.0, 30, 10, 0, 60), (0.2, 1.0, 20, 0.5, 10, 69.5), (0.5, 1.0, 5, 0, 25, 70)])
    # Normal-only slide (no anomalous tissue): its FP counts in the pooled budget.
    n = budget_grid([(0.0, 1.0, 0, 90, 0, 10), (0.2, 1.0, 0, 0.5, 0, 99.5), (0.5, 1.0, 0, 0, 0, 100)])
    op = operating.choose({"a": a, "n": n}, ev)
    # Pooled normal share: 100/170, 1/170 ≈ 0.0059 ≤ 0.01, 0 → best F1 among the last two is threshold 0.2; without
    # the budget, slide a alone prefers flagging (nearly) everything.
    assert (op["threshold"], op["dilation"]) == (0.2, 1.0) and "warning" not in op
    assert op["chosen_on"]["slides"] == ["a", "n"] and "['n']" in op["budget_on"]
    # The budget limits what is drawn on normal-only slides: polygons spilling around the lesions of an annotated
    # slide (here 5 of its 75 normal units at threshold 0.2, 3 % of all normal tissue pooled) are charged by F1's
    # precision, not by the budget, as long as the normal-only slide stays within it (0.5 %).
    spill = budget_grid([(0.0, 1.0, 30, 40, 0, 30), (0.2, 1.0, 28, 5, 2, 65), (0.5, 1.0, 5, 0, 25, 70)])
    op = operating.choose({"a": spill, "n": n}, ev)
    assert (op["threshold"], op["dilation"]) == (0.2, 1.0)
    assert op["normal_in_polygons_within_budget_slides"] == pytest.approx(0.005)
    assert (
        operating.choose({"a": a}, SimpleNamespace(**(vars(ev) | {"operating_point": "best_f1"})))["threshold"] == 0.0
    )
    # Only normal-only validation slides: the most sensitive cell within the budget (lowest threshold, then
    # largest dilation).
    n2 = budget_grid([(0.0, 1.0, 0, 50, 0, 50), (0.1, 1.0, 0, 0.5, 0, 99.5), (0.1, 2.0, 0, 0.9, 0, 99.1),
                      (0.1, 3.0, 0, 5, 0, 95), (0.4, 3.0, 0, 0, 0, 100)])  # fmt: skip
    op = operating.choose({"n": n2}, ev)
    assert (op["threshold"], op["dilation"]) == (0.1, 2.0) and "no anomalous tissue" in op["reason"]
    # No cell within budget: the least normal tissue inside, with a warning.
    bad = budget_grid([(0.0, 1.0, 10, 50, 0, 40), (0.3, 1.0, 5, 20, 5, 70)])
    op = operating.choose({"b": bad}, ev)
    assert (op["threshold"], op["dilation"]) == (0.3, 1.0)
    assert "fp_budget" in op["warning"] and op["reason"] == op["warning"]


def test_normal_only_slides_and_the_specificity_contract(tmp_path):
    config = validate_config(
        {"evaluation": {"thresholds": [0.0, 0.05, 0.1, 0.3], "dilations": [1, 2, 30], "max_pixels": 2000}}
    )
    slides = {"v1": "validation", "v0": "validation", "s1": "test", "n1": "test"}
    ins, outs = {}, {}
    for i, slide in enumerate(slides):
        writer = write_normal_slide if slide in ("v0", "n1") else write_slide
        ins[slide] = writer(tmp_path / "in", slide, i)
        outs[slide] = eval_outputs(tmp_path / "eval", slide)
        run_script("evaluate_slide", ins[slide], outs[slide], config, tmp_path / f"{slide}.log", Files(slide=slide))
    m = json.loads(open(outs["n1"].metrics).read())
    assert m["normal_only"] is True and m["best_f1"] is None and m["annotation_classes"] == {}
    assert m["pixel"]["kde"]["auroc"] is None and m["lesions"]["count"] == 0
    g = pd.read_parquet(outs["n1"].grid)
    assert g.f1.isna().all() and g.recall.isna().all()
    np.testing.assert_allclose(g.normal_in_polygons, g.false_positive / (g.false_positive + g.true_negative))
    # Pixel flags and KDE > 0.25 on the normal tissue, counted by hand on the map grid.
    tissue = tissue_pixels()
    kde, flags = tifffile.imread(ins["n1"].kde), tifffile.imread(ins["n1"].flags)
    sp = m["specificity_pixels"]
    assert sp["normal_tissue_flagged"] == pytest.approx((flags[tissue] > 0).mean())
    assert sp["kde_above_0.25"] == pytest.approx((kde[tissue] > 0.25).mean())
    assert sp["areas_um2"]["tissue"] == pytest.approx(tissue.sum() * (4 * 0.5) ** 2)
    s1 = json.loads(open(outs["s1"].metrics).read())
    assert s1["normal_only"] is False and s1["lesions"]["count"] == 1

    op_path = tmp_path / "eval" / "operating_point.json"
    grids = Files(grids=[outs["v1"].grid, outs["v0"].grid])
    run_script("choose_operating_point", grids, [str(op_path)], config, tmp_path / "op.log")
    op = json.loads(op_path.read_text())
    pooled_val = metrics.pool_grids([pd.read_parquet(outs[s].grid) for s in ("v1", "v0")])
    # The budget is on the normal-only validation slide v0; F1 on both.
    budget = pd.read_parquet(outs["v0"].grid).set_index(["threshold", "dilation"])["normal_in_polygons"]
    share = budget.loc[list(zip(pooled_val.threshold, pooled_val.dilation, strict=True))].to_numpy()
    if (share <= 0.01).any():
        within = pooled_val[share <= 0.01]
        want = within.loc[within.f1.idxmax()]
    else:  # the synthetic normal slide keeps write_slide's hot region: the least normal tissue inside, warned
        least = pooled_val[share == share.min()]
        want = least.loc[least.f1.idxmax()]
        assert "fp_budget" in op["warning"]
    assert (op["threshold"], op["dilation"]) == (want.threshold, want.dilation) and op["fp_budget"] == 0.01
    export_all(slides, ins, outs, op_path, config, tmp_path)
    at_n = json.loads(open(outs["n1"].at_point).read())
    assert at_n["normal_only"] is True and at_n["all"]["f1"] is None and at_n["lesions"]["lesions"] == 0
    fp, tn = at_n["all"]["false_positive_um2"], at_n["all"]["true_negative_um2"]
    assert at_n["specificity"]["normal_tissue_in_polygons"] == pytest.approx(fp / (fp + tn))
    # The predicted polygons' area outside annotations, by shapely, is the FP area.
    gj = json.loads(open(outs["n1"].geojson).read())
    pred_area = sum(shapely.geometry.shape(f["geometry"]).area for f in gj["features"]) * 0.5**2
    assert fp == pytest.approx(pred_area)
    at_s = json.loads(open(outs["s1"].at_point).read())
    ann = box(140, 90, 190, 130)
    pred = shapely.union_all(
        [shapely.geometry.shape(f["geometry"]) for f in json.loads(open(outs["s1"].geojson).read())["features"]]
    )
    covered = pred.intersection(ann).area / ann.area if not pred.is_empty else 0.0
    assert at_s["lesions"]["hit"] == int(covered >= 0.01) and at_s["lesions"]["per_lesion"][0][
        "covered_fraction"
    ] == pytest.approx(covered)
    assert at_s["warning"] is None

    pooled_dir = tmp_path / "eval" / "pooled" / "test"
    pooled_dir.mkdir(parents=True)
    pooled_out = Files(grid=str(pooled_dir / "grid.parquet"), csv=str(pooled_dir / "grid.csv"),
                       class_grid=str(pooled_dir / "class_grid.parquet"), metrics=str(pooled_dir / "metrics.json"))  # fmt: skip
    test = ["s1", "n1"]
    pool_in = Files(**{k: [getattr(outs[s], k2) for s in test] for k, k2 in (
        ("grids", "grid"), ("class_grids", "class_grid"), ("metrics", "metrics"), ("pixels", "pixels"),
        ("at_point", "at_point"), ("lesion_grids", "lesion_grid"))}, operating_point=str(op_path))  # fmt: skip
    run_script("pool_metrics", pool_in, pooled_out, config, tmp_path / "pool.log", Files(split="test"))
    pm = json.loads(open(pooled_out.metrics).read())
    spec_ = pm["specificity"]
    assert spec_["normal_only_slides"] == ["n1"] and set(spec_["per_slide"]) == {"s1", "n1"}
    assert spec_["normal_tissue_in_polygons"] == pytest.approx(fp / (fp + tn))
    assert spec_["normal_tissue_flagged"] == pytest.approx(sp["normal_tissue_flagged"])
    assert spec_["kde_above_0.25"] == pytest.approx(sp["kde_above_0.25"])
    tps = at_s["all"]["true_positive_um2"]
    fps, fns, tns = (at_s["all"][f"{k}_um2"] for k in ("false_positive", "false_negative", "true_negative"))
    tissue_all = tps + fps + fns + tns + fp + tn
    assert spec_["fp_area_mm2_per_mm2"] == pytest.approx((fps + fp) / tissue_all)
    p = (tps + fns) / tissue_all
    assert spec_["f1_flag_everything"] == pytest.approx(2 * p / (1 + p))
    assert spec_["f1_at_operating_point"] == pytest.approx(2 * tps / (2 * tps + fps + fp + fns))
    assert spec_["lesion_sensitivity"] == at_s["lesions"]["hit"] and spec_["best_f1"] == pm["best_f1"]["value"]
    froc = spec_["froc"]
    assert froc["threshold"] == [0.0, 0.05, 0.1, 0.3] and len(froc["fp_area_mm2_per_mm2"]) == 4
    assert froc["dilation"] == op["dilation"] and froc["lesion_sensitivity"][-1] in (0.0, 1.0)
    pg = pd.read_parquet(pooled_out.grid)
    at_d = pg[pg.dilation == op["dilation"]].sort_values("threshold")
    np.testing.assert_allclose(
        froc["fp_area_mm2_per_mm2"], at_d.false_positive_um2 / (at_d.false_positive_um2 + at_d.true_negative_um2)
    )
    # An operating point that flags the whole slide gets a warning, in the log and in at_operating_point.json.
    everything = tmp_path / "eval" / "everything.json"
    everything.write_text(json.dumps({"source": "fixed", "threshold": 0.0, "dilation": 30.0}))
    exp_out = Files(geojson=str(tmp_path / "e.geojson"), metrics=str(tmp_path / "e.json"))
    run_script("export_predictions", Files(**vars(ins["n1"]), operating_point=str(everything)), exp_out, config,
               tmp_path / "e.log", Files(slide="n1"))  # fmt: skip
    at_e = json.loads(open(exp_out.metrics).read())
    assert at_e["specificity"]["predicted_tissue_fraction"] > 0.5 and "n1: the predicted polygons" in at_e["warning"]
    assert "WARNING" in (tmp_path / "e.log").read_text()
    # Pooled pixel AUROC: every pixel of both slides, the normal-only slide's as negatives (sklearn reference).
    px = pd.concat([pd.read_parquet(outs[s].pixels) for s in test], ignore_index=True)
    ok = px["kde"].notna()
    want = roc_auc_score(px["label"][ok], px["kde"][ok], sample_weight=px["weight"][ok])
    assert pm["pixel"]["kde"]["auroc"] == pytest.approx(want) and (~px["label"][px.slide_id == "n1"]).all()


def test_cover_warning_above_half_the_tissue():
    from proganomaly.evaluation import specificity

    assert specificity.cover_warning({"tp": 10, "fp": 40, "fn": 0, "tn": 50}, "s") is None  # exactly half
    text = specificity.cover_warning({"tp": 10, "fp": 50, "fn": 0, "tn": 40}, "s")
    assert text.startswith("s:") and "60%" in text
    summary = specificity.point_summary({"tp": 10, "fp": 50, "fn": 0, "tn": 40})
    assert summary["normal_tissue_in_polygons"] == pytest.approx(50 / 90)
    assert summary["f1_flag_everything"] == pytest.approx(2 * 0.1 / 1.1)
    assert summary["f1_at_operating_point"] == pytest.approx(20 / 70)
