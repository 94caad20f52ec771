"""Streaming moments, Gaussian fit, Mahalanobis distances and histograms against numpy/scipy references."""

import textwrap
import types

import numpy as np
import pytest
import tensorflow as tf
from scipy.spatial.distance import mahalanobis

from fresh_python import run_fresh_python
from proganomaly.calibration import errors, stats, tf_stats
from proganomaly.scoring import make_scorer


class StandIn(tf.Module):
    """Tiny stand-in with the TrainedModel interface (tests only): one 3×3 conv + tanh, and a linear encoder.

    architecture="berg" stands in for a model with an extra served output (the latent norm).
    """

    def __init__(self, size: int, architecture: str = "ganomaly", seed: int = 0):
        super().__init__()
        rng = np.random.default_rng(seed)
        self.architecture, self.patch_size_px = architecture, size
        self.extra_outputs = ("latent_norm",) if architecture == "berg" else ()
        self.kernel = tf.Variable(rng.normal(0, 0.3, (3, 3, 3, 3)).astype(np.float32))
        self.bias = tf.Variable(rng.normal(0, 0.1, 3).astype(np.float32))
        self.latent = tf.Variable(rng.normal(0, 0.05, (size * size * 3, 8)).astype(np.float32))

    def reconstruct(self, x):
        return tf.tanh(tf.nn.conv2d(x, self.kernel, 1, "SAME") + self.bias) * 1.05

    def encode(self, x):
        return tf.matmul(tf.reshape(x, (tf.shape(x)[0], -1)), self.latent)

    def served_extras(self, x):
        if not self.extra_outputs:
            return {}
        return {"latent_norm": tf.norm(self.encode(x), axis=-1)}


def rgb(model):
    """The rgb_error scorer of a model (or of a bare reconstruct function)."""
    if callable(model) and not hasattr(model, "reconstruct"):
        model = types.SimpleNamespace(reconstruct=model)
    return make_scorer("rgb_error", model)


def random_patches(n: int, size: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (n, 1, 1, 3))
    noise = rng.normal(0, 40, (n, size, size, 3))
    return np.clip(base + noise, 0, 255).astype(np.uint8)


def stream(x: np.ndarray, batch: int) -> stats.Moments:
    return stats.merge_all(stats.moments_of(x[i : i + batch]) for i in range(0, len(x), batch))


@pytest.mark.parametrize("batch", [1, 7, 333, 1000, 5000])
@pytest.mark.parametrize("offset", [0.0, 100.0])
def test_streamed_covariance_equals_numpy_cov(batch, offset):
    rng = np.random.default_rng(1)
    a = rng.normal(size=(3, 3))
    x = (rng.normal(size=(1000, 3)) @ a + offset).astype(np.float32)
    m = stream(x, batch)
    assert m.n == 1000
    np.testing.assert_allclose(m.mean, x.astype(np.float64).mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(stats.covariance(m), np.cov(x, rowvar=False), rtol=1e-10)
    np.testing.assert_allclose(stats.covariance(m, ddof=0), np.cov(x, rowvar=False, ddof=0), rtol=1e-10)


def test_sequential_merge_in_any_order_equals_whole():
    rng = np.random.default_rng(2)
    x = rng.gamma(2.0, size=(997, 3))
    parts = [stats.moments_of(p) for p in np.array_split(x, 13)]
    rng.shuffle(parts)
    acc = stats.empty_moments(3)
    for p in parts:
        acc = stats.merge(acc, p)
    np.testing.assert_allclose(stats.covariance(acc), np.cov(x, rowvar=False), rtol=1e-10)


def test_tf_batch_moments_match_numpy():
    rng = np.random.default_rng(3)
    e = rng.random((5, 8, 8, 3)).astype(np.float32)
    got = stats.from_batch(*tf_stats.tf_batch_moments(tf.constant(e)))
    want = stats.moments_of(e.reshape(-1, 3))
    assert got.n == want.n == 320
    np.testing.assert_allclose(got.mean, want.mean, rtol=1e-12)
    np.testing.assert_allclose(got.m2, want.m2, rtol=1e-10)


def test_gaussian_fit_against_numpy():
    rng = np.random.default_rng(4)
    x = rng.normal(size=(500, 3)) @ rng.normal(size=(3, 3)) + 0.3
    g = stats.gaussian_fit(stats.moments_of(x))
    cov = np.cov(x, rowvar=False)
    np.testing.assert_allclose(g["covariance"], cov, rtol=1e-10)
    np.testing.assert_allclose(g["precision"], np.linalg.inv(cov), rtol=1e-8)
    np.testing.assert_allclose(g["cholesky"] @ g["cholesky"].T, cov, rtol=1e-10)
    np.testing.assert_allclose(g["precision_cholesky"] @ g["precision_cholesky"].T, np.linalg.inv(cov), rtol=1e-8)
    assert np.allclose(np.triu(g["precision_cholesky"], 1), 0)


def test_singular_covariance_is_a_clear_error():
    x = np.random.default_rng(5).normal(size=(50, 3))
    x[:, 2] = 0.0  # a channel the model reconstructs perfectly
    with pytest.raises(stats.StatsError, match=r"not positive definite.*rank 2 of 3"):
        stats.gaussian_fit(stats.moments_of(x))
    with pytest.raises(stats.StatsError, match="too few"):
        stats.covariance(stats.moments_of(x[:1]))


def test_mahalanobis_d2_equals_scipy_squared():
    rng = np.random.default_rng(6)
    x = rng.normal(size=(400, 3)) @ rng.normal(size=(3, 3))
    g = stats.gaussian_fit(stats.moments_of(x))
    e = rng.normal(size=(20, 3))
    want = np.array([mahalanobis(v, g["mean"], g["precision"]) ** 2 for v in e])
    np.testing.assert_allclose(stats.mahalanobis_d2(e, g["mean"], g["precision"]), want, rtol=1e-10)
    got_tf = tf_stats.tf_mahalanobis_d2(tf.constant(e.astype(np.float32)), g["mean"], g["precision"]).numpy()
    np.testing.assert_allclose(got_tf, want, rtol=1e-4, atol=1e-5)


def test_bin_counts_tf_and_numpy_agree_with_direct_comparisons():
    rng = np.random.default_rng(7)
    edges = stats.log_edges(1e-2, 1e2, 10)
    values = np.concatenate([rng.lognormal(0, 2, 2000), edges[[0, 5, -1]], [0.0]]).astype(np.float32)
    got = stats.bin_counts(values, edges)
    np.testing.assert_array_equal(got, tf_stats.tf_bin_counts(tf.constant(values), edges).numpy())
    assert got.sum() == values.size
    for j, t in enumerate(edges):  # pixels above edge j are exactly those in bins j+1 …
        assert got[j + 1 :].sum() == (values > t).sum()


def test_histogram_quantiles_within_one_bin():
    rng = np.random.default_rng(8)
    values = rng.random(20000) * 1.7
    edges = stats.linear_edges(0, 2, 400)
    record = stats.histogram_record(stats.bin_counts(values, edges), edges)
    width = 2 / 400
    for q, v in record["quantiles"].items():
        assert abs(v - np.quantile(values, float(q))) <= width
    assert record["total"] == 20000 and sum(record["counts"]) + record["above_last_edge"] == 20000


def test_border_pixels_are_left_out_of_the_statistics_and_d2():
    def reconstruct(x):
        return tf.round(25.0 * (x + 0.5 * tf.roll(x, 1, axis=-1))) * 0.04

    images = random_patches(9, 8)
    edges = stats.linear_edges(0, 2, 64)
    ds = tf.data.Dataset.from_tensor_slices(images).batch(4)
    m, _ = errors.fit_error_distribution(rgb(reconstruct), ds, edges, border_px=2)
    e = rgb(reconstruct)(tf.constant(images)).numpy()[:, 2:6, 2:6].reshape(-1, 3)
    assert m.n == 9 * 4 * 4
    np.testing.assert_allclose(stats.covariance(m), np.cov(e, rowvar=False), rtol=1e-10)
    gauss = stats.gaussian_fit(m)
    meta = {"slide_id": tf.constant([b"s"] * 9), "x": tf.range(9, dtype=tf.int64), "y": tf.zeros(9, tf.int64)}
    ds2 = tf.data.Dataset.from_tensor_slices({"image": images, **meta}).batch(4)

    def labeller(slide_ids, xs, ys):
        labels = np.zeros((len(xs), 8, 8), bool)
        labels[:, 3, 3] = True  # one interior pixel per patch
        labels[:, 0, :] = True  # a border row that must not count
        return labels, np.ones(len(xs), bool)

    out = errors.collect_d2(rgb(reconstruct), ds2, gauss, stats.log_edges(1e-3, 1e3, 10), labeller=labeller,
                            max_exact_pixels=10_000, border_px=2)  # fmt: skip
    assert out["moments"].n == 9 * 16 and out["n_labelled"] == 9 * 16
    assert out["labels"].sum() == 9
    d2 = stats.mahalanobis_d2(e, gauss["mean"], gauss["precision"])
    np.testing.assert_allclose(out["moments"].mean[0], d2.mean(), rtol=1e-5)


@pytest.mark.parametrize("batch", [1, 5, 64])
def test_fit_error_distribution_streams_exactly(batch):
    def reconstruct(x):
        # single IEEE-rounded elementwise ops only, so graph and eager, any batch shape, give identical float32
        return tf.round(25.0 * (x + 0.5 * tf.roll(x, 1, axis=-1))) * 0.04

    images = random_patches(23, 8)
    edges = stats.linear_edges(0, 2, 64)
    ds = tf.data.Dataset.from_tensor_slices(images).batch(batch)
    m, counts = errors.fit_error_distribution(rgb(reconstruct), ds, edges)
    e = rgb(reconstruct)(tf.constant(images)).numpy().reshape(-1, 3)
    assert m.n == 23 * 64
    np.testing.assert_allclose(stats.covariance(m), np.cov(e, rowvar=False), rtol=1e-10)
    np.testing.assert_allclose(m.mean, e.astype(np.float64).mean(axis=0), rtol=1e-10)
    for c in range(3):
        np.testing.assert_array_equal(counts[c], stats.bin_counts(e[:, c], edges))


def test_moments_merge_across_replicas():
    """Two logical CPU devices under MirroredStrategy: every replica's shard is counted once (fresh process)."""
    code = textwrap.dedent(
        """
        import numpy as np, tensorflow as tf
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
        import types
        from proganomaly.calibration import errors, stats
        from proganomaly.scoring import make_scorer
        strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
        rng = np.random.default_rng(0)
        images = rng.integers(0, 256, (22, 4, 4, 3), dtype=np.uint8)
        f = lambda x: tf.tanh(x * 0.7 + 0.2)
        ds = tf.data.Dataset.from_tensor_slices(images).batch(6)
        scorer = make_scorer("rgb_error", types.SimpleNamespace(reconstruct=f))
        m, _ = errors.fit_error_distribution(scorer, ds, stats.linear_edges(0, 2, 8), strategy=strategy)
        e = np.abs(images / 127.5 - 1 - np.tanh((images / 127.5 - 1) * 0.7 + 0.2)).reshape(-1, 3)
        assert m.n == e.shape[0], (m.n, e.shape)
        np.testing.assert_allclose(stats.covariance(m), np.cov(e, rowvar=False), rtol=1e-5)
        print("ok", strategy.num_replicas_in_sync)
        """
    )
    res = run_fresh_python(code)
    assert res.stdout.split() == ["ok", "2"]


def test_two_devices_give_the_calibration_statistics_of_one():
    """fit_error_distribution and collect_d2 (labelled, string slide ids) of a real model built under a MirroredStrategy
    over 2 logical CPUs (what fit_error_distribution.py / fit_threshold.py do with resources.gpus.calibration: 2)
    against one device. Tolerance: mean and covariance of e, d² and its moments within rtol 1e-6 (float64 merges in
    another order; float32 convolutions of 3-patch shares instead of 6-patch batches round differently: measured
    4e-16 on one CPU, 7.4e-7 on another); histogram counts within 4 values moved across a bin edge; labels and pixel counts exact."""
    code = textwrap.dedent(
        """
        import json, pathlib, tempfile
        import numpy as np, tensorflow as tf
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
        import shapely
        from proganomaly.calibration import errors, stats
        from proganomaly.common.devices import DeviceError, replica_strategy
        from proganomaly.config import Config, validate_config
        from proganomaly.data.patch_labels import union_of
        from proganomaly.model import io
        from proganomaly.model.architectures import build_networks
        from proganomaly.scoring import make_scorer

        try:  # no GPU here: the scripts' call fails naming the key
            replica_strategy(2, "resources.gpus.calibration")
            raise AssertionError("no DeviceError")
        except DeviceError as err:
            assert "resources.gpus.calibration=2 but this job sees 0 GPU(s)" in str(err), err
        d = pathlib.Path(tempfile.mkdtemp())
        cfg = Config.from_dict(validate_config({"model": {"filters": [[16, 16], [8, 8], [8, 8]], "latent_size": 32}}))
        io.save_weights(build_networks(cfg.model, 16, seed=3), d / io.WEIGHTS)
        (d / io.MODEL_JSON).write_text(json.dumps(io.model_record(cfg.model, 16, 3)))
        strategy = replica_strategy(2, "resources.gpus.calibration", devices=["/cpu:0", "/cpu:1"])
        with strategy.scope():
            mirrored = make_scorer("rgb_error", io.load_trained(d))
        assert any("Mirrored" in type(v).__name__ for v in io.inference_variables(mirrored.trained.nets).values())
        single = make_scorer("rgb_error", io.load_trained(d))

        n, rng = 22, np.random.default_rng(0)
        images = rng.integers(0, 256, (n, 16, 16, 3), dtype=np.uint8)
        edges = stats.linear_edges(0, 2, 32)
        ds = tf.data.Dataset.from_tensor_slices(images).batch(6)  # 22 = 3·6 + 4: shares of 3, then 2
        m1, c1 = errors.fit_error_distribution(single, ds, edges, border_px=2)
        m2, c2 = errors.fit_error_distribution(mirrored, ds, edges, border_px=2, strategy=strategy)
        assert m1.n == m2.n == n * 12 * 12, (m1.n, m2.n)
        g1, g2 = stats.gaussian_fit(m1), stats.gaussian_fit(m2)
        worst = {k: float(np.max(np.abs(g2[k] - g1[k]) / np.abs(g1[k]))) for k in ("mean", "covariance")}
        for k in worst:
            np.testing.assert_allclose(g2[k], g1[k], rtol=1e-6, err_msg=k)
        assert np.abs(c1 - c2).sum() <= 4, np.abs(c1 - c2).sum()

        xs, ys = (np.arange(n) % 11) * 32, (np.arange(n) // 11) * 32
        ids = np.array([b"a"] * 11 + [b"b"] * 11)
        meta = {"image": images, "slide_id": ids, "x": xs, "y": ys}
        lookup = {(s.decode(), int(x), int(y)): (32, 32) for s, x, y in zip(ids, xs, ys)}
        labeller = errors.make_labeller(lookup, {"a": union_of([shapely.box(40, 0, 200, 20)])}, 16)
        gauss = {"mean": g1["mean"], "precision": g1["precision"]}
        d2_edges = stats.log_edges(1e-3, 1e5, 10)
        kw = dict(labeller=labeller, max_exact_pixels=10**6, border_px=2)
        o1 = errors.collect_d2(single, tf.data.Dataset.from_tensor_slices(meta).batch(6), gauss, d2_edges, **kw)
        o2 = errors.collect_d2(mirrored, tf.data.Dataset.from_tensor_slices(meta).batch(6), gauss, d2_edges,
                               strategy=strategy, **kw)
        assert 0 < o1["labels"].sum() < o1["labels"].size
        np.testing.assert_array_equal(o1["labels"], o2["labels"])  # same patches, same order
        np.testing.assert_allclose(o2["d2"], o1["d2"], rtol=1e-4, atol=1e-6)  # per-pixel float32 (6e-5 measured)
        for key in ("moments", "normal_moments"):
            assert o1[key].n == o2[key].n
            np.testing.assert_allclose(o2[key].mean, o1[key].mean, rtol=1e-6)
            np.testing.assert_allclose(stats.covariance(o2[key]), stats.covariance(o1[key]), rtol=1e-6)
        for key in ("counts", "normal_counts", "pos_counts", "neg_counts"):
            assert np.abs(o1[key] - o2[key]).sum() <= 4, key
        print("worst relative difference", worst)
        """
    )
    print(run_fresh_python(code, timeout=300).stdout)


def test_xla_compiled_error_step_agrees():
    images = random_patches(9, 8, seed=4)
    edges = stats.linear_edges(0, 2, 32)
    model = StandIn(8)
    ds = tf.data.Dataset.from_tensor_slices(images).batch(4)
    plain, c_plain = errors.fit_error_distribution(rgb(model), ds, edges)
    xla, c_xla = errors.fit_error_distribution(rgb(model), ds, edges, jit_compile=True)
    assert xla.n == plain.n
    np.testing.assert_allclose(stats.covariance(xla), stats.covariance(plain), rtol=1e-5)
    assert np.abs(c_xla - c_plain).sum() <= 4  # a value on a bin edge may round to the other side


# --- shrinkage of the covariance (calibration.covariance) -----------------------------------------------------------


def _scaled_gaussian(n: int, d: int, seed: int, factors: int = 4):
    """n draws of a d-dim Gaussian with correlated channels on wildly different scales (1e-2 … 50, as a critic
    logit next to LBP fractions), and its true covariance."""
    rng = np.random.default_rng(seed)
    loadings = rng.normal(size=(d, factors))
    corr = loadings @ loadings.T + np.eye(d)
    s = np.sqrt(np.diag(corr))
    scales = np.logspace(-2, 1.7, d)
    cov = corr / np.outer(s, s) * np.outer(scales, scales)
    return rng.multivariate_normal(np.linspace(-3, 3, d), cov, size=n), cov


@pytest.mark.parametrize("kind", ["oas", "ledoit_wolf"])
def test_shrunk_covariance_is_sklearns_estimate_on_the_standardised_rows(kind):
    """Per-patch features: the pixels' moments are the rows' own, so Σ' must be sklearn's estimate on the rows
    standardised by the exact standard deviations, rescaled (sklearn's is the population (ddof 0) version)."""
    from sklearn.covariance import OAS, LedoitWolf

    x, _ = _scaled_gaussian(80, 21, seed=3)
    g = stats.gaussian_fit(stats.moments_of(x), rows=x, kind=kind)
    std = np.sqrt(np.diag(np.cov(x, rowvar=False)))
    z = (x - x.mean(axis=0)) / std
    ref = (OAS() if kind == "oas" else LedoitWolf()).fit(z)
    assert 0 < ref.shrinkage_ < 1
    assert g["shrinkage"]["alpha"] == pytest.approx(ref.shrinkage_, abs=1e-10)
    want = np.outer(std, std) * ref.covariance_ * 80 / 79
    np.testing.assert_allclose(g["covariance"], want, rtol=1e-10, atol=1e-10 * np.abs(want).max())
    np.testing.assert_allclose(np.diag(g["covariance"]), std**2, rtol=1e-10)  # the variances stay exact
    assert g["shrinkage"] == {
        "kind": kind,
        "alpha": g["shrinkage"]["alpha"],
        "n_rows": 80,
        "rows_per_dimension": 80 / 21,
    }
    if kind == "oas":  # and sklearn's OAS is its published formula (Chen et al. 2010, as sklearn ≥ 1.3 writes it)
        s = np.cov(z, rowvar=False, ddof=0)
        mu, a = np.trace(s) / 21, np.mean(s**2)
        assert ref.shrinkage_ == pytest.approx(min((a + mu**2) / (81 * (a - mu**2 / 21)), 1.0), rel=1e-10)


def test_shrinkage_vanishes_with_many_patches_per_dimension():
    x, _ = _scaled_gaussian(50_000, 5, seed=4)
    m = stats.moments_of(x)
    sample = stats.gaussian_fit(m)
    for kind in ("oas", "ledoit_wolf"):
        g = stats.gaussian_fit(m, rows=x, kind=kind)
        assert 0 <= g["shrinkage"]["alpha"] < 1e-3
        np.testing.assert_allclose(
            g["covariance"], sample["covariance"], rtol=1e-3, atol=1e-3 * sample["covariance"].max()
        )
    assert sample["shrinkage"]["kind"] == "sample" and sample["shrinkage"]["alpha"] == 0.0


def test_shrinkage_brings_out_of_sample_d2_back_towards_d():
    """80 patches for 21 dimensions (the demo's combined scorer): under the sample covariance fresh normal data have
    a mean d² about 40 % above d (its expectation is d·(n−1)/(n−d−2)·(1 + 1/n) ≈ 29.4); shrinkage removes most of it."""
    d, mean_d2 = 21, {"sample": [], "oas": [], "ledoit_wolf": []}
    for rep in range(10):
        x, cov = _scaled_gaussian(80, d, seed=100 + rep)
        fresh = np.random.default_rng(200 + rep).multivariate_normal(np.linspace(-3, 3, d), cov, size=4000)
        m = stats.moments_of(x)
        for kind in mean_d2:
            g = stats.gaussian_fit(m, rows=x, kind=kind)
            mean_d2[kind].append(stats.mahalanobis_d2(fresh, g["mean"], g["precision"]).mean())
    got = {k: float(np.mean(v)) for k, v in mean_d2.items()}
    assert 1.3 < got["sample"] / d < 1.5, got  # the inflation the review found
    for kind in ("oas", "ledoit_wolf"):
        assert abs(got[kind] - d) < 0.3 * abs(got["sample"] - d), got


def test_shrinkage_needs_rows_and_a_known_kind_and_warns_about_few_patches():
    x, _ = _scaled_gaussian(30, 4, seed=5)
    m = stats.moments_of(x)
    with pytest.raises(stats.StatsError, match="one feature row per patch"):
        stats.gaussian_fit(m, kind="oas")
    with pytest.raises(stats.StatsError, match=r"calibration.covariance 'nope'"):
        stats.gaussian_fit(m, rows=x, kind="nope")
    assert "80 calibrate patches for 21 feature dimensions (3.8 per dimension" in stats.sample_size_warning(80, 21)
    assert stats.sample_size_warning(210, 21) is None
    # a constant channel stays constant; the ridge keeps the fit invertible, as for the sample covariance
    x[:, 1] = 2.0
    g = stats.gaussian_fit(stats.moments_of(x), ridge=1e-6, rows=x, kind="oas")
    assert g["covariance"][1, 1] > 0 and np.all(g["covariance"][1, [0, 2, 3]] == 0)


def test_rows_are_one_seeded_interior_pixel_per_patch_whatever_the_batching():
    images = random_patches(23, 8)
    scorer = rgb(StandIn(8))
    e = scorer(tf.constant(images)).numpy()[:, 2:6, 2:6].reshape(23, 16, 3)
    got = []
    for batch in (1, 5, 64):
        ds = tf.data.Dataset.from_tensor_slices(images).batch(batch)
        m, _, rows = errors.fit_error_distribution(scorer, ds, stats.linear_edges(0, 2, 8), border_px=2, with_rows=True)
        assert rows.shape == (23, 3) and rows.dtype == np.float64 and m.n == 23 * 16
        got.append(rows)
    np.testing.assert_array_equal(got[0], got[1])
    np.testing.assert_array_equal(got[0], got[2])
    picks = errors._ROW_TABLE[np.arange(23)] % 16  # the documented choice: the table entry of the patch's index
    np.testing.assert_array_equal(got[0], e[np.arange(23), picks].astype(np.float64))
    assert len(set(picks.tolist())) > 5  # spread over the interior, not one fixed position


def test_rows_of_a_per_patch_scorer_are_the_patch_vectors():
    from proganomaly.scoring import texture_baseline as tf_tb

    images = random_patches(7, 8, seed=2)
    scorer = make_scorer("texture_baseline", StandIn(8))
    ds = tf.data.Dataset.from_tensor_slices(images).batch(3)
    _, _, rows = errors.fit_error_distribution(scorer, ds, stats.linear_edges(0, 1, 8), border_px=1, with_rows=True)
    want = tf_tb.patch_features(tf.constant(images)).numpy().astype(np.float32)
    np.testing.assert_array_equal(rows, want.astype(np.float64))


# --- one-sided d² (calibration.one_sided) --------------------------------------------------------------------------


def test_one_sided_d2_numpy_tf_and_a_direct_reference_agree():
    rng = np.random.default_rng(12)
    x = rng.normal(size=(300, 4)) @ rng.normal(size=(4, 4))
    g = stats.gaussian_fit(stats.moments_of(x))
    dirs = [1, -1, 0, 1]
    e = rng.normal(size=(6, 5, 4)) * 2 + g["mean"]
    y = e - g["mean"]
    clipped = np.stack([np.maximum(y[..., 0], 0), np.minimum(y[..., 1], 0), y[..., 2], np.maximum(y[..., 3], 0)], -1)
    want = np.array([mahalanobis(v, np.zeros(4), g["precision"]) ** 2 for v in clipped.reshape(-1, 4)]).reshape(6, 5)
    got = stats.mahalanobis_d2(e, g["mean"], g["precision"], dirs)
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)
    got_tf = tf_stats.tf_mahalanobis_d2(tf.constant(e.astype(np.float32)), g["mean"], g["precision"], dirs).numpy()
    np.testing.assert_allclose(got_tf, want, rtol=1e-4, atol=1e-4)
    # all-zero directions (or none) are the two-sided d²
    np.testing.assert_array_equal(
        stats.mahalanobis_d2(e, g["mean"], g["precision"], [0] * 4), stats.mahalanobis_d2(e, g["mean"], g["precision"])
    )
    with pytest.raises(stats.StatsError, match="must be 4 values"):
        stats.mahalanobis_d2(e, g["mean"], g["precision"], [1, 2, 0, 0])


def test_critic_logit_on_the_normal_side_scores_zero():
    """A 1-D Gaussian of the critic's logit (direction −1: real tissue scores higher): a far higher logit than the
    calibrate mean is no anomaly, a lower one is as anomalous as two-sided."""
    g = {"mean": np.array([2.0]), "precision": np.array([[1 / 9.0]])}  # mean 2, std 3
    e = np.array([[50.0], [2.0], [-7.0]])
    np.testing.assert_array_equal(stats.mahalanobis_d2(e, g["mean"], g["precision"], [-1]), [0.0, 0.0, 9.0])
    np.testing.assert_array_equal(stats.mahalanobis_d2(e, g["mean"], g["precision"]), [256.0, 0.0, 9.0])
    tf_d2 = tf_stats.tf_mahalanobis_d2(tf.constant(e, tf.float32), g["mean"], g["precision"], [-1]).numpy()
    np.testing.assert_allclose(tf_d2, [0.0, 0.0, 9.0], atol=1e-6)


def test_collect_d2_uses_the_gaussians_directions():
    images = random_patches(5, 8, seed=13)
    scorer = rgb(StandIn(8))
    e = scorer(tf.constant(images)).numpy()
    g = stats.gaussian_fit(stats.moments_of(e.reshape(-1, 3)))
    gauss = {"mean": g["mean"], "precision": g["precision"], "directions": [1, 1, 1]}
    meta = {"slide_id": tf.constant([b"s"] * 5), "x": tf.range(5, dtype=tf.int64), "y": tf.zeros(5, tf.int64)}
    ds = tf.data.Dataset.from_tensor_slices({"image": images, **meta}).batch(2)
    out = errors.collect_d2(scorer, ds, gauss, stats.log_edges(1e-3, 1e3, 10), max_exact_pixels=10**6)
    want = stats.mahalanobis_d2(e, g["mean"], g["precision"], [1, 1, 1])
    np.testing.assert_allclose(np.sort(out["normal_d2"]), np.sort(want.ravel()), rtol=1e-4, atol=1e-5)
    assert (want == 0).any() and (want > 0).any()
