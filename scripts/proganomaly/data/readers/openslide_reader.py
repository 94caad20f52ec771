"""Slides read through OpenSlide (the openslide-bin wheel bundles the library): here DICOM WSI.

OpenSlide renders any level-0 rectangle of a level; this reader asks it for one tile of the level's own tile grid at
a time (``openslide.level[i].tile-width``), so the shared region, cache and thumbnail code bounds memory exactly as
for TIFFs. Transparent pixels (no scanned data) come back as white.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..resample import as_rgb
from .base import Level, Slide, SlideError, check_square, parse_float, resolve_mpp

NAME = "openslide"
FORMATS = ("DICOM WSI",)
_DEFAULT_TILE = 512


def claims(head: bytes, vendor: str | None) -> bool:
    return vendor is not None


def detect_vendor(path: Path) -> str | None:
    """OpenSlide's name for the file's format ("aperio", "dicom", …), or None when it does not read it."""
    import openslide

    try:
        return openslide.OpenSlide.detect_format(str(path))
    except Exception:  # a file OpenSlide cannot even probe is one it does not read
        return None


def open_openslide(path: Path, mpp: float | None, cache_bytes: int, size: int) -> OpenSlideSlide:
    import openslide

    try:
        handle = openslide.OpenSlide(str(path))
    except Exception as exc:  # OpenSlideError, OpenSlideUnsupportedFormatError
        raise SlideError(
            f"slide file {path} cannot be opened by OpenSlide ({type(exc).__name__}: {exc}); it is probably "
            "truncated, corrupt or missing companion files: copy the slide (with its folder) again"
        ) from None
    try:
        _check_last_pixels(handle, path)
        resolved, source = resolve_mpp(path, mpp, lambda: _mpp_candidates(handle, path))
    except BaseException:
        handle.close()
        raise
    return OpenSlideSlide(path, handle, resolved, source, cache_bytes)


class OpenSlideSlide(Slide):
    reader = NAME

    def __init__(self, path: Path, handle, mpp: float, mpp_source: str, cache_bytes: int):
        props = handle.properties
        w0, h0 = handle.dimensions
        levels = []
        for i, (w, h) in enumerate(handle.level_dimensions):
            tile = (
                int(props.get(f"openslide.level[{i}].tile-width", _DEFAULT_TILE)),
                int(props.get(f"openslide.level[{i}].tile-height", _DEFAULT_TILE)),
            )
            levels.append(Level(width=int(w), height=int(h), downsample=(w0 / w, h0 / h), segment=tile))
        super().__init__(path, levels, mpp, mpp_source, cache_bytes)
        self._handle = handle
        self.vendor = props.get("openslide.vendor")

    def _close(self) -> None:
        self._handle.close()

    def _decode(self, level: int, row: int, col: int) -> np.ndarray:
        lv = self.levels[level]
        seg_w, seg_h = lv.segment
        x, y = col * seg_w, row * seg_h
        w, h = min(seg_w, lv.width - x), min(seg_h, lv.height - y)
        # OpenSlide takes the corner in level-0 px; on levels with a whole-number downsample (every DICOM level)
        # this lands exactly on the level's pixel (x, y), so nothing is resampled.
        origin = (round(x * self._handle.level_downsamples[level]), round(y * self._handle.level_downsamples[level]))
        try:
            rgba = self._handle.read_region(origin, level, (w, h))
        except Exception as exc:
            raise SlideError(
                f"slide file {self.path}: OpenSlide cannot read level {level} tile ({row}, {col}) "
                f"({type(exc).__name__}: {exc}); the file is corrupt: copy the slide again"
            ) from None
        return as_rgb(np.asarray(rgba))


def _check_last_pixels(handle, path: Path) -> None:
    """Read the bottom-right pixel of every level: a truncated file (its last tiles missing) fails here, at open,
    rather than halfway through a job. One tile per level is decoded."""
    w0, h0 = handle.dimensions
    for level in range(handle.level_count):
        try:
            handle.read_region((w0 - 1, h0 - 1), level, (1, 1))
        except Exception as exc:
            raise SlideError(
                f"slide file {path}: OpenSlide cannot read the end of level {level} ({type(exc).__name__}: {exc}); "
                "the file is truncated or corrupt: copy the slide again"
            ) from None


def _mpp_candidates(handle, path: Path) -> list[tuple[float, str]]:
    props = handle.properties
    mpp_x, mpp_y = parse_float(props.get("openslide.mpp-x")), parse_float(props.get("openslide.mpp-y"))
    if mpp_x != mpp_x:
        return []
    check_square(path, mpp_x, mpp_y)
    return [(mpp_x, f"OpenSlide openslide.mpp-x ({props.get('openslide.vendor')})")]
