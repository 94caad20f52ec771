"""Stitching: patch values land at their level-0 places, at any downsample, averaged where patches overlap."""

from __future__ import annotations

import logging
import math

import numpy as np
import pytest
import tifffile

from proganomaly.maps import stitching
from proganomaly.maps.slidemaps import MAP_NAMES, KdeParams, write_slide_maps


def _reference(patches, width_l0, height_l0, ds):
    """Independent reference: paint each patch at level 0 (nearest-upsampled), then area-average blocks of ds×ds."""
    total = np.zeros((height_l0, width_l0))
    area = np.zeros((height_l0, width_l0))
    for x, y, size, values in patches:
        s = values.shape[0]
        up = np.repeat(np.repeat(values, size // s, axis=0), size // s, axis=1)
        ys, xs = slice(y, min(y + size, height_l0)), slice(x, min(x + size, width_l0))
        total[ys, xs] += up[: ys.stop - y, : xs.stop - x]
        area[ys, xs] += 1
    h, w = math.ceil(height_l0 / ds), math.ceil(width_l0 / ds)
    pad = ((0, h * ds - height_l0), (0, w * ds - width_l0))
    total = np.pad(total, pad).reshape(h, ds, w, ds).sum(axis=(1, 3))
    area = np.pad(area, pad).reshape(h, ds, w, ds).sum(axis=(1, 3))
    return np.where(area > 0, total / np.where(area > 0, area, 1), 0.0), area


@pytest.mark.parametrize(
    ("ds", "size", "stride", "s"),
    [(1, 8, 8, 8), (1, 8, 5, 8), (4, 16, 12, 8), (3, 10, 7, 5), (16, 64, 48, 16)],
)
def test_patches_land_at_their_level0_place(tmp_path, ds, size, stride, s):
    rng = np.random.default_rng(ds * 100 + stride)
    width_l0, height_l0 = 5 * stride + size // 2, 4 * stride + size // 3  # the last row/column crosses the slide edge
    grid = stitching.MapGrid(width_l0, height_l0, ds, 0.5)
    canvas = stitching.create_canvas(tmp_path / "c", grid, {"v": 1, "rgb": 3})
    patches = []
    for y in range(0, height_l0, stride):
        for x in range(0, width_l0, stride):
            if rng.random() < 0.8:
                values = rng.random((s, s))
                patches.append((x, y, size, values))
                rgb = np.stack([values, 2 * values, -values], axis=-1)
                stitching.add_patch(canvas, x, y, size, size, {"v": values, "rgb": rgb})
    got = stitching.finalize_map(canvas, "v", tmp_path / "v.npy")[:, :]
    got_rgb = stitching.finalize_map(canvas, "rgb", tmp_path / "rgb.npy")[:, :]
    want, area = _reference(patches, width_l0, height_l0, ds)
    assert got.shape == (grid.height, grid.width) == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got_rgb[..., 1], 2 * want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got_rgb[..., 2], -want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(canvas.count[:, :], area, rtol=1e-6)


def test_single_pixel_lands_exactly(tmp_path):
    """A lone hot pixel of an 8-px patch at level-0 (40, 24), downsample 4: map pixel (row 2+1, col 10+1)."""
    grid = stitching.MapGrid(100, 60, 4, 0.25)
    canvas = stitching.create_canvas(tmp_path / "c", grid, {"v": 1})
    patch = np.zeros((8, 8))
    patch[1, 1] = 1.0  # model px (1, 1) covers level-0 rows 24+4..32, cols 40+4..48 (4 level-0 px per model px)
    stitching.add_patch(canvas, 40, 24, 32, 32, {"v": patch})
    got = stitching.finalize_map(canvas, "v", tmp_path / "v.npy")[:, :]
    assert np.argwhere(got > 0).tolist() == [[7, 11]]
    assert got[7, 11] == pytest.approx(1.0)
    assert np.count_nonzero(canvas.count[:, :]) == 8 * 8


def test_overlap_weights_identity_and_edges():
    first, w = stitching.overlap_weights(16, 8, 8, 1, 100)
    assert first == 16
    np.testing.assert_array_equal(w, np.eye(8))
    first, w = stitching.overlap_weights(96, 8, 8, 1, 100)  # crosses the slide edge at 100
    assert first == 96 and w.shape == (4, 8)
    first, w = stitching.overlap_weights(10, 10, 5, 4, 100)  # 2 level-0 px per patch px, map px of 4
    np.testing.assert_allclose(w.sum(axis=0), 2.0)
    np.testing.assert_allclose(w.sum(), 10.0)


def test_disk_array_round_trip_and_uncovered_fill(tmp_path):
    arr = stitching.DiskArray.create(tmp_path / "a.npy", (7, 5, 3), np.float32)
    data = np.arange(7 * 5 * 3, dtype=np.float32).reshape(7, 5, 3)
    arr[2:6] = data[2:6]
    arr.add(0, 1, np.ones((2, 3, 3), np.float32))
    want = np.zeros_like(data)
    want[2:6] = data[2:6]
    want[0:2, 1:4] += 1
    np.testing.assert_array_equal(arr[:, :], want)
    np.testing.assert_array_equal(arr[3, 2:4, 1], want[3, 2:4, 1])
    np.testing.assert_array_equal(np.load(tmp_path / "a.npy"), want)

    grid = stitching.MapGrid(10, 10, 1, 0.5)
    canvas = stitching.create_canvas(tmp_path / "c", grid, {"rgb": 3})
    stitching.add_patch(canvas, 0, 0, 4, 4, {"rgb": np.full((4, 4, 3), 100.4)})
    out = stitching.finalize_map(canvas, "rgb", tmp_path / "rgb.npy", dtype=np.uint8, fill=255)[:, :]
    assert out.dtype == np.uint8
    assert (out[:4, :4] == 100).all() and (out[4:] == 255).all() and (out[:, 4:] == 255).all()


def test_mask_resampling_is_aligned_to_level0(tmp_path):
    mask = np.zeros((10, 10), np.uint8)
    mask[2, 3] = 255  # thumbnail px covers level-0 [24, 32) x [16, 24) at downsample 8
    grid = stitching.MapGrid(80, 80, 2, 0.5)
    out = stitching.resample_mask(mask, 8, grid, tmp_path / "m.npy")[:, :]
    rows, cols = np.nonzero(out)
    assert (rows.min(), rows.max(), cols.min(), cols.max()) == (8, 11, 12, 15)


def test_overview_is_bounded_box_average():
    image = np.arange(45 * 70, dtype=np.float32).reshape(45, 70)
    small = stitching.overview(image, max_px=20)
    f = math.ceil(70 / 20)
    assert small.shape == (math.ceil(45 / f), math.ceil(70 / f))
    assert max(small.shape) <= 20
    assert small[0, 0] == pytest.approx(image[:f, :f].mean())
    assert small[-1, -1] == pytest.approx(image[(small.shape[0] - 1) * f :, (small.shape[1] - 1) * f :].mean())


def _filled_canvas(tmp_path, ds=2, mpp=0.5, with_patches=True):
    grid = stitching.MapGrid(96, 64, ds, mpp)
    channels = {"thumbnail": 3, "reconstruction": 3, "anomaly_map": 1, "mahalanobis_d2": 1, "flags": 1}
    canvas = stitching.create_canvas(tmp_path / "canvas", grid, channels, extra={"patches": 2 if with_patches else 0})
    if with_patches:
        flags = np.zeros((16, 16))
        flags[4:12, 4:12] = 1
        for x in (0, 32):
            maps = {
                "thumbnail": np.full((16, 16, 3), 200.0),
                "reconstruction": np.full((16, 16, 3), 190.0),
                "anomaly_map": flags * 0.5,
                "mahalanobis_d2": flags * 30.0,
                "flags": flags,
            }
            stitching.add_patch(canvas, x, 16, 32, 32, maps)
    return canvas


def test_maps_round_trip_through_tifffile(tmp_path):
    _filled_canvas(tmp_path)
    tissue = np.zeros((8, 12), np.uint8)
    tissue[2:6, :] = 255  # thumbnail at downsample 8
    kde = KdeParams(method="slide", bandwidth_um=4.0, truncate=4.0, min_object_um2=1.0, ceiling=0.5)
    meta = write_slide_maps(
        tmp_path / "canvas", tmp_path / "maps", tmp_path / "overview", tissue_mask=tissue, tissue_downsample=8,
        kde=kde, tile_px=16, overview_max_px=20,
    )  # fmt: skip
    assert (meta["width"], meta["height"], meta["downsample"], meta["mpp"]) == (48, 32, 2, 1.0)
    for name in MAP_NAMES:
        with tifffile.TiffFile(tmp_path / "maps" / f"{name}.tif") as tif:
            page = tif.pages[0]
            assert page.is_tiled and page.tilewidth == 16
            assert page.tags["ResolutionUnit"].value == tifffile.RESUNIT.CENTIMETER
            xres = page.tags["XResolution"].value
            assert xres[0] / xres[1] == pytest.approx(1e4 / meta["mpp"])
            levels = tif.series[0].levels
            assert len(levels) >= 2 and levels[1].shape[:2] == (16, 24)
            image = levels[0].asarray()
        assert image.shape[:2] == (32, 48)
        png = np.asarray(__import__("PIL.Image", fromlist=["Image"]).open(tmp_path / "overview" / f"{name}.png"))
        assert max(png.shape[:2]) <= 20
        if name in ("anomaly_map", "mahalanobis_d2", "flags", "kde"):
            assert image.dtype == np.float32
        else:
            assert image.dtype == np.uint8
    read = {n: tifffile.imread(tmp_path / "maps" / f"{n}.tif") for n in ("flags", "mahalanobis_d2", "kde", "tissue")}
    # Flags of patch 1 cover level-0 x 8..24, y 24..40 → map cols 4..12, rows 12..20; not inverted, not flipped.
    want = np.zeros((32, 48), np.float32)
    want[12:20, 4:12] = 1
    want[12:20, 20:28] = 1
    np.testing.assert_array_equal(read["flags"], want)
    np.testing.assert_array_equal(read["mahalanobis_d2"], want * 30)
    assert read["kde"].max() <= 1 and read["kde"][16, 8] > read["kde"][16, 40] >= 0
    assert (read["tissue"][8:24] == 255).all() and (read["tissue"][:8] == 0).all()
    assert meta["kde"]["sigma_map_px"] == pytest.approx(4.0)


def test_zero_patch_slide_gives_empty_maps_and_warning(tmp_path, caplog):
    _filled_canvas(tmp_path, with_patches=False)
    kde = KdeParams(method="slide", bandwidth_um=4.0, truncate=4.0, min_object_um2=1.0, ceiling=0.5)
    with caplog.at_level(logging.WARNING, logger="proganomaly"):
        meta = write_slide_maps(
            tmp_path / "canvas", tmp_path / "maps", tmp_path / "ov", tissue_mask=None, tissue_downsample=8, kde=kde,
            tile_px=16,
        )  # fmt: skip
    assert "no tissue patches" in caplog.text
    assert meta["patches"] == 0
    assert not tifffile.imread(tmp_path / "maps" / "kde.tif").any()
    assert not tifffile.imread(tmp_path / "maps" / "flags.tif").any()
    assert (tifffile.imread(tmp_path / "maps" / "thumbnail.tif") == 255).all()
    assert not (tmp_path / "maps" / ".work").exists()


def test_patch_kde_method_stitches_the_per_patch_kde(tmp_path):
    canvas = _filled_canvas(tmp_path)
    # A second canvas set with the per-patch KDE map, as infer_slide writes it for stitching.kde.method = patch.
    grid = canvas.grid
    channels = {**canvas.channels, "kde_patch": 1}
    patched = stitching.create_canvas(tmp_path / "canvas_p", grid, channels, extra={"patches": 1})
    ramp = np.linspace(0, 1, 16 * 16, dtype=np.float32).reshape(16, 16)
    maps = {name: np.zeros((16, 16, c) if c > 1 else (16, 16), np.float32) for name, c in channels.items()}
    maps["kde_patch"] = ramp
    stitching.add_patch(patched, 32, 0, 32, 32, maps)
    kde = KdeParams(method="patch", bandwidth_um=4.0, truncate=4.0, min_object_um2=1.0, ceiling=0.5)
    meta = write_slide_maps(
        tmp_path / "canvas_p", tmp_path / "maps", tmp_path / "ov", tissue_mask=None, tissue_downsample=8, kde=kde,
        tile_px=16,
    )  # fmt: skip
    got = tifffile.imread(tmp_path / "maps" / "kde.tif")
    np.testing.assert_allclose(got[0:16, 16:32], ramp, atol=1e-6)  # ds 2: 16 model px over 32 level-0 px → 16 map px
    assert got[16:].max() == 0 and meta["kde"]["method"] == "patch"
    with pytest.raises(ValueError, match="method=patch"):
        write_slide_maps(
            tmp_path / "canvas", tmp_path / "m2", tmp_path / "o2", tissue_mask=None, tissue_downsample=8, kde=kde
        )


def test_border_pixels_get_no_weight_and_neighbours_fill_them(tmp_path):
    """Two 8-px patches, stride 4 (= 8 − 2·2): each keeps only its 4-px interior; together they tile [2, 14)."""
    grid = stitching.MapGrid(16, 8, 1, 0.5)
    canvas = stitching.create_canvas(tmp_path / "c", grid, {"v": 1})
    a, b = np.full((8, 8), 1.0, np.float32), np.full((8, 8), 3.0, np.float32)
    a[:, :2] = b[:, :2] = 100.0  # border values must never reach the map
    stitching.add_patches(canvas, [(2, 0, 8, 8), (6, 0, 8, 8)], {"v": np.stack([a, b])}, border_px=2)
    count = canvas.count[:, :]
    sums = canvas.sums["v"][:, :]
    # Rows: only the interior rows 2..5 are covered; columns: patch a covers 4..7, patch b covers 8..11.
    expected_count = np.zeros((8, 16))
    expected_count[2:6, 4:12] = 1.0
    np.testing.assert_array_equal(count, expected_count)
    np.testing.assert_array_equal(sums[2:6, 4:8], 1.0)
    np.testing.assert_array_equal(sums[2:6, 8:12], 3.0)
    assert sums.max() == 3.0


def test_map_downsample_from_the_target_map_mpp():
    assert stitching.map_downsample(0.5, 0.499) == 1  # the demo keeps full-resolution maps
    assert stitching.map_downsample(4.0, 0.25) == 16
    assert stitching.map_downsample(4.0, 0.2527) == 16
    assert stitching.map_downsample(4.0, 8.0) == 1  # never finer than the slide


def test_free_disk_check_names_the_slide_the_bytes_and_the_fix(tmp_path, monkeypatch):
    import shutil
    from collections import namedtuple

    grid = stitching.MapGrid(100000, 100000, 1, 0.25)
    channels = {"thumbnail": 3, "reconstruction": 3, "anomaly_map": 1, "mahalanobis_d2": 1, "flags": 1}
    assert stitching.canvas_bytes(grid, channels) == 4 * 10**10 * 10  # the 400 GB of the issue
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(10**12, 0, 50 * 10**9))
    with pytest.raises(stitching.CanvasSpaceError, match=r"slide big.*400\.00 GB.*50\.00 GB free.*stitching\.map_mpp"):
        stitching.check_free_space(tmp_path / "slides" / "big", grid, channels, "big")
    small = stitching.MapGrid(100000, 100000, 16, 0.25)
    assert stitching.check_free_space(tmp_path / "slides" / "big", small, channels, "big") < 2 * 10**9
