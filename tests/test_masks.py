"""Context masks: block areas, geometry (rows × columns), union of overlaps, fill statistics, determinism."""

import math

import numpy as np
import pytest
import tensorflow as tf

from proganomaly.model.masks import (
    _inside,
    _rectangles,
    _shuffle_fixed_size,
    _shuffle_within,
    block_areas,
    mask_images,
)


def test_block_areas_match_the_original():
    assert block_areas(4, 0.2) == [1, 1, 1]
    assert block_areas(8, 0.2) == [6, 3, 1, 1, 1]
    big = block_areas(1024, 0.2)
    assert big[:3] == [104857, 52429, 26214] and big[-3:] == [2, 1, 1] and sum(big) == int(1024 * 1024 * 0.2)
    assert block_areas(64, 0.0) == []


def test_rectangle_rows_by_columns():
    """h = int(√a) rows and w = a // h columns (the original laid w along rows), always inside the image."""
    top, left, h, w, _ = _rectangles(64, 8, 6, 0, tf.constant([3, 4], tf.int64))
    inside = _inside(8, top, left, h, w).numpy()
    assert (h.numpy() == 2).all() and (w.numpy() == 3).all()
    for m in inside:
        rows, cols = np.nonzero(m.any(1))[0], np.nonzero(m.any(0))[0]
        assert len(rows) == 2 and len(cols) == 3 and m.sum() == 6
    assert (top.numpy() >= 0).all() and (top.numpy() + 2 <= 8).all() and (left.numpy() + 3 <= 8).all()


def test_random_shift_jitters_areas():
    _, _, h, w, _ = _rectangles(200, 16, 20, 4, tf.constant([1, 1], tf.int64))
    areas = (h * w).numpy()  # a' in [16, 24): 4×4 or 4×5 blocks
    assert set(np.unique(areas)) == {16, 20}


@pytest.mark.parametrize("fill", ["shuffle", "dead"])
def test_unmasked_pixels_are_untouched_and_fraction_is_bounded(fill):
    x = tf.random.uniform((32, 32, 32, 3), -1, 1, seed=7)
    y, m = mask_images(x, tf.constant([1, 2]), percent=0.2, fill=fill)
    x, y, m = x.numpy(), y.numpy(), m.numpy()
    np.testing.assert_array_equal(y[~m], x[~m])
    frac = m.reshape(32, -1).mean(1)
    largest = block_areas(32, 0.2)[0]
    hs = int(math.sqrt(largest))
    assert (frac >= hs * (largest // hs) / 32**2).all() and (frac <= 0.2 + 1e-9).all()
    assert 0.12 < frac.mean() <= 0.2  # overlaps only shrink the union
    if fill == "dead":
        assert (y[m] == -1).all()
    else:
        assert all(np.isin(y[i][m[i]], x[i]).all() for i in range(32))  # values come from the same image
        assert (y[m] != x[m]).mean() > 0.5  # and are mostly moved


def test_overlapping_blocks_stay_masked():
    """percent 1 at 4×4: blocks of 8, 4, 2, 1, 1 px overlap; the union is masked (the original unmasked overlaps)."""
    x = tf.random.uniform((64, 4, 4, 3), -1, 1, seed=3)
    _, m = mask_images(x, tf.constant([5, 6]), percent=1.0, fill="dead")
    assert (m.numpy().reshape(64, -1).sum(1) >= 8).all()


def test_shuffle_is_a_permutation_inside_the_block():
    x = tf.reshape(tf.range(2 * 8 * 8 * 1, dtype=tf.float32), (2, 8, 8, 1))
    top, left = tf.constant([1, 4]), tf.constant([2, 0])
    inside = _inside(8, top, left, tf.constant([3, 4]), tf.constant([5, 2]))
    y = _shuffle_within(x, inside, tf.constant([1, 1], tf.int64)).numpy()
    x, inside = x.numpy(), inside.numpy()
    for i in range(2):
        np.testing.assert_array_equal(np.sort(y[i][inside[i]].ravel()), np.sort(x[i][inside[i]].ravel()))
        np.testing.assert_array_equal(y[i][~inside[i]], x[i][~inside[i]])
        assert not np.array_equal(y[i][inside[i]], x[i][inside[i]])


def test_fast_fixed_size_shuffle_is_the_same_kind_of_permutation():
    x = tf.reshape(tf.range(3 * 8 * 8 * 2, dtype=tf.float32), (3, 8, 8, 2))
    top, left = tf.constant([0, 5, 2]), tf.constant([3, 0, 4])
    inside = _inside(8, top, left, tf.constant([3] * 3), tf.constant([4] * 3)).numpy()
    y = _shuffle_fixed_size(x, top, left, 3, 4, tf.constant([2, 2], tf.int64)).numpy()
    x = x.numpy()
    for i in range(3):
        got, want = y[i][inside[i]], x[i][inside[i]]  # (12, 2): pixels move with both channels together
        assert sorted(map(tuple, got)) == sorted(map(tuple, want))
        assert not np.array_equal(got, want)


def test_masks_are_a_function_of_the_seed():
    x = tf.random.uniform((8, 16, 16, 3), -1, 1, seed=1)
    a = mask_images(x, tf.constant([1, 2]), percent=0.2)
    b = mask_images(x, tf.constant([1, 2]), percent=0.2)
    c = mask_images(x, tf.constant([1, 3]), percent=0.2)
    np.testing.assert_array_equal(a[0].numpy(), b[0].numpy())
    assert not np.array_equal(a[1].numpy(), c[1].numpy())


def test_bad_fill_is_rejected():
    with pytest.raises(ValueError, match=r"model\.mask\.fill"):
        mask_images(tf.zeros((1, 4, 4, 3)), tf.constant([0, 0]), percent=0.2, fill="zeros")
