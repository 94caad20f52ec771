"""The scorer seam: every registered scorer through the same contract (features, calibration, export), the
rgb_error scorer against its definition, scorers with their own fitted state, and scorer mismatches."""

import json
import textwrap

import numpy as np
import pytest
import tensorflow as tf

from fresh_python import run_fresh_python
from proganomaly.calibration import errors, stats
from proganomaly.detector import export, load
from proganomaly.scoring import SCORERS, Scorer, ScorerError, check_scorer, make_scorer, scorer_from_record
from proganomaly.scoring import base as scoring_base
from test_stats import StandIn, random_patches

SIZE = 8


@pytest.fixture(params=sorted(SCORERS))
def scorer(request):
    return make_scorer(request.param, StandIn(SIZE, seed=2))


def test_features_are_per_pixel_float32_and_trace_like_eager(scorer):
    images = random_patches(5, SIZE, seed=1)
    eager = scorer(tf.constant(images))
    traced = tf.function(scorer.__call__)(tf.constant(images))
    assert eager.shape == (5, SIZE, SIZE, len(scorer.channels)) and eager.dtype == tf.float32
    np.testing.assert_array_equal(eager.numpy(), traced.numpy())
    assert scorer.definition and scorer.histogram_range[0] < scorer.histogram_range[1]


def test_calibration_and_export_serve_the_scorers_features(scorer, tmp_path):
    images = random_patches(12, SIZE, seed=3)
    ds = tf.data.Dataset.from_tensor_slices(images).batch(5)
    edges = stats.linear_edges(*scorer.histogram_range, 16)
    moments, counts = errors.fit_error_distribution(scorer, ds, edges)
    c = len(scorer.channels)
    assert moments.n == 12 * SIZE * SIZE and moments.dim == c and counts.shape == (c, len(edges) + 1)
    gauss = stats.gaussian_fit(moments)
    meta = export.save_detector(scorer, gauss, 3.0, tmp_path / "sm", jit_compile=False)
    assert meta["scorer"] == scorer.name and meta["anomaly_map_channels"] == list(scorer.channels)
    served = load.load_detector(tmp_path / "sm")(images)
    feats = scorer(tf.constant(images)).numpy()
    np.testing.assert_allclose(served["anomaly_map"], feats, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(
        served["mahalanobis_d2"], stats.mahalanobis_d2(feats, gauss["mean"], gauss["precision"]), rtol=1e-3, atol=1e-4
    )


def test_rgb_error_is_the_absolute_reconstruction_error():
    model = StandIn(SIZE, seed=5)
    images = random_patches(3, SIZE, seed=4)
    x = images.astype(np.float32) * np.float32(1 / 127.5) - np.float32(1)
    want = np.abs(x - model.reconstruct(tf.constant(x)).numpy())
    np.testing.assert_array_equal(make_scorer("rgb_error", model)(tf.constant(images)).numpy(), want)


def test_unknown_and_mismatched_scorers_fail_clearly():
    model = StandIn(SIZE)
    with pytest.raises(ScorerError, match=r"calibration.scorer 'nope' is not one of \[.*'rgb_error'"):
        make_scorer("nope", model)
    with pytest.raises(
        ScorerError, match=r"threshold.json was made with scorer 'other', but this step uses 'rgb_error'"
    ):
        check_scorer("rgb_error", "other", "threshold.json")
    with pytest.raises(ScorerError, match="records no scorer"):
        check_scorer("rgb_error", None, "threshold.json")
    with pytest.raises(ScorerError, match=r"error_distribution.json was made with scorer 'rgb_error'.*'other'"):
        scorer_from_record({"scorer": "rgb_error"}, model, expected="other", source="error_distribution.json")
    assert scorer_from_record({"scorer": "rgb_error"}, model, expected="rgb_error", source="x").name == "rgb_error"


class LocationCentred(Scorer):
    """A test-only scorer with its own fitted state (PaDiM-like): the RGB error minus its per-location mean."""

    name = "test_location_centred"
    channels = ("R", "G", "B")
    definition = "|x - G(x)| minus its mean at each pixel location over the calibrate patches"
    histogram_range = (-2.0, 2.0)
    needs_fit = True

    def fit(self, batches):
        total, n = 0.0, 0
        for images in batches:
            e = make_scorer("rgb_error", self.trained)(tf.constant(images)).numpy().astype(np.float64)
            total, n = total + e.sum(axis=0), n + len(e)
        self.state = {"location_mean": (total / n).tolist()}

    def features(self, views):
        mean = tf.constant(np.asarray(self.state["location_mean"], np.float32))
        return tf.abs(views.x - views.reconstruction) - mean


@pytest.fixture
def registered_stateful():
    scoring_base.register(LocationCentred)
    yield LocationCentred
    del SCORERS[LocationCentred.name]


def test_a_scorer_with_fitted_state_is_one_class(registered_stateful, tmp_path):
    model = StandIn(SIZE, seed=6)
    images = random_patches(10, SIZE, seed=7)
    ds = tf.data.Dataset.from_tensor_slices(images).batch(4)
    scorer = make_scorer(registered_stateful.name, model)
    moments, _ = errors.fit_error_distribution(scorer, ds, stats.linear_edges(-2, 2, 16))
    assert np.abs(moments.mean).max() < 1e-6  # centred per location by the state fitted on the same patches
    record = json.loads(json.dumps({"scorer": scorer.name, "scorer_state": scorer.state}))  # as the JSON holds it
    again = scorer_from_record(record, model, expected=registered_stateful.name, source="ed.json")
    np.testing.assert_array_equal(again(tf.constant(images)).numpy(), scorer(tf.constant(images)).numpy())
    export.save_detector(again, stats.gaussian_fit(moments), 3.0, tmp_path / "sm")
    np.save(tmp_path / "in.npy", images)
    run_fresh_python(
        textwrap.dedent(
            f"""
            import numpy as np
            from proganomaly.detector.load import load_detector
            out = load_detector({str(tmp_path / "sm")!r})(np.load({str(tmp_path / "in.npy")!r}))
            np.save({str(tmp_path / "out.npy")!r}, out["anomaly_map"])
            """
        )
    )
    np.testing.assert_allclose(np.load(tmp_path / "out.npy"), scorer(tf.constant(images)).numpy(), atol=1e-6)
