"""Unsupervised and supervised τ against numpy and brute force; patch labels against shapely point tests."""

import numpy as np
import pytest
import shapely
import tensorflow as tf
from sklearn.metrics import fbeta_score

from proganomaly.calibration import errors, stats, tf_stats, threshold
from proganomaly.data.patch_labels import LabelError, extents_of, patch_labels, union_of
from test_stats import StandIn, random_patches, rgb


def brute_force_f(d2, labels, t, beta):
    flagged = d2 > t
    tp = int((flagged & labels).sum())
    fp = int((flagged & ~labels).sum())
    fn = int((~flagged & labels).sum())
    return threshold.fbeta(tp, fp, fn, beta)[()]


@pytest.mark.parametrize("k", [3.0, 1.5])
def test_unsupervised_tau_is_mean_plus_k_std(k):
    d2 = np.random.default_rng(0).chisquare(3, 5001)
    m = stats.merge_all(stats.moments_of(d2[i : i + 17]) for i in range(0, d2.size, 17))
    got = threshold.unsupervised_tau(m, k)
    assert got["tau"] == pytest.approx(d2.mean() + k * d2.std(ddof=1), rel=1e-12)
    assert got["std"] ** 2 == pytest.approx(got["var"], rel=1e-12)


def test_fbeta_matches_sklearn():
    rng = np.random.default_rng(1)
    labels = rng.random(300) < 0.3
    d2 = rng.random(300) + labels
    flagged = d2 > 0.9
    tp, fp, fn = (flagged & labels).sum(), (flagged & ~labels).sum(), (~flagged & labels).sum()
    for beta in (0.05, 1.0, 2.0):
        assert threshold.fbeta(tp, fp, fn, beta) == pytest.approx(fbeta_score(labels, flagged, beta=beta))


@pytest.mark.parametrize("beta", [0.05, 1.0])
def test_exact_supervised_tau_equals_brute_force_over_all_candidates(beta):
    rng = np.random.default_rng(2)
    labels = rng.random(600) < 0.2
    # rounded values: many ties, so candidates are the distinct values, not the pixels
    d2 = np.round(rng.gamma(2.0, 1.0, 600) + 2.5 * labels, 1).astype(np.float32)
    curve = threshold.fbeta_curve_exact(d2, labels, beta)
    candidates = np.concatenate([[d2.min() - 1], np.unique(d2)])
    np.testing.assert_array_equal(curve["thresholds"], candidates.astype(np.float64))
    brute = np.array([brute_force_f(d2, labels, t, beta) for t in candidates])
    np.testing.assert_allclose(curve["f"], brute, rtol=1e-12)
    best = threshold.best_threshold(curve, beta, "all distinct values")
    assert best["f_beta"] == pytest.approx(brute.max(), rel=1e-12)
    assert brute_force_f(d2, labels, np.float32(best["tau"]), beta) == pytest.approx(brute.max(), rel=1e-12)
    assert best["tau"] == candidates[np.argmax(brute)]  # ties go to the smallest τ
    assert best["n_labelled"] == 600 and best["n_positive"] == labels.sum()


def test_histogram_supervised_tau_is_exact_over_its_edges():
    rng = np.random.default_rng(3)
    labels = rng.random(5000) < 0.1
    d2 = (rng.lognormal(0, 1, 5000) * np.where(labels, 8, 1)).astype(np.float32)
    edges = stats.log_edges(1e-2, 1e3, 20)
    curve = threshold.fbeta_curve_from_counts(
        stats.bin_counts(d2[labels], edges), stats.bin_counts(d2[~labels], edges), edges, 0.05
    )
    brute = np.array([brute_force_f(d2, labels, t, 0.05) for t in edges])
    np.testing.assert_allclose(curve["f"], brute, rtol=1e-12)
    best = threshold.best_threshold(curve, 0.05, "histogram edges")
    assert best["f_beta"] == pytest.approx(brute.max(), rel=1e-12)
    # the best edge is within one bin of the exact optimum over all thresholds
    exact = threshold.best_threshold(threshold.fbeta_curve_exact(d2, labels, 0.05), 0.05, "exact")
    assert exact["f_beta"] >= best["f_beta"]


def test_curve_record_keeps_the_best_point_and_is_json_ready():
    rng = np.random.default_rng(4)
    labels = rng.random(3000) < 0.5
    curve = threshold.fbeta_curve_exact(rng.random(3000) + labels, labels, 0.05)
    rec = threshold.curve_record(curve, max_points=50)
    assert len(rec["thresholds"]) <= 51
    assert max(rec["f"]) == pytest.approx(curve["f"].max())
    assert rec["precision"][-1] is None  # nothing flagged at the largest value: precision undefined, not NaN


def test_patch_labels_against_point_in_polygon():
    poly = shapely.Polygon([(100, 100), (180, 100), (180, 140), (100, 140)])
    geom = union_of([poly])
    # a 16 px patch covering 64 level-0 px (resampled 4×), offset so the polygon edge cuts it
    labels = patch_labels(geom, [90, 400], [120, 400], [64, 64], [64, 64], 16)
    assert labels.shape == (2, 16, 16) and not labels[1].any()
    for r in range(16):
        for c in range(16):
            centre = shapely.Point(90 + (c + 0.5) * 4, 120 + (r + 0.5) * 4)
            assert labels[0, r, c] == poly.contains(centre)
    # rows follow y: the polygon ends at y = 140, i.e. after row (140 − 120) / 4 = 5
    assert labels[0, :5, 3:].all() and not labels[0, 5:].any() and not labels[0, :, :3].any()
    assert not patch_labels(union_of([]), [0], [0], [64], [64], 16).any()


def test_missing_patch_extent_names_the_table():
    with pytest.raises(LabelError, match=r"tiles/s1\.patches\.parquet"):
        extents_of({("s1", 0, 0): (64, 64)}, [b"s1"], [64], [0])


def test_collect_d2_with_labels_matches_direct_computation():
    model = StandIn(8)
    images = random_patches(10, 8, seed=5)
    slides = np.array([b"a"] * 6 + [b"b"] * 4)  # b is not annotated: it counts for the unsupervised τ only
    xs, ys = np.arange(10) * 8, np.zeros(10, np.int64)
    ds = tf.data.Dataset.from_tensor_slices({"image": images, "slide_id": slides, "x": xs, "y": ys}).batch(3)
    e = rgb(model)(tf.constant(images)).numpy()
    gauss = stats.gaussian_fit(stats.moments_of(e.reshape(-1, 3)))
    geom = union_of([shapely.box(10, 2, 30, 6)])
    lookup = {(s.decode(), int(x), 0): (8, 8) for s, x in zip(slides, xs, strict=True)}
    edges = stats.log_edges(1e-3, 1e3, 10)
    out = errors.collect_d2(
        rgb(model),
        ds,
        gauss,
        edges,
        max_exact_pixels=10**6,
        labeller=errors.make_labeller(lookup, {"a": geom}, 8),
    )
    d2 = stats.mahalanobis_d2(e, gauss["mean"], gauss["precision"])
    assert out["moments"].n == d2.size
    np.testing.assert_allclose(out["moments"].mean[0], d2.mean(), rtol=1e-4)
    labels = patch_labels(geom, xs[:6], ys[:6], [8] * 6, [8] * 6, 8)
    assert labels.any() and not labels.all()
    np.testing.assert_array_equal(out["labels"], labels.ravel())
    np.testing.assert_allclose(out["d2"], d2[:6].ravel(), rtol=1e-4, atol=1e-4)
    assert out["n_labelled"] == 6 * 64 and out["pos_counts"].sum() == labels.sum()
    assert out["counts"].sum() == 10 * 64
    capped = errors.collect_d2(
        rgb(model),
        ds,
        gauss,
        edges,
        max_exact_pixels=100,
        labeller=errors.make_labeller(lookup, {"a": geom}, 8),
    )
    assert "d2" not in capped and capped["pos_counts"].sum() == labels.sum()
    xla = errors.collect_d2(rgb(model), ds, gauss, edges, jit_compile=True)
    np.testing.assert_allclose(xla["moments"].mean, out["moments"].mean, rtol=1e-5)


@pytest.mark.parametrize("q", [0.5, 0.99, 0.999])
def test_quantile_tau_is_numpys_quantile_and_within_a_bin_from_the_histogram(q):
    d2 = np.random.default_rng(6).lognormal(0.0, 1.5, 20001).astype(np.float32)
    exact = threshold.quantile_tau(q, d2)
    assert exact["tau"] == np.quantile(d2.astype(np.float64), q) and exact["n"] == d2.size
    edges = stats.log_edges(1e-4, 1e8, 100)
    binned = threshold.quantile_tau(q, None, stats.bin_counts(d2, edges), edges)
    i = np.searchsorted(edges, exact["tau"])
    assert edges[i - 1] <= binned["tau"] <= edges[i]  # in the bin that holds the exact quantile
    with pytest.raises(stats.StatsError, match="normal_quantile"):
        threshold.quantile_tau(1.0, d2)


def two_slide_batches(seed: int):
    """Ten 8-px patches in a row (six of slide a, four of slide b) as record batches, their errors under the
    stand-in model, the errors' Gaussian and the patch-extent lookup the labeller needs."""
    model = StandIn(8)
    images = random_patches(10, 8, seed=seed)
    slides = np.array([b"a"] * 6 + [b"b"] * 4)
    xs, ys = np.arange(10) * 8, np.zeros(10, np.int64)
    ds = tf.data.Dataset.from_tensor_slices({"image": images, "slide_id": slides, "x": xs, "y": ys}).batch(4)
    e = rgb(model)(tf.constant(images)).numpy()
    gauss = stats.gaussian_fit(stats.moments_of(e.reshape(-1, 3)))
    lookup = {(s.decode(), int(x), 0): (8, 8) for s, x in zip(slides, xs, strict=True)}
    return model, xs, ys, ds, e, gauss, lookup


def test_tau_without_labels_leaves_the_patches_touching_annotations_out():
    """τ from collect_d2's normal pixels equals numpy's over every pixel of the patches that touch no annotation
    (every patch of the unannotated slide), not numpy's over all pixels nor over the pixels outside the annotations."""
    model, xs, ys, ds, e, gauss, lookup = two_slide_batches(seed=7)
    geom = union_of([shapely.box(9, 2, 13, 6)])
    edges = stats.log_edges(1e-4, 1e8, 100)
    labeller = errors.make_labeller(lookup, {"a": geom}, 8)
    out = errors.collect_d2(rgb(model), ds, gauss, edges, labeller=labeller, max_exact_pixels=10**6)
    d2 = stats.mahalanobis_d2(e, gauss["mean"], gauss["precision"])
    labels = np.zeros(d2.shape, bool)
    labels[:6] = patch_labels(geom, xs[:6], ys[:6], [8] * 6, [8] * 6, 8)
    touched = labels.reshape(10, -1).any(axis=1)
    assert touched.tolist() == [False, True] + [False] * 8 and 0 < labels.sum() < 64  # patch 1 (x 8…16) only
    normal = d2[~touched].astype(np.float64).ravel()
    assert out["normal_moments"].n == normal.size == 640 - 64
    np.testing.assert_allclose(np.sort(out["normal_d2"]), np.sort(normal), rtol=1e-4, atol=1e-4)
    unsup = threshold.unsupervised_tau(out["normal_moments"], 3.0)
    assert unsup["tau"] == pytest.approx(normal.mean() + 3.0 * normal.std(ddof=1), rel=1e-4)
    for other in (d2.astype(np.float64).ravel(), d2[~labels].astype(np.float64)):
        assert unsup["tau"] != pytest.approx(other.mean() + 3.0 * other.std(ddof=1), rel=1e-6)
    quant = threshold.quantile_tau(0.99, out["normal_d2"])
    assert quant["tau"] == pytest.approx(np.quantile(normal, 0.99), rel=1e-4)
    assert out["normal_counts"].sum() == normal.size
    assert out["touching_anomaly"] == {"patches": 1, "normal_pixels": 64 - labels.sum()}
    assert out["n_anomalous_pixels"] == labels.sum()
    record = threshold.normal_pixels_record(
        out["moments"].n, out["normal_counts"].sum(), {"a": "a.geojson"}, n_anomalous=out["n_anomalous_pixels"],
        touching=out["touching_anomaly"],
    )  # fmt: skip
    assert record["n_excluded"] == 64 and record["n_anomalous"] == labels.sum() and record["n_pixels"] == 640
    assert record["dropped_touching_anomaly"] == {"patches": 1, "normal_pixels": int(64 - labels.sum())}
    # the supervised curve still sees every labelled pixel with its own label
    assert out["labels"].size == 6 * 64 and out["labels"].sum() == labels.sum()
    # Without labels every pixel is normal; beyond the cap the values are not kept (the histogram serves).
    plain = errors.collect_d2(rgb(model), ds, gauss, edges, max_exact_pixels=100)
    assert plain["normal_moments"].n == 640 and "normal_d2" not in plain
    assert plain["touching_anomaly"] == {"patches": 0, "normal_pixels": 0}


def test_a_patch_with_one_anomalous_pixel_adds_nothing_to_the_normal_histogram():
    """Hand-made labeller: patch 2 has a single annotated pixel, in its border (outside the scored interior) and
    patch 4 one in its interior; both patches drop out of the normal moments, counts and values, whole."""
    model, _, _, ds, e, gauss, _ = two_slide_batches(seed=9)
    border = 1
    d2 = stats.mahalanobis_d2(e, gauss["mean"], gauss["precision"])[:, border:-border, border:-border]

    def labeller(slide_ids, xs, ys):
        labels = np.zeros((len(xs), 8, 8), bool)
        labels[np.asarray(xs) == 16, 0, 5] = True  # patch 2: one border pixel
        labels[np.asarray(xs) == 32, 4, 4] = True  # patch 4: one interior pixel
        return labels, np.ones(len(xs), bool)

    edges = stats.log_edges(1e-4, 1e8, 100)
    out = errors.collect_d2(rgb(model), ds, gauss, edges, labeller=labeller, max_exact_pixels=10**6, border_px=border)
    keep = np.ones(10, bool)
    keep[[2, 4]] = False
    normal = d2[keep].ravel()
    np.testing.assert_array_equal(out["normal_counts"], stats.bin_counts(normal, edges))
    np.testing.assert_allclose(np.sort(out["normal_d2"]), np.sort(normal), rtol=1e-4, atol=1e-4)
    assert out["normal_moments"].n == 8 * 36
    assert out["touching_anomaly"] == {"patches": 2, "normal_pixels": 2 * 36 - 1} and out["n_anomalous_pixels"] == 1
    # F-β keeps every pixel: the interior anomaly is the one positive, all other interior pixels negatives
    assert out["labels"].size == 10 * 36 and out["labels"].sum() == 1 and out["pos_counts"].sum() == 1
    assert out["neg_counts"].sum() == 10 * 36 - 1


@pytest.mark.parametrize("jit", [False, True])
def test_device_binning_counts_equal_the_numpy_reference(jit):
    """fit_threshold's histograms are binned on the device; counts equal numpy's, also for values on the edges."""
    rng = np.random.default_rng(11)
    edges = stats.log_edges(*errors.D2_RANGE, 20)
    d2 = rng.lognormal(0.0, 3.0, (6, 9, 9)).astype(np.float32)
    d2.ravel()[:40] = edges[rng.integers(0, len(edges), 40)]  # exactly on a bin edge
    d2.ravel()[40:44] = [0.0, 1e-9, 1e9, np.float32(errors.D2_RANGE[1])]  # both tails
    masks = rng.random((3, *d2.shape)) < 0.4
    got = errors.masked_counts_step(edges, jit)(d2, masks).numpy()
    for m, row in zip(masks, got, strict=True):
        np.testing.assert_array_equal(row, stats.bin_counts(d2[m], edges))
    np.testing.assert_array_equal(tf_stats.tf_bin_counts(tf.constant(d2), edges).numpy(), stats.bin_counts(d2, edges))


def test_collect_d2_device_counts_equal_numpy_counts_of_the_returned_values():
    model, _, _, ds, _, gauss, lookup = two_slide_batches(seed=5)
    edges = stats.log_edges(1e-3, 1e3, 10)
    labeller = errors.make_labeller(lookup, {"a": union_of([shapely.box(10, 2, 30, 6)])}, 8)
    out = errors.collect_d2(rgb(model), ds, gauss, edges, labeller=labeller, max_exact_pixels=10**6)
    np.testing.assert_array_equal(out["pos_counts"], stats.bin_counts(out["d2"][out["labels"]], edges))
    np.testing.assert_array_equal(out["neg_counts"], stats.bin_counts(out["d2"][~out["labels"]], edges))
    np.testing.assert_array_equal(out["normal_counts"], stats.bin_counts(out["normal_d2"], edges))
    plain = errors.collect_d2(rgb(model), ds, gauss, edges, max_exact_pixels=10**6)
    np.testing.assert_array_equal(plain["counts"], stats.bin_counts(plain["normal_d2"], edges))


# ------------------------------------------------------------------------- per-slide robust standardisation


def bin_width_at(edges, value):
    """Width of the d² bin holding `value`."""
    i = int(np.clip(np.searchsorted(edges, value), 1, len(edges) - 1))
    return float(edges[i] - edges[i - 1])


@pytest.mark.parametrize(("seed", "sigma", "scale"), [(0, 0.4, 20.0), (1, 1.5, 1.0), (2, 0.1, 300.0)])
def test_histogram_median_and_mad_are_numpys_within_one_bin(seed, sigma, scale):
    from scipy.stats import median_abs_deviation

    d2 = (scale * np.random.default_rng(seed).lognormal(0.0, sigma, 40001)).astype(np.float32)
    edges = stats.log_edges(*errors.D2_RANGE, 100)
    median, mad = threshold.histogram_median_mad(stats.bin_counts(d2, edges), edges)
    exact_median = float(np.median(d2.astype(np.float64)))
    exact_mad = float(median_abs_deviation(d2.astype(np.float64)))
    assert abs(median - exact_median) <= bin_width_at(edges, exact_median)
    # the MAD is read at median ± MAD: within the wider of the bins there
    assert abs(mad - exact_mad) <= bin_width_at(edges, exact_median + exact_mad)


def slides_of(d2_by_slide, edges, normal_by_slide=None):
    """collect_d2's per-slide record of plain d² arrays (every pixel normal unless `normal_by_slide` masks say)."""
    out = {}
    for slide, d2 in d2_by_slide.items():
        normal = d2 if normal_by_slide is None else d2[normal_by_slide[slide]]
        zeros = np.zeros(len(edges) + 1, np.int64)
        out[slide] = {
            "counts": stats.bin_counts(d2, edges),
            "normal_counts": stats.bin_counts(normal, edges),
            "pos_counts": zeros,
            "neg_counts": zeros,
            "normal_moments": stats.moments_of(normal.astype(np.float64)),
        }
    return out


@pytest.mark.parametrize("q", [0.5, 0.99])
def test_tau_z_is_numpys_over_the_directly_standardised_values(q):
    """Two slides on different scales (one with anomalies, which count for its median and MAD but not for τ_z):
    the quantile τ_z is numpy's quantile of z = (d² − median) / (1.4826 · MAD) within one bin, the unsupervised τ_z
    numpy's mean + k·std of z, and the medians and MADs numpy's within one bin."""
    from scipy.stats import median_abs_deviation

    rng = np.random.default_rng(12)
    a = rng.chisquare(8, 30000).astype(np.float32)
    b = (7.0 * rng.chisquare(8, 20000) + 40.0).astype(np.float32)
    anomalous = np.zeros(b.size, bool)
    anomalous[:1500] = True
    b[anomalous] *= 20.0
    edges = stats.log_edges(*errors.D2_RANGE, 100)
    pz = threshold.pooled_z(
        slides_of({"a": a, "b": b}, edges, {"a": np.ones(a.size, bool), "b": ~anomalous}), edges, 100
    )
    z = []
    for slide, d2, normal in (("a", a, np.ones(a.size, bool)), ("b", b, ~anomalous)):
        rec = pz["slides"][slide]
        x = d2.astype(np.float64)
        assert abs(rec["median"] - np.median(x)) <= bin_width_at(edges, np.median(x))
        exact_mad = median_abs_deviation(x)
        assert abs(rec["mad"] - exact_mad) <= bin_width_at(edges, np.median(x) + exact_mad)
        assert rec["scale"] == pytest.approx(threshold.MAD_SCALE * rec["mad"]) and rec["n_pixels"] == d2.size
        z.append((x[normal] - rec["median"]) / rec["scale"])
    z = np.concatenate(z)
    assert pz["normal_counts"].sum() == z.size
    tau = threshold.quantile_tau(q, None, pz["normal_counts"], pz["zedges"])["tau"]
    exact = np.quantile(z, q)
    # within one d² bin of either slide (in z units) plus one z bin
    tol = max(bin_width_at(edges, r["median"] + exact * r["scale"]) / r["scale"] for r in pz["slides"].values())
    tol += bin_width_at(pz["zedges"], exact)
    assert abs(tau - exact) <= tol
    unsup = threshold.unsupervised_tau(pz["normal_moments"], 3.0)
    assert unsup["tau"] == pytest.approx(z.mean() + 3.0 * z.std(ddof=1), rel=1e-9)


def test_standardised_flags_ignore_a_slide_wide_shift_and_scale():
    """A slide whose d² is 4·d² + 9 of another flags the same fraction under robust standardisation (and a very
    different one under the raw τ); NaN is never flagged."""
    rng = np.random.default_rng(13)
    a = rng.chisquare(10, 50000)
    b = 4.0 * a + 9.0
    edges = stats.log_edges(*errors.D2_RANGE, 100)
    pz = threshold.pooled_z(slides_of({"a": a, "b": b}, edges), edges, 100)
    tau_z = threshold.quantile_tau(0.99, None, pz["normal_counts"], pz["zedges"])["tau"]
    frac = {
        s: threshold.exceeds(d2, pz["slides"][s]["median"], pz["slides"][s]["scale"], tau_z).mean()
        for s, d2 in (("a", a), ("b", b))
    }
    assert frac["a"] == pytest.approx(frac["b"], abs=2e-3) and frac["a"] == pytest.approx(0.01, abs=3e-3)
    tau = np.quantile(a, 0.99)  # the raw τ of slide a flags nearly all of b
    assert (a > tau).mean() == pytest.approx(0.01, abs=1e-3) and (b > tau).mean() > 0.9
    assert not threshold.exceeds(np.array([np.nan, 1e9]), 1.0, 1.0, 3.0)[0]


def test_a_slide_with_half_its_pixels_at_one_value_cannot_be_standardised():
    d2 = np.concatenate([np.zeros(600), np.random.default_rng(14).chisquare(1, 400)])
    edges = stats.log_edges(*errors.D2_RANGE, 100)
    with pytest.raises(stats.StatsError, match=r"slide s7: .*slide_standardisation: none"):
        threshold.pooled_z(slides_of({"s7": d2}, edges), edges, 100)


def test_tau_z_of_names_the_file_and_the_fix():
    assert threshold.tau_z_of({"tau_z": 2.5, "slide_standardisation": {"method": "robust"}}, "t.json") == 2.5
    with pytest.raises(ValueError, match=r"card\.json has no tau_z .*'none'.*rerun fit_threshold"):
        threshold.tau_z_of({"tau": 3.0, "tau_z": None, "slide_standardisation": {"method": "none"}}, "card.json")


def test_collect_d2_per_slide_histograms_add_up_and_match_numpy():
    model, xs, ys, ds, e, gauss, lookup = two_slide_batches(seed=15)
    geom = union_of([shapely.box(9, 2, 13, 6)])
    edges = stats.log_edges(1e-4, 1e8, 100)
    labeller = errors.make_labeller(lookup, {"a": geom}, 8)
    out = errors.collect_d2(rgb(model), ds, gauss, edges, labeller=labeller, per_slide=True)
    d2 = stats.mahalanobis_d2(e, gauss["mean"], gauss["precision"]).astype(np.float32)
    labels = np.zeros(d2.shape, bool)
    labels[:6] = patch_labels(geom, xs[:6], ys[:6], [8] * 6, [8] * 6, 8)
    touched = labels.reshape(10, -1).any(axis=1)
    slides = out["slides"]
    assert sorted(slides) == ["a", "b"]
    for name in ("counts", "normal_counts", "pos_counts", "neg_counts"):
        np.testing.assert_array_equal(slides["a"][name] + slides["b"][name], out[name])
    # numpy's bins of each slide's values; d² from the device may differ from numpy's in the last float32 bits
    np.testing.assert_allclose(np.cumsum(slides["a"]["counts"]), np.cumsum(stats.bin_counts(d2[:6], edges)), atol=2)
    np.testing.assert_allclose(np.cumsum(slides["b"]["counts"]), np.cumsum(stats.bin_counts(d2[6:], edges)), atol=2)
    assert slides["a"]["normal_counts"].sum() == 5 * 64 and slides["b"]["normal_counts"].sum() == 4 * 64
    assert slides["a"]["pos_counts"].sum() == labels.sum() and slides["b"]["pos_counts"].sum() == 0
    assert slides["a"]["neg_counts"].sum() == 6 * 64 - labels.sum()
    clean_a = d2[:6][~touched[:6]].astype(np.float64).ravel()
    assert slides["a"]["normal_moments"].n == clean_a.size
    np.testing.assert_allclose(slides["a"]["normal_moments"].mean[0], clean_a.mean(), rtol=1e-4)
    assert "slides" not in errors.collect_d2(rgb(model), ds, gauss, edges)
