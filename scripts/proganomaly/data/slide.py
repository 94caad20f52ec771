"""Open a whole-slide image once; read level-0 regions and thumbnails lazily, tile by tile.

Only TIFF-based slides are supported (Aperio SVS, pyramidal/tiled TIFF, OME-TIFF), read with tifffile; compressed
tiles are decoded by imagecodecs through ``TiffPage.decode``. A region read decodes only the tiles (or strips) that
intersect it, never the whole level, and a thumbnail is made from the smallest pyramid level that is still at least as
fine as asked, read in bands so that memory stays bounded even for a slide without a pyramid.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import re
from collections import OrderedDict
from pathlib import Path

import numpy as np
import scipy.sparse
import tifffile

_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
_KNOWN_MAGIC = {
    b"\x89PNG": "a PNG image",
    b"\xff\xd8\xff": "a JPEG image",
    b"PK\x03\x04": "a ZIP archive",
    b"GIF8": "a GIF image",
    b"BM": "a BMP image",
    b"%PDF": "a PDF document",
}
# Metadata resolutions outside this range are placeholders (72 or 96 dpi from image editors), not a scanner's mpp.
_PLAUSIBLE_MPP = (0.01, 100.0)
_MPP_FIX = "set the slide's `mpp` column (µm per level-0 pixel) in the slide sheet"


class SlideError(ValueError):
    """A slide file cannot be used; the message names the file and the fix."""


@dataclasses.dataclass(frozen=True)
class Level:
    """One pyramid level: its first page, size in px and downsample (level-0 px per level px) along x and y."""

    page: tifffile.TiffPage
    width: int
    height: int
    downsample: tuple[float, float]


def check_slide_file(path: str | Path) -> int:
    """Cheap checks before parsing: the file exists, is not empty and starts like a TIFF. Returns its size in bytes."""
    path = Path(path)
    if not path.is_file():
        raise SlideError(f"slide file {path} does not exist; check the `path` column of the slide sheet")
    size = path.stat().st_size
    if size == 0:
        raise SlideError(f"slide file {path} is empty (0 bytes); copy the slide again or fix its `path` in the sheet")
    with open(path, "rb") as fh:
        head = fh.read(8)
    if head[:4] not in _TIFF_MAGIC:
        what = next((name for magic, name in _KNOWN_MAGIC.items() if head.startswith(magic)), "not a TIFF")
        raise SlideError(
            f"slide file {path} is {what}, not a TIFF-based slide (SVS, pyramidal TIFF); "
            "convert it to a tiled pyramidal TIFF (e.g. `vips tiffsave in out.tif --tile --pyramid "
            "--compression jpeg`) and point the sheet's `path` at it"
        )
    if size < 16:
        raise SlideError(f"slide file {path} is truncated ({size} bytes); copy the slide again")
    return size


def open_slide(path: str | Path, mpp: float | None = None, cache_bytes: int = 96 * 2**20) -> Slide:
    """Open a slide after cheap header and structure checks (no pixel is decoded here).

    ``mpp`` overrides the file's metadata (the slide sheet's `mpp` column). Raises SlideError for a missing, empty,
    truncated or non-TIFF file, an unsupported pixel layout, or when the resolution is unknown.
    """
    path = Path(path)
    size = check_slide_file(path)
    try:
        tif = tifffile.TiffFile(path)
    except Exception as exc:  # tifffile raises many types on corrupt input
        raise SlideError(
            f"slide file {path} cannot be parsed as TIFF ({type(exc).__name__}: {exc}); it is probably truncated or "
            "corrupt: copy the slide again"
        ) from None
    try:
        levels = _levels(tif, path)
        for level in levels:
            _check_page(level.page, path, size)
        resolved, source = _resolve_mpp(tif, levels[0].page, mpp, path)
    except BaseException:
        tif.close()
        raise
    return Slide(path, tif, levels, resolved, source, cache_bytes)


class Slide:
    """An open slide. Use as a context manager; regions are RGB uint8 at level 0."""

    def __init__(self, path: Path, tif: tifffile.TiffFile, levels: list[Level], mpp: float, mpp_source: str, cache):
        self.path, self._tif, self.levels, self.mpp, self.mpp_source = path, tif, levels, mpp, mpp_source
        self.dimensions = (levels[0].width, levels[0].height)
        # Neighbouring patches share tiles; a small LRU of decoded tiles avoids decoding each tile many times.
        self._cache: OrderedDict[tuple[int, int], np.ndarray] = OrderedDict()
        self._cache_bytes, self._cache_max = 0, cache

    def __enter__(self) -> Slide:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._cache.clear()
        self._tif.close()

    def __repr__(self) -> str:
        return f"Slide({str(self.path)!r}, dimensions={self.dimensions}, mpp={self.mpp} from {self.mpp_source})"

    def read_region(self, x: int, y: int, w: int, h: int) -> np.ndarray:
        """Level-0 pixels [y, y+h) × [x, x+w) as uint8 (h, w, 3); parts outside the slide are white."""
        return self.read_level_region(0, x, y, w, h)

    def read_level_region(self, level: int, x: int, y: int, w: int, h: int, use_cache: bool = True) -> np.ndarray:
        """Like read_region, in the pixel coordinates of pyramid level ``level``."""
        lv = self.levels[level]
        page = lv.page
        out = np.full((h, w, 3), 255, np.uint8)
        x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + w, lv.width), min(y + h, lv.height)
        if x1 <= x0 or y1 <= y0:
            return out
        seg_h, seg_w = (page.tilelength, page.tilewidth) if page.is_tiled else (page.rowsperstrip, lv.width)
        seg_h = min(seg_h, lv.height)
        n_cols = math.ceil(lv.width / seg_w)
        for row in range(y0 // seg_h, (y1 - 1) // seg_h + 1):
            for col in range(x0 // seg_w, (x1 - 1) // seg_w + 1):
                seg = self._segment(level, row * n_cols + col, use_cache)
                sy, sx = row * seg_h, col * seg_w
                # Intersection of the segment with the wanted region, in image coordinates.
                iy0, iy1 = max(y0, sy), min(y1, sy + seg.shape[0])
                ix0, ix1 = max(x0, sx), min(x1, sx + seg.shape[1])
                if iy1 > iy0 and ix1 > ix0:
                    out[iy0 - y : iy1 - y, ix0 - x : ix1 - x] = seg[iy0 - sy : iy1 - sy, ix0 - sx : ix1 - sx]
        return out

    def best_level(self, downsample: float) -> int:
        """Index of the smallest level whose downsample does not exceed ``downsample`` (on both axes)."""
        best = 0
        for i, lv in enumerate(self.levels):
            if max(lv.downsample) <= downsample * (1 + 1e-6) and lv.width * lv.height < (
                self.levels[best].width * self.levels[best].height
            ):
                best = i
        return best

    def thumbnail(self, downsample: float, band_bytes: int = 16 * 2**20) -> np.ndarray:
        """RGB uint8 image whose pixel (r, c) is the mean of level-0 [c·ds, (c+1)·ds) × [r·ds, (r+1)·ds).

        Shape (ceil(H0/ds), ceil(W0/ds), 3). Read from the best pyramid level in bands of rows; each output row is
        finished (rounded to uint8) as soon as its last input row is in, so only a band and a few rows are ever held
        as floats, whatever the size of the slide.
        """
        if not downsample > 0:
            raise ValueError(f"thumbnail downsample must be > 0, got {downsample}")
        w0, h0 = self.dimensions
        out_h, out_w = math.ceil(h0 / downsample - 1e-9), math.ceil(w0 / downsample - 1e-9)
        li = self.best_level(downsample)
        lv = self.levels[li]
        wy = area_weights(lv.height, out_h, downsample / lv.downsample[1])
        wx = area_weights(lv.width, out_w, downsample / lv.downsample[0])
        first_in = np.minimum.reduceat(wy.indices, wy.indptr[:-1])  # input rows each output row starts / ends at
        last_in = np.maximum.reduceat(wy.indices, wy.indptr[:-1])
        seg_h = lv.page.tilelength if lv.page.is_tiled else lv.page.rowsperstrip
        # Float bytes held per input row of a band: the row as float64 and its column sums (twice, while reshaped).
        row_bytes = 8 * 3 * lv.width + 2 * 8 * 3 * out_w
        band = max(min(seg_h, lv.height), (band_bytes // row_bytes) // seg_h * seg_h)
        out = np.empty((out_h, out_w, 3), np.uint8)
        carry = np.zeros((0, out_w * 3))  # partial sums of output rows [done, …) that the next band continues
        done = 0
        for r0 in range(0, lv.height, band):
            r1 = min(r0 + band, lv.height)
            pixels = self.read_level_region(li, 0, r0, lv.width, r1 - r0, use_cache=False)
            # Columns first (sparse (out_w × W) · (W × rows·3), on a contiguous copy), then the band's output rows.
            by_col = np.ascontiguousarray(pixels.transpose(1, 0, 2), dtype=np.float64).reshape(lv.width, -1)
            cols = (wx @ by_col).reshape(out_w, r1 - r0, 3).transpose(1, 0, 2).reshape(r1 - r0, -1)
            touched = int(np.searchsorted(first_in, r1))  # output rows [done, touched) get input from this band
            part = wy[done:touched, r0:r1] @ cols
            part[: len(carry)] += carry
            finished = int(np.searchsorted(last_in, r1))  # rows whose last input row is < r1
            out[done:finished] = _to_uint8(part[: finished - done]).reshape(-1, out_w, 3)
            carry, done = part[finished - done :], finished
        return out

    def _segment(self, level: int, index: int, use_cache: bool) -> np.ndarray:
        key = (level, index)
        cached = self._cache.get(key)
        if cached is not None:
            self._cache.move_to_end(key)
            return cached
        page = self.levels[level].page
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
            seg = np.full((shape[1], shape[2], 3), 255, np.uint8)
        else:
            seg = _as_rgb(np.asarray(decoded)[0])
        if use_cache:
            self._cache[key] = seg
            self._cache_bytes += seg.nbytes
            while self._cache_bytes > self._cache_max and len(self._cache) > 1:
                _, old = self._cache.popitem(last=False)
                self._cache_bytes -= old.nbytes
        return seg


def read_patch(slide: Slide, x: int, y: int, size_l0: int, out_px: int) -> np.ndarray:
    """The level-0 square [x, x+size_l0)² as uint8 (out_px, out_px, 3), area-resampled when size_l0 != out_px."""
    region = slide.read_region(x, y, size_l0, size_l0)
    if size_l0 == out_px:
        return region
    return area_resize(region, out_px, out_px)


@functools.lru_cache(maxsize=32)
def area_weights(n_in: int, n_out: int, scale: float) -> scipy.sparse.csr_matrix:
    """Sparse (n_out × n_in) averaging matrix: output i is the mean of input [i·scale, (i+1)·scale) ∩ [0, n_in).

    Input pixels are weighted by their overlap with the interval, so non-integer scales are exact area averages.
    Cached (every patch of a slide uses the same one); treat the result as read-only.
    """
    starts = np.arange(n_out, dtype=np.float64) * scale
    ends = np.minimum(starts + scale, n_in)
    first = np.floor(starts).astype(np.int64)
    span = math.ceil(scale) + 1
    j = first[:, None] + np.arange(span)[None, :]
    overlap = np.clip(np.minimum(ends[:, None], j + 1) - np.maximum(starts[:, None], j), 0.0, None)
    overlap[j >= n_in] = 0.0
    total = overlap.sum(axis=1, keepdims=True)
    if np.any(total <= 0):
        raise ValueError(f"area_weights: {n_out} outputs at scale {scale} run past {n_in} inputs")
    weights = overlap / total
    rows = np.repeat(np.arange(n_out), span)
    keep = weights.ravel() > 0
    return scipy.sparse.csr_matrix(
        (weights.ravel()[keep], (rows[keep], j.ravel()[keep])), shape=(n_out, n_in), dtype=np.float64
    )


def area_resize(image: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """Area (box) resampling of an (H, W[, C]) uint8 image to (out_h, out_w[, C]), rounded half up to uint8.

    Whole-block factors (the usual case: 2^k) are summed in integers, exactly; other factors use area_weights.
    """
    h, w = image.shape[:2]
    flat = image.reshape(h, w, -1)
    c = flat.shape[2]
    if h % out_h == 0 and w % out_w == 0:
        fy, fx = h // out_h, w // out_w
        # Strided slice sums: several times faster than numpy's reduction over small strided axes.
        wide = flat.astype(np.uint32)
        cols = sum(wide[:, k::fx] for k in range(fx))
        sums = sum(cols[k::fy] for k in range(fy))
        n = fy * fx
        return ((sums + n // 2) // n).astype(np.uint8).reshape((out_h, out_w, *image.shape[2:]))
    wy, wx = area_weights(h, out_h, h / out_h), area_weights(w, out_w, w / out_w)
    # Both products on C-contiguous operands (scipy copies transposed ones, which costs more than the product).
    rows = wy @ flat.reshape(h, w * c).astype(np.float64)  # (out_h, w·c)
    cols = wx @ np.ascontiguousarray(rows.reshape(out_h, w, c).transpose(1, 0, 2)).reshape(w, out_h * c)
    out = cols.reshape(out_w, out_h, c).transpose(1, 0, 2)
    return _to_uint8(out.reshape((out_h, out_w, *image.shape[2:])))


def _to_uint8(values: np.ndarray) -> np.ndarray:
    """Round half up (as integer block averages do); the epsilon absorbs float error in weights like 1/3."""
    return np.clip(np.floor(values + (0.5 + 1e-6)), 0, 255).astype(np.uint8)


def _as_rgb(seg: np.ndarray) -> np.ndarray:
    """A decoded (rows, cols, samples) segment as RGB uint8; alpha is composited over white like a glass slide."""
    if seg.shape[-1] == 1:
        return np.repeat(seg, 3, axis=-1)
    if seg.shape[-1] == 4:
        alpha = seg[..., 3:4] / 255.0
        return _to_uint8(seg[..., :3] * alpha + 255.0 * (1.0 - alpha))
    return np.ascontiguousarray(seg[..., :3])


def _levels(tif: tifffile.TiffFile, path: Path) -> list[Level]:
    if not tif.series:
        raise SlideError(f"slide file {path} holds no image; copy the slide again")
    series = tif.series[0]
    pages = [lv.pages[0] if hasattr(lv, "pages") else lv for lv in series.levels]
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
    levels = []
    for page in pages:
        levels.append(
            Level(
                page=page,
                width=int(page.imagewidth),
                height=int(page.imagelength),
                downsample=(base.imagewidth / page.imagewidth, base.imagelength / page.imagelength),
            )
        )
    return sorted(levels, key=lambda lv: -lv.width)


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
    expected = _segment_count(page)
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


def _segment_count(page: tifffile.TiffPage) -> int:
    if page.is_tiled:
        return math.ceil(page.imagewidth / page.tilewidth) * math.ceil(page.imagelength / page.tilelength)
    return math.ceil(page.imagelength / page.rowsperstrip)


def _resolve_mpp(tif: tifffile.TiffFile, page: tifffile.TiffPage, mpp: float | None, path: Path) -> tuple[float, str]:
    """µm per level-0 px and where it came from: the sheet, else Aperio, OME or TIFF resolution metadata."""
    if mpp is not None and not (isinstance(mpp, float) and math.isnan(mpp)):
        if not mpp > 0:
            raise SlideError(f"slide file {path}: mpp {mpp} from the slide sheet is not positive; {_MPP_FIX}")
        return float(mpp), "slide sheet"
    candidates = []
    match = re.search(r"\|\s*MPP\s*=\s*([0-9.eE+-]+)", page.description or "")
    if match:
        candidates.append((_float(match.group(1)), "Aperio ImageDescription MPP"))
    if tif.is_ome and tif.ome_metadata:
        match = re.search(r'PhysicalSizeX="([0-9.eE+-]+)"', tif.ome_metadata)
        unit = re.search(r'PhysicalSizeXUnit="([^"]+)"', tif.ome_metadata)
        if match and (unit is None or unit.group(1) in ("µm", "um", "\u03bcm")):
            candidates.append((_float(match.group(1)), "OME PhysicalSizeX"))
    unit = page.tags.get("ResolutionUnit")
    xres, yres = page.tags.get("XResolution"), page.tags.get("YResolution")
    per_um = {2: 25400.0, 3: 10000.0}.get(int(unit.value) if unit is not None else 2)
    if xres is not None and per_um is not None:
        px_per_unit = _ratio(xres.value)
        if px_per_unit > 0:
            mpp_x = per_um / px_per_unit
            if yres is not None and _ratio(yres.value) > 0:
                mpp_y = per_um / _ratio(yres.value)
                if abs(mpp_x - mpp_y) > 0.01 * mpp_x:
                    raise SlideError(
                        f"slide file {path}: pixels are not square (x {mpp_x:.4g}, y {mpp_y:.4g} µm); resample it"
                    )
            unit_name = "cm" if unit is not None and int(unit.value) == 3 else "inch"
            candidates.append((mpp_x, f"TIFF XResolution (per {unit_name})"))
    for value, source in candidates:
        if value == value and _PLAUSIBLE_MPP[0] <= value <= _PLAUSIBLE_MPP[1]:
            return float(value), source
    found = "; ".join(f"{s} gives {v:.4g} µm/px (implausible)" for v, s in candidates)
    raise SlideError(
        f"slide file {path} has no usable resolution metadata{' (' + found + ')' if found else ''}; {_MPP_FIX}"
    )


def _float(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        return float("nan")


def _ratio(value) -> float:
    if isinstance(value, tuple):
        return value[0] / value[1] if value[1] else 0.0
    return float(value)
