"""The exported SavedModel: outputs against numpy references, a fresh process, input checks, model card."""

import hashlib
import json
import textwrap
import types

import numpy as np
import pytest
import tensorflow as tf
from scipy.spatial.distance import mahalanobis

from fresh_python import run_fresh_python
from proganomaly.calibration import errors, stats
from proganomaly.detector import export, load
from proganomaly.detector.card import model_card
from test_stats import StandIn, random_patches, rgb

SIZE = 8


def fitted(model, seed=0):
    images = random_patches(12, SIZE, seed=seed)
    e = rgb(model)(tf.constant(images)).numpy()
    return stats.gaussian_fit(stats.moments_of(e.reshape(-1, 3)))


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    module = StandIn(SIZE)
    # a plain, untracked holder: the export must find the variables through what reconstruct reads
    model = types.SimpleNamespace(
        architecture="ganomaly", patch_size_px=SIZE, reconstruct=module.reconstruct, extra_outputs=(),
        served_extras=lambda x: {},
    )  # fmt: skip
    gauss = fitted(model)
    path = tmp_path_factory.mktemp("export") / "saved_model"
    meta = export.save_detector(rgb(model), gauss, 4.0, path, jit_compile=True)  # the XLA path; others test plain
    return model, gauss, path, meta


def test_outputs_match_numpy_references(saved):
    model, gauss, path, meta = saved
    det = load.load_detector(path)
    assert det.patch_size_px == SIZE and det.outputs == load.OUTPUTS
    images = random_patches(5, SIZE, seed=9)
    out = det(images)
    x = images.astype(np.float64) / 127.5 - 1
    xhat = model.reconstruct(tf.constant(x, tf.float32)).numpy().astype(np.float64)
    np.testing.assert_allclose(out["anomaly_map"], np.abs(x - xhat), atol=1e-5)
    want_d2 = np.array(
        [mahalanobis(v, gauss["mean"], gauss["precision"]) ** 2 for v in out["anomaly_map"].reshape(-1, 3)]
    )
    np.testing.assert_allclose(out["mahalanobis_d2"].ravel(), want_d2, rtol=1e-4, atol=1e-4)
    assert out["mahalanobis_d2"].shape == (5, SIZE, SIZE) and out["mahalanobis_d2"].dtype == np.float32
    # flags, counts and fractions follow from the served d² exactly
    np.testing.assert_array_equal(out["flags"], (out["mahalanobis_d2"] > np.float32(4.0)).astype(np.uint8))
    assert out["flags"].dtype == np.uint8 and 0 < out["flags"].sum() < out["flags"].size
    np.testing.assert_array_equal(out["flagged_count"], out["flags"].sum(axis=(1, 2)))
    np.testing.assert_allclose(out["flagged_fraction"], out["flagged_count"] / SIZE**2, rtol=1e-7)
    recon = np.clip(np.round((xhat + 1) * 127.5), 0, 255)
    assert out["reconstruction"].dtype == np.uint8
    assert np.abs(out["reconstruction"].astype(int) - recon).max() <= 1  # float32 vs float64 rounding
    assert meta["tau"] == 4.0 and (path / load.METADATA_FILE).is_file()
    assert meta["scorer"] == "rgb_error" and meta["patch_size_px"] == SIZE


def test_batches_split_give_the_same_outputs(saved):
    det = load.load_detector(saved[2])
    images = random_patches(7, SIZE, seed=3)
    whole, split = det(images), det(images, batch_size=3)
    for k in det.outputs:
        np.testing.assert_allclose(whole[k], split[k], rtol=1e-6, atol=1e-6)


def test_compiled_detector_serves_short_batches_at_the_size_it_compiled():
    """An XLA export compiles once per batch size: shorter batches are padded to the largest one served so far, and
    each patch's outputs are its own (here each output row is its patch's sum)."""
    served = []

    def serve(patches):
        served.append(int(patches.shape[0]))
        return {"sum": tf.reduce_sum(tf.cast(patches, tf.int32), axis=(1, 2, 3))}

    call = load._padded(serve)
    images = random_patches(7, SIZE, seed=4)
    got = [call(patches=tf.constant(images[i : i + 3]))["sum"].numpy() for i in range(0, 7, 3)]
    assert served == [3, 3, 3]  # 3, 3, then the last patch padded to 3
    np.testing.assert_array_equal(np.concatenate(got), images.astype(np.int64).sum(axis=(1, 2, 3)))
    assert [len(g) for g in got] == [3, 3, 1]


def test_fresh_process_gives_in_memory_outputs(saved, tmp_path):
    model, gauss, path, _ = saved
    images = random_patches(4, SIZE, seed=11)
    np.save(tmp_path / "in.npy", images)
    code = textwrap.dedent(
        f"""
        import sys, numpy as np
        from proganomaly.detector.load import load_detector
        out = load_detector({str(path)!r})(np.load({str(tmp_path / "in.npy")!r}))
        assert "test_stats" not in sys.modules  # self-contained: the stand-in's code is not needed
        np.savez({str(tmp_path / "out.npz")!r}, **out)
        """
    )
    run_fresh_python(code)
    fresh = np.load(tmp_path / "out.npz")
    memory = export.build_module(rgb(model), gauss, 4.0, jit_compile=True).serve(tf.constant(images))
    assert set(fresh.files) == set(load.OUTPUTS)
    for k in load.OUTPUTS:
        np.testing.assert_allclose(fresh[k], memory[k].numpy(), rtol=1e-6, atol=1e-6, err_msg=k)


def test_wrong_size_or_dtype_is_a_clear_error(saved):
    path = saved[2]
    det = load.load_detector(path)
    with pytest.raises(load.DetectorError, match=r"shape \(N, 8, 8, 3\), got \(2, 16, 16, 3\)"):
        det(np.zeros((2, 16, 16, 3), np.uint8))
    with pytest.raises(load.DetectorError, match=r"must be uint8.*got dtype float32"):
        det(np.zeros((2, SIZE, SIZE, 3), np.float32))
    with pytest.raises(load.DetectorError, match=r"got \(8, 8, 3\)"):
        det(np.zeros((SIZE, SIZE, 3), np.uint8))
    # the signature itself rejects what the wrapper would: no silent resizing or casting
    fn = tf.saved_model.load(str(path)).signatures["serving_default"]
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"not compatible with expected shape \[\?,8,8,3\]"):
        fn(patches=tf.zeros((1, 16, 16, 3), tf.uint8))
    with pytest.raises((ValueError, TypeError, tf.errors.InvalidArgumentError)):
        fn(patches=tf.zeros((1, SIZE, SIZE, 3), tf.float32))
    with pytest.raises(load.DetectorError, match="not a SavedModel"):
        load.load_detector(path.parent / "nothing")


def test_berg_exports_latent_norm(tmp_path):
    model = StandIn(SIZE, architecture="berg", seed=1)
    export.save_detector(rgb(model), fitted(model, seed=1), 2.0, tmp_path / "berg", jit_compile=False)
    det = load.load_detector(tmp_path / "berg")
    assert det.outputs == (*load.OUTPUTS, "latent_norm")
    images = random_patches(3, SIZE, seed=2)
    z = model.encode(tf.constant(images.astype(np.float32) / 127.5 - 1)).numpy()
    np.testing.assert_allclose(det(images)["latent_norm"], np.linalg.norm(z, axis=1), rtol=1e-5)


def test_model_card_records_checksums_and_statistics(saved, tmp_path):
    _, gauss, _, meta = saved
    weights, manifest = tmp_path / "generator.weights.h5", tmp_path / "s.manifest.json"
    weights.write_bytes(b"weights")
    manifest.write_text("{}")
    ed = {"n_pixels": 10, "mean": gauss["mean"].tolist(), "covariance": gauss["covariance"].tolist()}
    card = model_card(
        config={"seed": 1},
        metadata=meta,
        model_files={"weights": weights},
        manifests={"calibrate": [manifest]},
        error_distribution=ed,
        threshold={"method": "unsupervised", "unsupervised": {"tau": 4.0}},
    )
    assert card["model_files"]["weights"]["sha256"] == hashlib.sha256(b"weights").hexdigest()
    assert card["data_manifests"]["calibrate"][0]["sha256"] == hashlib.sha256(b"{}").hexdigest()
    assert card["threshold"]["tau"] == 4.0 and card["error_distribution"]["mean"] == gauss["mean"].tolist()
    assert card["serving"]["input"]["shape"] == [None, SIZE, SIZE, 3]
    json.dumps(card)


def test_served_flags_match_the_fitted_supervised_threshold(tmp_path):
    """τ chosen on labelled pixels flags, in the exported model, exactly the pixels counted when it was chosen."""
    import shapely

    from proganomaly.calibration import threshold
    from proganomaly.data.patch_labels import union_of

    model = StandIn(SIZE, seed=4)
    gauss = fitted(model, seed=4)
    images = random_patches(6, SIZE, seed=6)
    xs = np.arange(6) * SIZE
    meta = {"image": images, "slide_id": np.array([b"s"] * 6), "x": xs, "y": np.zeros(6, np.int64)}
    ds = tf.data.Dataset.from_tensor_slices(meta).batch(6)
    lookup = {("s", int(x), 0): (SIZE, SIZE) for x in xs}
    labeller = errors.make_labeller(lookup, {"s": union_of([shapely.box(5, 0, 30, 5)])}, SIZE)
    out = errors.collect_d2(
        rgb(model), ds, gauss, stats.log_edges(1e-3, 1e3, 10), labeller=labeller, max_exact_pixels=10**6
    )
    best = threshold.best_threshold(threshold.fbeta_curve_exact(out["d2"], out["labels"], 0.05), 0.05, "exact")
    export.save_detector(rgb(model), gauss, best["tau"], tmp_path / "sm", jit_compile=False)
    flags = load.load_detector(tmp_path / "sm")(images)["flags"].ravel().astype(bool)
    assert flags.sum() == best["tp"] + best["fp"]
    assert (flags & out["labels"]).sum() == best["tp"]


def test_real_model_from_disk_exports_and_serves_its_reconstruction(tmp_path):
    """The issue-3 model (proganomaly.model): saved, loaded with load_trained, exported, loaded back and served."""
    from proganomaly.config import Config, validate_config
    from proganomaly.model import io
    from proganomaly.model.architectures import build_networks

    raw = validate_config({"model": {"filters": [[16, 16], [8, 8], [8, 8]], "latent_size": 32}})
    cfg = Config.from_dict(raw).model
    io.save_weights(build_networks(cfg, 16, seed=3), tmp_path / io.WEIGHTS)
    (tmp_path / io.MODEL_JSON).write_text(json.dumps(io.model_record(cfg, 16, 3)))
    trained = io.load_trained(tmp_path)
    images = random_patches(4, 16, seed=7)
    edges = stats.linear_edges(0, 2, 16)
    moments, _ = errors.fit_error_distribution(rgb(trained), tf.data.Dataset.from_tensor_slices(images).batch(3), edges)
    gauss = stats.gaussian_fit(moments)
    export.save_detector(rgb(trained), gauss, 3.0, tmp_path / "sm", jit_compile=False)  # XLA is covered above
    served = load.load_detector(tmp_path / "sm")(images)  # a fresh process is tested above with the stand-in
    x = images.astype(np.float32) * np.float32(1 / 127.5) - 1
    e = np.abs(x - trained.reconstruct(tf.constant(x)).numpy())
    np.testing.assert_allclose(served["anomaly_map"], e, rtol=1e-4, atol=1e-5)
    d2 = stats.mahalanobis_d2(e, gauss["mean"], gauss["precision"])
    np.testing.assert_allclose(served["mahalanobis_d2"], d2, rtol=1e-3, atol=1e-4)


def test_one_sided_saved_model_d2_equals_the_numpy_reference(saved, tmp_path):
    """With one-sided directions the SavedModel's d² (plain and XLA graphs) equals stats.mahalanobis_d2 with them,
    and scipy's on the deviations clipped by hand; the directions are recorded in the metadata and the model card."""
    model, gauss, _, _ = saved
    dirs = [1, -1, 0]
    one_sided = {**gauss, "directions": dirs}
    images = random_patches(5, SIZE, seed=21)
    for jit in (False, True):
        meta = export.save_detector(rgb(model), one_sided, 4.0, tmp_path / f"sm{jit}", jit_compile=jit)
        det = load.load_detector(tmp_path / f"sm{jit}")
        assert meta["directions"] == dirs and meta["one_sided"] and det.directions == tuple(dirs)
        out = det(images)
        e = out["anomaly_map"].astype(np.float64)
        np.testing.assert_allclose(
            out["mahalanobis_d2"],
            stats.mahalanobis_d2(e, gauss["mean"], gauss["precision"], dirs),
            rtol=1e-4,
            atol=1e-4,
        )
        y = e.reshape(-1, 3) - gauss["mean"]
        y[:, 0], y[:, 1] = np.maximum(y[:, 0], 0), np.minimum(y[:, 1], 0)
        want = np.array([mahalanobis(v, np.zeros(3), gauss["precision"]) ** 2 for v in y]).reshape(5, SIZE, SIZE)
        np.testing.assert_allclose(out["mahalanobis_d2"], want, rtol=1e-4, atol=1e-4)
        two_sided = stats.mahalanobis_d2(e, gauss["mean"], gauss["precision"])
        assert (np.abs(out["mahalanobis_d2"] - two_sided) > 1e-3).any()  # the clipping is in the served graph
        np.testing.assert_array_equal(out["flags"], (out["mahalanobis_d2"] > np.float32(4.0)).astype(np.uint8))
    card = model_card(
        config={}, metadata=meta, model_files={}, manifests={},
        error_distribution={"one_sided": True, "channel_directions": dirs, "shrinkage": {"kind": "oas", "alpha": 0.2}},
        threshold={"method": "unsupervised"},
    )  # fmt: skip
    ed = card["error_distribution"]
    assert ed["directions"] == dirs and ed["one_sided"] and ed["channels"] == ["R", "G", "B"]
    assert ed["shrinkage"]["alpha"] == 0.2
    # a SavedModel exported without directions is two-sided (its metadata says so)
    assert load.load_detector(saved[2]).directions == (0, 0, 0)
    with pytest.raises(stats.StatsError, match="must be 3 values"):
        export.build_module(rgb(model), {**gauss, "directions": [1, 1]}, 4.0)
