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
    return np.where(area > 0, total / np.where(area > 0, area, 1), np.nan), area


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


def test_overview_box_mean_skips_nan():
    image = np.full((6, 6), np.nan, np.float32)
    image[0, 0], image[1, 1] = 1.0, 3.0  # box (0, 0): two scored pixels of four
    image[4, 2] = 5.0  # box (1, 0)
    small = stitching.overview(image, max_px=2)
    np.testing.assert_array_equal(small, [[2.0, np.nan], [5.0, np.nan]])


def test_scored_tissue_counts_unscored_tissue(tmp_path):
    grid = stitching.MapGrid(8, 4, 1, 0.5)
    canvas = stitching.create_canvas(tmp_path / "c", grid, {"v": 1})
    stitching.add_patches(canvas, [(0, 0, 6, 4)], {"v": np.ones((1, 6, 6))}, border_px=1)
    tissue = np.zeros((4, 8), np.uint8)
    tissue[:, :7] = 255
    w, stats = stitching.scored_tissue(canvas.count, tissue, tmp_path / "w.npy")
    want = np.zeros((4, 8), np.float32)
    want[1:3, 1:5] = 1  # interior of the 6×4 patch (its border px dropped); height 4 → 6 model rows over 4 px
    covered = canvas.count[:, :] > 0
    np.testing.assert_array_equal(w[:, :], (covered & (tissue > 0)).astype(np.float32))
    assert stats["tissue_pixels"] == 28
    assert stats["unscored_tissue_pixels"] == 28 - int(w[:, :].sum())
    assert stats["unscored_tissue_fraction"] == pytest.approx(stats["unscored_tissue_pixels"] / 28)


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
    # The two patches cover level-0 x 0..64, y 16..48 → map cols 0..32, rows 8..24; elsewhere nothing was scored.
    want = np.full((32, 48), np.nan, np.float32)
    want[8:24, 0:32] = 0
    want[12:20, 4:12] = 1
    want[12:20, 20:28] = 1
    np.testing.assert_array_equal(read["flags"], want)
    np.testing.assert_array_equal(read["mahalanobis_d2"], want * 30)
    assert np.nanmax(read["kde"]) <= 1 and read["kde"][16, 8] > read["kde"][16, 40] >= 0
    assert (read["tissue"][8:24] == 255).all() and (read["tissue"][:8] == 0).all()
    assert meta["kde"]["sigma_map_px"] == pytest.approx(4.0)
    # Tissue rows 8..24 × all 48 columns; scored only where the patches are (cols 0..32).
    assert meta["tissue_pixels"] == 16 * 48 and meta["unscored_tissue_pixels"] == 16 * 16
    assert meta["unscored_tissue_fraction"] == pytest.approx(1 / 3)
    assert meta["kde"]["definition"]["weight_floor"] == 1e-3
    # The KDE is the normalised convolution over the scored tissue (an independent scipy reference).
    from scipy import ndimage

    weight = np.isfinite(want) & (read["tissue"] > 0)
    flags = np.nan_to_num(want) * weight  # no object is below min_object_um2 here
    top = ndimage.gaussian_filter(flags.astype(np.float64), 4.0, mode="constant")
    mass = ndimage.gaussian_filter(weight.astype(np.float64), 4.0, mode="constant")
    with np.errstate(invalid="ignore", divide="ignore"):
        ref = np.where(mass >= 1e-3, np.minimum(top / mass / 0.5, 1.0), np.nan)
    np.testing.assert_allclose(read["kde"], ref, atol=1e-6)
    assert np.isnan(read["kde"][:, 46:]).all() and not np.isnan(read["kde"][8:24, :32]).any()  # > 3σ from tissue
    # uint16 rendition: count 0 = no data, else 1 + round(value / scale).
    counts = tifffile.imread(tmp_path / "maps" / "flags.u16.tif")
    rend = meta["renditions"]["flags"]
    assert (rend["nodata"], rend["offset"]) == (0, 1)
    np.testing.assert_array_equal(counts == 0, np.isnan(want))
    np.testing.assert_allclose((counts[~np.isnan(want)] - 1.0) * rend["value_per_count"], want[~np.isnan(want)])
    # Overviews: transparent where not scored; kde_color grey where the KDE is NaN.
    png = np.asarray(__import__("PIL.Image", fromlist=["Image"]).open(tmp_path / "overview" / "mahalanobis_d2.png"))
    assert png.shape[-1] == 4 and png[0, 0, 3] == 0 and png[-1, -1, 3] == 0 and png[6, 4, 3] == 255
    color = tifffile.imread(tmp_path / "maps" / "kde_color.tif")
    assert (color[np.isnan(read["kde"])] == 128).all() and not (color[~np.isnan(read["kde"])] == 128).all(axis=-1).any()


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
    assert np.isnan(tifffile.imread(tmp_path / "maps" / "kde.tif")).all()  # nothing was scored
    assert np.isnan(tifffile.imread(tmp_path / "maps" / "flags.tif")).all()
    assert not tifffile.imread(tmp_path / "maps" / "flags.u16.tif").any()  # all no data
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
    assert np.isnan(got[16:]).all() and meta["kde"]["method"] == "patch"  # no patch: not scored
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


def test_evaluation_samples_only_scored_tissue_pixels(tmp_path):
    """Stitched maps → evaluation: uncovered tissue pixels read NaN and are left out, so the pixel AUROC is sklearn's
    on the scored pixels only (it used to count them as perfect negatives)."""
    from sklearn.metrics import roc_auc_score

    from proganomaly.evaluation import inputs as eval_io
    from proganomaly.evaluation import metrics

    grid = stitching.MapGrid(40, 20, 1, 0.5)
    canvas = stitching.create_canvas(tmp_path / "c", grid, {"mahalanobis_d2": 1})
    rng = np.random.default_rng(11)
    values = rng.random((2, 20, 20)).astype(np.float32) * 10
    stitching.add_patches(canvas, [(0, 0, 20, 20), (20, 0, 20, 20)], {"mahalanobis_d2": values}, border_px=3)
    d2 = stitching.finalize_map(canvas, "mahalanobis_d2", tmp_path / "d2.npy")[:, :]
    from proganomaly.maps.pyramid import write_pyramid

    write_pyramid(tmp_path / "d2.tif", d2, 0.5, tile=16, compression="deflate")
    read = eval_io.read_map(tmp_path / "d2.tif", (20, 40))
    tissue = np.ones((20, 40), bool)  # the patch boxes cover the whole map; their 3-px rims are unscored
    pick, counts = eval_io.scored_tissue_pixels(tissue, read)
    covered = canvas.count[:, :] > 0
    np.testing.assert_array_equal(pick, np.flatnonzero(covered))
    assert counts["tissue_pixels"] == 800 and counts["unscored_tissue_pixels"] == 800 - covered.sum()
    assert counts["unscored_tissue_fraction"] == pytest.approx(1 - 2 * 14 * 14 / 800)  # 14×14 interiors
    labels = np.zeros((20, 40), bool)
    labels[5:12, 8:30] = True
    want = roc_auc_score(labels.ravel()[pick], d2.ravel()[pick])
    assert metrics.pixel_scores(labels.ravel()[pick], read.ravel()[pick])["auroc"] == pytest.approx(want, abs=1e-12)
    # All tissue pixels, unscored included (as before): NaN is still never a "0 = perfect negative".
    assert np.isnan(read[~covered]).all()
    old = roc_auc_score(labels.ravel(), np.nan_to_num(d2).ravel())  # the previous maps' 0 fill
    assert old != pytest.approx(want)


@pytest.mark.parametrize(("border", "equal"), [(2, True), (1, False), (0, False)])
def test_qupath_tiles_tile_the_scored_area(tmp_path, border, equal):
    """tiles.geojson's tiles (each patch's stride cell) never overlap, and cover the scored area of the stitched
    canvas: exactly when border_px = (patch − stride) / 2 (the demo: 64, 48, 8), inside it when the border is smaller
    (the outer rim of the scored area is then left to no tile)."""
    import json

    import pandas as pd
    import shapely

    from proganomaly.data.geojson import write_tiles

    size, stride = 16, 12
    rng = np.random.default_rng(border)
    origins = [
        (x, y) for x in range(0, 10 * stride, stride) for y in range(0, 6 * stride, stride) if rng.random() < 0.6
    ]
    grid = stitching.MapGrid(10 * stride + size, 6 * stride + size, 1, 0.5)
    canvas = stitching.create_canvas(tmp_path / "c", grid, {"v": 1})
    values = np.ones((len(origins), size, size), np.float32)
    stitching.add_patches(canvas, [(x, y, size, size) for x, y in origins], {"v": values}, border_px=border)
    scored = canvas.count[:, :] > 0

    patches = pd.DataFrame({"x": [x for x, _ in origins], "y": [y for _, y in origins], "width": size,
                            "height": size, "mean_d2": rng.random(len(origins))})  # fmt: skip
    write_tiles(tmp_path / "tiles.geojson", patches, "s", stride=stride)
    doc = json.loads((tmp_path / "tiles.geojson").read_text())
    assert doc["proganomaly"]["stride_level0_px"] == stride and "do not overlap" in doc["proganomaly"]["tiles"]
    cells = [shapely.geometry.shape(f["geometry"]) for f in doc["features"]]
    # No two tiles overlap (shapely: the union's area is the sum of the areas), each lies in its own patch.
    assert shapely.union_all(cells).area == pytest.approx(sum(c.area for c in cells)) == len(origins) * stride**2
    assert all(shapely.box(x, y, x + size, y + size).contains(c) for c, (x, y) in zip(cells, origins, strict=True))
    # Rasterised, they cover the canvas's scored pixels (independent of the tile code: add_patches' coverage).
    painted = np.zeros(scored.shape, int)
    for c in cells:
        x0, y0, x1, y1 = (round(v) for v in c.bounds)
        painted[y0:y1, x0:x1] += 1
    assert painted.max() == 1
    if equal:
        np.testing.assert_array_equal(painted == 1, scored)
    else:
        assert not (painted.astype(bool) & ~scored).any() and scored.sum() > painted.sum()


def _d2_canvas(path, d2_patches, flags_patches):
    """A 64 × 64 level-0 slide (map 32 × 32 at downsample 2) of 16 patches of 16 px, all but the last one inferred,
    with the given per-patch d² and flags (8 × 8 map px each)."""
    grid = stitching.MapGrid(64, 64, 2, 0.5)
    channels = {"thumbnail": 3, "reconstruction": 3, "anomaly_map": 1, "mahalanobis_d2": 1, "flags": 1}
    canvas = stitching.create_canvas(path, grid, channels, extra={"patches": 15})
    for i, (d2, flags) in enumerate(zip(d2_patches, flags_patches, strict=True)):
        if i == 15:
            break  # the last patch is not scored: NaN
        maps = {"thumbnail": np.full((8, 8, 3), 200.0), "reconstruction": np.full((8, 8, 3), 190.0),
                "anomaly_map": d2, "mahalanobis_d2": d2, "flags": flags}  # fmt: skip
        stitching.add_patch(canvas, 16 * (i % 4), 16 * (i // 4), 16, 16, maps)
    return canvas


def _maps(tmp_path, name, d2_patches, tau, tau_z=None):
    flags = [(d > tau).astype(np.float64) for d in d2_patches]  # the SavedModel's raw flags
    _d2_canvas(tmp_path / name, d2_patches, flags)
    kde = KdeParams(method="slide", bandwidth_um=2.0, truncate=4.0, min_object_um2=0.0, ceiling=0.5)
    tissue = np.full((8, 8), 255, np.uint8)  # thumbnail at downsample 8
    meta = write_slide_maps(
        tmp_path / name, tmp_path / f"{name}_maps", tmp_path / f"{name}_ov", tissue_mask=tissue, tissue_downsample=8,
        kde=kde, tile_px=16, tau_z=tau_z,
    )  # fmt: skip
    read = {n: tifffile.imread(tmp_path / f"{name}_maps" / f"{n}.tif") for n in ("flags", "mahalanobis_d2", "kde")}
    return meta, read


def test_robust_standardisation_flags_two_shifted_slides_alike(tmp_path):
    """Slide b's d² is 3·d² + 5 of slide a's: with robust standardisation both flag the same pixels (and the same
    fraction); without it, the raw τ flags very different fractions and the flags are the SavedModel's exactly.
    Median and MAD are numpy's and scipy's over the scored tissue; NaN (not scored) stays NaN, never flagged."""
    from scipy.stats import median_abs_deviation

    rng = np.random.default_rng(16)
    patches_a = [rng.chisquare(6, (8, 8)) for _ in range(16)]
    patches_b = [3.0 * p + 5.0 for p in patches_a]
    tau = float(np.quantile(np.concatenate([p.ravel() for p in patches_a[:15]]), 0.95))
    meta_a, a = _maps(tmp_path, "a", patches_a, tau, tau_z=2.0)
    meta_b, b = _maps(tmp_path, "b", patches_b, tau, tau_z=2.0)
    scored = np.isfinite(a["mahalanobis_d2"])
    assert scored.sum() == 15 * 64 and np.isnan(a["flags"][~scored]).all() and np.isnan(b["flags"][~scored]).all()
    values = a["mahalanobis_d2"][scored].astype(np.float64)
    sa = meta_a["slide_standardisation"]
    assert sa["method"] == "robust" and sa["exact"] and sa["n_scored_pixels"] == values.size
    assert sa["median"] == pytest.approx(np.median(values)) and sa["mad"] == pytest.approx(median_abs_deviation(values))
    z = (values - np.median(values)) / (1.4826 * median_abs_deviation(values))
    np.testing.assert_array_equal(a["flags"][scored], (z > 2.0).astype(np.float32))
    np.testing.assert_array_equal(a["flags"], b["flags"])
    assert (
        sa["flagged_fraction"] == pytest.approx((z > 2.0).mean()) == meta_b["slide_standardisation"]["flagged_fraction"]
    )
    assert meta_b["slide_standardisation"]["median"] == pytest.approx(3 * sa["median"] + 5)  # the shift stays visible
    assert sa["tau_slide"] == pytest.approx(sa["median"] + 2.0 * sa["scale"])
    # none: the SavedModel's flags, exactly, and very different fractions on the two slides
    raw_a, ra = _maps(tmp_path, "ra", patches_a, tau)
    raw_b, rb = _maps(tmp_path, "rb", patches_b, tau)
    want_a = np.where(scored, a["mahalanobis_d2"] > tau, np.nan).astype(np.float32)
    np.testing.assert_array_equal(ra["flags"], want_a)
    assert raw_a["slide_standardisation"]["method"] == "none" and "tau_z" not in raw_a["slide_standardisation"]
    assert raw_a["slide_standardisation"]["flagged_fraction"] == pytest.approx(0.05, abs=1e-3)
    assert raw_b["slide_standardisation"]["flagged_fraction"] > 0.8
    assert np.nanmean(rb["kde"]) > 2 * np.nanmean(b["kde"])  # the heat map follows the flags


def test_robust_location_subsamples_large_maps_reproducibly(tmp_path):
    rng = np.random.default_rng(17)
    d2 = stitching.DiskArray.create(tmp_path / "d2.npy", (300, 200), np.float32)
    d2[0:300] = rng.lognormal(2.0, 0.5, (300, 200)).astype(np.float32)
    weight = stitching.DiskArray.create(tmp_path / "w.npy", (300, 200), np.float32)
    weight[0:300] = np.ones((300, 200), np.float32)
    from proganomaly.maps.slidemaps import robust_location

    exact = robust_location(d2, weight, band_rows=64)
    small = robust_location(d2, weight, max_values=20000, band_rows=64)
    assert exact["exact"] and not small["exact"] and 18000 < small["n_used"] < 22000
    assert small == robust_location(d2, weight, max_values=20000, band_rows=64)  # seeded
    assert small["median"] == pytest.approx(exact["median"], rel=0.02)
    assert small["mad"] == pytest.approx(exact["mad"], rel=0.05)
