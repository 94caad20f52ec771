"""Calibration under appearance augmentation (stain.calibration_copies, stain.calibration_jitter): the TF jitter of
proganomaly.training.augment against a numpy reference, and fit_error_distribution's moments over the copies against
numpy over the concatenated batches."""

import dataclasses

import numpy as np
import pytest
import tensorflow as tf
from scipy import ndimage

from proganomaly.calibration import errors, stats
from proganomaly.config import Config, validate_config
from proganomaly.data.stain import HED_FROM_RGB, REF_I0, RGB_FROM_HED, optical_density
from proganomaly.demo import appearance as demo_appearance
from proganomaly.scoring import make_scorer
from proganomaly.training import augment
from test_stats import StandIn, random_patches, rgb

IDENTITY = np.array([1.0, 1.0, 0.0, 0.0, 0.0, 1.0, 1.0], np.float32)  # APPEARANCE_PARAMS' identity values
ZERO_RANGES = {"h_scale": [1, 1], "e_scale": [1, 1], "hue_deg": [0, 0], "defocus_sigma": [0, 0],
               "brightness": [1, 1], "saturation": [1, 1]}  # fmt: skip


def default_jitter() -> dict:
    return dataclasses.asdict(Config.from_dict(validate_config({})).stain.calibration_jitter)


def reference(batch: np.ndarray, params: np.ndarray) -> np.ndarray:
    """numpy/scipy, float64, one image at a time: the appearance model as documented (not the TF code's ops)."""
    out = []
    for image, (h, e, h_hue, e_hue, sigma, gain, sat) in zip(batch, params.astype(np.float64), strict=True):
        hed = optical_density(image, REF_I0).astype(np.float64) @ HED_FROM_RGB.astype(np.float64)
        hed[..., 0] *= h
        hed[..., 1] *= e
        matrix = RGB_FROM_HED.astype(np.float64)
        matrix[0] = demo_appearance.turn_about_grey(matrix[0], h_hue)
        matrix[1] = demo_appearance.turn_about_grey(matrix[1], e_hue)
        light = np.exp(-(hed @ matrix))
        if sigma > 0:
            light = ndimage.gaussian_filter(light, (sigma, sigma, 0), mode="nearest", truncate=4.0)
        light *= gain
        luma = light @ demo_appearance.LUMA
        light = luma[..., None] + sat * (light - luma[..., None])
        out.append(np.clip(np.rint((REF_I0 + 1) * light - 1), 0, 255))
    return np.stack(out).astype(np.uint8)


def jitter_tf(images, params, jitter) -> np.ndarray:
    return augment.apply_appearance(tf.constant(images), params, augment.defocus_radius(jitter)).numpy()


def grey_levels(a, b) -> np.ndarray:
    return np.abs(a.astype(np.int64) - b.astype(np.int64))


# --- the jitter ---------------------------------------------------------------------------------------------------


def test_zero_ranges_are_the_identity():
    ramp = np.stack(np.meshgrid(np.arange(256), np.arange(256)[::-1], indexing="ij"), -1)
    ramp = np.concatenate([ramp, (ramp[..., :1] * 7) % 256], -1).reshape(16, 16, 16, 16, 3)
    images = np.concatenate([random_patches(5, 16, seed=1), ramp[0].astype(np.uint8).reshape(16, 16, 16, 3)])
    draws = augment.appearance_draws(len(images), ZERO_RANGES, seed=3, copy=1)
    np.testing.assert_array_equal(draws, np.tile(IDENTITY, (len(images), 1)))
    np.testing.assert_array_equal(jitter_tf(images, draws, ZERO_RANGES), images)
    # a kernel wide enough for σ = 0.8 still leaves a σ = 0 image as it is
    np.testing.assert_array_equal(augment.apply_appearance(tf.constant(images), draws, 3).numpy(), images)


def test_tf_jitter_matches_the_numpy_reference_to_one_grey_level():
    jitter = default_jitter()
    images = random_patches(24, 16, seed=4)  # full range, 0 and 255 included
    draws = augment.appearance_draws(len(images), jitter, seed=0, copy=1)
    got, want = jitter_tf(images, draws, jitter), reference(images, draws)
    assert grey_levels(got, want).max() <= 1
    assert grey_levels(got, images).mean() > 5  # it did change the patches
    # each part alone, at its range's extremes
    for j, name in enumerate(augment.APPEARANCE_PARAMS):
        lo, hi = jitter[augment._RANGE_OF[name]]
        params = np.tile(IDENTITY, (2, 1))
        params[:, j] = [lo, hi]
        pair = images[:2]
        assert grey_levels(jitter_tf(pair, params, jitter), reference(pair, params)).max() <= 1, name


def he_patches(n: int, size: int, seed: int) -> np.ndarray:
    """H&E-like uint8 patches: random haematoxylin and eosin concentrations rendered by Beer-Lambert."""
    rng = np.random.default_rng(seed)
    conc = rng.uniform(0, 1, (n, size, size, 3)) * np.array([0.8, 0.6, 0.05])
    return np.clip(np.rint(256 * np.exp(-(conc @ RGB_FROM_HED)) - 1), 0, 255).astype(np.uint8)


def test_jitter_has_the_form_of_the_demo_labs():
    """The demo cohort's appearance (skimage/scipy, OD −ln(I/255)) on the same parameters, to the 2 grey levels by
    which the two OD conventions (−ln(max(I/255, 1e-3)) vs −ln((I + 1)/256)) part on stained tissue."""
    jitter = default_jitter()
    images = he_patches(8, 16, seed=5)
    draws = augment.appearance_draws(len(images), jitter, seed=1, copy=2)
    draws[:, 4] = np.minimum(draws[:, 4], demo_appearance.MAX_DEFOCUS_SIGMA)
    got = jitter_tf(images, draws, jitter)
    for image, row, out in zip(images, draws, got, strict=True):
        look = demo_appearance.Appearance(*(float(v) for v in row))
        assert grey_levels(out, demo_appearance.apply_appearance(image, look)).max() <= 2


def test_gaussian_blur_is_scipys_per_image():
    rng = np.random.default_rng(6)
    x = rng.random((3, 9, 11, 2)).astype(np.float32)
    sigma = np.array([0.3, 0.0, 0.8], np.float32)
    got = augment.gaussian_blur(tf.constant(x), sigma, 3).numpy()
    for i, s in enumerate(sigma):
        want = ndimage.gaussian_filter(x[i].astype(np.float64), (s, s, 0), mode="nearest", truncate=4.0)
        np.testing.assert_allclose(got[i], want, atol=1e-5)


def test_draws_are_reproducible_uniform_and_keyed_by_seed_and_copy():
    jitter = default_jitter()
    a = augment.appearance_draws(500, jitter, seed=7, copy=1)
    np.testing.assert_array_equal(a, augment.appearance_draws(500, jitter, seed=7, copy=1))
    assert not np.array_equal(a, augment.appearance_draws(500, jitter, seed=7, copy=2))
    assert not np.array_equal(a, augment.appearance_draws(500, jitter, seed=8, copy=1))
    np.testing.assert_array_equal(a[:100], augment.appearance_draws(100, jitter, seed=7, copy=1))
    for j, name in enumerate(augment.APPEARANCE_PARAMS):
        lo, hi = jitter[augment._RANGE_OF[name]]
        assert lo <= a[:, j].min() and a[:, j].max() <= hi and np.ptp(a[:, j]) > 0.9 * (hi - lo), name


def test_bad_ranges_are_refused_naming_the_key():
    with pytest.raises(augment.JitterError, match=r"stain\.calibration_jitter\.h_scale: \[1\.3, 0\.7\]"):
        augment.check_jitter({**ZERO_RANGES, "h_scale": [1.3, 0.7]})
    with pytest.raises(augment.JitterError, match="expected the keys"):
        augment.check_jitter({"h_scale": [1, 1]})
    with pytest.raises(ValueError, match="calibration_jitter"):
        errors.fit_error_distribution(rgb(StandIn(8)), None, stats.linear_edges(0, 2, 8), copies=1)


# --- fit_error_distribution with copies ----------------------------------------------------------------------------


def exact_reconstruct(x):
    # single IEEE-rounded elementwise ops only (as test_stats): any batch shape gives identical float32
    return tf.round(25.0 * (x + 0.5 * tf.roll(x, 1, axis=-1))) * 0.04


SCORERS = {
    "rgb_error": lambda: rgb(exact_reconstruct),
    "texture_baseline": lambda: make_scorer("texture_baseline", StandIn(8)),
}


@pytest.mark.parametrize("name", list(SCORERS))
def test_copies_zero_is_todays_fit(name):
    images = random_patches(13, 8, seed=8)
    edges = stats.linear_edges(0, 2, 16)
    ds = tf.data.Dataset.from_tensor_slices(images).batch(5)
    m0, c0, r0 = errors.fit_error_distribution(SCORERS[name](), ds, edges, border_px=1, with_rows=True)
    m1, c1, r1 = errors.fit_error_distribution(
        SCORERS[name](), ds, edges, border_px=1, with_rows=True, copies=0, jitter=default_jitter(), seed=5
    )
    assert m0.n == m1.n == 13 * 36
    np.testing.assert_array_equal(m0.mean, m1.mean)
    np.testing.assert_array_equal(m0.m2, m1.m2)
    np.testing.assert_array_equal(c0, c1)
    np.testing.assert_array_equal(r0, r1)


@pytest.mark.parametrize("name", list(SCORERS))
@pytest.mark.parametrize("batch", [4, 64])
def test_moments_with_copies_equal_numpy_over_the_concatenated_batches(name, batch):
    n, copies, seed, border = 11, 2, 3, 1
    jitter = default_jitter()
    images = random_patches(n, 8, seed=9)
    scorer = SCORERS[name]()
    edges = stats.linear_edges(*scorer.histogram_range, 16)
    ds = tf.data.Dataset.from_tensor_slices(images).batch(batch)
    m, counts, rows = errors.fit_error_distribution(
        scorer, ds, edges, border_px=border, with_rows=True, copies=copies, jitter=jitter, seed=seed
    )
    seen = np.concatenate(
        [images] + [reference(images, augment.appearance_draws(n, jitter, seed, k)) for k in range(1, copies + 1)]
    )
    # the TF jitter on the whole copy at once: the patches the scorer saw, within a grey level of the reference
    jittered = np.concatenate(
        [images]
        + [jitter_tf(images, augment.appearance_draws(n, jitter, seed, k), jitter) for k in range(1, copies + 1)]
    )
    assert grey_levels(jittered, seen).max() <= 1
    e = errors.interior(scorer(tf.constant(jittered)).numpy(), border)
    inner = 8 - 2 * border
    flat = e.reshape(-1, e.shape[-1])
    assert m.n == (copies + 1) * n * inner * inner and rows.shape == ((copies + 1) * n, e.shape[-1])
    np.testing.assert_allclose(m.mean, flat.astype(np.float64).mean(axis=0), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(
        stats.covariance(m), np.cov(flat.astype(np.float64), rowvar=False), rtol=1e-8, atol=1e-14
    )
    for c in range(e.shape[-1]):
        np.testing.assert_array_equal(counts[c], stats.bin_counts(flat[:, c], edges))
    # one row per patch: copy k's i-th patch has index k·n + i in the row table
    index = np.arange((copies + 1) * n)
    picks = errors._ROW_TABLE[index % len(errors._ROW_TABLE)] % (inner * inner)
    want_rows = e.reshape(len(index), inner * inner, -1)[index, picks]
    np.testing.assert_array_equal(rows, want_rows.astype(np.float64))


def test_copies_are_reproducible_and_independent_of_the_batching():
    jitter = default_jitter()
    images = random_patches(9, 8, seed=10)
    edges = stats.linear_edges(0, 2, 16)
    runs = []
    for batch in (2, 9, 9):
        ds = tf.data.Dataset.from_tensor_slices(images).batch(batch)
        runs.append(
            errors.fit_error_distribution(
                rgb(exact_reconstruct), ds, edges, with_rows=True, copies=3, jitter=jitter, seed=11
            )
        )
    for m, c, r in runs[1:]:
        np.testing.assert_array_equal(r, runs[0][2])
        np.testing.assert_array_equal(c, runs[0][1])
        np.testing.assert_allclose(m.mean, runs[0][0].mean, rtol=1e-12)
        np.testing.assert_allclose(m.m2, runs[0][0].m2, rtol=1e-12)
    np.testing.assert_array_equal(runs[1][0].mean, runs[2][0].mean)  # same batching: bit for bit
    ds = tf.data.Dataset.from_tensor_slices(images).batch(9)
    other, _ = errors.fit_error_distribution(rgb(exact_reconstruct), ds, edges, copies=3, jitter=jitter, seed=12)
    assert not np.allclose(other.mean, runs[0][0].mean)


class FittedScorer:
    """An rgb_error scorer with a state fitted on the data (as the critic's stddev): records what `fit` saw."""

    def __init__(self):
        self.inner = rgb(exact_reconstruct)
        self.channels, self.histogram_range = self.inner.channels, self.inner.histogram_range
        self.needs_fit, self.seen = True, []

    def fit(self, batches):
        self.seen = [np.asarray(b) for b in batches]

    def __call__(self, images):
        return self.inner(images)


def test_the_scorers_state_is_fitted_on_the_patches_as_they_are():
    images = random_patches(7, 8, seed=11)
    scorer = FittedScorer()
    ds = tf.data.Dataset.from_tensor_slices(images).batch(3)
    m, _ = errors.fit_error_distribution(scorer, ds, stats.linear_edges(0, 2, 8), copies=2, jitter=default_jitter())
    np.testing.assert_array_equal(np.concatenate(scorer.seen), images)
    assert m.n == 3 * 7 * 64
