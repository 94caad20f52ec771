"""Slide formats: every reader through the same contract, the choice of reader by file content, and a DICOM WSI made
by a real converter (wsidicomizer) read back pixel-identical to its source."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
from PIL import Image

from proganomaly.data.readers import READERS, SUPPORTED
from proganomaly.data.slide import SlideError, open_slide
from proganomaly.data.tiling import tile_slide
from proganomaly.maps.pyramid import write_pyramid
from system_packages import ensure_apt
from test_slide import half_up, nan_block_mean
from test_tiling import tiling


def convert_to_dicom(source, out_dir, **kwargs):
    """wsidicomizer's conversion (its JPEG tiles are moved, not re-encoded); returns one .dcm file of the slide."""
    from wsidicomizer import WsiDicomizer

    files = WsiDicomizer.convert(
        source, out_dir, include_label=False, include_overview=False, include_thumbnail=False, **kwargs
    )
    return sorted(files)[0]


def turbojpeg_library():
    import ctypes.util

    return ctypes.util.find_library("turbojpeg")


@pytest.fixture(scope="module")
def dicom(demo_svs, tmp_path_factory):
    # wsidicomizer encodes through PyTurboJPEG, which loads Debian's libturbojpeg0 (no wheel bundles it).
    ensure_apt("libturbojpeg0", turbojpeg_library)
    return convert_to_dicom(demo_svs, tmp_path_factory.mktemp("dicom"))


@pytest.fixture(scope="module")
def source(demo_svs):
    return tifffile.imread(demo_svs)


def test_dicom_wsi_is_read_through_openslide_pixel_identical_to_its_source(dicom, source):
    with open_slide(dicom) as slide:
        assert slide.reader == "openslide" and slide.vendor == "dicom"
        assert slide.dimensions == (2220, 2967)
        assert slide.mpp == pytest.approx(0.499) and "dicom" in slide.mpp_source
        np.testing.assert_array_equal(slide.read_region(0, 0, 2220, 2967), source)
        np.testing.assert_array_equal(slide.read_region(1000, 1500, 300, 200), source[1500:1700, 1000:1300])
        region = slide.read_region(2100, 2900, 200, 100)  # past the edge: white
        np.testing.assert_array_equal(region[:67, :120], source[2900:, 2100:])
        assert (region[67:] == 255).all() and (region[:, 120:] == 255).all()
        np.testing.assert_array_equal(slide.thumbnail(16), half_up(nan_block_mean(source, 16)))


def test_tiling_reads_the_dicom_copy_exactly_like_the_svs(demo_svs, dicom):
    with open_slide(demo_svs) as svs, open_slide(dicom) as dcm:
        a, b = tile_slide(svs, "s", tiling()), tile_slide(dcm, "s", tiling())
    assert len(a.patches) > 400
    assert a.patches.equals(b.patches)
    np.testing.assert_array_equal(a.mask, b.mask)


@pytest.mark.parametrize("reader", READERS, ids=lambda r: r.name)
def test_every_reader_meets_the_same_contract_on_the_svs(reader, demo_svs, source):
    """Regions, edges, thumbnails and mpp do not depend on which reader opened the slide."""
    with reader.open(demo_svs, None, 8 * 2**20, demo_svs.stat().st_size) as slide:
        assert slide.reader == reader.name
        assert slide.dimensions == (2220, 2967) and slide.mpp == pytest.approx(0.499)
        for x, y, w, h in [(0, 0, 256, 256), (1000, 1500, 300, 200), (2100, 2900, 200, 100), (-10, -10, 20, 20)]:
            expected = np.full((h, w, 3), 255, np.uint8)
            x0, y0 = max(x, 0), max(y, 0)
            part = source[y0 : y + h, x0 : x + w]
            expected[y0 - y : y0 - y + part.shape[0], x0 - x : x0 - x + part.shape[1]] = part
            np.testing.assert_array_equal(slide.read_region(x, y, w, h), expected)
        np.testing.assert_array_equal(slide.thumbnail(16, band_bytes=1), half_up(nan_block_mean(source, 16)))
        assert slide._cache_bytes <= 8 * 2**20


def test_reader_is_chosen_by_content_not_name(demo_svs, dicom, tmp_path):
    ome = tmp_path / "slide.dcm"  # an OME-TIFF pyramid under a misleading name
    write_pyramid(ome, np.full((300, 200, 3), 200, np.uint8), 0.5, tile=64, compression="jpeg")
    with open_slide(ome) as slide:
        assert slide.reader == "tifffile" and len(slide.levels) == 4 and slide.mpp_source == "OME PhysicalSizeX"
    with open_slide(demo_svs) as slide:
        assert slide.reader == "tifffile"  # SVS stays on the faster direct path
    with open_slide(dicom) as slide:
        assert slide.reader == "openslide"


def test_unsupported_file_names_the_supported_formats(tmp_path):
    path = tmp_path / "scan.jpg"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(path, format="JPEG")
    with pytest.raises(SlideError) as err:
        open_slide(path)
    message = str(err.value)
    assert "scan.jpg is a JPEG image" in message and f"supported: {SUPPORTED}" in message and "convert it" in message
    for name in ("Aperio SVS", "generic tiled TIFF", "OME-TIFF", "DICOM WSI"):
        assert name in message


def test_truncated_dicom_fails_at_open_naming_file_and_fix(dicom, tmp_path):
    data = open(dicom, "rb").read()
    assert data[128:132] == b"DICM"
    cut = tmp_path / "cut.dcm"
    cut.write_bytes(data[: len(data) // 2])  # the header is whole, half the tiles are missing
    with pytest.raises(SlideError, match=r"cut\.dcm.*truncated or corrupt: copy the slide again"):
        open_slide(cut)
