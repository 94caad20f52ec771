"""proganomaly.data.tissue: saturation, thresholds and morphology against skimage/scipy references and known shapes."""

import numpy as np
import pytest
from skimage.color import rgb2hsv
from skimage.filters import threshold_otsu
from skimage.morphology import remove_small_objects as sk_remove_small_objects

from proganomaly.data.slide import open_slide
from proganomaly.data.tissue import (
    choose_threshold,
    close_mask,
    detect_tissue,
    fill_small_holes,
    outline_overlay,
    remove_small_objects,
    saturation,
)

PARAMS = {
    "method": "otsu",
    "saturation_threshold": 0.05,
    "closing_um": 32.0,
    "min_object_um2": 10000.0,
    "min_hole_um2": 10000.0,
}


def disk_mask(h, w, cy, cx, r):
    yy, xx = np.mgrid[0:h, 0:w]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r**2


def stained(mask, seed=0):
    """Pink tissue on near-white glass, with sensor noise."""
    rng = np.random.default_rng(seed)
    img = np.where(mask[..., None], np.array([200, 120, 170]), np.array([242, 242, 240])).astype(float)
    return np.clip(img + rng.normal(0, 4, img.shape), 0, 255).astype(np.uint8)


def test_saturation_matches_skimage_hsv():
    rgb = np.random.default_rng(1).integers(0, 256, (30, 40, 3), dtype=np.uint8)
    rgb[0, 0] = 0  # black: saturation 0 by convention
    np.testing.assert_allclose(saturation(rgb), rgb2hsv(rgb)[..., 1], atol=1e-6)


def test_thresholds():
    rng = np.random.default_rng(2)
    sat = np.concatenate([rng.normal(0.03, 0.01, 5000), rng.normal(0.4, 0.05, 3000)]).clip(0, 1)
    assert choose_threshold(sat, "otsu", 0.05) == pytest.approx(threshold_otsu(sat))
    t = choose_threshold(sat, "otsu", 0.05)
    assert (sat[:5000] <= t).mean() > 0.999 and (sat[5000:] > t).all()  # separates the two modes
    # On blank glass Otsu would split the noise; the floor wins.
    blank = rng.normal(0.02, 0.005, 5000).clip(0, 1)
    assert choose_threshold(blank, "otsu", 0.05) == 0.05
    assert choose_threshold(np.zeros(10), "otsu", 0.07) == 0.07
    assert choose_threshold(sat, "saturation", 0.2) == 0.2
    with pytest.raises(ValueError, match="unknown tissue method"):
        choose_threshold(sat, "hed", 0.05)


def test_closing_bridges_gaps_and_keeps_the_border():
    mask = np.zeros((40, 40), bool)
    mask[10:30, 0:18] = True
    mask[10:30, 21:40] = True  # a 3-px gap, and tissue running off the left and right edges
    closed = close_mask(mask, 3)
    assert closed[11:29, :].all()  # the gap is bridged (its corners stay rounded, as a disk closing does)
    assert not closed[:8].any() and not closed[32:].any()
    np.testing.assert_array_equal(close_mask(mask, 0), mask)
    # Tissue near (not at) the edge is not bridged to the edge (as mirrored padding would do).
    near = np.zeros((40, 40), bool)
    near[3:20, 5:30] = True
    np.testing.assert_array_equal(close_mask(near, 5), near)


def test_remove_small_objects_matches_skimage():
    mask = np.random.default_rng(3).random((60, 60)) > 0.7
    # skimage 0.26 removes objects of size <= max_size; ours removes those with fewer than min_px pixels.
    expected = sk_remove_small_objects(mask, max_size=4, connectivity=2)
    np.testing.assert_array_equal(remove_small_objects(mask, 5), expected)


def test_fill_small_holes_only_fills_small_enclosed_holes():
    mask = np.zeros((50, 50), bool)
    mask[5:45, 5:45] = True
    mask[10:12, 10:12] = False  # 4-px hole: filled
    mask[20:35, 20:35] = False  # 225-px hole: kept
    mask[0:50, 0:3] = False  # background touching the border: never a hole
    filled = fill_small_holes(mask, 100)
    expected = mask.copy()
    expected[10:12, 10:12] = True
    np.testing.assert_array_equal(filled, expected)


def test_detect_tissue_finds_a_stained_disk_and_drops_dust():
    truth = disk_mask(120, 160, 60, 70, 35)
    dust = disk_mask(120, 160, 15, 145, 2)  # ~13 px at 8 µm/px = 830 µm² < 10000 µm²
    hole = disk_mask(120, 160, 60, 70, 3)  # a ~1800 µm² lumen: filled
    mask, info = detect_tissue(stained((truth & ~hole) | dust), 8.0, **PARAMS)
    iou = (mask & truth).sum() / (mask | truth).sum()
    assert iou > 0.97
    assert not mask[10:20, 140:150].any()
    assert mask[60, 70]
    assert info["closing_radius_px"] == 4 and info["min_object_px"] == 157
    assert info["tissue_fraction"] == pytest.approx(mask.mean())


def test_blank_slide_has_no_tissue():
    mask, info = detect_tissue(stained(np.zeros((80, 80), bool)), 8.0, **PARAMS)
    assert not mask.any() and info["tissue_fraction"] == 0.0 and info["threshold"] == 0.05


def test_demo_slide_tissue_fraction_in_known_range(demo_svs):
    # The CMU skin section covers a bit over a third of this crop (checked by eye on the overlay).
    with open_slide(demo_svs) as slide:
        thumb = slide.thumbnail(8.0 / slide.mpp)
    mask, info = detect_tissue(thumb, 8.0, **PARAMS)
    assert 0.30 < info["tissue_fraction"] < 0.45
    assert 0.1 < info["threshold"] < 0.3
    # The upper-left corner of the crop is glass; the centre column is tissue.
    h, w = mask.shape
    assert not mask[: h // 10, : w // 10].any()
    assert mask[h // 2 - 5 : h // 2 + 5, w // 2 - 5 : w // 2 + 5].mean() > 0.8


def test_outline_overlay_marks_edges_and_patches():
    mask = disk_mask(40, 40, 20, 20, 10)
    thumb = np.full((40, 40, 3), 240, np.uint8)
    patches = np.zeros((40, 40), bool)
    patches[15:25, 15:25] = True
    out = outline_overlay(thumb, mask, patches)
    assert tuple(out[10, 20]) == (0, 200, 0)  # on the outline
    assert tuple(out[0, 0]) == (240, 240, 240)  # glass untouched
    assert out[20, 20, 2] > out[20, 20, 0]  # patches tinted blue
