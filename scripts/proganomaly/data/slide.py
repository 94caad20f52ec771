"""Open a whole-slide image once; read level-0 regions, patches and thumbnails lazily, tile by tile.

The reader is chosen by what the file is, not by its name (see `readers`): TIFF-based slides (Aperio SVS, generic
tiled TIFF, OME-TIFF) are read with tifffile, DICOM WSI through OpenSlide. Every reader gives the same `Slide`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .readers import SUPPORTED, reader_for
from .readers.base import Level, Slide, SlideError
from .resample import area_resize, area_weights

__all__ = ["SUPPORTED", "Level", "Slide", "SlideError", "area_resize", "area_weights", "check_slide_file"]
__all__ += ["open_slide", "read_patch"]

_KNOWN_MAGIC = {
    b"\x89PNG": "a PNG image",
    b"\xff\xd8\xff": "a JPEG image",
    b"PK\x03\x04": "a ZIP archive",
    b"GIF8": "a GIF image",
    b"BM": "a BMP image",
    b"%PDF": "a PDF document",
}
_CONVERT = (
    "convert it to a tiled pyramidal TIFF (e.g. `vips tiffsave in out.tif --tile --pyramid --compression jpeg`) "
    "and point the sheet's `path` at it"
)


def check_slide_file(path: str | Path) -> int:
    """Cheap checks before parsing: the file exists and is not empty. Returns its size in bytes."""
    path = Path(path)
    if not path.is_file():
        raise SlideError(f"slide file {path} does not exist; check the `path` column of the slide sheet")
    size = path.stat().st_size
    if size == 0:
        raise SlideError(f"slide file {path} is empty (0 bytes); copy the slide again or fix its `path` in the sheet")
    return size


def open_slide(path: str | Path, mpp: float | None = None, cache_bytes: int = 96 * 2**20) -> Slide:
    """Open a slide after cheap header and structure checks (no pixel is decoded here).

    ``mpp`` overrides the file's metadata (the slide sheet's `mpp` column). Raises SlideError for a missing, empty,
    truncated or unsupported file, an unsupported pixel layout, or when the resolution is unknown.
    """
    path = Path(path)
    size = check_slide_file(path)
    with open(path, "rb") as fh:
        head = fh.read(132)
    reader = reader_for(path, head)
    if reader is None:
        what = next((name for magic, name in _KNOWN_MAGIC.items() if head.startswith(magic)), "not a TIFF")
        raise SlideError(
            f"slide file {path} is {what}, not a TIFF or another slide format read here (supported: {SUPPORTED}); "
            + _CONVERT
        )
    return reader.open(path, mpp, cache_bytes, size)


def read_patch(slide: Slide, x: int, y: int, size_l0: int, out_px: int, from_pyramid: bool = False) -> np.ndarray:
    """The level-0 square [x, x+size_l0)² as uint8 (out_px, out_px, 3), area-resampled when size_l0 != out_px.

    from_pyramid: read it from the coarsest pyramid level still at least as fine as out_px (Slide.patch_level), which
    decodes k² times fewer pixels; the level's pixels are the scanner's downscale of level 0, not its exact mean.
    """
    level, k = slide.patch_level(x, y, size_l0, out_px) if from_pyramid else (0, 1)
    side = size_l0 // k
    region = (
        slide.read_level_region(level, x // k, y // k, side, side) if level else slide.read_region(x, y, side, side)
    )
    if side == out_px:
        return region
    return area_resize(region, out_px, out_px)
