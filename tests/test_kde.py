"""KDE of flagged pixels: grid smoothing equals sklearn's KDE; tile-wise steps equal their whole-map references."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage
from skimage.morphology import remove_small_objects
from sklearn.neighbors import KernelDensity

from proganomaly.maps import kde
from proganomaly.maps.colormap import TURBO, apply_turbo
from proganomaly.maps.stitching import DiskArray


def _pixel_centres(h, w):
    return np.stack(np.meshgrid(np.arange(h), np.arange(w), indexing="ij"), axis=-1).reshape(-1, 2).astype(float)


@pytest.mark.parametrize("sigma", [2.5, 20.0])  # direct and FFT paths
def test_grid_smoothing_is_sklearn_kde_times_n(sigma):
    """Σ_i g_σ(p − p_i) = n·KDE(p) at every pixel centre; tolerance 1e-3 of the peak (truncation at 4σ)."""
    rng = np.random.default_rng(1)
    flags = (rng.random((60, 80)) < 0.05).astype(np.float32)
    out = np.zeros_like(flags)
    kde.smooth_tiled(flags, out, sigma, tile=17)
    points = np.argwhere(flags > 0).astype(float)
    density = np.exp(
        KernelDensity(bandwidth=sigma, kernel="gaussian").fit(points).score_samples(_pixel_centres(60, 80))
    )
    want = density.reshape(60, 80) * len(points)
    np.testing.assert_allclose(out, want, atol=1e-3 * want.max())


@pytest.mark.parametrize(("sigma", "tile"), [(1.5, 7), (3.0, 32), (30.0, 25)])
def test_tiled_smoothing_equals_whole_map_filter(sigma, tile):
    rng = np.random.default_rng(2)
    src = rng.random((70, 90)).astype(np.float32) * (rng.random((70, 90)) < 0.2)
    dst = np.zeros_like(src)
    kde.smooth_tiled(src, dst, sigma, tile=tile)
    want = ndimage.gaussian_filter(src.astype(np.float64), sigma, mode="constant", truncate=4.0)
    np.testing.assert_allclose(dst, want, atol=1e-6)
    np.testing.assert_allclose(kde.gaussian_kernel1d(sigma).sum(), 1.0)


def test_tiled_small_object_removal_equals_skimage(tmp_path):
    rng = np.random.default_rng(3)
    flags = ndimage.binary_dilation(rng.random((120, 150)) < 0.02, iterations=int(rng.integers(1, 2)))
    flags |= rng.random(flags.shape) < 0.01  # single-pixel speckles
    flags[30, 10:140] = True  # a long object crossing every tile column
    src = DiskArray.create(tmp_path / "f.npy", flags.shape, np.float32)
    src[:, :] = flags.astype(np.float32)
    dst = DiskArray.create(tmp_path / "g.npy", flags.shape, np.float32)
    min_area = 9
    kde.remove_small_tiled(src, dst, min_area, tile=23)
    want = remove_small_objects(flags, max_size=min_area - 1, connectivity=2)
    np.testing.assert_array_equal(dst[:, :] > 0, want)
    assert 0 < want.sum() < flags.sum()


def test_slide_kde_is_a_fixed_scale_shared_by_slides(tmp_path):
    """A fully flagged region reads 1; the same tissue and blob give the same values on a small and a large slide."""
    blob = np.zeros((40, 40), np.float32)
    blob[10:30, 12:28] = 1.0
    small = blob
    large = np.zeros((200, 300), np.float32)
    large[100:140, 150:190] = blob
    tissue = np.zeros_like(large)
    tissue[100:140, 150:190] = 1.0  # the small slide is all tissue; around it, the large one is glass
    for name in "abc":
        (tmp_path / name).mkdir()
    a = kde.slide_kde(small, tmp_path / "a", sigma_px=3.0, min_area_px=4, ceiling=0.5, tile=16)
    b = kde.slide_kde(large, tmp_path / "b", sigma_px=3.0, min_area_px=4, ceiling=0.5, tile=64, weight=tissue)
    np.testing.assert_allclose(b[100:140, 150:190], a[:, :], atol=1e-6)
    assert a[20, 20] == pytest.approx(1.0)  # inside the blob: fraction ≈ 1 ≥ ceiling
    assert 0.0 <= np.nanmin(b[:, :]) and np.nanmax(b[:, :]) <= 1.0
    assert np.isnan(b[0, 0])  # no tissue within the kernel
    full = np.ones((30, 30), np.float32)
    c = kde.slide_kde(full, tmp_path / "c", sigma_px=2.0, min_area_px=4, ceiling=1.0, tile=16)
    assert c[15, 15] == pytest.approx(1.0, abs=1e-6)  # the normalised kernel: full coverage is exactly 1
    assert c[0, 0] == pytest.approx(1.0, abs=1e-6)  # ... also at the slide's corner
    with pytest.raises(ValueError, match="ceiling"):
        kde.slide_kde(full, tmp_path / "c", sigma_px=2.0, min_area_px=4, ceiling=0.0)


def _normalised_reference(flags, weight, sigma, truncate=4.0):
    """scipy: gaussian_filter(flags·w) / gaussian_filter(w), zeros beyond the map, NaN under the weight floor."""
    top = ndimage.gaussian_filter(np.nan_to_num(flags) * weight, sigma, mode="constant", truncate=truncate)
    mass = ndimage.gaussian_filter(weight.astype(np.float64), sigma, mode="constant", truncate=truncate)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(mass >= kde.WEIGHT_FLOOR, top / mass, np.nan), mass


def _tissue_with_an_edge(h, w, seed):
    """Random flag fractions on a tissue region with a wavy edge, glass (NaN flags, weight 0) beyond it."""
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[0:h, 0:w]
    tissue = cols < 0.55 * w + 6 * np.sin(rows / 5.0)
    tissue[: h // 5, : w // 4] = False  # a notch of glass inside
    flags = rng.random((h, w)) * (rng.random((h, w)) < 0.3)
    flags = np.where(tissue, flags, np.nan)  # uncovered glass has no flags at all
    return flags, tissue.astype(np.float64)


@pytest.mark.parametrize(("sigma", "tile"), [(1.5, 7), (3.0, 32), (20.0, 25)])  # direct and FFT paths
def test_normalised_smoothing_equals_scipy_tiled_and_whole(sigma, tile):
    flags, weight = _tissue_with_an_edge(90, 200, seed=int(sigma * 10))
    want, mass = _normalised_reference(flags, weight, sigma)
    whole = np.full(flags.shape, -1.0)
    kde.normalised_smooth_tiled(flags, weight, whole, sigma, tile=10**6)
    tiled = np.full(flags.shape, -1.0)
    kde.normalised_smooth_tiled(flags, weight, tiled, sigma, tile=tile)
    np.testing.assert_allclose(whole, want, rtol=0, atol=1e-12)
    np.testing.assert_allclose(tiled, whole, rtol=0, atol=1e-12)
    np.testing.assert_array_equal(np.isnan(tiled), mass < kde.WEIGHT_FLOOR)
    assert np.isnan(tiled).any() and not np.isnan(tiled[weight > 0]).any()


def test_uniformly_flagged_disc_reads_its_fraction_up_to_the_rim(tmp_path):
    """A tissue disc 20 % flagged everywhere: kde = 0.2 / ceiling on the whole disc, rim included (glass used to
    dilute the rim to about half); NaN where no tissue lies within the kernel."""
    h = w = 160
    rows, cols = np.mgrid[0:h, 0:w]
    disc = (rows - 80) ** 2 + (cols - 70) ** 2 <= 40**2
    flags = np.where(disc, 0.2, np.nan).astype(np.float32)
    sigma, ceiling = 6.0, 0.5
    got = kde.slide_kde(
        flags, tmp_path, sigma_px=sigma, min_area_px=0, ceiling=ceiling, tile=48, weight=disc.astype(np.float32)
    )[:, :]
    np.testing.assert_allclose(got[disc], 0.2 / ceiling, rtol=1e-5)
    rim = disc & ~ndimage.binary_erosion(disc)
    old = ndimage.gaussian_filter(np.where(disc, 0.2, 0.0), sigma, mode="constant") / ceiling  # the previous KDE
    assert old[rim].max() < 0.7 * 0.2 / ceiling
    _, mass = _normalised_reference(flags, disc.astype(np.float64), sigma)
    far = mass < kde.WEIGHT_FLOOR
    np.testing.assert_array_equal(np.isnan(got), far)
    dist = ndimage.distance_transform_edt(~disc)
    assert far[dist > 4 * sigma + 2].all() and not far[dist < 2 * sigma].any()


def test_grid_kde_matches_sklearn():
    rng = np.random.default_rng(4)
    points = rng.uniform(0, 63, size=(50, 2))
    rows, cols = np.linspace(0, 63, 11), np.linspace(0, 63, 13)
    got = kde.grid_kde(points, rows, cols, bandwidth=7.0)
    grid = np.stack(np.meshgrid(rows, cols, indexing="ij"), axis=-1).reshape(-1, 2)
    want = np.exp(KernelDensity(bandwidth=7.0).fit(points).score_samples(grid)).reshape(11, 13)
    np.testing.assert_allclose(got, want, rtol=1e-9)


def test_patch_kde_follows_spec_8_3():
    params = dict(bandwidth_px=10.0, bins=20, min_object_px=5, min_points=20, scaling_factor=1000.0, scaling_power=0.5)
    flags = np.zeros((64, 64), bool)
    flags[20:35, 30:45] = True  # 225 px object
    flags[5, 5] = True  # a speckle, removed
    v = kde.patch_kde(flags, **params)
    assert v.shape == (64, 64) and v.dtype == np.float32
    # Per-patch min-max then count scaling: the grid peak is (count/factor)^power; the bilinear resize to 64 px
    # interpolates between grid nodes, so it can only lower the peak (by < 2 % here).
    peak_value = (226 / 1000.0) ** 0.5
    assert 0.98 * peak_value <= v.max() <= peak_value + 1e-6
    peak = np.unravel_index(np.argmax(v), v.shape)
    assert 20 <= peak[0] < 35 and 30 <= peak[1] < 45
    few = np.zeros((64, 64), bool)
    few[10, 10:14] = True  # 4 points (+4 corners) ≤ min_points: no density
    assert not kde.patch_kde(few, **params).any()


def test_turbo_lut_matches_matplotlib():
    from matplotlib import colormaps

    want = np.rint(colormaps["turbo"](np.arange(256))[:, :3] * 255).astype(np.uint8)
    np.testing.assert_array_equal(TURBO, want)
    np.testing.assert_array_equal(apply_turbo(np.array([0.0, 1.0, 2.0, np.nan])), want[[0, 255, 255, 0]])


def test_kde_in_microns_does_not_depend_on_the_downsample(tmp_path):
    """The same flags at downsample 1 and 4 (σ and object size given in µm) give the same heat map, up to binning."""
    mpp, bandwidth_um = 0.5, 16.0
    flags = np.zeros((256, 256), np.float32)
    flags[64:128, 96:176] = 1.0
    flags[200:204, 20:24] = 1.0  # 16 px = 4 µm²: removed at both scales by a 5 µm² minimum
    coarse = flags.reshape(64, 4, 64, 4).mean(axis=(1, 3))
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    fine_kde = kde.slide_kde(flags, tmp_path / "a", sigma_px=bandwidth_um / mpp, min_area_px=5 / mpp**2, ceiling=0.5)
    coarse_kde = kde.slide_kde(
        coarse, tmp_path / "b", sigma_px=bandwidth_um / (4 * mpp), min_area_px=5 / (4 * mpp) ** 2, ceiling=0.5
    )
    binned = fine_kde[:, :].reshape(64, 4, 64, 4).mean(axis=(1, 3))
    np.testing.assert_allclose(coarse_kde[:, :], binned, atol=0.01)
    # The speck alone would add 16 / (2π·32²) / 0.5 ≈ 5e-3 at its centre; only the far tail of the blob is left.
    assert binned[50, 5] < 1e-3 and binned[24, 34] > 0.9
