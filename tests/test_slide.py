"""proganomaly.data.slide: lazy regions, thumbnails and mpp, against full decodes of synthetic pyramids."""

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import tifffile
from skimage.transform import downscale_local_mean

from proganomaly.data.slide import SlideError, area_resize, area_weights, open_slide, read_patch


def smooth_rgb(h: int, w: int, seed: int = 0) -> np.ndarray:
    """A smooth random RGB image (so JPEG and area averaging have realistic content) with some fine texture."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    chans = [127 + 100 * np.sin(xx / (7 + 3 * c) + yy / (11 + c) + c) for c in range(3)]
    img = np.stack(chans, axis=-1) + rng.normal(0, 10, (h, w, 3))
    return np.clip(img, 0, 255).astype(np.uint8)


def write_pyramid(path, image, *, tile=(32, 32), factors=(2, 4), compression="zlib", mpp=0.5, **kwargs):
    """Level 0 plus SubIFD levels subsampled by ``factors``; returns the list of level images as written."""
    levels = [image] + [image[::f, ::f] for f in factors]
    res = {"resolution": (1e4 / mpp, 1e4 / mpp), "resolutionunit": "CENTIMETER"} if mpp else {}
    with tifffile.TiffWriter(path) as tw:
        tw.write(image, tile=tile, compression=compression, subifds=len(factors), photometric="rgb", **res, **kwargs)
        for lv in levels[1:]:
            tw.write(lv, tile=tile, compression=compression, subfiletype=1, photometric="rgb", **res)
    return levels


def half_up(x):
    """Round half up. Exact for means of n integers (they are either on a tie or ≥ 1/n away from one); the 1e-6
    matches the implementation's allowance for float error in its weights."""
    return np.floor(np.asarray(x) + 0.5 + 1e-6)


def nan_block_mean(img: np.ndarray, k: int) -> np.ndarray:
    """Mean over k×k blocks, the last (partial) blocks averaging only the pixels that exist."""
    h, w = img.shape[:2]
    rows, cols = np.arange(0, h, k), np.arange(0, w, k)
    sums = np.add.reduceat(np.add.reduceat(img.astype(np.int64), rows, axis=0), cols, axis=1)
    counts = np.outer(np.diff(np.append(rows, h)), np.diff(np.append(cols, w)))
    return sums / counts[..., None]


@pytest.fixture(scope="module")
def pyramid(tmp_path_factory):
    path = tmp_path_factory.mktemp("slide") / "pyr.tif"
    levels = write_pyramid(path, smooth_rgb(203, 157))
    return path, levels


def test_levels_dimensions_and_mpp(pyramid):
    path, levels = pyramid
    with open_slide(path) as slide:
        assert slide.dimensions == (157, 203)
        assert [(lv.width, lv.height) for lv in slide.levels] == [(im.shape[1], im.shape[0]) for im in levels]
        assert slide.levels[1].downsample == pytest.approx((157 / 79, 203 / 102))
        assert slide.mpp == pytest.approx(0.5)
        assert "XResolution" in slide.mpp_source


@pytest.mark.parametrize(
    "region",
    [(0, 0, 157, 203), (5, 7, 40, 33), (31, 31, 2, 2), (32, 64, 32, 32), (140, 190, 17, 13), (100, 3, 1, 150)],
)
def test_read_region_equals_full_decode(pyramid, region):
    path, levels = pyramid
    x, y, w, h = region
    with open_slide(path) as slide:
        np.testing.assert_array_equal(slide.read_region(x, y, w, h), levels[0][y : y + h, x : x + w])


def test_read_region_outside_is_white(pyramid):
    path, levels = pyramid
    with open_slide(path) as slide:
        region = slide.read_region(-5, 190, 20, 30)
    assert region.shape == (30, 20, 3)
    np.testing.assert_array_equal(region[:13, 5:], levels[0][190:, :15])
    assert (region[13:] == 255).all() and (region[:, :5] == 255).all()


def test_read_level_region_matches_that_level(pyramid):
    path, levels = pyramid
    with open_slide(path) as slide:
        np.testing.assert_array_equal(slide.read_level_region(2, 3, 4, 30, 40), levels[2][4:44, 3:33])


def test_cache_does_not_change_pixels_and_stays_bounded(pyramid):
    path, levels = pyramid
    with open_slide(path, cache_bytes=3 * 32 * 32 * 3) as slide:
        for x, y in [(0, 0), (20, 20), (0, 0), (100, 150), (20, 20)]:
            np.testing.assert_array_equal(slide.read_region(x, y, 40, 40), levels[0][y : y + 40, x : x + 40])
            assert slide._cache_bytes <= 3 * 32 * 32 * 3


def test_jpeg_tiles_equal_tifffile_decode(tmp_path):
    path = tmp_path / "jpeg.tif"
    write_pyramid(path, smooth_rgb(300, 260), tile=(64, 64), compression="jpeg", factors=(2,))
    full = tifffile.imread(path)
    with open_slide(path) as slide:
        np.testing.assert_array_equal(slide.read_region(70, 50, 130, 200), full[50:250, 70:200])


def test_stripped_grayscale_and_rgba_become_rgb(tmp_path):
    rgb = smooth_rgb(50, 40)
    gray_path, rgba_path = tmp_path / "gray.tif", tmp_path / "rgba.tif"
    res = {"resolution": (1e4 / 0.25, 1e4 / 0.25), "resolutionunit": "CENTIMETER"}
    tifffile.imwrite(gray_path, rgb[..., 0], rowsperstrip=7, compression="zlib", **res)
    alpha = np.tile(np.linspace(0, 255, 40).astype(np.uint8), (50, 1))
    tifffile.imwrite(rgba_path, np.dstack([rgb, alpha]), photometric="rgb", extrasamples=["unassalpha"], **res)
    with open_slide(gray_path) as slide:
        np.testing.assert_array_equal(slide.read_region(3, 10, 20, 30), np.repeat(rgb[10:40, 3:23, :1], 3, axis=2))
    with open_slide(rgba_path) as slide:
        a = alpha[..., None] / 255.0
        expected = half_up(rgb * a + 255 * (1 - a))
        np.testing.assert_array_equal(slide.read_region(0, 0, 40, 50), expected)


def test_area_resize_integer_factor_is_block_mean():
    img = smooth_rgb(48, 36, seed=3)
    expected = half_up(downscale_local_mean(img.astype(float), (4, 4, 1)))
    np.testing.assert_array_equal(area_resize(img, 12, 9), expected)


def test_area_resize_fractional_factor_is_exact_area_mean():
    # Scale 1.5: replicate each pixel 2× and average blocks of 3, which is the same area average.
    img = smooth_rgb(30, 24, seed=4)
    expected = half_up(downscale_local_mean(np.repeat(np.repeat(img, 2, 0), 2, 1).astype(float), (3, 3, 1)))
    np.testing.assert_array_equal(area_resize(img, 20, 16), expected)


def test_area_weights_rows_sum_to_one_and_clip_at_the_edge():
    w = area_weights(10, 4, 3.0).toarray()
    np.testing.assert_allclose(w.sum(axis=1), 1.0)
    np.testing.assert_allclose(w[3], [0] * 9 + [1])  # the last output only sees the one remaining input
    np.testing.assert_allclose(w[1], [0, 0, 0, 1 / 3, 1 / 3, 1 / 3, 0, 0, 0, 0])


def test_thumbnail_uses_the_best_level(tmp_path):
    path = tmp_path / "pyr.tif"
    levels = write_pyramid(path, smooth_rgb(256, 192, seed=1), factors=(2, 4))
    with open_slide(path) as slide:
        assert slide.best_level(4) == 2 and slide.best_level(3.9) == 1 and slide.best_level(1.5) == 0
        np.testing.assert_array_equal(slide.thumbnail(4), levels[2])
        np.testing.assert_array_equal(slide.thumbnail(8), half_up(nan_block_mean(levels[2], 2)))
        # ds 3 comes from level 1 (ds 2) at scale 1.5, including a partial last column and row.
        thumb = slide.thumbnail(3)
        assert thumb.shape == (86, 64, 3)
        expected = half_up(nan_block_mean(np.repeat(np.repeat(levels[1], 2, 0), 2, 1), 3))
        np.testing.assert_array_equal(thumb, expected)
        # Reading in bands of one tile row gives the same result as one band.
        np.testing.assert_array_equal(slide.thumbnail(3, band_bytes=1), thumb)


def test_read_patch_resamples_only_when_needed(pyramid):
    path, levels = pyramid
    with open_slide(path) as slide:
        np.testing.assert_array_equal(read_patch(slide, 10, 20, 32, 32), levels[0][20:52, 10:42])
        expected = half_up(downscale_local_mean(levels[0][20:84, 10:74].astype(float), (4, 4, 1)))
        np.testing.assert_array_equal(read_patch(slide, 10, 20, 64, 16), expected)


def test_mpp_sources(tmp_path):
    img = smooth_rgb(40, 40)
    inch = tmp_path / "inch.tif"
    tifffile.imwrite(inch, img, photometric="rgb", resolution=(25400 / 0.25, 25400 / 0.25), resolutionunit="INCH")
    with open_slide(inch) as slide:
        assert slide.mpp == pytest.approx(0.25) and "inch" in slide.mpp_source
    with open_slide(inch, mpp=0.3) as slide:
        assert slide.mpp == 0.3 and slide.mpp_source == "slide sheet"
    aperio = tmp_path / "aperio.tif"
    tifffile.imwrite(
        aperio, img, photometric="rgb", description="Aperio Image Library v12\n40x40 |AppMag = 40|MPP = 0.2521"
    )
    with open_slide(aperio) as slide:
        assert slide.mpp == pytest.approx(0.2521) and "Aperio" in slide.mpp_source


def test_placeholder_dpi_is_not_taken_as_mpp(tmp_path):
    path = tmp_path / "dpi72.tif"
    tifffile.imwrite(path, smooth_rgb(20, 20), photometric="rgb", resolution=(72, 72), resolutionunit="INCH")
    with pytest.raises(SlideError, match=r"dpi72\.tif.*implausible.*mpp"):
        open_slide(path)


def test_demo_svs_reads_like_tifffile(demo_svs):
    full = tifffile.imread(demo_svs)
    with open_slide(demo_svs) as slide:
        assert slide.dimensions == (2220, 2967)
        assert slide.mpp == pytest.approx(0.499) and "Aperio" in slide.mpp_source
        np.testing.assert_array_equal(slide.read_region(1000, 1500, 300, 200), full[1500:1700, 1000:1300])
        thumb = slide.thumbnail(16)
    assert thumb.shape == (186, 139, 3)
    # An independent reference: the full decode averaged over 16 × 16 blocks (partial blocks at the edges).
    np.testing.assert_array_equal(thumb, half_up(nan_block_mean(full, 16)))


def block_mean_pyramid(path, image, factors=(2, 4), tile=(32, 32)):
    """Like write_pyramid, but each level is level 0's k×k block mean (as scanners downscale), not a subsample."""
    levels = [image] + [half_up(nan_block_mean(image, k)).astype(np.uint8) for k in factors]
    res = {"resolution": (1e4 / 0.25, 1e4 / 0.25), "resolutionunit": "CENTIMETER"}
    with tifffile.TiffWriter(path) as tw:
        tw.write(image, tile=tile, compression="zlib", subifds=len(factors), photometric="rgb", **res)
        for lv in levels[1:]:
            tw.write(lv, tile=tile, compression="zlib", subfiletype=1, photometric="rgb", **res)
    return levels


def test_patch_level_is_the_coarsest_aligned_level_not_finer_than_the_patch(tmp_path):
    block_mean_pyramid(tmp_path / "p.tif", smooth_rgb(250, 203))  # odd sizes: levels are ceil(size / k)
    with open_slide(tmp_path / "p.tif") as slide:
        assert [slide.whole_downsample(i) for i in range(3)] == [1, 2, 4]
        assert slide.patch_level(0, 0, 64, 16) == (2, 4)
        assert slide.patch_level(0, 0, 64, 32) == (1, 2)  # level 2 would be coarser than the patch
        assert slide.patch_level(2, 64, 64, 16) == (1, 2)  # x = 2 is not on level 2's grid
        assert slide.patch_level(1, 0, 64, 16) == (0, 1)
        assert slide.patch_level(0, 0, 64, 64) == (0, 1)


def test_read_patch_from_a_coarser_level_agrees_with_the_level0_area_mean(tmp_path):
    levels = block_mean_pyramid(tmp_path / "p.tif", smooth_rgb(256, 192))
    with open_slide(tmp_path / "p.tif") as slide:
        coarse = read_patch(slide, 32, 64, 64, 16, from_pyramid=True)
        np.testing.assert_array_equal(coarse, levels[2][16:32, 8:24])  # read from level 2, no resampling left
        fine = read_patch(slide, 32, 64, 64, 16)
        assert np.abs(coarse.astype(int) - fine.astype(int)).max() <= 1  # rounding of the stored level only
        half = read_patch(slide, 32, 64, 64, 8, from_pyramid=True)  # level 2, then a 2× area resize
        assert np.abs(half.astype(int) - read_patch(slide, 32, 64, 64, 8).astype(int)).max() <= 1
        # When level 0 is the nearest, the result is the level-0 read itself.
        np.testing.assert_array_equal(read_patch(slide, 3, 5, 32, 32, from_pyramid=True), levels[0][5:37, 3:35])


def test_concurrent_uncached_reads_equal_sequential_reads(tmp_path):
    """The inference read pool decodes segments from one file in several threads: seek + read must not interleave
    (tifffile's own file lock is off by default), or a thread decodes another segment's bytes."""
    path = tmp_path / "big.tif"
    image = smooth_rgb(1024, 1024, seed=3)
    write_pyramid(path, image, tile=(64, 64), compression="jpeg", factors=(2,))
    rng = np.random.default_rng(1)
    boxes = [(int(x), int(y)) for x, y in rng.integers(0, 1024 - 96, size=(300, 2))]
    with open_slide(path, cache_bytes=0) as slide:
        expected = [slide.read_region(x, y, 96, 96) for x, y in boxes]
    with open_slide(path, cache_bytes=0) as slide, ThreadPoolExecutor(4) as pool:
        got = list(pool.map(lambda b: slide.read_region(b[0], b[1], 96, 96), boxes))
    assert all(np.array_equal(a, b) for a, b in zip(expected, got, strict=True))
