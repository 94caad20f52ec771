"""proganomaly.data.stain and proganomaly.training.augment: per-slide stain normalisation and HED jitter.

The references are independent of the module: images are made by Beer–Lambert from known stain vectors, re-stained
and measured with scikit-image's colour deconvolution (rgb2hed / hed2rgb) and CIELAB conversion (rgb2lab).
"""

import json

import numpy as np
import pytest
from skimage.color import hed2rgb, rgb2hed, rgb2lab

from proganomaly.data import stain as st

# Ruifrok & Johnston's H and E, unit length: H absorbs more red than E.
H_VEC = np.array([0.65, 0.70, 0.29]) / np.linalg.norm([0.65, 0.70, 0.29])
E_VEC = np.array([0.07, 0.99, 0.11]) / np.linalg.norm([0.07, 0.99, 0.11])


def cosine(a, b):
    return float(np.dot(a, b) / np.linalg.norm(a) / np.linalg.norm(b))


def beer_lambert(c, vectors, i0=240.0):
    """uint8 RGB of (…, k) concentrations on (k, 3) stain OD vectors, under illumination i0."""
    od = c @ np.asarray(vectors)
    return np.clip(np.rint(i0 * np.exp(-od)), 0, 255).astype(np.uint8)


def tissue_concentrations(shape, seed=0):
    """H and E concentrations of a plausible tissue: pure nuclei (H), pure stroma (E) and mixtures."""
    rng = np.random.default_rng(seed)
    kind = rng.integers(0, 3, shape)
    c = np.zeros((*shape, 2))
    c[..., 0] = np.where(kind != 1, rng.uniform(0.3, 1.6, shape), 0.0)
    c[..., 1] = np.where(kind != 0, rng.uniform(0.3, 1.0, shape), 0.0)
    return c


def slide_with_background(tissue_rgb, background=240, width=32):
    """The tissue with a band of glass on the left, and the tissue mask."""
    h = tissue_rgb.shape[0]
    glass = np.full((h, width, 3), background, np.uint8)
    mask = np.concatenate([np.zeros((h, width), bool), np.ones(tissue_rgb.shape[:2], bool)], axis=1)
    return np.concatenate([glass, tissue_rgb], axis=1), mask


@pytest.mark.parametrize("vectors", [[H_VEC, E_VEC], [E_VEC, H_VEC]], ids=["H-first", "E-first"])
def test_macenko_recovers_known_stain_vectors_hematoxylin_first(vectors):
    c = tissue_concentrations((160, 160))
    if vectors[0] is E_VEC:  # the other stain dominates: the order must not follow abundance
        c = c[..., ::-1]
    rgb, mask = slide_with_background(beer_lambert(c, vectors))
    params = st.estimate(rgb, mask)
    assert params["macenko"]["status"] == "ok"
    assert params["i0"] == [240.0, 240.0, 240.0] and params["i0_source"].startswith("median")
    he = np.asarray(params["macenko"]["stain_matrix"])
    assert cosine(he[:, 0], H_VEC) > 0.99
    assert cosine(he[:, 1], E_VEC) > 0.99
    np.testing.assert_allclose(np.linalg.norm(he, axis=0), 1.0, atol=1e-5)


def test_background_falls_back_to_240_without_glass():
    rgb = beer_lambert(tissue_concentrations((64, 64)), [H_VEC, E_VEC], i0=250.0)
    params = st.estimate(rgb, np.ones((64, 64), bool))
    assert params["i0"] == [240.0] * 3 and "default" in params["i0_source"]
    dark, mask = slide_with_background(rgb, background=90)  # a black border, not glass
    assert st.estimate(dark, mask)["i0"] == [240.0] * 3


def test_unstained_slide_falls_back_to_the_reference():
    rgb = np.full((40, 40, 3), 235, np.uint8)
    mask = np.zeros((40, 40), bool)
    mask[10:30, 10:30] = True
    params = st.estimate(rgb, mask)
    assert params["macenko"]["status"] == "fallback" and "OD" in params["macenko"]["reason"]
    np.testing.assert_allclose(params["macenko"]["stain_matrix"], st.HE_REF)


def he_image(h, e, d=None):
    """uint8 RGB from skimage HED concentrations (skimage's own units)."""
    hed = np.stack([h, e, np.zeros_like(h) if d is None else d], axis=-1)
    return np.clip(np.rint(hed2rgb(hed) * 255), 0, 255).astype(np.uint8)


def restain(rgb, h_factor, e_factor):
    """The image as another lab would stain it: H and E optical densities scaled (skimage's deconvolution)."""
    hed = rgb2hed(rgb)
    return he_image(hed[..., 0] * h_factor, hed[..., 1] * e_factor, hed[..., 2])


def mean_he(rgb, mask):
    hed = rgb2hed(rgb)[mask]
    return hed[:, 0].mean(), hed[:, 1].mean()


def restained_pair(seed=3):
    """A slide and its re-stained copy (H ×1.3, E ×0.8), each with its own ±1 grey level of scanner noise."""
    rng = np.random.default_rng(seed)
    c = tissue_concentrations((128, 128), seed=seed) * 0.035  # skimage's HED units: OD / ln(10^6)
    original, mask = slide_with_background(he_image(c[..., 0], c[..., 1]), background=255)
    shifted = restain(original, 1.3, 0.8)

    def scan(im):
        return np.clip(im.astype(int) + rng.integers(-1, 2, im.shape) * mask[..., None], 0, 255).astype(np.uint8)

    return scan(original), scan(shifted), mask


def test_macenko_undoes_a_restaining():
    original, shifted, mask = restained_pair()
    before = np.array(mean_he(shifted, mask)) / np.array(mean_he(original, mask))
    assert before[0] > 1.2 and before[1] < 0.85  # the re-staining is a large shift
    norm_orig = st.normalise(original[None], st.estimate(original, mask), "macenko")[0]
    norm_shift = st.normalise(shifted[None], st.estimate(shifted, mask), "macenko")[0]
    after = np.array(mean_he(norm_shift, mask)) / np.array(mean_he(norm_orig, mask))
    # Within 5 % of the unshifted image's normalised H and E (the shift was +30 % / -20 %; measured ~1-2 %).
    np.testing.assert_allclose(after, 1.0, atol=0.05)


def test_reinhard_matches_colour_but_not_the_stain_ratio_of_a_restaining():
    """Reinhard aligns the slides' tissue colour statistics; it cannot undo H and E moving in opposite directions
    (measured: H restored, E ×0.73 instead of ×0.8 before), which is what Macenko is for."""
    original, shifted, mask = restained_pair()
    lab = [rgb2lab(im[mask][None])[0].mean(axis=0) for im in (original, shifted)]
    gap_before = np.linalg.norm(lab[1] - lab[0])
    assert gap_before > 2.5
    out = [st.normalise(im[None], st.estimate(im, mask), "reinhard")[0] for im in (original, shifted)]
    lab = [rgb2lab(im[mask][None])[0].mean(axis=0) for im in out]
    assert np.linalg.norm(lab[1] - lab[0]) < gap_before / 3, (gap_before, np.linalg.norm(lab[1] - lab[0]))
    ratio = np.array(mean_he(out[1], mask)) / np.array(mean_he(out[0], mask))
    assert abs(ratio[0] - 1) < 0.05


@pytest.mark.parametrize("method", ["macenko", "reinhard"])
def test_normalisation_is_identity_when_the_slide_is_the_reference(method):
    rng = np.random.default_rng(4)
    batch = rng.integers(0, 256, (3, 24, 24, 3), dtype=np.uint8)
    batch[0] = beer_lambert(tissue_concentrations((24, 24)), st.HE_REF.T, i0=255.0)
    out = st.normalise(batch, st.reference_params(), method)
    assert out.dtype == np.uint8 and out.shape == batch.shape
    assert np.abs(out.astype(int) - batch).max() <= 2


def test_none_returns_the_patches_and_bad_method_or_params_name_the_fix(tmp_path):
    batch = np.zeros((1, 4, 4, 3), np.uint8)
    assert st.normalise(batch, {}, "none") is batch
    with pytest.raises(st.StainError, match=r"stain\.normalisation"):
        st.normalise(batch, st.reference_params(), "vahadane")
    with pytest.raises(st.StainError, match="rerun tile_slide"):
        st.normalise(batch, {"i0": [255] * 3}, "macenko")
    with pytest.raises(st.StainError, match="does not exist; rerun tile_slide"):
        st.slide_normaliser("macenko", tmp_path / "nope.stain.json")
    (tmp_path / "old.stain.json").write_text(json.dumps({"i0": [240] * 3}))
    with pytest.raises(st.StainError, match="lacks"):
        st.slide_normaliser("reinhard", tmp_path / "old.stain.json")
    assert st.slide_normaliser("none", None) is None


def test_glass_stays_white():
    rgb, mask = slide_with_background(beer_lambert(tissue_concentrations((64, 64)), [H_VEC, E_VEC], 236), 236)
    params = st.estimate(rgb, mask)
    glass = rgb[None, :, :8]
    assert (st.normalise(glass, params, "macenko") >= 254).all()  # the slide's glass level becomes white
    np.testing.assert_array_equal(st.normalise(glass, params, "reinhard"), glass)  # Reinhard leaves glass alone


def test_dab_region_stays_distinguishable_after_normalisation():
    """A patch of foreign (DAB-brown) tissue must not be normalised into H&E: that is why stains are per slide."""
    c = tissue_concentrations((96, 96), seed=5) * 0.035
    d = np.zeros((96, 96))
    d[:32, :32] = 0.04  # brown DAB with a hematoxylin counterstain
    h, e = c[..., 0].copy(), c[..., 1].copy()
    e[:32, :32] = 0.0
    rgb, mask = slide_with_background(he_image(h, e, d), background=255)
    dab = np.zeros_like(mask)
    dab[:32, 32:64] = True
    he_tissue = mask & ~dab
    params = st.estimate(rgb, mask)
    for method in ("macenko", "reinhard"):
        out = st.normalise(rgb[None], params, method)[0].astype(float)
        gap = np.linalg.norm(out[dab].mean(axis=0) - out[he_tissue].mean(axis=0))
        assert gap > 40, (method, gap)
        # skimage's DAB channel: the brown survives (H&E tissue reads ~0.03 in it after normalisation, as the
        # reference's H and E are not Ruifrok's).
        hed = rgb2hed(out.astype(np.uint8))[..., 2]
        assert hed[dab].mean() > hed[he_tissue].mean() + 0.01, method


def test_reinhard_matches_the_reference_lab_statistics_on_tissue():
    c = tissue_concentrations((128, 128), seed=6) + 0.2  # every tissue pixel stained above the glass threshold
    rgb, mask = slide_with_background(beer_lambert(c, [H_VEC, E_VEC]))
    params = st.estimate(rgb, mask)
    lab = rgb2lab(rgb[mask][None])[0]
    np.testing.assert_allclose(params["reinhard"]["lab_mean"], lab.mean(axis=0), atol=1e-4)
    np.testing.assert_allclose(params["reinhard"]["lab_std"], lab.std(axis=0), rtol=1e-4)
    out = rgb2lab(st.normalise(rgb[None], params, "reinhard")[0][mask][None])[0]
    ref_mean, ref_std = st.reinhard_reference()
    np.testing.assert_allclose(out.mean(axis=0), ref_mean, atol=1.5)
    np.testing.assert_allclose(out.std(axis=0), ref_std, rtol=0.1)


def test_reference_constants_and_reinhard_reference_from_them():
    np.testing.assert_allclose(st.HE_REF, [[0.5626, 0.2159], [0.7201, 0.8012], [0.4062, 0.5581]])
    np.testing.assert_allclose(st.MAX_C_REF, [1.9705, 1.0308])
    grid = np.stack(np.meshgrid(np.linspace(0, 1.9705, 64), np.linspace(0, 1.0308, 64)), axis=-1).reshape(-1, 2)
    rgb = np.clip(np.rint(256 * np.exp(-grid @ st.HE_REF.T) - 1), 0, 255).astype(np.uint8)
    lab = rgb2lab(rgb[None])[0]
    mean, std = st.reinhard_reference()
    np.testing.assert_allclose(mean, lab.mean(axis=0), atol=1e-3)
    np.testing.assert_allclose(std, lab.std(axis=0), atol=1e-3)


def test_numpy_hed_jitter_scales_skimage_hed_channels():
    """Jitter with α and no shift scales H and E as skimage's deconvolution measures them, DAB untouched."""
    c = tissue_concentrations((32, 32), seed=7) * 0.035
    batch = he_image(c[..., 0], c[..., 1])[None]
    out = st.hed_jitter(batch, np.array([[1.2, 0.9]]), np.zeros((1, 2)))
    mask = np.ones((32, 32), bool)
    ratio = np.array(mean_he(out[0], mask)) / np.array(mean_he(batch[0], mask))
    np.testing.assert_allclose(ratio, [1.2, 0.9], atol=0.02)
    np.testing.assert_array_equal(st.hed_jitter(batch, np.ones((1, 2)), np.zeros((1, 2))), batch)


def test_tf_hed_jitter_matches_numpy_and_is_seeded():
    tf = pytest.importorskip("tensorflow")
    from proganomaly.training.augment import apply_hed_jitter, hed_jitter, jitter_draws, stain_jitter

    rng = np.random.default_rng(8)
    batch = rng.integers(0, 256, (4, 8, 8, 3), dtype=np.uint8)
    alpha, beta = jitter_draws(4, 0.1, tf.constant([1, 2], tf.int64))
    a, b = alpha.numpy(), beta.numpy()
    assert (np.abs(a - 1) <= 0.1).all() and (np.abs(b) <= 0.1).all() and a.std() > 0
    got = apply_hed_jitter(tf.constant(batch), alpha, beta).numpy()
    assert np.abs(got.astype(int) - st.hed_jitter(batch, a, b)).max() <= 1
    seed = tf.constant([5, 0], tf.int64)
    np.testing.assert_array_equal(hed_jitter(batch, 0.1, seed), hed_jitter(batch, 0.1, seed))
    assert not np.array_equal(hed_jitter(batch, 0.1, seed), hed_jitter(batch, 0.1, tf.constant([6, 0], tf.int64)))
    assert np.abs(hed_jitter(batch, 0.0, seed).numpy().astype(int) - batch).max() <= 1

    ds = tf.data.Dataset.from_tensor_slices(rng.integers(0, 256, (6, 2, 8, 8, 3), dtype=np.uint8))
    assert stain_jitter(ds, 0.0, 3) is ds  # σ = 0: the pipeline is untouched
    first = [x.numpy() for x in stain_jitter(ds, 0.05, 3)]
    again = [x.numpy() for x in stain_jitter(ds, 0.05, 3)]
    resumed = [x.numpy() for x in stain_jitter(ds, 0.05, 3).skip(4)]  # the trainer skips batches on resume
    for x, y in zip(first, again, strict=True):
        np.testing.assert_array_equal(x, y)
    for x, y in zip(first[4:], resumed, strict=True):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(first[0], next(x.numpy() for x in ds))
