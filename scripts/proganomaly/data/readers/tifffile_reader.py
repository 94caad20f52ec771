"""TIFF-based slides read with tifffile: Aperio SVS, generic tiled or stripped (pyramidal) TIFF, OME-TIFF.

Compressed tiles are decoded by imagecodecs through ``TiffPage.decode``, straight from their bytes in the file; the
structure (levels, sample layout, codec, that every segment lies inside the file) is checked from the headers alone,
before any pixel is decoded.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import tifffile

from ..resample import as_rgb
from .base import Level, Slide, SlideError, check_square, parse_float, resolve_mpp

NAME = "tifffile"
FORMATS = ("Aperio SVS", "generic tiled TIFF", "OME-TIFF")
# OpenSlide vendors whose files this reader takes; it decodes their tiles straight from the file, without OpenSlide's
# per-tile RGBA conversion, and reads SubIFD pyramids that OpenSlide sees as one level.
OPENSLIDE_VENDORS = (None, "aperio", "generic-tiff")


def claims(head: bytes, vendor: str | None) -> bool:
    return head[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+") and vendor in OPENSLIDE_VENDORS


def open_tiff(path: Path, mpp: float | None, cache_bytes: int, size: int) -> TiffSlide:
    if size < 16:
        raise SlideError(f"slide file {path} is truncated ({size} bytes); copy the slide again")
    try:
        tif = tifffile.TiffFile(path)
    except Exception as exc:  # tifffile raises many types on corrupt input
        raise SlideError(
            f"slide file {path} cannot be parsed as TIFF ({type(exc).__name__}: {exc}); it is probably truncated or "
            "corrupt: copy the slide again"
        ) from None
    try:
        pages = _level_pages(tif, path)
        for page in pages:
            _check_page(page, path, size)
        resolved, source = resolve_mpp(path, mpp, lambda: _mpp_candidates(tif, pages[0], path))
    except BaseException:
        tif.close()
        raise
    return TiffSlide(path, tif, pages, resolved, source, cache_bytes)


class TiffSlide(Slide):
    reader = NAME

    def __init__(self, path: Path, tif: tifffile.TiffFile, pages: list, mpp: float, mpp_source: str, cache_bytes):
        base = pages[0]
        levels = [
            Level(
                width=int(p.imagewidth),
                height=int(p.imagelength),
                downsample=(base.imagewidth / p.imagewidth, base.imagelength / p.imagelength),
                segment=_segment_size(p),
            )
            for p in pages
        ]
        super().__init__(path, levels, mpp, mpp_source, cache_bytes)
        self._tif, self._pages = tif, pages
        # The read pool's threads share one file position, so seek + read must be atomic. tifffile's own
        # FileHandle.lock is a no-op unless switched on; switched on, the reads here and any read tifffile makes by
        # itself (e.g. a delay-loaded tag value) take the same lock.
        tif.filehandle.set_lock(True)

    def _close(self) -> None:
        self._tif.close()

    def _decode(self, level: int, row: int, col: int) -> np.ndarray:
        page, lv = self._pages[level], self.levels[level]
        index = row * math.ceil(lv.width / lv.segment[0]) + col
        offset, count = page.dataoffsets[index], page.databytecounts[index]
        fh = self._tif.filehandle
        data = None
        if count:
            with fh.lock:
                fh.seek(offset)
                data = fh.read(count)
        try:
            decoded, _, shape = page.decode(data, index, jpegtables=page.jpegtables)
        except Exception as exc:
            raise SlideError(
                f"slide file {self.path}: cannot decode level {level} segment {index} ({type(exc).__name__}: {exc}); "
                "the file is corrupt: copy the slide again"
            ) from None
        if decoded is None:  # an empty segment: background
            return np.full((shape[1], shape[2], 3), 255, np.uint8)
        return as_rgb(np.asarray(decoded)[0])


def _segment_size(page: tifffile.TiffPage) -> tuple[int, int]:
    """(width, height) of the page's tiles, or of its strips (whole rows)."""
    if page.is_tiled:
        return int(page.tilewidth), int(page.tilelength)
    return int(page.imagewidth), int(min(page.rowsperstrip, page.imagelength))


def _level_pages(tif: tifffile.TiffFile, path: Path) -> list[tifffile.TiffPage]:
    """The first page of every pyramid level, largest first."""
    if not tif.series:
        raise SlideError(f"slide file {path} holds no image; copy the slide again")
    pages = [lv.pages[0] if hasattr(lv, "pages") else lv for lv in tif.series[0].levels]
    base = pages[0]
    if base is None:
        raise SlideError(f"slide file {path}: its first image cannot be read; the file is probably truncated")
    subifds = base.tags.get("SubIFDs")
    if subifds is not None and len(pages) < 1 + len(np.atleast_1d(subifds.value)):
        raise SlideError(
            f"slide file {path} is truncated or corrupt: {len(np.atleast_1d(subifds.value))} pyramid levels are "
            f"listed but only {len(pages) - 1} can be read; copy the slide again"
        )
    if len(pages) == 1:
        # Some writers store the pyramid as separate reduced-resolution pages rather than SubIFDs.
        for other in tif.series[1:]:
            page = other.pages[0]
            if (
                page is not None
                and page.subfiletype & 1
                and page.samplesperpixel == base.samplesperpixel
                and page.imagewidth < base.imagewidth
                and abs(base.imagewidth / page.imagewidth - base.imagelength / page.imagelength)
                < 0.05 * base.imagewidth / page.imagewidth
            ):
                pages.append(page)
    return sorted(pages, key=lambda p: -p.imagewidth)


def _check_page(page: tifffile.TiffPage, path: Path, file_size: int) -> None:
    """Structure checks that need no decoding: layout, sample type, codec, and that every segment lies in the file."""
    if page.imagedepth != 1:
        raise SlideError(f"slide file {path}: volumetric TIFF (depth {page.imagedepth}) is not a slide")
    if page.dtype != np.uint8 or page.samplesperpixel not in (1, 3, 4):
        raise SlideError(
            f"slide file {path}: {page.samplesperpixel} × {page.dtype} samples per pixel; only 8-bit grayscale, RGB "
            "or RGBA slides are supported: convert it to an 8-bit RGB pyramidal TIFF"
        )
    if page.samplesperpixel > 1 and page.planarconfig != 1:
        raise SlideError(
            f"slide file {path}: separate colour planes are not supported; convert it to a contiguous (chunky) "
            "RGB pyramidal TIFF"
        )
    if page.photometric not in (0, 1, 2, 6):
        raise SlideError(f"slide file {path}: photometric interpretation {page.photometric!r} is not supported")
    if page.compression != 1 and page.compression not in tifffile.TIFF.DECOMPRESSORS:
        raise SlideError(
            f"slide file {path}: compression {page.compression!r} cannot be decoded here; convert it to a JPEG- or "
            "deflate-compressed pyramidal TIFF"
        )
    offsets = np.asarray(page.dataoffsets, np.int64)
    counts = np.asarray(page.databytecounts, np.int64)
    if page.is_tiled:
        expected = math.ceil(page.imagewidth / page.tilewidth) * math.ceil(page.imagelength / page.tilelength)
    else:
        expected = math.ceil(page.imagelength / page.rowsperstrip)
    if len(offsets) < expected or len(counts) < expected:
        raise SlideError(f"slide file {path}: {len(offsets)} of {expected} image segments are listed; it is corrupt")
    subifds = page.tags.get("SubIFDs")
    if subifds is not None and max(np.atleast_1d(subifds.value)) >= file_size:
        raise SlideError(f"slide file {path} is truncated: its pyramid levels lie past the end; copy the slide again")
    if len(offsets) and int((offsets + counts).max()) > file_size:
        raise SlideError(
            f"slide file {path} is truncated: image data runs to byte {int((offsets + counts).max())} of a "
            f"{file_size}-byte file; copy the slide again"
        )


def _mpp_candidates(tif: tifffile.TiffFile, page: tifffile.TiffPage, path: Path) -> list[tuple[float, str]]:
    """µm per level-0 px from Aperio, OME or TIFF resolution metadata, in that order of preference."""
    candidates = []
    match = re.search(r"\|\s*MPP\s*=\s*([0-9.eE+-]+)", page.description or "")
    if match:
        candidates.append((parse_float(match.group(1)), "Aperio ImageDescription MPP"))
    if tif.is_ome and tif.ome_metadata:
        match = re.search(r'PhysicalSizeX="([0-9.eE+-]+)"', tif.ome_metadata)
        unit = re.search(r'PhysicalSizeXUnit="([^"]+)"', tif.ome_metadata)
        if match and (unit is None or unit.group(1) in ("µm", "um", "\u03bcm")):
            candidates.append((parse_float(match.group(1)), "OME PhysicalSizeX"))
    unit = page.tags.get("ResolutionUnit")
    xres, yres = page.tags.get("XResolution"), page.tags.get("YResolution")
    per_um = {2: 25400.0, 3: 10000.0}.get(int(unit.value) if unit is not None else 2)
    if xres is not None and per_um is not None:
        px_per_unit = _ratio(xres.value)
        if px_per_unit > 0:
            mpp_x = per_um / px_per_unit
            if yres is not None and _ratio(yres.value) > 0:
                check_square(path, mpp_x, per_um / _ratio(yres.value))
            unit_name = "cm" if unit is not None and int(unit.value) == 3 else "inch"
            candidates.append((mpp_x, f"TIFF XResolution (per {unit_name})"))
    return candidates


def _ratio(value) -> float:
    if isinstance(value, tuple):
        return value[0] / value[1] if value[1] else 0.0
    return float(value)
