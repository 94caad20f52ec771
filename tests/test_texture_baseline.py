"""The hand-crafted baseline: the numpy reference (scikit-image) against independent computations and scipy, and the
registered TensorFlow scorer against the reference."""

import numpy as np
import pytest
import tensorflow as tf
from scipy import ndimage
from scipy.spatial.distance import mahalanobis

import texture_reference as tb
from proganomaly.scoring import texture_baseline as tf_tb


def _he_like(seed: int, size: int = 64) -> np.ndarray:
    """Pink stroma with purple nuclei and pixel noise: every feature has something to measure."""
    rng = np.random.default_rng(seed)
    img = np.ones((size, size, 3)) * np.array([225.0, 150.0, 190.0])
    yy, xx = np.mgrid[:size, :size]
    for _ in range(12):
        cy, cx = rng.uniform(0, size, 2)
        r = rng.uniform(3, 6)
        img[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = [90.0, 60.0, 140.0]
    img += rng.normal(0, 12, img.shape)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def _hed_reference(rgb: np.ndarray) -> np.ndarray:
    """Ruifrok & Johnston colour deconvolution from their published stain vectors (not skimage's matrix)."""
    stains = np.array([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]])
    od = np.log(np.maximum(rgb.reshape(-1, 3) / 255.0, 1e-6)) / np.log(1e-6)
    return np.maximum(od @ np.linalg.inv(stains), 0.0)


def _sobel_reference(grey: np.ndarray) -> np.ndarray:
    gy, gx = ndimage.sobel(grey, axis=0) / 4, ndimage.sobel(grey, axis=1) / 4
    return np.sqrt((gx**2 + gy**2) / 2)


def _lbp_uniform_reference(grey: np.ndarray) -> np.ndarray:
    """Rotation-invariant uniform LBP (P=8, R=1, bilinear neighbours) of the interior pixels, by its definition."""
    h, w = grey.shape
    yy, xx = np.mgrid[1 : h - 1, 1 : w - 1].astype(np.float64)
    angles = 2 * np.pi * np.arange(8) / 8
    bits = []
    for a in angles:
        dy, dx = np.round(-np.sin(a), 5), np.round(np.cos(a), 5)
        value = ndimage.map_coordinates(grey.astype(np.float64), [yy + dy, xx + dx], order=1)
        bits.append(value - grey[1:-1, 1:-1] >= 0)
    bits = np.stack(bits).astype(int)
    transitions = np.abs(np.diff(np.concatenate([bits, bits[:1]]), axis=0)).sum(axis=0)
    return np.where(transitions <= 2, bits.sum(axis=0), 9)


def test_feature_vector_layout():
    feats = tb.patch_features(_he_like(0))
    assert feats.shape == (tb.N_FEATURES,) == (len(tb.FEATURE_NAMES),) == (20,)
    assert len(set(tb.FEATURE_NAMES)) == tb.N_FEATURES
    assert np.all(np.isfinite(feats))


def test_hed_moments_match_published_stain_vectors():
    patch = _he_like(1)
    feats = dict(zip(tb.FEATURE_NAMES, tb.patch_features(patch), strict=True))
    ref = _hed_reference(patch)
    for i, stain in enumerate(("hematoxylin", "eosin", "dab")):
        assert feats[f"{stain}_mean"] == pytest.approx(ref[:, i].mean(), rel=1e-2, abs=1e-4)
        assert feats[f"{stain}_std"] == pytest.approx(ref[:, i].std(), rel=1e-2, abs=1e-4)
    # Purple nuclei on pink: more haematoxylin than DAB, by construction.
    assert feats["hematoxylin_mean"] > feats["dab_mean"]


def test_gradient_moments_match_scipy_sobel():
    patch = _he_like(2)
    feats = dict(zip(tb.FEATURE_NAMES, tb.patch_features(patch), strict=True))
    grey = patch.astype(np.float64) @ np.array([0.2125, 0.7154, 0.0721]) / 255
    half = grey.reshape(32, 2, 32, 2).mean(axis=(1, 3))
    for factor, image in ((1, grey), (2, half)):
        mag = _sobel_reference(image)
        assert feats[f"gradient_x{factor}_mean"] == pytest.approx(mag.mean(), rel=1e-6)
        assert feats[f"gradient_x{factor}_std"] == pytest.approx(mag.std(), rel=1e-6)


def test_gradient_energy_falls_with_blur():
    patch = _he_like(3)
    blurred = ndimage.gaussian_filter(patch, (2, 2, 0))
    sharp, soft = tb.patch_features(patch), tb.patch_features(blurred)
    i = tb.FEATURE_NAMES.index("gradient_x1_mean")
    assert soft[i] < 0.5 * sharp[i]


@pytest.mark.parametrize("seed", [4, 5])
def test_lbp_histogram_matches_definition(seed):
    patch = _he_like(seed)
    feats = tb.patch_features(patch)
    luminance = patch.astype(np.float64) @ np.array([0.2125, 0.7154, 0.0721]) / 255
    grey = np.rint(np.clip(luminance, 0, 1) * 255).astype(np.uint8)
    codes = _lbp_uniform_reference(grey)
    expected = np.bincount(codes.ravel(), minlength=10) / codes.size
    got = feats[-tb.LBP_BINS :]
    assert got.sum() == pytest.approx(1.0)
    # Diagonal neighbours are interpolated; a tie decided by the last bit of a float may flip a rare code.
    np.testing.assert_allclose(got, expected, atol=2.0 / codes.size)


def test_gaussian_d2_matches_scipy_mahalanobis():
    rng = np.random.default_rng(6)
    calibrate = np.stack([tb.patch_features(_he_like(int(s))) for s in rng.integers(0, 10_000, 60)])
    g = tb.fit_gaussian(calibrate)
    assert np.allclose(g.mean, calibrate.mean(axis=0))
    raw = np.cov(calibrate, rowvar=False)
    # The ridge only raises the diagonal, by a small fraction of each variance.
    off = ~np.eye(tb.N_FEATURES, dtype=bool)
    assert np.allclose(g.cov[off], raw[off])
    assert np.all(np.diag(g.cov) >= np.diag(raw)) and np.all(np.diag(g.cov) <= np.diag(raw) * (1 + 2 * tb.RIDGE) + 1e-9)
    test = np.stack([tb.patch_features(_he_like(int(s))) for s in (11, 12, 13)])
    d2 = tb.mahalanobis_d2(test, g)
    inv = np.linalg.inv(g.cov)
    expected = [mahalanobis(row, g.mean, inv) ** 2 for row in test]
    np.testing.assert_allclose(d2, expected, rtol=1e-6)


def test_d2_ranks_a_colour_outlier_above_normal():
    calibrate = np.stack([tb.patch_features(_he_like(s)) for s in range(40)])
    g = tb.fit_gaussian(calibrate)
    normal = tb.mahalanobis_d2(tb.patch_features(_he_like(99))[None], g)[0]
    inked = _he_like(99).astype(np.float64) * np.array([0.35, 0.7, 0.75])
    outlier = tb.mahalanobis_d2(tb.patch_features(inked.astype(np.uint8))[None], g)[0]
    assert outlier > 10 * normal


def test_fit_rejects_too_few_rows():
    with pytest.raises(ValueError, match="n >= 2"):
        tb.fit_gaussian(np.zeros((1, tb.N_FEATURES)))


def test_patch_checks():
    with pytest.raises(ValueError, match="uint8 RGB"):
        tb.patch_features(np.zeros((64, 64), np.uint8))
    with pytest.raises(ValueError, match="too small"):
        tb.patch_features(np.zeros((4, 4, 3), np.uint8))


def test_tensorflow_features_equal_the_reference():
    """Same definitions (skimage's matrix, Sobel kernels, mirrored borders, bilinear LBP neighbours), float64 both."""
    rng = np.random.default_rng(9)
    patches = [_he_like(s) for s in range(4)]
    patches += [np.full((64, 64, 3), 128, np.uint8), rng.integers(0, 256, (64, 64, 3)).astype(np.uint8)]
    patches += [np.clip(rng.normal(150, 2, (64, 64, 3)), 0, 255).astype(np.uint8)]  # near-ties in the LBP
    patches += [ndimage.gaussian_filter(_he_like(5), (2, 2, 0))]
    got = tf_tb.patch_features(tf.constant(np.stack(patches))).numpy()
    want = np.stack([tb.patch_features(p) for p in patches])
    assert tf_tb.FEATURE_NAMES == tb.FEATURE_NAMES
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)


def test_tensorflow_features_of_a_patch_do_not_depend_on_its_batch():
    patches = np.stack([_he_like(s) for s in range(5)])
    whole = tf_tb.patch_features(tf.constant(patches)).numpy()
    for i in range(5):
        np.testing.assert_array_equal(whole[i], tf_tb.patch_features(tf.constant(patches[i : i + 1])).numpy()[0])
