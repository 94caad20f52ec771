"""Per-slide stain and scanner appearance of the demo cohort, and the dihedral transforms that let slides share a band
(proganomaly.demo.appearance), checked against skimage's own colour deconvolution, scipy and hand-written index maps."""

import itertools

import numpy as np
import pytest
from scipy import ndimage
from skimage import color

from proganomaly.demo import appearance as ap
from proganomaly.demo.cohort import DEMO_SLIDES


def _stained(seed: int = 0, size: int = 96) -> tuple[np.ndarray, np.ndarray]:
    """(rgb, tissue): H&E made from known stain concentrations with skimage's hed2rgb, glass in the top rows."""
    rng = np.random.default_rng(seed)
    hed = np.zeros((size, size, 3))
    hed[..., 0] = ndimage.gaussian_filter(rng.uniform(0.0, 0.12, (size, size)), 2) * 1.5
    hed[..., 1] = ndimage.gaussian_filter(rng.uniform(0.0, 0.10, (size, size)), 2) * 1.5
    tissue = np.ones((size, size), bool)
    tissue[:16] = False
    hed[~tissue] = 0.0
    rgb = np.clip(np.rint(color.hed2rgb(hed) * 255), 0, 255).astype(np.uint8)
    rgb[~tissue] = [244, 242, 243]
    return rgb, tissue


def test_identity_leaves_the_image_unchanged():
    rng = np.random.default_rng(1)
    every_value = np.stack(np.meshgrid(np.arange(256), np.arange(256), indexing="ij"), -1).reshape(256, 256, 2)
    img = np.concatenate([every_value, rng.integers(0, 256, (256, 256, 1))], axis=2).astype(np.uint8)
    for rgb in (img, _stained()[0]):
        out = ap.apply_appearance(rgb, ap.IDENTITY)
        assert out.dtype == np.uint8 and out.shape == rgb.shape
        assert np.abs(out.astype(int) - rgb).max() <= 1


@pytest.mark.parametrize("factor", [0.7, 1.3])
def test_haematoxylin_scaling_measured_by_skimage(factor):
    rgb, tissue = _stained()
    out = ap.apply_appearance(rgb, ap.Appearance(h_scale=factor))
    before, after = color.rgb2hed(rgb)[tissue], color.rgb2hed(out)[tissue]
    # Independent measurement: skimage's rgb2hed on the uint8 images. Tolerance 3 %: uint8 rounding of pale pixels
    # and skimage's clipping of negative densities at zero.
    assert after[:, 0].mean() / before[:, 0].mean() == pytest.approx(factor, rel=0.03)
    assert after[:, 1].mean() / before[:, 1].mean() == pytest.approx(1.0, rel=0.03)


def test_eosin_scaling_measured_by_skimage():
    rgb, tissue = _stained(2)
    out = ap.apply_appearance(rgb, ap.Appearance(e_scale=0.8))
    before, after = color.rgb2hed(rgb)[tissue], color.rgb2hed(out)[tissue]
    assert after[:, 1].mean() / before[:, 1].mean() == pytest.approx(0.8, rel=0.03)
    assert after[:, 0].mean() / before[:, 0].mean() == pytest.approx(1.0, rel=0.03)


def test_hue_turn_keeps_the_stain_vector_length_and_grey_part():
    h = np.asarray(color.rgb_from_hed[0], float)
    for deg in (-8.0, 5.0):
        turned = ap.turn_about_grey(h, deg)
        assert np.linalg.norm(turned) == pytest.approx(np.linalg.norm(h))
        assert turned.sum() == pytest.approx(h.sum())
        cos = (turned - h.mean()) @ (h - h.mean()) / np.linalg.norm(h - h.mean()) ** 2
        assert np.degrees(np.arccos(np.clip(cos, -1, 1))) == pytest.approx(abs(deg), abs=1e-6)
    # Negative turns make haematoxylin bluer (its hue moves towards 240°).
    hue = [color.rgb2hsv(np.exp(-ap.turn_about_grey(h, d))[None, None])[0, 0, 0] * 360 for d in (-8.0, 0.0)]
    assert abs(hue[0] - 240) < abs(hue[1] - 240)


def test_background_stays_near_white_for_every_lab():
    rgb, tissue = _stained(3)
    far = ~ndimage.binary_dilation(tissue, iterations=3)  # the defocus spreads tissue 3 px (4 sigma) into the glass
    for lab in ap.LABS:
        out = ap.apply_appearance(rgb, ap.slide_appearance(lab, f"demo_any_{lab}"))
        glass = out[far].astype(int)
        assert glass.min() >= 225, lab
        assert np.abs(glass.mean(axis=0) - [244, 242, 243]).max() <= 12, lab


def test_defocus_and_saturation_against_independent_references():
    rgb, _ = _stained(4)
    blurred = ap.apply_appearance(rgb, ap.Appearance(defocus_sigma=0.7))
    # Reference: scipy's Gaussian on the transmitted light (rgb / 255), per channel.
    ref = ndimage.gaussian_filter(rgb / 255.0, (0.7, 0.7, 0), mode="nearest")
    assert np.abs(blurred.astype(int) - np.rint(ref * 255)).max() <= 1
    grey = ap.apply_appearance(rgb, ap.Appearance(saturation=0.0))
    assert np.ptp(grey.astype(int), axis=2).max() <= 1
    luma = rgb @ np.array([0.299, 0.587, 0.114])
    assert np.abs(grey[..., 0] - luma).max() <= 1
    assert np.abs(ap.apply_appearance(rgb, ap.Appearance(brightness=0.9)).astype(int) - np.rint(rgb * 0.9)).max() <= 1


def test_slide_appearances_depend_on_lab_and_slide_id_only():
    a = ap.slide_appearance("C", "demo_validation_labc")
    assert a == ap.slide_appearance("C", "demo_validation_labc")  # no seed anywhere: every benchmark seed alike
    assert a != ap.slide_appearance("C", "demo_validation_normal")  # slides of one lab jitter about it
    fields = ["h_scale", "e_scale", "h_hue_deg", "e_hue_deg", "brightness", "saturation"]
    spread = {"h_scale": 0.1, "e_scale": 0.1, "h_hue_deg": 3.0, "e_hue_deg": 3.0, "brightness": 0.02,
              "saturation": 0.05}  # fmt: skip

    def distance(x, y):
        return sum(((getattr(x, f) - getattr(y, f)) / spread[f]) ** 2 for f in fields)

    for spec in DEMO_SLIDES:
        own = ap.slide_appearance(spec.lab, spec.slide_id)
        nearest = min(ap.LABS, key=lambda lab: distance(own, ap.LABS[lab]))
        assert nearest == spec.lab, spec.slide_id  # jitter is small against the differences between labs
        assert 0 <= own.defocus_sigma <= ap.MAX_DEFOCUS_SIGMA
        assert ap.JPEG_QUALITY_RANGE[0] <= own.jpeg_quality <= ap.JPEG_QUALITY_RANGE[1]
    for x, y in itertools.combinations(ap.LABS.values(), 2):
        assert distance(x, y) > 4
    assert set(ap.TRAINING_LABS) == {"A", "B"}
    assert ap.LABS["C"].h_scale == 1.3 and ap.LABS["C"].e_scale == 0.8
    with pytest.raises(ap.AppearanceError, match="unknown lab 'Z'"):
        ap.slide_appearance("Z", "demo_test")


def test_bad_appearance_is_refused():
    rgb, _ = _stained()
    with pytest.raises(ap.AppearanceError, match="defocus_sigma"):
        ap.apply_appearance(rgb, ap.Appearance(defocus_sigma=2.0))
    with pytest.raises(ap.AppearanceError, match="jpeg_quality"):
        ap.apply_appearance(rgb, ap.Appearance(jpeg_quality=40))
    with pytest.raises(ap.AppearanceError, match="uint8 RGB"):
        ap.apply_appearance(rgb.astype(float), ap.IDENTITY)


def _reference(a: np.ndarray, transform: str) -> np.ndarray:
    """Hand-written index maps: counter-clockwise quarter turns (out[i, j] = a[j, W-1-i]), then a mirror."""
    turns, mirror = ap.DIHEDRAL[transform]
    out = a
    for _ in range(turns):
        h, w = out.shape[:2]
        out = np.array([[out[j, w - 1 - i] for j in range(h)] for i in range(w)])
    if mirror:
        h, w = out.shape[:2]
        out = np.array([[out[i, w - 1 - j] for j in range(w)] for i in range(h)])
    return out


def test_dihedral_transforms_are_exact():
    a = np.arange(3 * 5 * 2).reshape(3, 5, 2)
    seen = set()
    for name in ap.DIHEDRAL:
        out = ap.dihedral(a, name)
        np.testing.assert_array_equal(out, _reference(a, name))
        assert out.flags["C_CONTIGUOUS"]
        seen.add(out.tobytes() + bytes(out.shape))
        # Each transform is undone by one of the eight: a pure rearrangement of the pixels.
        assert any(np.array_equal(ap.dihedral(out, back), a) for back in ap.DIHEDRAL)
        np.testing.assert_array_equal(np.sort(out, axis=None), np.sort(a, axis=None))
    assert len(seen) == 8
    with pytest.raises(ap.AppearanceError, match="unknown dihedral transform 'spin'"):
        ap.dihedral(a, "spin")
