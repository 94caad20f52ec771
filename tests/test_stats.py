"""Streaming moments, Gaussian fit, Mahalanobis distances and histograms against numpy/scipy references."""

import textwrap
import types

import numpy as np
import pytest
import tensorflow as tf
from scipy.spatial.distance import mahalanobis

from fresh_python import run_fresh_python
from proganomaly.calibration import errors, stats
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
    got = stats.from_batch(*stats.tf_batch_moments(tf.constant(e)))
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
    got_tf = stats.tf_mahalanobis_d2(tf.constant(e.astype(np.float32)), g["mean"], g["precision"]).numpy()
    np.testing.assert_allclose(got_tf, want, rtol=1e-4, atol=1e-5)


def test_bin_counts_tf_and_numpy_agree_with_direct_comparisons():
    rng = np.random.default_rng(7)
    edges = stats.log_edges(1e-2, 1e2, 10)
    values = np.concatenate([rng.lognormal(0, 2, 2000), edges[[0, 5, -1]], [0.0]]).astype(np.float32)
    got = stats.bin_counts(values, edges)
    np.testing.assert_array_equal(got, stats.tf_bin_counts(tf.constant(values), edges).numpy())
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
    against one device. Tolerance: mean and covariance of e, d² and its moments within rtol 1e-7 (float64 merges in
    another order; float32 convolutions of 3-patch shares instead of 6-patch batches could round differently; measured
    4e-16 on this CPU); histogram counts within 4 values moved across a bin edge; labels and pixel counts exact."""
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
            np.testing.assert_allclose(g2[k], g1[k], rtol=1e-7, err_msg=k)
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
        np.testing.assert_allclose(o2["d2"], o1["d2"], rtol=1e-7, atol=1e-9)
        for key in ("moments", "normal_moments"):
            assert o1[key].n == o2[key].n
            np.testing.assert_allclose(o2[key].mean, o1[key].mean, rtol=1e-7)
            np.testing.assert_allclose(stats.covariance(o2[key]), stats.covariance(o1[key]), rtol=1e-7)
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
