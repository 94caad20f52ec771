"""The `Slide` interface every reader implements, and what all readers share.

A reader opens a file and says how each pyramid level is cut into segments (its tiles or strips, or a virtual tile
grid); the base class turns segments into level-0 regions and thumbnails. A region read decodes only the segments
that intersect it, never a whole level; a thumbnail is made from the smallest level that is still at least as fine
as asked, read in bands, so memory stays bounded whatever the size of the slide.
"""

from __future__ import annotations

import abc
import dataclasses
import math
import threading
from collections import OrderedDict
from pathlib import Path

import numpy as np

from ..resample import area_weights, to_uint8

# Metadata resolutions outside this range are placeholders (72 or 96 dpi from image editors), not a scanner's mpp.
PLAUSIBLE_MPP = (0.01, 100.0)
MPP_FIX = "set the slide's `mpp` column (µm per level-0 pixel) in the slide sheet"


class SlideError(ValueError):
    """A slide file cannot be used; the message names the file and the fix."""


@dataclasses.dataclass(frozen=True)
class Level:
    """One pyramid level: size in px, downsample (level-0 px per level px) along x and y, and segment size in px."""

    width: int
    height: int
    downsample: tuple[float, float]
    segment: tuple[int, int]  # (width, height) of the blocks the reader decodes: tiles, strips or a virtual grid


class Slide(abc.ABC):
    """An open slide. Use as a context manager; regions are RGB uint8 at level 0.

    Implementations give `levels` (largest first) and decode one segment in `_decode`; everything else is shared.
    """

    #: Short name of the reader, recorded in the QC JSON next to the mpp source.
    reader = "base"

    def __init__(self, path: Path, levels: list[Level], mpp: float, mpp_source: str, cache_bytes: int):
        self.path, self.levels, self.mpp, self.mpp_source = path, levels, mpp, mpp_source
        self.dimensions = (levels[0].width, levels[0].height)
        # Neighbouring patches share segments; a small LRU of decoded ones avoids decoding each many times.
        self._cache: OrderedDict[tuple[int, int, int], np.ndarray] = OrderedDict()
        self._cache_bytes, self._cache_max = 0, cache_bytes
        # Patches are read by a small thread pool: the LRU's bookkeeping is locked, decoding is not.
        self._cache_lock = threading.Lock()

    @abc.abstractmethod
    def _decode(self, level: int, row: int, col: int) -> np.ndarray:
        """Segment (row, col) of `level` as RGB uint8 (rows, cols, 3); may be larger than the level at its edges."""

    @abc.abstractmethod
    def _close(self) -> None:
        """Release the file handle."""

    def __enter__(self) -> Slide:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._cache.clear()
        self._close()

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({str(self.path)!r}, dimensions={self.dimensions}, "
            f"mpp={self.mpp} from {self.mpp_source})"
        )

    def read_region(self, x: int, y: int, w: int, h: int) -> np.ndarray:
        """Level-0 pixels [y, y+h) × [x, x+w) as uint8 (h, w, 3); parts outside the slide are white."""
        return self.read_level_region(0, x, y, w, h)

    def read_level_region(self, level: int, x: int, y: int, w: int, h: int, use_cache: bool = True) -> np.ndarray:
        """Like read_region, in the pixel coordinates of pyramid level ``level``."""
        lv = self.levels[level]
        out = np.full((h, w, 3), 255, np.uint8)
        x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + w, lv.width), min(y + h, lv.height)
        if x1 <= x0 or y1 <= y0:
            return out
        seg_w, seg_h = lv.segment
        for row in range(y0 // seg_h, (y1 - 1) // seg_h + 1):
            for col in range(x0 // seg_w, (x1 - 1) // seg_w + 1):
                seg = self._segment(level, row, col, use_cache)
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
        seg_h = lv.segment[1]
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
            out[done:finished] = to_uint8(part[: finished - done]).reshape(-1, out_w, 3)
            carry, done = part[finished - done :], finished
        return out

    def whole_downsample(self, level: int) -> int | None:
        """The level's downsample as a whole number k when its sizes are level 0's divided by k (rounded either way),
        so that its pixel (c, r) is level-0 [c·k, (c+1)·k) × [r·k, (r+1)·k); None for other levels."""
        lv, (w0, h0) = self.levels[level], self.dimensions
        k = round(lv.downsample[0])
        if k < 1 or round(lv.downsample[1]) != k:
            return None
        ok = lv.width in (w0 // k, -(-w0 // k)) and lv.height in (h0 // k, -(-h0 // k))
        return k if ok else None

    def patch_level(self, x: int, y: int, size_l0: int, out_px: int) -> tuple[int, int]:
        """(level, k): the coarsest level whose whole downsample k is at most size_l0 / out_px (so reading there loses
        nothing the patch keeps) and divides x, y and size_l0 (so the patch is whole level pixels); (0, 1) if none."""
        best = (0, 1)
        for i in range(1, len(self.levels)):
            k = self.whole_downsample(i)
            if k and k > best[1] and k * out_px <= size_l0 and not (x % k or y % k or size_l0 % k):
                best = (i, k)
        return best

    def _segment(self, level: int, row: int, col: int, use_cache: bool) -> np.ndarray:
        key = (level, row, col)
        with self._cache_lock:
            cached = self._cache.get(key)
            if cached is not None:
                self._cache.move_to_end(key)
                return cached
        seg = self._decode(level, row, col)
        if use_cache:
            with self._cache_lock:
                if key not in self._cache:
                    self._cache[key] = seg
                    self._cache_bytes += seg.nbytes
                while self._cache_bytes > self._cache_max and len(self._cache) > 1:
                    _, old = self._cache.popitem(last=False)
                    self._cache_bytes -= old.nbytes
        return seg


def resolve_mpp(path: Path, sheet_mpp: float | None, candidates) -> tuple[float, str]:
    """µm per level-0 px and where it came from: the sheet's value, else the first plausible metadata candidate.

    candidates: a callable returning [(mpp, source), …] in order of preference; it is not called (so the file's
    metadata is not even checked) when the sheet gives the mpp.
    """
    if sheet_mpp is not None and not (isinstance(sheet_mpp, float) and math.isnan(sheet_mpp)):
        if not sheet_mpp > 0:
            raise SlideError(f"slide file {path}: mpp {sheet_mpp} from the slide sheet is not positive; {MPP_FIX}")
        return float(sheet_mpp), "slide sheet"
    candidates = candidates()
    for value, source in candidates:
        if value == value and PLAUSIBLE_MPP[0] <= value <= PLAUSIBLE_MPP[1]:
            return float(value), source
    found = "; ".join(f"{s} gives {v:.4g} µm/px (implausible)" for v, s in candidates)
    raise SlideError(
        f"slide file {path} has no usable resolution metadata{' (' + found + ')' if found else ''}; {MPP_FIX}"
    )


def check_square(path: Path, mpp_x: float, mpp_y: float) -> None:
    if mpp_x > 0 and mpp_y > 0 and abs(mpp_x - mpp_y) > 0.01 * mpp_x:
        raise SlideError(f"slide file {path}: pixels are not square (x {mpp_x:.4g}, y {mpp_y:.4g} µm); resample it")


def parse_float(text) -> float:
    try:
        return float(text)
    except (TypeError, ValueError):
        return float("nan")
