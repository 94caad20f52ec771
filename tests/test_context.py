"""The context detector's library (proganomaly.context): neighbourhoods, reference, kNN score, painting."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from proganomaly.context.neighbourhood import (
    ContextError,
    neighbourhood_stats,
    patch_centres,
    radii_px,
    stat_names,
)
from proganomaly.context.paint import paint_patch_scores
from proganomaly.context.reference import fit_reference, knn_score, load_reference, save_reference
from proganomaly.context.vectors import ContextSettings, context_vectors, vector_names
from proganomaly.maps.stitching import MapGrid


def grid_table(nx: int, ny: int, stride: int = 48, size: int = 64, drop=()) -> pd.DataFrame:
    """Patches on a stride grid, some positions left out (holes, tissue edge)."""
    rows = [(i * stride, j * stride, size, size) for j in range(ny) for i in range(nx) if (i, j) not in drop]
    return pd.DataFrame(rows, columns=["x", "y", "width", "height"])


def brute_stats(centres, x, radii, kind="disc"):
    """Mean and population std over the patches within each disc (or ring), by direct distances."""
    d = np.hypot(*(centres[:, None, :] - centres[None, :, :]).transpose(2, 0, 1))
    means, stds, counts = [], [], []
    for i, r in enumerate(radii):
        inside = d <= r + 1e-6
        if kind == "ring" and i:
            ring = inside & (d > radii[i - 1] + 1e-6)
            inside = np.where(ring.any(axis=1, keepdims=True), ring, inside)
        m = np.stack([x[row].mean(axis=0) for row in inside])
        s = np.stack([x[row].std(axis=0) for row in inside])
        means.append(m), stds.append(s), counts.append(inside.sum(axis=1))
    return means, stds, np.stack(counts, axis=1)


@pytest.fixture
def holey():
    rng = np.random.default_rng(0)
    table = grid_table(9, 7, drop={(0, 0), (1, 0), (0, 1), (4, 3), (5, 3), (8, 6)})
    return table, rng.normal(size=(len(table), 4))


@pytest.mark.parametrize("kind", ["disc", "ring"])
def test_neighbourhood_stats_match_brute_force(holey, kind):
    table, x = holey
    centres = patch_centres(table)
    radii = [48.0, 100.0, 200.0]
    values, counts = neighbourhood_stats(centres, x, radii, stats=("mean", "std"), kind=kind, chunk=7)
    means, stds, want_counts = brute_stats(centres, x, radii, kind)
    f = x.shape[1]
    for i in range(len(radii)):
        np.testing.assert_allclose(values[:, (2 * i) * f : (2 * i + 1) * f], means[i], atol=1e-12)
        np.testing.assert_allclose(values[:, (2 * i + 1) * f : (2 * i + 2) * f], stds[i], atol=1e-9)
    np.testing.assert_array_equal(counts, want_counts)


def test_coverage_at_the_edge_averages_only_existing_patches():
    # A corner patch of a 3×3 grid at radius 48 (the 4-neighbourhood): itself and its 2 existing neighbours.
    table = grid_table(3, 3)
    x = np.arange(9, dtype=float)[:, None]
    values, counts = neighbourhood_stats(patch_centres(table), x, [48.0])
    assert counts[0, 0] == 3 and values[0, 0] == pytest.approx((0 + 1 + 3) / 3)
    assert counts[4, 0] == 5 and values[4, 0] == pytest.approx((1 + 3 + 4 + 5 + 7) / 5)
    # With the right neighbour missing the corner averages what remains, no zero fill for the hole.
    table2 = grid_table(3, 3, drop={(1, 0)})
    x2 = np.array([v for v in range(9) if v != 1], float)[:, None]
    values2, counts2 = neighbourhood_stats(patch_centres(table2), x2, [48.0])
    assert counts2[0, 0] == 2 and values2[0, 0] == pytest.approx((0 + 3) / 2)


def test_an_isolated_patch_is_its_own_neighbourhood_and_empty_rings_fall_back():
    table = pd.DataFrame({"x": [0, 1000], "y": [0, 0], "width": [64, 64], "height": [64, 64]})
    x = np.array([[1.0], [5.0]])
    values, counts = neighbourhood_stats(patch_centres(table), x, [50.0, 100.0], stats=("mean", "std"), kind="ring")
    np.testing.assert_allclose(values, [[1.0, 0.0, 1.0, 0.0], [5.0, 0.0, 5.0, 0.0]])
    np.testing.assert_array_equal(counts, [[1, 1], [1, 1]])


def test_radii_in_um_become_level0_px_with_mpp():
    np.testing.assert_allclose(radii_px([64, 128, 256], 0.5), [128, 256, 512])
    np.testing.assert_allclose(radii_px([64], 0.25), [256])
    # The same µm radius holds more patches on a finer slide: 48 px apart is 24 µm at 0.5, 12 µm at 0.25 µm/px.
    table = grid_table(5, 1)
    x = np.zeros((5, 1))
    settings = ContextSettings(radii_um=(24.0,), own=False)
    _, coarse = context_vectors(table, x, 1.0, settings)  # 24 µm = 24 px: only itself
    _, fine = context_vectors(table, x, 0.5, settings)  # 24 µm = 48 px: ±1 neighbour
    assert coarse[:, 0].tolist() == [1, 1, 1, 1, 1] and fine[:, 0].tolist() == [2, 3, 3, 3, 2]
    for bad in ([], [0.0], [64, 32], [np.nan]):
        with pytest.raises(ContextError):
            radii_px(bad, 0.5)
    with pytest.raises(ContextError):
        radii_px([64], 0.0)


def test_context_vectors_names_and_own_features(holey):
    table, x = holey
    s = ContextSettings(radii_um=(24.0, 48.0), stats=("mean", "std"), own=True)
    v, _ = context_vectors(table, x, 0.5, s)
    names = vector_names(["a", "b", "c", "d"], s)
    assert v.shape == (len(table), 4 + 2 * 2 * 4) == (len(table), len(names))
    np.testing.assert_array_equal(v[:, :4], x)
    assert names[:5] == ["own:a", "own:b", "own:c", "own:d", "disc24um_mean:a"]
    assert stat_names(["a"], (24.0,), ("mean",), "ring") == ["ring24um_mean:a"]
    assert ContextSettings.from_dict(s.to_dict()) == s


def test_neighbourhood_errors():
    c = np.zeros((0, 2))
    with pytest.raises(ContextError, match="no patches"):
        neighbourhood_stats(c, np.zeros((0, 3)), [10.0])
    with pytest.raises(ContextError, match="N = 2"):
        neighbourhood_stats(np.zeros((2, 2)), np.zeros((3, 3)), [10.0])
    with pytest.raises(ContextError, match="finite"):
        neighbourhood_stats(np.zeros((1, 2)), np.full((1, 3), np.nan), [10.0])
    with pytest.raises(ContextError, match="stats"):
        neighbourhood_stats(np.zeros((1, 2)), np.zeros((1, 3)), [10.0], stats=("median",))
    with pytest.raises(ContextError, match="column"):
        patch_centres(pd.DataFrame({"x": [0], "y": [0]}))
    with pytest.raises(ContextError, match="patches but"):
        context_vectors(grid_table(2, 1), np.zeros((3, 2)), 0.5, ContextSettings())


@pytest.mark.parametrize("standardise", ["robust", "plain"])
def test_knn_score_matches_brute_force(standardise):
    rng = np.random.default_rng(1)
    ref_x = rng.normal(size=(200, 5)) * [1, 2, 3, 0.5, 10] + 7
    query = rng.normal(size=(30, 5)) * 3
    ref = fit_reference(ref_x, list("abcde"), k=4, standardise=standardise)
    if standardise == "robust":
        centre = np.median(ref_x, axis=0)
        scale = 1.4826 * np.median(np.abs(ref_x - centre), axis=0)
    else:
        centre, scale = ref_x.mean(axis=0), ref_x.std(axis=0)
    zr, zq = (ref_x - centre) / scale, (query - centre) / scale
    d = np.sqrt(((zq[:, None, :] - zr[None]) ** 2).sum(-1))
    want = np.sort(d, axis=1)[:, :4].mean(axis=1)
    np.testing.assert_allclose(knn_score(ref, query), want, rtol=1e-5)  # vectors are kept as float32


def test_knn_score_leaves_a_reference_slide_out():
    rng = np.random.default_rng(2)
    a, b = rng.normal(size=(50, 3)), rng.normal(size=(40, 3)) + 5
    ref = fit_reference(np.r_[a, b], ["x", "y", "z"], k=1, groups=np.r_[np.zeros(50), np.ones(40)].astype(int),
                        group_names=["slide_a", "slide_b"], standardise="plain")  # fmt: skip
    assert np.allclose(knn_score(ref, a), 0.0, atol=1e-5)  # finds itself
    za, zb = (a - ref.centre) / ref.scale, (b - ref.centre) / ref.scale
    want = np.sqrt(((za[:, None] - zb[None]) ** 2).sum(-1)).min(axis=1)
    np.testing.assert_allclose(knn_score(ref, a, exclude_group="slide_a"), want, rtol=1e-5)
    with pytest.raises(ContextError, match="not a reference slide"):
        knn_score(ref, a, exclude_group="slide_c")


def test_reference_subsample_is_seeded_and_capped():
    x = np.random.default_rng(3).normal(size=(1000, 2))
    r1 = fit_reference(x, ["a", "b"], max_vectors=100, seed=5)
    r2 = fit_reference(x, ["a", "b"], max_vectors=100, seed=5)
    r3 = fit_reference(x, ["a", "b"], max_vectors=100, seed=6)
    assert r1.vectors.shape == (100, 2) and r1.fitted_on == 1000
    np.testing.assert_array_equal(r1.vectors, r2.vectors)
    assert not np.array_equal(r1.vectors, r3.vectors)
    # The standardisation uses every reference vector, not the subsample.
    np.testing.assert_allclose(r1.centre, np.median(x, axis=0))


def test_constant_columns_keep_a_unit_scale():
    x = np.c_[np.random.default_rng(4).normal(size=50), np.full(50, 3.0), np.r_[np.zeros(49), 1.0]]
    ref = fit_reference(x, ["a", "const", "rare"])
    assert ref.scale[1] == 1.0  # no information: deviations count at their raw size
    assert ref.scale[2] == pytest.approx(x[:, 2].std())  # MAD 0, std instead
    assert np.isfinite(knn_score(ref, np.array([[0.0, 4.0, 1.0]]))).all()


def test_reference_round_trip(tmp_path):
    x = np.random.default_rng(5).normal(size=(60, 3))
    settings = ContextSettings(radii_um=(64.0, 128.0), stats=("mean", "std"))
    ref = fit_reference(x, ["a", "b", "c"], k=2, groups=np.repeat([0, 1, 2], 20), group_names=["s0", "s1", "s2"],
                        settings=settings.to_dict())  # fmt: skip
    save_reference(ref, tmp_path / "ref.npz", tmp_path / "ref.json")
    back = load_reference(tmp_path / "ref.npz", tmp_path / "ref.json")
    assert (back.names, back.k, back.standardise, back.group_names) == (ref.names, 2, "robust", ("s0", "s1", "s2"))
    for name in ("centre", "scale", "vectors", "groups"):
        np.testing.assert_array_equal(getattr(back, name), getattr(ref, name))
    assert ContextSettings.from_dict(back.settings) == settings
    q = np.random.default_rng(6).normal(size=(7, 3))
    np.testing.assert_array_equal(knn_score(back, q), knn_score(ref, q))
    (tmp_path / "ref.json").write_text((tmp_path / "ref.json").read_text().replace('"c"', '"c", "d"'))
    with pytest.raises(ContextError, match="does not match"):
        load_reference(tmp_path / "ref.npz", tmp_path / "ref.json")
    with pytest.raises(ContextError, match="cannot read"):
        load_reference(tmp_path / "missing.npz", tmp_path / "ref.json")


def test_reference_errors():
    with pytest.raises(ContextError, match="non-empty"):
        fit_reference(np.zeros((0, 3)), ["a", "b", "c"])
    with pytest.raises(ContextError, match="names"):
        fit_reference(np.zeros((5, 3)), ["a", "b"])
    with pytest.raises(ContextError, match="fewer than k"):
        fit_reference(np.zeros((2, 1)), ["a"], k=3)
    with pytest.raises(ContextError, match="standardise"):
        fit_reference(np.zeros((5, 1)), ["a"], standardise="minmax")
    ref = fit_reference(np.random.default_rng(0).normal(size=(10, 3)), ["a", "b", "c"])
    with pytest.raises(ContextError, match="4 columns, the reference 3"):
        knn_score(ref, np.zeros((2, 4)))
    assert knn_score(ref, np.zeros((0, 3))).shape == (0,)


def test_paint_stride_cells():
    # Level 0 of 160×100 px at downsample 4 → a 40×25 map. Two 64-px patches 48 px apart; stride cells are the
    # central 48×48: [8, 56) and [56, 104) in x, [8, 56) in y → map columns 2..13 and 14..25, rows 2..13.
    grid = MapGrid(160, 100, 4, 0.5)
    table = pd.DataFrame({"x": [0, 48], "y": [0, 0], "width": [64, 64], "height": [64, 64]})
    m = paint_patch_scores(grid, table, np.array([1.5, 7.0]), stride=48)
    assert m.shape == (25, 40) and m.dtype == np.float32
    want = np.full((25, 40), np.nan, np.float32)
    want[2:14, 2:14] = 1.5
    want[2:14, 14:26] = 7.0
    np.testing.assert_array_equal(m, want)


def test_paint_overlap_is_area_weighted_and_nan_scores_paint_nothing():
    grid = MapGrid(10, 4, 2, None)  # 5×2 map
    table = pd.DataFrame({"x": [0, 3, 8], "y": [0, 0, 0], "width": [4, 4, 2], "height": [2, 2, 2]})
    m = paint_patch_scores(grid, table, np.array([0.0, 4.0, np.nan]))  # whole patches
    # map px 0 [0,2): patch 0 only → 0; px 1 [2,4): patch 0 over 2 px, patch 1 over 1 px → 4/3;
    # px 2 [4,6): patch 1 over 2 → 4; px 3 [6,8): patch 1 over 1 → 4; px 4: only the NaN patch → NaN; row 1 unpainted.
    np.testing.assert_allclose(m[0], [0.0, 4 / 3, 4.0, 4.0, np.nan], rtol=1e-6)
    assert np.isnan(m[1]).all()


def test_paint_into_given_arrays_and_errors():
    grid = MapGrid(96, 64, 1, 0.5)
    table = grid_table(2, 1)
    out, area = np.full((64, 96), 9.0, np.float32), np.zeros((64, 96), np.float32)
    m = paint_patch_scores(grid, table, [2.0, 3.0], stride=48, out=out, area=area)
    assert m is out and np.nanmax(m) == 3.0 and area.max() == 1.0
    empty = paint_patch_scores(grid, table.iloc[:0], np.zeros(0))
    assert np.isnan(empty).all()
    with pytest.raises(ContextError, match="3 scores for 2 patches"):
        paint_patch_scores(grid, table, [1.0, 2.0, 3.0])
    with pytest.raises(ContextError, match="shape"):
        paint_patch_scores(grid, table, [1.0, 2.0], out=np.zeros((3, 3), np.float32))


def test_slide_features_read_each_patch_normalise_then_measure():
    from proganomaly.context.features import feature_names, slide_features, texture_features

    rng = np.random.default_rng(7)
    slide = rng.integers(0, 256, (200, 200, 3), dtype=np.uint8)
    calls = []

    def read_patch(s, x, y, size_l0, out_px):
        calls.append((x, y, size_l0, out_px))
        return s[y : y + size_l0, x : x + size_l0][::2, ::2]  # size_l0 = 2·out_px in this table

    def normaliser(batch):
        return 255 - batch

    table = pd.DataFrame({"x": [0, 64, 100], "y": [0, 10, 120], "width": [64] * 3, "height": [64] * 3})
    got = slide_features(slide, table, 32, normaliser=normaliser, read_patch=read_patch, batch_size=2)
    assert calls == [(0, 0, 64, 32), (64, 10, 64, 32), (100, 120, 64, 32)]
    want = texture_features(np.stack([255 - slide[y : y + 64, x : x + 64][::2, ::2] for x, y in [(0, 0), (64, 10),
                                                                                                (100, 120)]]))  # fmt: skip
    assert got.shape == (3, len(feature_names())) == (3, 20)
    np.testing.assert_allclose(got, want)
    with pytest.raises(ContextError, match="uint8"):
        texture_features(np.zeros((1, 8, 8, 3), np.float32))
