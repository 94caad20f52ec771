"""The maps (and demo slides) as OME-TIFF pyramids: schema-valid OME-XML, every level as one series in tifffile and
tiffslide at the right µm/px, float maps without a predictor Bio-Formats cannot undo, uint16 renditions."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from proganomaly.maps import rendition
from proganomaly.maps.pyramid import write_pyramid

MPP = 4.0


def maps(tmp_path):
    rng = np.random.default_rng(5)
    kde = rng.random((700, 530), dtype=np.float32)
    kde[:40, :40] = np.nan
    rgb = rng.integers(0, 256, (700, 530, 3), dtype=np.uint8)
    written = {
        "kde.tif": (kde, {"compression": "deflate", "channel_name": "kde"}),
        "kde_color.tif": (rgb, {"compression": "jpeg", "channel_name": "kde_color"}),
        "tissue.tif": (
            (rgb[..., 0] > 127).astype(np.uint8) * 255,
            {"compression": "deflate", "channel_name": "tissue"},
        ),
        "kde.u16.tif": (
            rendition.Quantised(kde, rendition.slide_scale(kde, fraction=True)),
            {"compression": "deflate", "channel_name": "kde", "nodata": rendition.NODATA},
        ),
    }
    for name, (image, options) in written.items():
        write_pyramid(tmp_path / name, image, MPP, tile=128, description=f"proganomaly {name}", **options)
    return written


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    path = tmp_path_factory.mktemp("ome")
    return path, maps(path)


@pytest.mark.parametrize("name", ["kde.tif", "kde_color.tif", "tissue.tif", "kde.u16.tif"])
def test_ome_xml_validates_against_the_schema(written, name):
    ome_types = pytest.importorskip("ome_types")
    path, _ = written
    ome = ome_types.from_tiff(path / name, validate=True)  # raises on any schema violation
    (image,) = ome.images
    pixels = image.pixels
    assert pixels.physical_size_x == MPP and pixels.physical_size_y == MPP
    assert pixels.physical_size_x_unit.value == "µm"
    assert [c.name for c in pixels.channels] == [name.split(".")[0]]
    assert image.description == f"proganomaly {name}"


@pytest.mark.parametrize("name", ["kde.tif", "kde_color.tif", "tissue.tif", "kde.u16.tif"])
def test_every_level_is_one_pyramid_series_in_tifffile_and_tiffslide(written, name):
    import tiffslide

    path, images = written
    with tifffile.TiffFile(path / name) as tif:
        assert tif.is_ome and len(tif.series) == 1
        levels = tif.series[0].levels
        assert [lv.shape[:2] for lv in levels] == [(700, 530), (350, 265), (175, 133), (88, 67)]
        level0 = levels[0].asarray()
        page = tif.pages[0]
        # Bio-Formats undoes predictor 2 (integers) but not 3 (floats): floats are stored without one.
        lossless_int = page.dtype.kind == "u" and page.compression != tifffile.COMPRESSION.JPEG
        assert page.predictor == (2 if lossless_int else 1)
    image = np.asarray(images[name][0][:, :] if name.endswith("u16.tif") else images[name][0])
    if name != "kde_color.tif":  # lossless
        np.testing.assert_array_equal(level0, image)
    with tiffslide.TiffSlide(path / name) as slide:
        assert slide.level_count == 4
        assert slide.properties["tiffslide.mpp-x"] == pytest.approx(MPP)
        assert slide.level_downsamples[:3] == pytest.approx((1.0, 2.0, 4.0), rel=0.01)  # 530 / 133
        top = slide.read_region((0, 0), 3, slide.level_dimensions[3], as_array=True)
        np.testing.assert_array_equal(np.squeeze(top), np.squeeze(levels_of(path / name)[3]))


def levels_of(path):
    with tifffile.TiffFile(path) as tif:
        return [lv.asarray() for lv in tif.series[0].levels]


def test_uint16_rendition_keeps_values_to_a_count_and_nan_as_nodata(written):
    path, images = written
    kde = images["kde.tif"][0]
    levels = levels_of(path / "kde.u16.tif")
    counts = levels[0]
    assert counts.dtype == np.uint16
    finite = np.isfinite(kde)
    # Hand-written decoding of the documented contract: 0 = no data, value = (count - 1) / 65534.
    decoded = np.where(counts == 0, np.nan, (counts.astype(np.float64) - 1) / 65534)
    assert np.abs(decoded[finite] - kde[finite]).max() <= 0.5 / 65534 + 1e-7
    np.testing.assert_array_equal(np.isnan(decoded), ~finite)
    np.testing.assert_allclose(rendition.dequantise(counts, 1 / 65534), decoded, rtol=1e-15)
    # A value of exactly 0 is not "no data", and 1.0 is the last count.
    np.testing.assert_array_equal(rendition.quantise(np.array([0.0, 1.0, np.nan]), 1 / 65534), [1, 65535, 0])
    # Reduced levels: the nodata corner stays nodata, its scored neighbours keep their values.
    float_levels = levels_of(path / "kde.tif")
    for k in (1, 2):
        nan = np.isnan(float_levels[k])
        np.testing.assert_array_equal(levels[k] == 0, nan)
        assert np.abs((levels[k][~nan] - 1.0) / 65534 - float_levels[k][~nan]).max() < 2 / 65534


def test_slide_scale_is_fixed_for_fractions_and_the_maximum_otherwise():
    values = np.array([[0.0, 3.0], [np.nan, 12.0]], np.float32)
    assert rendition.slide_scale(values, fraction=True) == 1 / 65534
    assert rendition.slide_scale(values, fraction=False, band_rows=1) == pytest.approx(12.0 / 65534)
    assert rendition.slide_scale(np.zeros((2, 2), np.float32), fraction=False) == 1 / 65534
    np.testing.assert_array_equal(rendition.Quantised(values, 12.0 / 65534)[:, :], [[1, 16385], [0, 65535]])


def test_openslide_sees_only_level_0_of_the_ome_subifd_pyramid(written):
    """What docs/qupath.md says about OpenSlide, measured: one level, and 8-bit maps only."""
    import openslide

    path, _ = written
    with openslide.OpenSlide(str(path / "kde_color.tif")) as slide:
        assert slide.level_count == 1 and slide.dimensions == (530, 700)
