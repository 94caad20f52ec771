"""The benchmark's anomaly classes on a synthetic skin-like image: deterministic, blended, local, and each changing
what it claims to (blur the sharpness, ink the hue, magnification the scale but not the stain)."""

import json

import numpy as np
import pytest
import shapely
from scipy import ndimage
from shapely.geometry import Point
from skimage import color, filters

from proganomaly.demo import anomalies as an


def _skin(seed: int = 0, size: int = 360, epidermis_px: int = 90, glass_px: int = 40) -> tuple[np.ndarray, np.ndarray]:
    """(rgb, tissue): an epidermis band of dense nuclei on the left, collagenous dermis with sparse nuclei, glass
    on the right."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    streaks = ndimage.gaussian_filter(rng.standard_normal((size, size)), (1.0, 6.0))
    streaks = (streaks - streaks.mean()) / streaks.std()
    img = np.empty((size, size, 3))
    img[:] = [232.0, 140.0, 180.0]
    img += streaks[..., None] * np.array([10.0, 30.0, 20.0])
    img[:, :epidermis_px] = [200.0, 160.0, 205.0]
    nuclei = np.zeros((size, size), bool)
    for _ in range(500):
        cy, cx = rng.uniform(0, size), rng.uniform(0, epidermis_px)
        nuclei |= (yy - cy) ** 2 + (xx - cx) ** 2 < rng.uniform(9, 20)
    for _ in range(60):
        cy, cx = rng.uniform(0, size), rng.uniform(epidermis_px, size - glass_px)
        nuclei |= ((yy - cy) / 2.5) ** 2 + (xx - cx) ** 2 < 6
    img[nuclei] = [95.0, 60.0, 145.0]
    img += rng.normal(0, 5, img.shape)
    tissue = xx < size - glass_px
    img[~tissue] = [243.0, 242.0, 244.0]
    return np.clip(np.rint(img), 0, 255).astype(np.uint8), tissue


def _dermis_only(seed: int = 0, size: int = 360) -> tuple[np.ndarray, np.ndarray]:
    rgb, _ = _skin(seed, size, epidermis_px=0, glass_px=0)
    return rgb, np.ones(rgb.shape[:2], bool)


def _region(kind: str, cx: float = 210.0, cy: float = 180.0, size: float = 140.0, seed: int = 0):
    spec = an.KINDS[kind]
    shape = spec.outline(np.random.default_rng(seed), size, spec.aspect)
    return shapely.set_precision(shapely.affinity.translate(shape, cx, cy), 0.01)


def _apply(kind: str, rgb=None, tissue=None, seed: int = 1, **region):
    if rgb is None:
        rgb, tissue = _skin()
    poly = _region(kind, **region)
    return rgb, poly, an.KINDS[kind].apply(rgb, poly, np.random.default_rng(seed), source=rgb, tissue=tissue)


def _inner(mask: np.ndarray, kind: str) -> np.ndarray:
    """The part of the region where alpha is 1: the mask shrunk by half the feather and a pixel."""
    return ndimage.distance_transform_edt(mask) > an.KINDS[kind].feather_px / 2 + 1


KINDS = list(an.KINDS)


def test_registry():
    assert set(KINDS) == {"ihc", "magnified", "cell_islands", "blur", "ink", "fold"}
    assert {spec.group for spec in an.KINDS.values()} == set(an.GROUPS)
    names = [spec.classification for spec in an.KINDS.values()]
    assert len(set(names)) == len(names)
    assert an.KINDS["ihc"].group == "foreign stain"
    assert {k for k, s in an.KINDS.items() if s.group == "same-stain tissue"} == {"magnified", "cell_islands"}
    assert {k for k, s in an.KINDS.items() if s.group == "artefacts"} == {"blur", "ink", "fold"}


@pytest.mark.parametrize("kind", KINDS)
def test_kind_is_deterministic(kind):
    _, _, a = _apply(kind, seed=7)
    _, _, b = _apply(kind, seed=7)
    _, _, c = _apply(kind, seed=8)
    assert np.array_equal(a.rgb, b.rgb) and np.array_equal(a.alpha, b.alpha) and np.array_equal(a.mask, b.mask)
    assert a.rgb.dtype == np.uint8 and a.alpha.dtype == np.float32 and a.mask.dtype == bool
    # The seed drives the content: a different one gives a different picture in the same region.
    assert not np.array_equal(a.rgb, c.rgb)


@pytest.mark.parametrize("kind", KINDS)
def test_alpha_and_annotation_agree(kind):
    rgb, poly, result = _apply(kind)
    assert result.alpha.min() >= 0.0 and result.alpha.max() <= 1.0
    assert np.array_equal(result.mask, result.alpha >= 0.5)
    assert np.array_equal(result.mask, an.rasterise(poly, *rgb.shape[:2]))
    assert np.all(result.alpha[_inner(result.mask, kind)] == 1.0)


@pytest.mark.parametrize("kind", KINDS)
def test_edges_are_blended(kind):
    _, _, result = _apply(kind)
    feather = an.KINDS[kind].feather_px
    steps = max(np.abs(np.diff(result.alpha, axis=0)).max(), np.abs(np.diff(result.alpha, axis=1)).max())
    assert steps <= 1.5 / feather + 1e-6
    ramp = (result.alpha > 0.05) & (result.alpha < 0.95)
    # The soft edge is a band around the whole outline, not a few stray pixels.
    assert ramp.sum() >= 0.5 * feather * shapely.length(_region(kind))


@pytest.mark.parametrize("kind", KINDS)
def test_changes_stay_inside_the_dilated_region(kind):
    rgb, _, result = _apply(kind)
    changed = np.any(result.rgb != rgb, axis=-1)
    assert changed.any()
    assert not np.any(changed & (result.alpha == 0))
    reach = ndimage.distance_transform_edt(~result.mask) <= an.KINDS[kind].feather_px / 2 + 1
    assert not np.any((result.alpha > 0) & ~reach)
    # And it does change the region itself, not only its rim.
    assert changed[_inner(result.mask, kind)].mean() > 0.5


def _gradient_energy(rgb: np.ndarray, where: np.ndarray) -> float:
    return float((filters.sobel(color.rgb2gray(rgb)) ** 2)[where].mean())


def test_blur_lowers_gradient_energy():
    rgb, _, result = _apply("blur")
    inner = _inner(result.mask, "blur")
    assert _gradient_energy(result.rgb, inner) < 0.3 * _gradient_energy(rgb, inner)
    # Mean colour stays: blur moves no stain.
    assert np.allclose(result.rgb[inner].mean(0), rgb[inner].mean(0), atol=4)


def _mean_hue_distance(rgb: np.ndarray, where: np.ndarray, target: float) -> float:
    hue = color.rgb2hsv(rgb)[..., 0][where] * 2 * np.pi
    mean = np.angle(np.exp(1j * hue).mean()) / (2 * np.pi) % 1.0
    return min(abs(mean - target), 1 - abs(mean - target))


def test_ink_turns_the_region_blue_green():
    rgb, _, result = _apply("ink")
    inner = _inner(result.mask, "ink")
    cyan = 0.5
    assert _mean_hue_distance(result.rgb, inner, cyan) < 0.12 < _mean_hue_distance(rgb, inner, cyan)
    before, after = rgb[inner].astype(float), result.rgb[inner].astype(float)
    # A dye only absorbs: every channel darkens, red most.
    assert np.all(after <= before + 1)
    assert (before - after)[:, 0].mean() > 2 * (before - after)[:, 2].mean()


def _autocorrelation_width(grey: np.ndarray) -> float:
    """Radius at which the radially averaged autocorrelation of a patch falls to one half."""
    g = grey - grey.mean()
    spectrum = np.abs(np.fft.fft2(g, s=(2 * g.shape[0], 2 * g.shape[1]))) ** 2
    acf = np.fft.fftshift(np.real(np.fft.ifft2(spectrum)))
    acf /= acf.max()
    cy, cx = np.array(acf.shape) // 2
    yy, xx = np.indices(acf.shape)
    r = np.rint(np.hypot(yy - cy, xx - cx)).astype(int)
    profile = np.bincount(r.ravel(), acf.ravel()) / np.bincount(r.ravel())
    return float(np.argmax(profile < 0.5))


def test_magnified_keeps_the_stain_and_enlarges_the_texture():
    rgb, tissue = _dermis_only(3)
    rgb, poly, result = _apply("magnified", rgb, tissue, cx=180, cy=180, size=200)
    c = poly.centroid
    box = (slice(int(c.y) - 32, int(c.y) + 32), slice(int(c.x) - 32, int(c.x) + 32))
    assert result.mask[box].all()
    inner = _inner(result.mask, "magnified")
    assert np.allclose(result.rgb[inner].mean(0), rgb[inner].mean(0), atol=8)
    before = _autocorrelation_width(color.rgb2gray(rgb[box]))
    after = _autocorrelation_width(color.rgb2gray(result.rgb[box]))
    assert after >= 1.3 * before
    # The unsharp mask keeps it from reading as blur: gradient energy stays within a factor of the original.
    assert _gradient_energy(result.rgb, inner) > 0.3 * _gradient_energy(rgb, inner)


def _optical_density(rgb: np.ndarray) -> np.ndarray:
    return -np.log(np.maximum(rgb.astype(float), 1) / 255).sum(-1)


def test_fold_is_a_darker_more_saturated_band():
    rgb, poly, result = _apply("fold", size=220)
    inner = _inner(result.mask, "fold")
    assert inner.any()
    assert _optical_density(result.rgb)[inner].mean() > 1.4 * _optical_density(rgb)[inner].mean()
    sat = color.rgb2hsv(result.rgb)[..., 1][inner].mean()
    assert sat > color.rgb2hsv(rgb)[..., 1][inner].mean()
    # A band, not a blob.
    rect = np.asarray(poly.minimum_rotated_rectangle.exterior.coords)[:3]
    sides = sorted(np.hypot(*np.diff(rect, axis=0).T))
    assert sides[0] < 0.5 * sides[1]


def test_cell_islands_bring_nuclei_into_dermis():
    rgb, tissue = _skin(4)
    density = an.nuclei_density(rgb, tissue)
    _, _, result = _apply("cell_islands", rgb, tissue, cx=230, cy=180, size=90)
    inner = _inner(result.mask, "cell_islands")
    after = an.nuclei_density(result.rgb, tissue)
    assert after[inner].mean() > 2 * density[inner].mean()
    # The epidermis is the densest tissue, the region's dermis far below it.
    assert density[:, :90].mean() > 3 * density[:, 150:300].mean()


def test_ihc_brings_brown_dab():
    rgb, _, result = _apply("ihc")
    inner = _inner(result.mask, "ihc")
    dab_before = color.rgb2hed(rgb)[..., 2][inner].mean()
    dab_after = color.rgb2hed(result.rgb)[..., 2][inner].mean()
    assert dab_after > dab_before + 0.01


def test_place_anomalies_on_tissue_apart_and_deterministic():
    rgb, tissue = _skin(5, size=720, epidermis_px=160, glass_px=60)
    kinds = ["ihc", "magnified", "cell_islands", "blur", "ink", "fold"]
    sizes = {k: (80, 110) for k in kinds} | {"fold": (140, 170)}
    out_a, placed_a = an.place_anomalies(rgb, tissue, kinds, np.random.default_rng(11), sizes=sizes)
    out_b, placed_b = an.place_anomalies(rgb, tissue, kinds, np.random.default_rng(11), sizes=sizes)
    assert np.array_equal(out_a, out_b)
    assert [p.polygon.wkt for p in placed_a] == [p.polygon.wkt for p in placed_b]
    assert [p.kind for p in placed_a] == kinds
    assert [p.classification for p in placed_a] == [an.KINDS[k].classification for k in kinds]
    density = an.nuclei_density(rgb, tissue)
    for i, p in enumerate(placed_a):
        inside = an.rasterise(p.polygon, *rgb.shape[:2])
        assert tissue[inside].mean() >= 0.9
        for q in placed_a[i + 1 :]:
            assert p.polygon.distance(q.polygon) >= 32
        if p.kind == "cell_islands":
            assert density[inside].mean() <= np.quantile(density[tissue], 0.5) + 1e-9
    # Nothing changed off the regions' soft edges.
    halo = np.zeros(tissue.shape, bool)
    for p in placed_a:
        grown = p.polygon.buffer(an.KINDS[p.kind].feather_px / 2 + 1.5)
        halo |= an.rasterise(grown, *rgb.shape[:2])
    assert not np.any(np.any(out_a != rgb, axis=-1) & ~halo)
    # The input is left alone.
    assert np.array_equal(rgb, _skin(5, size=720, epidermis_px=160, glass_px=60)[0])


def test_place_anomalies_refuses_what_does_not_fit():
    rgb, tissue = _skin(6, size=200, glass_px=20)
    with pytest.raises(an.AnomalyError, match="no room"):
        an.place_anomalies(rgb, tissue, ["ink"] * 12, np.random.default_rng(0), sizes={"ink": (150, 160)},
                           max_tries=200)  # fmt: skip
    with pytest.raises(an.AnomalyError, match="unknown anomaly kinds"):
        an.place_anomalies(rgb, tissue, ["smudge"], np.random.default_rng(0))
    with pytest.raises(an.AnomalyError, match="bool mask"):
        an.place_anomalies(rgb, tissue[:10], ["ink"], np.random.default_rng(0))


def test_annotation_features_are_qupath_annotations():
    placed = [an.PlacedAnomaly("ink", an.KINDS["ink"].classification, Point(50, 60).buffer(20))]
    (feature,) = an.annotation_features(placed)
    doc = json.loads(json.dumps({"type": "FeatureCollection", "features": [feature]}))
    f = doc["features"][0]
    assert f["type"] == "Feature" and f["geometry"]["type"] == "Polygon"
    assert f["properties"]["objectType"] == "annotation"
    assert f["properties"]["classification"] == {"name": "Marker ink", "color": list(an.KINDS["ink"].color)}
    assert shapely.geometry.shape(f["geometry"]).equals(placed[0].polygon)


def test_feathered_alpha_near_the_border_and_rejects_hairline_feathers():
    poly = Point(5, 5).buffer(20)
    alpha, mask = an.feathered_alpha(poly, (64, 64, 3), 8.0)
    assert mask[0, 0] and alpha[0, 0] > 0.5
    with pytest.raises(an.AnomalyError, match="feather"):
        an.feathered_alpha(poly, (64, 64, 3), 0.5)
