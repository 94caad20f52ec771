"""Fusion of detectors' scores: tail probabilities against the empirical survival function, combinations against
scipy.stats.combine_pvalues."""

import numpy as np
import pytest
from scipy import stats as sps

from proganomaly.calibration.stats import bin_counts, log_edges
from proganomaly.maps.fusion import FUSERS, FusionError, fused_score, tail_probability


@pytest.fixture
def reference():
    rng = np.random.default_rng(7)
    normal = rng.chisquare(5, 20_000).astype(np.float32)
    edges = log_edges(1e-2, 1e3, 50)
    return normal, bin_counts(normal, edges), edges


def test_tail_probability_at_the_edges_is_the_empirical_survival_function(reference):
    normal, counts, edges = reference
    at = edges[::7]
    want = ((normal[None, :] > at[:, None]).sum(axis=1) + 1) / (normal.size + 1)
    np.testing.assert_allclose(tail_probability(at, counts, edges, tail=None), want, rtol=1e-12)


def test_tail_probability_between_edges_is_within_one_bin_of_the_empirical_one(reference):
    normal, counts, edges = reference
    values = np.random.default_rng(1).uniform(0.5, 20, 500)
    j = np.searchsorted(edges, values)
    got = tail_probability(values, counts, edges, tail=None)
    n = normal.size
    upper = ((normal[None, :] > edges[j - 1][:, None]).sum(axis=1) + 1) / (n + 1)
    lower = ((normal[None, :] > edges[j][:, None]).sum(axis=1) + 1) / (n + 1)
    assert np.all(got <= upper + 1e-12) and np.all(got >= lower - 1e-12)
    assert np.all(np.diff(tail_probability(np.sort(values), counts, edges, tail=None)) <= 1e-15), "must not rise"


def test_tail_probability_keeps_nan_and_without_a_tail_floors_at_one_over_n(reference):
    normal, counts, edges = reference
    got = tail_probability(np.array([np.nan, 1e-9, 1e9]), counts, edges, tail=None)
    assert np.isnan(got[0])
    assert got[1] == 1.0  # below every normal pixel: all of them are above it
    assert got[2] == pytest.approx(1 / (normal.size + 1))


def test_the_exponential_tail_extrapolates_an_exponential_reference_beyond_its_largest_pixel():
    rng = np.random.default_rng(11)
    normal = rng.exponential(2.0, 200_000).astype(np.float32)
    edges = np.linspace(0.0, 40.0, 2001, dtype=np.float32)[1:]
    counts = bin_counts(normal, edges)
    x = np.array([normal.max() + 1, 35.0, 45.0, 60.0])
    got = tail_probability(x, counts, edges)
    want = sps.expon.sf(x, scale=2.0)
    assert np.all(np.abs(np.log(got / want)) < 0.35), (got, want)  # within ~40 % at p down to 1e-13
    assert np.all(np.diff(got) < 0) and got[-1] < 1 / (normal.size + 1)  # no plateau beyond the largest pixel


def test_the_tail_joins_the_histogram_continuously_and_keeps_falling(reference):
    normal, counts, edges = reference
    u = float(np.quantile(normal, 0.99))
    x = np.linspace(u * 0.9, u * 3, 400)
    got = tail_probability(x, counts, edges)
    assert np.all(np.diff(got) <= 0) and np.all(got > 0)
    left, right = tail_probability(np.array([u * 0.999, u * 1.001]), counts, edges)
    assert right == pytest.approx(left, rel=0.02)
    # below the tail the histogram is untouched
    below = x[x < u * 0.98]
    np.testing.assert_array_equal(tail_probability(below, counts, edges), tail_probability(below, counts, edges, None))


def test_too_few_pixels_above_the_quantile_leave_the_histogram_alone():
    edges = np.array([1.0, 2.0, 3.0])
    counts = np.array([0.0, 500.0, 5.0, 0.0])  # 5 pixels above 2: below MIN_TAIL_PIXELS
    x = np.array([2.5, 10.0])
    np.testing.assert_array_equal(tail_probability(x, counts, edges), tail_probability(x, counts, edges, None))


@pytest.mark.parametrize("method,scipy_name", [("fisher", "fisher"), ("min_p", "tippett")])
def test_fusers_match_scipy_combine_pvalues(method, scipy_name):
    rng = np.random.default_rng(3)
    maps = [rng.uniform(1e-6, 1, (6, 5)) for _ in range(3)]
    got = FUSERS[method](maps)
    for idx in np.ndindex(6, 5):
        want = sps.combine_pvalues([m[idx] for m in maps], method=scipy_name).pvalue
        assert got[idx] == pytest.approx(want, rel=1e-9)


@pytest.mark.parametrize("method,scipy_name", [("fisher", "fisher"), ("min_p", "tippett")])
def test_unscored_pixels_combine_the_detectors_that_scored_them(method, scipy_name):
    a = np.array([[0.01, np.nan], [np.nan, 0.5]])
    b = np.array([[0.2, 0.03], [np.nan, 0.5]])
    got = FUSERS[method]([a, b])
    assert got[0, 0] == pytest.approx(sps.combine_pvalues([0.01, 0.2], method=scipy_name).pvalue)
    assert got[0, 1] == pytest.approx(0.03)  # one detector: its own p
    assert np.isnan(got[1, 0])


def test_min_p_keeps_its_digits_for_tiny_p():
    got = FUSERS["min_p"]([np.array([1e-12]), np.array([0.9])])
    assert got[0] == pytest.approx(2e-12, rel=1e-6)


def test_fused_score_is_minus_log10_p():
    p = [np.array([1e-3, 1.0]), np.array([1.0, 1.0])]
    np.testing.assert_allclose(fused_score(p, "min_p"), -np.log10(FUSERS["min_p"](p)), rtol=1e-6)
    assert fused_score(p, "fisher").dtype == np.float32


def test_bad_inputs_are_refused_with_the_reason():
    with pytest.raises(FusionError, match="different grids"):
        FUSERS["fisher"]([np.ones((2, 2)), np.ones((3, 2))])
    with pytest.raises(FusionError, match=r"\(0, 1\]"):
        FUSERS["fisher"]([np.zeros((2, 2))])
    with pytest.raises(FusionError, match="not one of"):
        fused_score([np.ones(2)], "stouffer")
    with pytest.raises(FusionError, match="empty"):
        tail_probability(np.ones(2), np.zeros(3), np.array([1.0, 2.0]))


# ------------------------------------------------------------------------------ fused maps from detectors' maps
import json  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

from proganomaly.calibration.stats import histogram_record  # noqa: E402
from proganomaly.maps import fused  # noqa: E402
from proganomaly.maps.fusion import detector_pvalues, flags_of, normal_pixels, quantile_tau  # noqa: E402
from proganomaly.maps.names import FLOAT_MAPS, MAP_NAMES, RENDITION_SUFFIX  # noqa: E402
from proganomaly.maps.pyramid import write_pyramid  # noqa: E402
from proganomaly.maps.slidemaps import KdeParams  # noqa: E402

H, W, DS, MPP = 40, 60, 4, 0.5
EDGES = log_edges(1e-2, 1e3, 50)


def _threshold(normal_d2, robust=None):
    th = {"d2_histogram_normal": histogram_record(bin_counts(normal_d2, EDGES), EDGES)}
    if robust is not None:
        zedges = np.linspace(-10, 50, 241)
        th["slide_standardisation"] = {"z_histogram_normal": histogram_record(bin_counts(robust, zedges), zedges)}
    return th


def test_detector_pvalues_use_robust_z_against_the_z_reference():
    rng = np.random.default_rng(0)
    z_normal = rng.normal(0, 1, 50_000)
    th = _threshold(rng.chisquare(4, 1000).astype(np.float32), robust=z_normal)
    d2 = np.array([[10.0, 12.0, np.nan, 16.0]])
    std = {"method": "robust", "median": 10.0, "scale": 2.0}
    got = detector_pvalues(d2, std, th)
    zedges = np.asarray(th["slide_standardisation"]["z_histogram_normal"]["edges"])
    counts = np.asarray(bin_counts(z_normal, zedges), float)
    np.testing.assert_allclose(got[0, [0, 1, 3]], tail_probability(np.array([0.0, 1.0, 3.0]), counts, zedges))
    assert np.isnan(got[0, 2])
    assert got[0, 1] == pytest.approx((np.sum(z_normal > 1.0) + 1) / (z_normal.size + 1), abs=2e-3)


def test_detector_pvalues_of_raw_d2_and_missing_references_are_refused():
    th = _threshold(np.random.default_rng(1).chisquare(4, 5000).astype(np.float32))
    got = detector_pvalues(np.array([1e-6, 1e6]), {"method": "none"}, th)
    assert got[0] == 1.0 and 0 < got[1] < 1 / 5001  # far beyond every normal pixel: the exponential tail
    with pytest.raises(FusionError, match="z histogram"):
        detector_pvalues(np.ones(2), {"method": "robust", "median": 1.0, "scale": 1.0}, th)


def test_quantile_tau_and_flags():
    normal = [np.arange(1000, dtype=float), np.arange(1000, 2000, dtype=float)]
    tau = quantile_tau(normal, 0.99)
    assert tau["tau"] == pytest.approx(np.quantile(np.arange(2000.0), 0.99)) and tau["n"] == 2000
    flags = flags_of(np.array([np.nan, tau["tau"], tau["tau"] + 1]), tau["tau"])
    assert np.isnan(flags[0]) and flags[1] == 0 and flags[2] == 1
    kept = normal_pixels(np.array([1.0, 2.0, np.nan, 4.0]), np.array([255, 255, 255, 0]), np.array([0, 1, 0, 0]))
    np.testing.assert_array_equal(kept, [1.0])
    with pytest.raises(FusionError, match="strictly between"):
        quantile_tau(normal, 1.0)


def _detector_maps(folder: Path, d2: np.ndarray, tissue: np.ndarray, coverage: np.ndarray, std: dict) -> None:
    maps = folder / "maps"
    maps.mkdir(parents=True)
    rgb = np.full((H, W, 3), 200, np.uint8)
    for name, arr in (("thumbnail", rgb), ("reconstruction", rgb), ("tissue", tissue), ("coverage", coverage),
                      ("mahalanobis_d2", d2)):  # fmt: skip
        write_pyramid(maps / f"{name}.tif", arr, MPP * DS, tile=16, compression="deflate")
    meta = {"downsample": DS, "width": W, "height": H, "level0_width": W * DS, "level0_height": H * DS,
            "mpp": MPP * DS, "level0_mpp": MPP, "slide_standardisation": std}  # fmt: skip
    (folder / "maps.json").write_text(json.dumps(meta))


@pytest.fixture
def two_detectors(tmp_path):
    """Two detectors' maps of one slide: each sees one of two lesions; the left third of the slide is glass."""
    rng = np.random.default_rng(5)
    tissue = np.zeros((H, W), np.uint8)
    tissue[:, 20:] = 255
    scored = tissue > 0
    d2s, paths = [], {}
    for i, (r, c) in enumerate([(10, 30), (28, 48)]):
        d2 = np.where(scored, rng.chisquare(4, (H, W)), np.nan).astype(np.float32)
        d2[r : r + 6, c : c + 6] = 200.0
        d2s.append(d2)
        folder = tmp_path / f"det{i}"
        _detector_maps(folder, d2, tissue, np.where(scored, 255, 0).astype(np.uint8), {"method": "none"})
        th = tmp_path / f"threshold{i}.json"
        th.write_text(json.dumps(_threshold(rng.chisquare(4, 20_000).astype(np.float32))))
        paths[i] = (folder / "maps" / "mahalanobis_d2.tif", folder / "maps.json", th)
    return tmp_path, tissue, d2s, paths


@pytest.mark.parametrize("method", ["fisher", "min_p"])
def test_fused_maps_flag_what_either_detector_sees_and_write_every_map(two_detectors, method):
    tmp_path, tissue, _, paths = two_detectors
    d2_paths = [paths[i][0] for i in (0, 1)]
    jsons = [paths[i][1] for i in (0, 1)]
    ths = [paths[i][2] for i in (0, 1)]
    score, used = fused.fused_score(d2_paths, jsons, ths, method)
    assert np.isnan(score[:, :20]).all() and np.isfinite(score[:, 20:]).all()
    assert len(used) == 2 and used[0]["score"] == "d2"
    normal = np.ones((H, W), bool)
    normal[10:16, 30:36] = normal[28:34, 48:54] = False
    tau = quantile_tau([normal_pixels(score, tissue, ~normal)], 0.99)["tau"]
    assert (score[10:16, 30:36] > tau).all() and (score[28:34, 48:54] > tau).all()
    grid = fused.check_same_grid([json.loads(p.read_text()) for p in jsons], ["a", "b"])
    out = tmp_path / "fused"
    meta = fused.write_fused_maps(
        score, tau, jsons[0].parent / "maps", [j.parent / "maps" / "coverage.tif" for j in jsons], grid,
        out / "maps", out / "overview", kde=KdeParams("slide", 2.0, 4.0, 0.0, 0.25), tile_px=16,
        rgb_compression="deflate", overview_max_px=64, work_tile_px=32,
    )  # fmt: skip
    for name in MAP_NAMES:
        assert (out / "maps" / f"{name}.tif").is_file() and (out / "overview" / f"{name}.png").is_file()
    for name in FLOAT_MAPS:
        assert (out / "maps" / f"{name}{RENDITION_SUFFIX}").is_file()
    flags = fused.read_level0(out / "maps" / "flags.tif")
    np.testing.assert_array_equal(np.isnan(flags), np.isnan(score))
    np.testing.assert_array_equal(flags[~np.isnan(flags)], (score > tau)[~np.isnan(score)])
    np.testing.assert_array_equal(fused.read_level0(out / "maps" / "mahalanobis_d2.tif"), score)
    kde = fused.read_level0(out / "maps" / "kde.tif")
    assert np.nanmax(kde) <= 1 and kde[12, 32] == 1.0  # inside a lesion: its whole neighbourhood is flagged
    assert meta["tissue_pixels"] == int((tissue > 0).sum()) and meta["unscored_tissue_pixels"] == 0
    assert meta["slide_standardisation"]["flagged_fraction"] == pytest.approx(np.mean(score[:, 20:] > tau))


def test_fit_fusion_fits_tau_on_normal_pixels_outside_grown_annotations(two_detectors, tmp_path):
    import logging

    from shapely.geometry import box, mapping

    tmp, tissue, _, paths = two_detectors
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
    import fit_fusion

    # the first lesion annotated (level-0 px); the second is not, so its pixels count as normal
    gj = tmp / "ann.geojson"
    poly = box(30 * DS, 10 * DS, 36 * DS, 16 * DS)
    gj.write_text(json.dumps({"type": "FeatureCollection", "features": [
        {"type": "Feature", "geometry": mapping(poly), "properties": {"classification": {"name": "tumour"}}}]}))  # fmt: skip
    tissue_tif = tmp / "det0" / "maps" / "tissue.tif"
    res = fit_fusion.main(
        ["s1"], ["a", "b"], [str(paths[i][0]) for i in (0, 1)], [str(paths[i][1]) for i in (0, 1)],
        [str(paths[i][2]) for i in (0, 1)], [str(tissue_tif)], {"s1": str(gj)}, "min_p", 0.5, 4.0,
        logging.getLogger("t"),
    )  # fmt: skip
    score, _ = fused.fused_score([paths[i][0] for i in (0, 1)], [paths[i][1] for i in (0, 1)],
                                 [paths[i][2] for i in (0, 1)], "min_p")  # fmt: skip
    keep = (tissue > 0) & np.isfinite(score)
    keep[10 - 2 : 16 + 2, 30 - 2 : 36 + 2] = False  # the annotation grown by 4 µm = 2 map px (2 µm/px)
    # the grown box has round corners: the corner pixels' centres lie 8.49 level-0 px from the box, beyond its 8
    for r, c in ((8, 28), (8, 37), (17, 28), (17, 37)):
        keep[r, c] = True
    assert res["slides"]["s1"]["normal_pixels"] == int(keep.sum())
    assert res["tau"] == pytest.approx(float(np.quantile(score[keep], 0.5)))
    assert res["detectors"] == ["a", "b"]


@pytest.mark.parametrize("robust", [False, True], ids=["d2", "robust_z"])
def test_a_detectors_own_score_is_minus_log10_of_its_p_and_scored_like_sklearn(two_detectors, robust):
    from sklearn.metrics import average_precision_score, roc_auc_score

    from proganomaly.evaluation.classes import parse_column
    from proganomaly.evaluation.metrics import pixel_scores

    _, _, d2s, paths = two_detectors
    d2 = d2s[0]
    rng = np.random.default_rng(7)
    meta = json.loads(paths[0][1].read_text())
    threshold = json.loads(paths[0][2].read_text())
    if robust:
        meta["slide_standardisation"] = {"method": "robust", "median": 3.0, "scale": 2.5}
        threshold = _threshold(rng.chisquare(4, 1000), robust=rng.normal(0, 1, 20_000))
    pick = np.sort(rng.choice(H * W, 900, replace=False))
    got = fused.detector_score(d2, meta, threshold, pick)
    want = -np.log10(detector_pvalues(d2.astype(np.float64), meta["slide_standardisation"], threshold)).ravel()[pick]
    np.testing.assert_allclose(got, want, rtol=1e-12)  # NaN where want is NaN
    unscored = np.isnan(d2.ravel()[pick])
    assert unscored.any() and np.array_equal(np.isnan(got), unscored)  # the glass third: NaN, not a score
    lesion = np.zeros((H, W), bool)
    lesion[10:16, 30:36] = True
    labels = lesion.ravel()[pick]
    assert labels[~unscored].any()
    res = pixel_scores(labels, got, np.ones(len(pick)))  # weighted as pool_metrics scores, every weight 1
    assert res["n_nonfinite_dropped"] == int(unscored.sum())
    assert res["auroc"] == pytest.approx(roc_auc_score(labels[~unscored], got[~unscored]), abs=1e-12)
    assert res["average_precision"] == pytest.approx(
        average_precision_score(labels[~unscored], got[~unscored]), abs=1e-12
    )
    # the pixels.parquet column of a detector's own score is no class or group label
    assert fused.detector_column("fine") == "detector:fine" and parse_column(fused.detector_column("fine")) is None
