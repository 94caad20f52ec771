"""Exact polygonisation, dilation, tissue region and rasterisation, checked against shapely and pixel counting."""

import numpy as np
import pytest
import scipy.ndimage as ndi
import shapely
from shapely import affinity
from shapely.geometry import MultiPolygon, Polygon, box

from proganomaly.common.raster import rasterize
from proganomaly.evaluation import geometry


def pixel_union(mask, x0=0, y0=0):
    """Independent reference: the union of one unit box per set pixel."""
    r, c = np.nonzero(mask)
    return shapely.union_all(shapely.box(c + x0, r + y0, c + x0 + 1, r + y0 + 1))


def centres_inside(geom, shape, ds=1.0):
    """Independent reference rasteriser: shapely point-in-polygon at pixel centres."""
    rr, cc = np.mgrid[0 : shape[0], 0 : shape[1]]
    return shapely.contains_xy(geom, (cc + 0.5) * ds, (rr + 0.5) * ds)


def test_square_with_hole_is_exact():
    mask = np.zeros((7, 8), bool)
    mask[1:6, 2:7] = True
    mask[3, 4] = False
    (poly,) = geometry.mask_polygons(mask)
    assert poly.area == 24
    assert len(poly.interiors) == 1 and Polygon(poly.interiors[0]).area == 1
    assert poly.equals(box(2, 1, 7, 6).difference(box(4, 3, 5, 4)))


def test_diagonal_pixels_are_separate_polygons():
    mask = np.array([[1, 0], [0, 1]], bool)
    polys = geometry.mask_polygons(mask)
    assert sorted(p.bounds for p in polys) == [(0, 0, 1, 1), (1, 1, 2, 2)]


@pytest.mark.parametrize("seed", range(6))
def test_random_masks_match_pixel_union(seed):
    rng = np.random.default_rng(seed)
    mask = ndi.binary_opening(rng.random((40, 53)) < rng.uniform(0.3, 0.7)) | (rng.random((40, 53)) < 0.1)
    polys = geometry.mask_polygons(mask, x0=5, y0=-3)
    assert all(p.is_valid for p in polys)
    assert sum(p.area for p in polys) == mask.sum()  # exact: contour tolerance 0
    assert len(polys) >= ndi.label(mask)[1]
    union = shapely.union_all(polys)
    assert union.symmetric_difference(pixel_union(mask, 5, -3)).area == 0
    back = rasterize(affinity.translate(union, -5, 3), mask.shape)
    np.testing.assert_array_equal(back, mask)


def test_empty_mask_gives_no_polygons():
    assert geometry.mask_polygons(np.zeros((4, 4), bool)) == []
    assert geometry.threshold_polygons(np.zeros((10, 10), np.float32), 0.0) == []


@pytest.mark.parametrize("block", [4, 7, 64])
def test_block_search_equals_direct_polygonisation(block):
    rng = np.random.default_rng(3)
    values = ndi.gaussian_filter(rng.random((61, 75)), 2).astype(np.float32)
    values[5:9, 10:20] = np.nan  # NaN never exceeds a threshold
    for t in (0.45, 0.5, 0.55):
        fast = shapely.union_all(geometry.threshold_polygons(values, t, block=block))
        direct = shapely.union_all(geometry.mask_polygons(np.nan_to_num(values, nan=-1) > t))
        assert fast.symmetric_difference(direct).area == 0
        assert fast.area == (values > t).sum()


def test_simplified_area_within_contour_tolerance():
    yy, xx = np.mgrid[0:80, 0:80]
    mask = (xx - 40) ** 2 + (yy - 38) ** 2 < 30**2
    (exact,) = geometry.mask_polygons(mask)
    for tol in (0.5, 1.0):
        (simple,) = geometry.simplify([exact], tol)
        assert shapely.get_num_coordinates(simple) < shapely.get_num_coordinates(exact)
        assert abs(simple.area - mask.sum()) <= exact.length * tol


def test_dilation_of_known_square_about_centroid_and_bbox_centre():
    square = box(0, 0, 2, 2)
    origins = geometry.dilation_origins([square], "centroid")
    (scaled,) = geometry.scale_polygons([square], 2.0, origins)
    assert scaled.equals(box(-1, -1, 3, 3)) and scaled.area == 16
    # An L shape: centroid and bounding-box centre differ, and each matches shapely's own scaling.
    ell = box(0, 0, 3, 1).union(box(0, 0, 1, 3))
    for origin, ref in (("centroid", "centroid"), ("center", "center")):
        (got,) = geometry.scale_polygons([ell], 1.5, geometry.dilation_origins([ell], origin))
        assert got.symmetric_difference(affinity.scale(ell, 1.5, 1.5, origin=ref)).area < 1e-9
        assert got.area == pytest.approx(ell.area * 1.5**2)


def test_scaling_many_polygons_uses_each_polygons_own_origin():
    rng = np.random.default_rng(0)
    polys = [box(x, y, x + w, y + h) for x, y, w, h in rng.uniform(1, 50, (20, 4))]
    polys.append(box(0, 0, 10, 10).difference(box(3, 3, 6, 6)))  # a hole is scaled too
    got = geometry.scale_polygons(polys, 3.0, geometry.dilation_origins(polys, "centroid"))
    for g, p in zip(got, polys, strict=True):
        assert g.symmetric_difference(affinity.scale(p, 3, 3, origin="centroid")).area < 1e-6


def test_buffer_of_square_with_mitred_corners():
    (grown,) = geometry.buffer_polygons([box(0, 0, 2, 2)], 1.0)
    assert grown.equals(box(-1, -1, 3, 3))


def test_boxes_region_equals_union_of_boxes():
    rng = np.random.default_rng(1)
    x, y = rng.integers(0, 200, 60), rng.integers(0, 200, 60)
    w, h = rng.integers(5, 40, 60), rng.integers(5, 40, 60)
    got = geometry.boxes_region(x, y, w, h)
    ref = shapely.union_all(shapely.box(x, y, x + w, y + h))
    assert got.is_valid
    assert got.symmetric_difference(ref).area == 0
    assert geometry.boxes_region([], [], [], []).is_empty


def test_boxes_region_of_a_patch_grid_with_a_hole():
    gx, gy = np.meshgrid(np.arange(5), np.arange(5))
    keep = ~((gx == 2) & (gy == 2))
    region = geometry.boxes_region(gx[keep] * 64, gy[keep] * 64, np.full(24, 64), np.full(24, 64))
    assert region.geom_type == "Polygon" and len(region.interiors) == 1
    assert region.area == 24 * 64 * 64


def test_rasterize_uses_pixel_centres_with_holes_overlaps_and_downsample():
    rng = np.random.default_rng(5)
    for ds in (1.0, 4.0):
        for _ in range(5):
            # Random (non-grid) vertices, so no pixel centre lies exactly on an edge.
            outer = Polygon(rng.uniform(0, 60, (9, 2))).convex_hull
            hole = affinity.scale(outer, 0.4, 0.4)
            other = Polygon(rng.uniform(20, 70, (7, 2))).convex_hull  # overlaps: a union, not an XOR
            parts = [Polygon(outer.exterior.coords, [hole.exterior.coords]), other]
            shape = (int(64 / ds), int(72 / ds))
            got = rasterize(MultiPolygon(parts), shape, ds)
            np.testing.assert_array_equal(got, centres_inside(shapely.union_all(parts), shape, ds))


def test_rasterize_with_origin_and_rectangular_pixels_matches_contains_xy():
    """The patch-label case: a window at (x0, y0) whose pixels are w/S × h/S level-0 px."""
    rng = np.random.default_rng(7)
    for _ in range(5):
        poly = Polygon(rng.uniform(100, 200, (9, 2))).convex_hull
        x0, y0, sx, sy = 90.0, 110.0, 100 / 16, 96 / 16
        got = rasterize(poly, (16, 16), (sx, sy), (x0, y0))
        cc, rr = np.meshgrid(np.arange(16), np.arange(16))
        want = shapely.contains_xy(poly, x0 + (cc + 0.5) * sx, y0 + (rr + 0.5) * sy)
        np.testing.assert_array_equal(got, want)
        assert got.any()


def test_boxes_mask_matches_half_open_centre_rule():
    x, y, w, h = np.array([0, 64, 200]), np.array([0, 32, 100]), np.array([64, 64, 50]), np.array([64, 64, 40])
    for ds in (1.0, 8.0, 16.0):
        shape = (int(260 / ds), int(260 / ds))
        rr, cc = np.mgrid[0 : shape[0], 0 : shape[1]]
        cx, cy = (cc + 0.5) * ds, (rr + 0.5) * ds
        ref = np.zeros(shape, bool)
        for bx, by, bw, bh in zip(x, y, w, h, strict=True):
            ref |= (cx >= bx) & (cx < bx + bw) & (cy >= by) & (cy < by + bh)
        np.testing.assert_array_equal(geometry.boxes_mask(x, y, w, h, shape, ds), ref)


def test_block_max_ignores_nan():
    v = np.full((5, 6), np.nan, np.float32)
    v[4, 5] = 0.3
    bm = geometry.block_max(v, 4)
    assert bm.shape == (2, 2) and bm[1, 1] == pytest.approx(0.3) and np.isnan(bm[0, 0])
