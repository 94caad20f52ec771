"""The scorer seam: every registered scorer, on a tiny model of every architecture, through the same contract
(features, batch independence, calibration, export, a fresh process); each scorer against an independent numpy /
scipy / scikit-image reference; scorers with their own fitted state; scorer and settings mismatches."""

import copy
import functools
import json
import textwrap

import numpy as np
import pytest
import tensorflow as tf

from fresh_python import run_fresh_python
from proganomaly.calibration import errors, stats
from proganomaly.config import Config, validate_config
from proganomaly.detector import export, load
from proganomaly.model import layers as L
from proganomaly.model.architectures import build_networks
from proganomaly.model.io import TrainedModel
from proganomaly.scoring import SCORERS, Scorer, ScorerError, check_scorer, inpainting, make_scorer, scorer_from_record
from proganomaly.scoring import base as scoring_base
from test_stats import StandIn, random_patches

SIZE = 8


TINY = 16
ARCHS = ("ganomaly", "berg")
CASES = [(arch, name) for arch in ARCHS for name in sorted(SCORERS)]


@functools.cache
def tiny_model(arch: str, create_encoder: bool = True):
    """A three-block 16 px model of `arch` (random weights), with the critic, as load_trained gives it."""
    raw = {
        "tiling": {"patch_size_px": TINY},
        "model": {"filters": [[8, 6], [6, 5], [5, 4]], "latent_size": 12, "architecture": arch,
                  "create_encoder": create_encoder},
    }  # fmt: skip
    cfg = Config.from_dict(validate_config(copy.deepcopy(raw)))
    return TrainedModel(build_networks(cfg.model, TINY, seed=1), TINY)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """Every (architecture, scorer) calibrated on the same patches and exported once."""
    root, out = tmp_path_factory.mktemp("scorers"), {}
    images = random_patches(9, TINY, seed=3)
    for arch, name in CASES:
        scorer = make_scorer(name, tiny_model(arch))
        ds = tf.data.Dataset.from_tensor_slices(images).batch(4)
        edges = stats.linear_edges(*scorer.histogram_range, 16)
        moments, counts, rows = errors.fit_error_distribution(scorer, ds, edges, with_rows=True)
        c = len(scorer.channels)
        assert moments.n == 9 * TINY * TINY and moments.dim == c and counts.shape == (c, 18) and rows.shape == (9, c)
        # as fit_error_distribution.py fits it by default: shrunk covariance, one-sided d²
        gauss = stats.gaussian_fit(moments, ridge=scorer.ridge, rows=rows, kind="oas")
        gauss["directions"] = list(scorer.directions)
        # what the JSON record holds, rebuilt as fit_threshold and export_model rebuild it
        record = json.loads(
            json.dumps({"scorer": name, "scorer_state": scorer.state, "scorer_settings": scorer.settings})
        )
        again = scorer_from_record(record, tiny_model(arch), expected=name, source="ed.json", settings=None)
        meta = export.save_detector(again, gauss, 3.0, root / f"{arch}-{name}", jit_compile=False)
        assert meta["scorer"] == name and meta["anomaly_map_channels"] == list(scorer.channels)
        assert meta["directions"] == list(scorer.directions)
        out[arch, name] = scorer, gauss, root / f"{arch}-{name}"
    return out


@pytest.mark.parametrize("case", CASES, ids=["-".join(c) for c in CASES])
def test_every_scorer_meets_the_contract(case, exported):
    """Shapes, finiteness, determinism, trace = eager, batch independence, and the export serving the same."""
    scorer, gauss, path = exported[case]
    images = random_patches(5, TINY, seed=1)
    eager = scorer(tf.constant(images)).numpy()
    assert eager.shape == (5, TINY, TINY, len(scorer.channels)) and eager.dtype == np.float32
    assert np.isfinite(eager).all() and len(set(scorer.channels)) == len(scorer.channels)
    np.testing.assert_array_equal(eager, scorer(tf.constant(images)).numpy())
    np.testing.assert_allclose(tf.function(scorer.__call__)(tf.constant(images)).numpy(), eager, rtol=1e-5, atol=1e-6)
    assert scorer.definition and scorer.histogram_range[0] < scorer.histogram_range[1]
    # A patch scores the same alone, and in batches of any size and order (float rounding of batched kernels aside).
    for i in range(5):
        np.testing.assert_allclose(scorer(tf.constant(images[i : i + 1])).numpy()[0], eager[i], rtol=1e-4, atol=1e-4)
    perm = [3, 0, 4]
    np.testing.assert_allclose(scorer(tf.constant(images[perm])).numpy(), eager[perm], rtol=1e-4, atol=1e-4)
    served = load.load_detector(path)(images)
    np.testing.assert_allclose(served["anomaly_map"], eager, rtol=1e-4, atol=1e-5)
    d2 = stats.mahalanobis_d2(eager, gauss["mean"], gauss["precision"], gauss["directions"])
    np.testing.assert_allclose(served["mahalanobis_d2"], d2, rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose(
        load.load_detector(path)(images, batch_size=1)["mahalanobis_d2"], served["mahalanobis_d2"], rtol=1e-4, atol=1e-3
    )


def test_every_exported_scorer_serves_the_same_in_a_fresh_process(exported, tmp_path):
    images = random_patches(4, TINY, seed=11)
    np.save(tmp_path / "in.npy", images)
    paths = {f"{a}-{n}": str(p) for (a, n), (_, _, p) in exported.items()}
    run_fresh_python(
        f"""
        import numpy as np
        from proganomaly.detector.load import load_detector
        images = np.load({str(tmp_path / "in.npy")!r})
        for key, path in {paths!r}.items():
            np.save({str(tmp_path)!r} + "/" + key + ".npy", load_detector(path)(images)["anomaly_map"])
        """,
        timeout=600,
    )
    for (arch, name), (scorer, _, _) in exported.items():
        got = np.load(tmp_path / f"{arch}-{name}.npy")
        np.testing.assert_allclose(got, scorer(tf.constant(images)).numpy(), rtol=1e-4, atol=1e-5)


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


# --- each scorer against an independent reference ------------------------------------------------------------------


def _unit(images):
    return images.astype(np.float32) * np.float32(1 / 127.5) - np.float32(1)


@pytest.mark.parametrize(("size", "block", "k"), [(16, 4, 3), (64, 8, 4), (16, 8, 4)])
def test_inpainting_masks_partition_every_pixel_exactly_once(size, block, k):
    masks = inpainting.pixel_masks(size, block, k, seed=5)
    assert masks.shape == (k, size, size)
    np.testing.assert_array_equal(masks.sum(axis=0), 1)
    counts = masks.reshape(k, -1).sum(axis=1) // block**2
    assert counts.max() - counts.min() <= 1  # balanced groups
    for m in masks:  # whole blocks: constant on each block
        blocks = m.reshape(size // block, block, size // block, block)
        assert (blocks.all(axis=(1, 3)) | ~blocks.any(axis=(1, 3))).all()
    np.testing.assert_array_equal(masks, inpainting.pixel_masks(size, block, k, seed=5))
    assert not np.array_equal(masks, inpainting.pixel_masks(size, block, k, seed=6)) or size // block <= 2
    with pytest.raises(ScorerError, match="block_px 5 does not divide"):
        inpainting.pixel_masks(16, 5, 2, 0)


@pytest.mark.parametrize("fill", ["shuffle", "dead"])
def test_inpainting_scores_each_pixel_from_the_pass_that_hid_it(fill):
    trained = tiny_model("ganomaly")
    settings = {**scoring_base.default_settings(), "inpainting": {"block_px": 4, "masks": 3}}
    scorer = make_scorer("inpainting", trained, settings=settings)
    scorer.inpainter.fill = fill
    images = random_patches(2, TINY, seed=8)
    x = _unit(images)
    masks = inpainting.pixel_masks(TINY, 4, 3, settings["seed"])
    want = np.zeros_like(x)
    for m in masks:
        if fill == "dead":
            filled = np.full_like(x, -1.0)
        else:  # each 4×4 block's own pixels, permuted inside the block (never taken from another block)
            src = inpainting.shuffle_sources(TINY, 4, settings["seed"])
            filled = x.reshape(2, -1, 3)[:, src].reshape(x.shape)
            assert np.all(src.reshape(TINY, TINY) // TINY // 4 == np.arange(TINY)[:, None] // 4)
        masked = np.where(m[None, :, :, None], filled, x)
        want += m[None, :, :, None] * trained.reconstruct(tf.constant(masked)).numpy()
    # The scorer runs its masked passes as one batch; oneDNN may pick another convolution algorithm (summation
    # order) for that batch size than for these separate calls, so float32 agrees to ~1e-5 relative, not bitwise.
    got = scorer.reconstruction(scorer.views(tf.constant(images))).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(scorer(tf.constant(images)).numpy(), np.abs(x - want), rtol=1e-4, atol=1e-5)


def _msgms_reference(x, y, scales):
    """RIAD's MSGMS in numpy / scipy / scikit-image: median 3×3, Prewitt, GMS, mirrored borders, bilinear upsampling."""
    from scipy import ndimage
    from skimage.transform import resize

    a, b = (x.mean(-1) + 1) / 2, (y.mean(-1) + 1) / 2
    px = np.array([[-1.0, 0, 1]] * 3) / 3
    total = np.zeros(a.shape)
    for s in range(scales):
        if s:
            a = a.reshape(a.shape[0], a.shape[1] // 2, 2, -1, 2).mean(axis=(2, 4))
            b = b.reshape(b.shape[0], b.shape[1] // 2, 2, -1, 2).mean(axis=(2, 4))
        g = []
        for im in (a, b):
            med = np.stack([ndimage.median_filter(i, 3, mode="mirror") for i in im])
            gx = np.stack([ndimage.correlate(i, px, mode="mirror") for i in med])
            gy = np.stack([ndimage.correlate(i, px.T, mode="mirror") for i in med])
            g.append(np.hypot(gx, gy))
        one_minus = 1 - (2 * g[0] * g[1] + 0.0026) / (g[0] ** 2 + g[1] ** 2 + 0.0026)
        total += np.stack([resize(m, x.shape[1:3], order=1, mode="edge", anti_aliasing=False) for m in one_minus])
    return total / scales


def test_gradient_similarity_matches_a_numpy_msgms():
    trained = tiny_model("berg")
    scorer = make_scorer("gradient_similarity", trained)
    images = random_patches(3, TINY, seed=12)
    x = _unit(images)
    want = _msgms_reference(x.astype(np.float64), trained.reconstruct(tf.constant(x)).numpy().astype(np.float64), 4)
    np.testing.assert_allclose(scorer(tf.constant(images)).numpy()[..., 0], want, atol=2e-5)
    assert np.abs(scorer(tf.constant(np.repeat(images[:1], 2, 0))).numpy()).max() < 1  # bounded in [0, 1]


@pytest.mark.parametrize("network", ["encoder", "critic"])
@pytest.mark.parametrize("arch", ARCHS)
def test_encoder_features_are_the_layer_activations(arch, network):
    trained = tiny_model(arch)
    full = scoring_base.default_settings()
    settings = {**full, "encoder_features": {**full["encoder_features"], "network": network, "layers": [0, 1, 2],
                                             "channels": 10}}  # fmt: skip
    scorer = make_scorer("encoder_features", trained, settings=settings)
    images = random_patches(3, TINY, seed=13)
    value = None
    if network == "critic":
        scorer.fit([images[:2], images[2:]])
        value = scorer.state["critic_stddev"]
    net = trained.nets.image_encoder() if network == "encoder" else trained.nets.critic
    skips = net(tf.constant(_unit(images)), trained.block, False, stddev_value=value)[1]
    layers = [np.repeat(np.repeat(skips[trained.block - d].numpy(), 2**d, 1), 2**d, 2) for d in (0, 1, 2)]
    everything = np.concatenate(layers, axis=-1)
    keep = np.sort(np.random.default_rng([settings["seed"], 2]).choice(everything.shape[-1], 10, replace=False))
    np.testing.assert_allclose(scorer(tf.constant(images)).numpy(), everything[..., keep], rtol=1e-5, atol=1e-6)
    assert len(scorer.channels) == 10


def test_critic_uses_a_fitted_stddev_value_and_needs_saved_weights(tmp_path):
    trained = tiny_model("ganomaly")
    scorer = make_scorer("critic", trained)
    batches = [random_patches(4, TINY, seed=s) for s in (1, 2)]
    scorer.fit(batches)
    # the fitted value: the mean of the batch statistic training computes, over the calibrate patches
    want = []
    for images in batches:
        h, _ = trained.nets.critic.trunk(tf.constant(_unit(images)), trained.block, False)
        want.append(np.asarray(L.minibatch_stddev(h, 4, True))[..., -1].mean() * len(images))
    assert scorer.state["critic_stddev"] == pytest.approx(sum(want) / 8, rel=1e-6)
    x = tf.constant(_unit(batches[0]))
    logits = trained.nets.critic(x, trained.block, False, stddev_value=scorer.state["critic_stddev"])[0].numpy()
    got = scorer(tf.constant(batches[0])).numpy()
    np.testing.assert_allclose(got, np.broadcast_to(logits[:, None, None, :], got.shape), rtol=1e-6)
    no_critic = TrainedModel(trained.nets, TINY, has_critic=False)
    with pytest.raises(ScorerError, match=r"holds none.*rerun train_reconstruction"):
        make_scorer("critic", no_critic)


def test_latent_distance_per_architecture():
    images = random_patches(3, TINY, seed=14)
    x = tf.constant(_unit(images))
    g = tiny_model("ganomaly")
    z, xhat = g.nets.generate(x, g.block, False)
    want = np.linalg.norm(z.numpy() - g.nets.encoder(xhat, g.block, False)[0].numpy(), axis=-1)
    np.testing.assert_allclose(
        make_scorer("latent_distance", g)(tf.constant(images)).numpy()[:, 0, 0, 0], want, rtol=1e-5
    )
    b = tiny_model("berg")
    want = np.linalg.norm(b.encode(x).numpy(), axis=-1)
    got = make_scorer("latent_distance", b)(tf.constant(images)).numpy()
    np.testing.assert_allclose(got, np.broadcast_to(want[:, None, None, None], got.shape), rtol=1e-5)
    with pytest.raises(ScorerError, match=r"model\.create_encoder: true"):
        make_scorer("latent_distance", tiny_model("ganomaly", create_encoder=False))


def test_combined_concatenates_its_parts_and_records_their_settings():
    trained = tiny_model("ganomaly")
    full = scoring_base.default_settings()
    settings = {**full, "combined": {"scorers": ["rgb_error", "critic", "inpainting"]}}
    scorer = make_scorer("combined", trained, settings=settings)
    assert set(scorer.settings) == {"combined", "seed", "inpainting"} and scorer.needs_fit
    images = random_patches(3, TINY, seed=15)
    scorer.fit([images])
    parts = [make_scorer(n, trained, scorer.state.get(n), settings) for n in ("rgb_error", "critic", "inpainting")]
    want = np.concatenate([p(tf.constant(images)).numpy() for p in parts], axis=-1)
    np.testing.assert_allclose(scorer(tf.constant(images)).numpy(), want, rtol=1e-6, atol=1e-6)
    assert scorer.channels[:4] == ("rgb_error:R", "rgb_error:G", "rgb_error:B", "critic:D")
    with pytest.raises(ScorerError, match="distinct scorer"):
        make_scorer("combined", trained, settings={**full, "combined": {"scorers": ["combined"]}})


def test_changed_scoring_settings_force_a_refit():
    trained = tiny_model("ganomaly")
    full = scoring_base.default_settings()
    record = {"scorer": "inpainting", "scorer_settings": make_scorer("inpainting", trained).settings}
    scorer_from_record(record, trained, expected="inpainting", source="ed.json", settings=full)
    other = {**full, "inpainting": {"block_px": 4, "masks": 2}}
    with pytest.raises(ScorerError, match=r"ed\.json was fitted with scoring settings.*rerun fit_error_distribution"):
        scorer_from_record(record, trained, expected="inpainting", source="ed.json", settings=other)
    # a setting the scorer does not read changes nothing
    scorer_from_record({"scorer": "rgb_error"}, trained, expected="rgb_error", source="ed.json", settings=other)


def test_scorers_declare_the_anomalous_side_of_each_channel():
    """+1 for error magnitudes and distances, −1 for the critic's logit (the WGAN critic is trained to score real
    tissue higher: critic_losses minimises mean D(fake) − mean D(x)), 0 for two-sided statistics; combined
    concatenates its parts'."""
    from proganomaly.model import losses

    g = tiny_model("ganomaly")
    full = scoring_base.default_settings()
    want = {"rgb_error": (1, 1, 1), "inpainting": (1, 1, 1), "latent_distance": (1,), "critic": (-1,),
            "gradient_similarity": (1,), "texture_baseline": (0,) * 20}  # fmt: skip
    for name, dirs in want.items():
        assert make_scorer(name, g).directions == dirs, name
    assert set(make_scorer("encoder_features", g).directions) == {0}
    per_scale = {**full, "gradient_similarity": {**full["gradient_similarity"], "per_scale": True}}
    assert make_scorer("gradient_similarity", g, settings=per_scale).directions == (1,) * 4
    combined = {**full, "combined": {"scorers": ["critic", "texture_baseline"]}}
    assert make_scorer("combined", g, settings=combined).directions == (-1,) + (0,) * 20
    # the sign of the critic's loss: a critic that scores the real batch higher has the lower loss
    weights = type("Weights", (), {"D_of_x": 1.0, "D_of_G_of_x": 1.0})()
    real, fake = tf.ones((2, 4, 4, 3)), -tf.ones((2, 4, 4, 3))

    def loss(real_logit: float) -> float:
        def critic(x):  # real_logit on real patches, 0 on fakes
            return real_logit * tf.reduce_mean(tf.maximum(x, 0.0), axis=[1, 2, 3])[:, None]

        out = losses.critic_losses(critic, real, {"D_of_G_of_x": fake}, weights, tf.zeros(2), global_batch=2,
                                   gp_coefficient=0.0, gp_target=1.0, epsilon_drift=0.0)  # fmt: skip
        return float(out["discriminator_total_loss"])

    assert loss(5.0) < loss(0.0) < loss(-5.0)
