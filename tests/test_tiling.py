"""proganomaly.data.tiling: grid geometry against hand-computed cases, tissue fractions against brute force."""

import dataclasses
import json

import numpy as np
import pandas as pd
import pytest
import tifffile

from proganomaly.config import TilingConfig, TissueConfig
from proganomaly.data.slide import open_slide
from proganomaly.data.stain import HE_REF
from proganomaly.data.stain import estimate as estimate_stain
from proganomaly.data.tiling import (
    PATCH_COLUMNS,
    TilingError,
    coverage,
    grid_origins,
    level0_extent,
    patch_table,
    render_overlay,
    score_grid,
    thumbnail_downsample,
    tile_slide,
)

TISSUE = TissueConfig(
    method="otsu", saturation_threshold=0.05, closing_um=32.0, min_object_um2=10000.0, min_hole_um2=10000.0
)


def tiling(**kw) -> TilingConfig:
    base = {
        "patch_size_px": 64,
        "target_mpp": None,
        "stride_px": 64,
        "min_tissue_fraction": 0.5,
        "thumbnail_mpp": 8.0,
        "tissue": TISSUE,
    }
    return TilingConfig(**{**base, **kw})


def overlap_matrix(origins, size, ds, n_thumb):
    """Row i: length of level-0 [o_i, o_i + size) falling in thumbnail pixel j (written as plain loops)."""
    m = np.zeros((len(origins), n_thumb))
    for i, o in enumerate(origins):
        for j in range(n_thumb):
            lo, hi = max(o, j * ds), min(o + size, (j + 1) * ds)
            m[i, j] = max(hi - lo, 0.0)
    return m


@pytest.mark.parametrize(
    ("px", "target", "slide", "expected"),
    [(64, None, 0.5, 64), (64, 0.5, 0.25, 128), (64, 1.0, 0.3, 213), (256, 0.5, 0.499, 257), (16, 4.0, 0.499, 128)],
)
def test_level0_extent(px, target, slide, expected):
    assert level0_extent(px, target, slide) == expected


def test_level0_extent_below_one_pixel_fails():
    with pytest.raises(TilingError, match="less than one level-0 pixel"):
        level0_extent(1, 0.1, 0.5)


@pytest.mark.parametrize(
    ("length", "size", "stride", "expected"),
    [(10, 4, 3, [0, 3, 6]), (10, 4, 4, [0, 4]), (8, 4, 4, [0, 4]), (3, 4, 4, []), (9, 4, 2, [0, 2, 4])],
)
def test_grid_origins_anchored_at_zero_dropping_partial_patches(length, size, stride, expected):
    assert grid_origins(length, size, stride).tolist() == expected


def test_thumbnail_downsample_never_upsamples():
    assert thumbnail_downsample(8.0, 0.25) == 32.0
    assert thumbnail_downsample(8.0, 10.0) == 1.0


@pytest.mark.parametrize(("ds", "size", "stride"), [(4.0, 8, 8), (2.5, 7, 3), (3.2, 16, 5)])
def test_score_grid_matches_exact_area_fractions(ds, size, stride):
    rng = np.random.default_rng(int(ds * 10))
    mask = rng.random((13, 17)) > 0.5
    dims = (int(17 * ds) - 1, int(13 * ds) - 2)  # (width, height) in level-0 px
    xs, ys, fr, n = score_grid(mask, ds, dims, size, stride, 0.0)
    gx, gy = grid_origins(dims[0], size, stride), grid_origins(dims[1], size, stride)
    assert n == len(gx) * len(gy) and len(xs) == n  # min fraction 0 keeps everything
    reference = overlap_matrix(gy, size, ds, 13) @ mask @ overlap_matrix(gx, size, ds, 17).T / size**2
    np.testing.assert_allclose(fr.reshape(len(gy), len(gx)), reference, atol=1e-9)
    np.testing.assert_array_equal(ys.reshape(len(gy), len(gx)), np.repeat(gy[:, None], len(gx), 1))
    np.testing.assert_array_equal(xs.reshape(len(gy), len(gx)), np.repeat(gx[None, :], len(gy), 0))
    assert (xs + size <= dims[0]).all() and (ys + size <= dims[1]).all()


def test_score_grid_threshold_is_inclusive_and_row_major():
    mask = np.zeros((4, 4), bool)
    mask[:, :2] = True  # at ds 2: tissue is level-0 x < 4 of an 8 × 8 slide
    # 4-px patches at stride 2: x = 0 is all tissue, x = 2 exactly half (kept: ≥), x = 4 none.
    xs, ys, fr, n = score_grid(mask, 2.0, (8, 8), 4, 2, 0.5)
    assert n == 9
    assert xs.tolist() == [0, 2] * 3 and ys.tolist() == [0, 0, 2, 2, 4, 4]
    np.testing.assert_allclose(fr, [1.0, 0.5] * 3)


def test_coverage_marks_touched_thumbnail_pixels():
    cov = coverage((5, 6), 2.0, np.array([0, 5]), np.array([0, 3]), 4)
    expected = np.zeros((5, 6), bool)
    expected[0:2, 0:2] = True  # [0, 4) → thumbnail [0, 2)
    expected[1:4, 2:5] = True  # x [5, 9) → [2, 5), y [3, 7) → [1, 4)
    np.testing.assert_array_equal(cov, expected)


def test_patch_table_contract_and_parquet_round_trip(tmp_path):
    table = patch_table("s1", np.array([0, 64]), np.array([128, 128]), 64, np.array([0.75, 1.0]))
    assert dict(table.dtypes.astype(str)) == {**PATCH_COLUMNS, "slide_id": str(table["slide_id"].dtype)}
    assert pd.api.types.is_string_dtype(table["slide_id"])
    table.to_parquet(tmp_path / "t.parquet", index=False)
    back = pd.read_parquet(tmp_path / "t.parquet")
    assert list(back.columns) == list(PATCH_COLUMNS)
    assert back["width"].tolist() == [64, 64] and back["tissue_fraction"].dtype == np.float32
    assert back["slide_id"].tolist() == ["s1", "s1"]


def synthetic_slide(path, mpp, tissue_box):
    """A 640 × 480 slide, white glass with one pink rectangle (x0, y0, x1, y1) of tissue; 2 pyramid levels."""
    img = np.full((480, 640, 3), 245, np.uint8)
    x0, y0, x1, y1 = tissue_box
    img[y0:y1, x0:x1] = (190, 110, 165)
    res = {"resolution": (1e4 / mpp, 1e4 / mpp), "resolutionunit": "CENTIMETER"}
    with tifffile.TiffWriter(path) as tw:
        tw.write(img, tile=(64, 64), compression="zlib", subifds=1, photometric="rgb", **res)
        tw.write(img[::4, ::4], tile=(64, 64), compression="zlib", subfiletype=1, photometric="rgb")
    return img


def test_tile_slide_resamples_to_target_mpp(tmp_path):
    path = tmp_path / "s.tif"
    synthetic_slide(path, 0.5, (100, 60, 500, 400))
    with open_slide(path) as slide:
        # 32 px at 1.0 µm/px on a 0.5 µm/px slide: 64 level-0 px, stride 16 px → 32 level-0 px.
        res = tile_slide(slide, "s", tiling(patch_size_px=32, stride_px=16, target_mpp=1.0, thumbnail_mpp=2.0))
    p = res.patches
    assert set(p["width"]) == {64} and set(p["height"]) == {64}
    assert (p["x"] % 32 == 0).all() and (p["y"] % 32 == 0).all()
    assert (p["tissue_fraction"] >= 0.5).all()
    # Every patch at least half inside the box; every grid patch fully inside the box is kept.
    inside = ((p["x"] >= 100) & (p["x"] + 64 <= 500) & (p["y"] >= 60) & (p["y"] + 64 <= 400)).sum()
    full = len([x for x in range(0, 577, 32) if x >= 100 and x + 64 <= 500]) * len(
        [y for y in range(0, 417, 32) if y >= 60 and y + 64 <= 400]
    )
    assert inside == full
    assert res.downsample == 4.0 and res.qc["thumbnail_level"] == 1
    assert res.qc["patch"]["size_level0_px"] == 64 and res.qc["patch"]["stride_level0_px"] == 32
    assert res.qc["mpp"] == 0.5 and res.qc["patch_count"] == len(p)
    assert res.qc["tissue_fraction"] == pytest.approx(400 * 340 / (640 * 480), rel=0.05)
    json.dumps(res.qc)  # the QC record is plain JSON


def test_several_grids_share_one_tissue_mask(tmp_path):
    """tile_slide's grids of several detectors: each is the grid it would be alone, over the first one's mask."""
    path = tmp_path / "s.tif"
    synthetic_slide(path, 0.5, (100, 60, 500, 400))
    fine = tiling(patch_size_px=32, stride_px=16, target_mpp=1.0, thumbnail_mpp=2.0)
    coarse = tiling(patch_size_px=32, stride_px=32, target_mpp=2.0, thumbnail_mpp=2.0)
    with open_slide(path) as slide:
        first = tile_slide(slide, "s", fine)
        shared = tile_slide(slide, "s", coarse, tissue_of=first)
        alone = tile_slide(slide, "s", coarse)
        both = dataclasses.replace(first, patches=pd.concat([first.patches, shared.patches]))
        assert render_overlay(slide, both).shape == render_overlay(slide, first).shape
    pd.testing.assert_frame_equal(shared.patches, alone.patches)
    assert shared.mask is first.mask and set(shared.patches["width"]) == {128}
    assert {k: v for k, v in shared.qc.items() if k != "seconds"} == {
        k: v for k, v in alone.qc.items() if k != "seconds"
    }


def test_render_overlay_is_finer_than_the_mask_for_small_slides(tmp_path):
    path = tmp_path / "s.tif"
    synthetic_slide(path, 0.5, (96, 64, 480, 384))
    with open_slide(path) as slide:
        res = tile_slide(slide, "s", tiling(thumbnail_mpp=4.0))  # tissue thumbnail 80 × 60 px (ds 8)
        view = render_overlay(slide, res, long_side_px=320)  # ds 2: 320 × 240 px
    assert view.shape == (240, 320, 3)
    green = np.all(view == (0, 200, 0), axis=-1)
    rows, cols = np.nonzero(green)
    # The outline runs along the tissue box, [48, 240) × [32, 192) at ds 2, within one mask pixel (4 px here).
    assert abs(cols.min() - 48) <= 4 and abs(cols.max() - 239) <= 4
    assert abs(rows.min() - 32) <= 4 and abs(rows.max() - 191) <= 4
    assert tuple(view[5, 5]) == (245, 245, 245)  # glass untouched


def test_tile_slide_without_tissue_names_slide_and_parameters(tmp_path):
    path = tmp_path / "blank.tif"
    synthetic_slide(path, 0.5, (0, 0, 0, 0))
    with open_slide(path) as slide, pytest.raises(TilingError) as err:
        tile_slide(slide, "blank_one", tiling(thumbnail_mpp=2.0))
    msg = str(err.value)
    assert "blank_one" in msg and "no tissue patches" in msg
    assert "tiling.min_tissue_fraction" in msg and "tiling.tissue.saturation_threshold" in msg
    assert err.value.result is not None and not err.value.result.mask.any()


def test_tile_slide_on_demo_slide(demo_svs):
    with open_slide(demo_svs) as slide:
        res = tile_slide(slide, "cmu", tiling())
    p = res.patches
    # ~38% tissue of a 2220 × 2967 slide is ~610 patches of 64² px; allow a margin for the mask's edges.
    assert 450 < len(p) < 750
    assert res.qc["candidate_patches"] == (2220 // 64) * (2967 // 64)
    assert (p["tissue_fraction"] >= 0.5).all() and (p["x"] + 64 <= 2220).all() and (p["y"] + 64 <= 2967).all()
    assert res.qc["mpp_source"].startswith("Aperio") and res.qc["thumbnail_downsample"] == pytest.approx(8 / 0.499)


def test_stain_estimate_from_the_tiling_thumbnail_of_the_demo_slide(demo_svs):
    """tile_slide's stain.json input: the demo's H&E skin against Veta's published reference H&E vectors."""
    with open_slide(demo_svs) as slide:
        res = tile_slide(slide, "cmu", tiling())
    est = estimate_stain(res.thumbnail, res.mask)
    # The glass of the demo slide is a little warm (about 245, 243, 243), read from the non-tissue thumbnail.
    assert all(238 <= v <= 250 for v in est["i0"]) and est["i0_source"].startswith("median")
    he = np.asarray(est["macenko"]["stain_matrix"])
    ref = HE_REF / np.linalg.norm(HE_REF, axis=0)
    cos = (he * ref).sum(axis=0)
    assert est["macenko"]["status"] == "ok" and (cos > 0.98).all(), cos  # measured 0.995, 0.996
    assert est["reinhard"]["tissue_pixels"] == int(res.mask.sum())
    json.dumps(est)  # plain JSON
