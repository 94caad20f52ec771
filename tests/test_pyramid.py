"""The pyramidal TIFF writer: round trips through tifffile, tags, tiling, bounded memory, errors."""

from __future__ import annotations

import tracemalloc
import warnings

import numpy as np
import pytest
import tifffile
from skimage.transform import downscale_local_mean

from proganomaly.maps.pyramid import PyramidError, count_tiles, downscale2, level_shapes, write_pyramid


def reference_halve(image: np.ndarray) -> np.ndarray:
    """Independent 2× area mean: odd edges repeat their last row/column; uint8 rounds half up; floats skip NaN."""
    img = image if image.ndim == 3 else image[..., None]
    h, w = img.shape[:2]
    padded = np.pad(img, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge").astype(np.float64)
    quads = np.stack([padded[0::2, 0::2], padded[1::2, 0::2], padded[0::2, 1::2], padded[1::2, 1::2]])
    if image.dtype == np.uint8:
        out = np.floor(quads.mean(axis=0) + 0.5).astype(np.uint8)
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN cells: "mean of empty slice" -> NaN
            out = np.nanmean(quads, axis=0).astype(image.dtype)
    return out if image.ndim == 3 else out[..., 0]


def read_levels(path):
    with tifffile.TiffFile(path) as tif:
        series = tif.series[0]
        return [level.asarray() for level in series.levels], [level.keyframe for level in series.levels]


def smooth_rgb(h, w, seed=0):
    """A smooth, tissue-like test image (JPEG-friendly), with some noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([128 + 90 * np.sin(x / 37.0), 128 + 80 * np.cos(y / 23.0), 128 + 60 * np.sin((x + y) / 51.0)], -1)
    return np.clip(base + rng.normal(0, 3, base.shape), 0, 255).astype(np.uint8)


def test_level_shapes_hand_computed():
    assert level_shapes(1000, 1300, 256) == [(1000, 1300), (500, 650), (250, 325), (125, 163)]
    assert level_shapes(200, 100, 256) == [(200, 100)]
    assert level_shapes(257, 3, 256) == [(257, 3), (129, 2)]
    assert level_shapes(1000, 1300, 256, levels=2) == [(1000, 1300), (500, 650)]
    assert level_shapes(3, 3, 16, levels=9) == [(3, 3), (2, 2), (1, 1)]  # stops at one pixel
    assert count_tiles([(1000, 1300), (500, 650)], 256) == 4 * 6 + 2 * 3


def test_downscale2_matches_reference_and_skimage():
    rng = np.random.default_rng(1)
    even = rng.integers(0, 256, (64, 48, 3), dtype=np.uint8)
    np.testing.assert_array_equal(downscale2(even), reference_halve(even))
    # skimage's local mean (no rounding) on even sizes: within half a grey level.
    assert np.abs(downscale2(even) - downscale_local_mean(even, (2, 2, 1))).max() <= 0.5
    odd = rng.integers(0, 256, (33, 17, 1), dtype=np.uint8)
    np.testing.assert_array_equal(downscale2(odd), reference_halve(odd))
    # The lone last column of an odd width averages only itself and its row neighbour.
    assert downscale2(odd)[0, -1, 0] == int(np.floor((int(odd[0, -1, 0]) + int(odd[1, -1, 0])) / 2 + 0.5))


def test_lossless_rgb_round_trip_levels_and_tags(tmp_path):
    rng = np.random.default_rng(2)
    image = rng.integers(0, 256, (601, 777, 3), dtype=np.uint8)
    path = tmp_path / "rgb.tif"
    shapes = write_pyramid(path, image, 0.25, tile=128, compression="zstd")
    assert shapes == [(601, 777), (301, 389), (151, 195), (76, 98)]
    levels, pages = read_levels(path)
    assert [lv.shape[:2] for lv in levels] == shapes
    np.testing.assert_array_equal(levels[0], image)
    for k in range(1, len(levels)):
        np.testing.assert_array_equal(levels[k], reference_halve(levels[k - 1]))
    for k, page in enumerate(pages):
        assert page.tilewidth == page.tilelength == 128
        assert page.photometric == tifffile.PHOTOMETRIC.RGB
        assert page.resolutionunit == tifffile.RESUNIT.CENTIMETER
        assert page.resolution == pytest.approx((1e4 / (0.25 * 2**k),) * 2)
        assert page.subfiletype == (1 if k else 0)
    with tifffile.TiffFile(path) as tif:
        assert len(tif.pages) == 1  # reduced levels are SubIFDs of level 0, not top-level pages
        assert len(tif.pages[0].subifds) == 3


def test_float32_map_is_stored_as_float32_with_nan(tmp_path):
    rng = np.random.default_rng(3)
    image = rng.random((300, 211), dtype=np.float32) * 50
    image[:20, :30] = np.nan  # "no data" corner, all-NaN cells stay NaN
    image[101, 5] = np.nan  # a lone NaN is averaged over
    path = tmp_path / "map.tif"
    write_pyramid(path, image, 8.0, tile=64, compression="deflate")
    levels, pages = read_levels(path)
    assert all(lv.dtype == np.float32 for lv in levels)
    assert pages[0].sampleformat == tifffile.SAMPLEFORMAT.IEEEFP and pages[0].bitspersample == 32
    assert pages[0].photometric == tifffile.PHOTOMETRIC.MINISBLACK
    np.testing.assert_array_equal(levels[0], image)  # NaN == NaN for assert_array_equal
    for k in range(1, len(levels)):
        np.testing.assert_allclose(levels[k], reference_halve(levels[k - 1]), rtol=1e-6, equal_nan=True)
    assert np.isnan(levels[1][:10, :15]).all() and not np.isnan(levels[1][50, 2])
    assert max(levels[-1].shape) <= 64


def _covered_children_mean(level: np.ndarray, nodata=None) -> np.ndarray:
    """Loop reference: each parent is the mean of its existing, covered children (not NaN / not nodata); no data if
    none. Integers round half up."""
    h, w = level.shape
    out = np.zeros(((h + 1) // 2, (w + 1) // 2))
    for r in range(out.shape[0]):
        for c in range(out.shape[1]):
            kids = level[2 * r : 2 * r + 2, 2 * c : 2 * c + 2].astype(np.float64).ravel()
            kids = kids[~np.isnan(kids)] if nodata is None else kids[kids != nodata]
            if nodata is None:
                out[r, c] = kids.mean() if kids.size else np.nan
            else:
                out[r, c] = np.floor(kids.mean() + 0.5) if kids.size else nodata
    return out


def test_pyramid_levels_are_nan_means_of_covered_children(tmp_path):
    rng = np.random.default_rng(7)
    image = rng.random((157, 203)).astype(np.float32)
    image[rng.random(image.shape) < 0.4] = np.nan  # scattered unscored pixels
    image[:, 120:] = np.nan  # an unscored region
    write_pyramid(tmp_path / "f.tif", image, 2.0, tile=32, compression="deflate")
    levels, _ = read_levels(tmp_path / "f.tif")
    for k in range(1, len(levels)):
        np.testing.assert_allclose(levels[k], _covered_children_mean(levels[k - 1]), rtol=1e-6, equal_nan=True)
    assert np.isnan(levels[1][:, 60:]).all() and not np.isnan(levels[2][:-1, :28]).any()


def test_uint16_nodata_is_left_out_of_reduced_levels(tmp_path):
    rng = np.random.default_rng(8)
    counts = rng.integers(1, 65536, (131, 77), dtype=np.uint16)
    counts[rng.random(counts.shape) < 0.4] = 0
    counts[:40, :40] = 0
    block = counts[..., None]
    np.testing.assert_array_equal(downscale2(block, nodata=0)[..., 0], _covered_children_mean(counts, nodata=0))
    write_pyramid(tmp_path / "u.tif", counts, 2.0, tile=32, compression="deflate", nodata=0)
    levels, _ = read_levels(tmp_path / "u.tif")
    np.testing.assert_array_equal(levels[0], counts)
    for k in range(1, len(levels)):
        np.testing.assert_array_equal(levels[k], _covered_children_mean(levels[k - 1], nodata=0))
    assert (levels[1][:20, :20] == 0).all()


def test_uint8_single_channel_and_fixed_level_count(tmp_path):
    image = (np.arange(500 * 300) % 251).astype(np.uint8).reshape(500, 300)
    path = tmp_path / "gray.tif"
    assert len(write_pyramid(path, image, 2.0, tile=256, compression="deflate", levels=2)) == 2
    levels, pages = read_levels(path)
    assert len(levels) == 2 and levels[0].shape == (500, 300)
    assert pages[0].photometric == tifffile.PHOTOMETRIC.MINISBLACK and pages[0].samplesperpixel == 1
    np.testing.assert_array_equal(levels[0], image)
    np.testing.assert_array_equal(levels[1], reference_halve(image))


def test_jpeg_rgb_is_ycbcr_with_small_error(tmp_path):
    image = smooth_rgb(700, 530)
    path = tmp_path / "jpeg.tif"
    write_pyramid(path, image, 0.5, tile=256, compression="jpeg", quality=90)
    levels, pages = read_levels(path)
    assert pages[0].compression == tifffile.COMPRESSION.JPEG
    assert pages[0].photometric == tifffile.PHOTOMETRIC.YCBCR
    assert np.abs(levels[0].astype(int) - image).mean() < 3.0
    # The partial edge tiles are padded by repetition: no dark seam along the right and bottom edges.
    assert np.abs(levels[0][-4:].astype(int) - image[-4:]).mean() < 4.0
    assert np.abs(levels[1].astype(int) - reference_halve(image)).mean() < 3.0
    assert pages[0].tags["YCbCrSubSampling"].value == (2, 2)
    write_pyramid(path, image, 0.5, tile=256, compression="jpeg", quality=90, subsampling=(1, 1))
    with tifffile.TiffFile(path) as tif:
        assert tif.pages[0].tags["YCbCrSubSampling"].value == (1, 1)
        assert np.abs(tif.pages[0].asarray().astype(int) - image).mean() < 3.0


def _memmap_image(path, h, w):
    src = np.lib.format.open_memmap(path, "w+", np.uint8, (h, w, 3))
    for r in range(0, h, 512):
        src[r : r + 512] = smooth_rgb(min(512, h - r), w, seed=r)
    src.flush()
    del src
    return np.load(path, mmap_mode="r")


def _traced_peak(*args, **kwargs) -> int:
    tracemalloc.start()
    try:
        write_pyramid(*args, **kwargs)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_memory_is_bounded_for_a_memmap(tmp_path):
    tile = 256
    small = _memmap_image(tmp_path / "small.npy", 2048, 1024)
    big = _memmap_image(tmp_path / "big.npy", 4096, 3072)  # 6× the pixels
    options = {"tile": tile, "compression": "jpeg"}
    peak_small = _traced_peak(tmp_path / "small.tif", small, 0.5, maxworkers=1, **options)
    peak_big = _traced_peak(tmp_path / "big.tif", big, 0.5, maxworkers=1, **options)
    # Peak memory does not grow with the image: a few tiles' worth, whatever its size.
    assert peak_big < 1.1 * peak_small, f"peak {peak_small} B for 2048×1024 but {peak_big} B for 4096×3072"
    # Parallel encoding holds a few tiles per thread, still independent of the image.
    peak_threads = _traced_peak(tmp_path / "big.tif", big, 0.5, maxworkers=2, **options)
    assert max(peak_big, peak_threads) < 24 * tile * tile * 3  # 4.7 MB, an eighth of the 36 MB image
    with tifffile.TiffFile(tmp_path / "big.tif") as tif:
        assert [lv.shape[:2] for lv in tif.series[0].levels] == level_shapes(4096, 3072, tile)
    assert not list(tmp_path.glob(".pyramid-*")), "temporary level files were left behind"


class TileSource:
    """An array-like that makes pixels on demand and records the windows asked for."""

    def __init__(self, h, w):
        self.shape, self.dtype, self.requests = (h, w, 3), np.dtype(np.uint8), []

    def __getitem__(self, key):
        rows, cols = key
        r0, r1, _ = rows.indices(self.shape[0])
        c0, c1, _ = cols.indices(self.shape[1])
        self.requests.append((r1 - r0) * (c1 - c0))
        y, x = np.mgrid[r0:r1, c0:c1]
        return np.stack([(x + y) % 256, (3 * x) % 256, (5 * y) % 256], -1).astype(np.uint8)


def test_array_like_is_read_tile_by_tile(tmp_path):
    source, calls = TileSource(300, 500), []
    shapes = write_pyramid(tmp_path / "lazy.tif", source, 1.0, tile=128, compression="deflate", progress=calls.append)
    assert shapes == [(300, 500), (150, 250), (75, 125)]
    assert sum(calls) == count_tiles(shapes, 128) == 3 * 4 + 2 * 2 + 1
    assert max(source.requests) <= 128 * 128
    assert sum(source.requests) == 300 * 500  # every pixel read exactly once
    levels, _ = read_levels(tmp_path / "lazy.tif")
    np.testing.assert_array_equal(levels[0], TileSource(300, 500)[0:300, 0:500])


def test_errors_name_the_fix_and_leave_nothing_behind(tmp_path):
    path = tmp_path / "bad.tif"
    with pytest.raises(PyramidError, match="JPEG needs uint8"):
        write_pyramid(path, np.zeros((32, 32), np.float32), 1.0, compression="jpeg")
    with pytest.raises(PyramidError, match="astype"):
        write_pyramid(path, np.zeros((32, 32)), 1.0, compression="zstd")
    with pytest.raises(PyramidError, match="unsupported image"):
        write_pyramid(path, np.zeros((32, 32, 4), np.uint8), 1.0)
    with pytest.raises(PyramidError, match="mpp must be a positive"):
        write_pyramid(path, np.zeros((32, 32, 3), np.uint8), 0)
    with pytest.raises(PyramidError, match="multiple of 16"):
        write_pyramid(path, np.zeros((32, 32, 3), np.uint8), 1.0, tile=100)
    with pytest.raises(PyramidError, match="compression='lzma'"):
        write_pyramid(path, np.zeros((32, 32, 3), np.uint8), 1.0, compression="lzma")

    class Broken(TileSource):
        def __getitem__(self, key):
            if len(self.requests) == 3:
                raise OSError("disk went away")
            return super().__getitem__(key)

    with pytest.raises(OSError, match="disk went away"):
        write_pyramid(path, Broken(300, 300), 1.0, tile=128, compression="zstd")
    assert sorted(p.name for p in tmp_path.iterdir()) == [], "a failed write must leave no file behind"
