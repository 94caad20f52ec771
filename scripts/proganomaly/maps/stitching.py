"""Disk-backed canvases that put per-patch model outputs at their level-0 place, at a downsample of level 0.

A map pixel (r, c) at downsample `ds` covers level-0 [c·ds, (c+1)·ds) × [r·ds, (r+1)·ds). A patch whose level-0
extent is (x, y, w, h) and whose model output is S×S contributes each output pixel to the map pixels it overlaps,
weighted by the overlap area. Sums and the covered area ("count") are accumulated separately, so overlapping patches
(stride < size) are averaged rather than overwritten and any grid (w/ds not an integer, patches crossing the slide
edge) lands exactly. Nothing here holds a whole map in memory: every array lives in a .npy file that is mapped only
band by band (a mapping of the whole file would count every page it ever touched in the process's RSS).
"""

from __future__ import annotations

import json
import math
import shutil
import warnings
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

CANVAS_JSON = "canvas.json"


@dataclass(frozen=True)
class MapGrid:
    """Size of level 0 and the downsample of the maps; map sizes round up so the whole slide is covered."""

    width_l0: int
    height_l0: int
    downsample: int
    mpp: float | None

    @property
    def width(self) -> int:
        return math.ceil(self.width_l0 / self.downsample)

    @property
    def height(self) -> int:
        return math.ceil(self.height_l0 / self.downsample)

    @property
    def map_mpp(self) -> float | None:
        return None if self.mpp is None else self.mpp * self.downsample


def map_downsample(map_mpp: float, slide_mpp: float) -> int:
    """Level-0 px per map pixel for a target map resolution: the nearest whole number, at least 1."""
    if not (map_mpp > 0 and slide_mpp > 0):
        raise ValueError(f"map_mpp {map_mpp} and slide mpp {slide_mpp} must be positive")
    return max(1, round(map_mpp / slide_mpp))


def canvas_bytes(grid: MapGrid, channels: dict[str, int]) -> int:
    """Bytes of a canvas's float32 arrays (every map's sum plus the covered area) once fully written."""
    pixels = max(grid.height, 1) * max(grid.width, 1)
    return 4 * pixels * (sum(channels.values()) + 1)


class CanvasSpaceError(OSError):
    """Not enough free disk for a slide's canvases; the message names the slide, the bytes and the fix."""


def check_free_space(directory: str | Path, grid: MapGrid, channels: dict[str, int], slide: str) -> int:
    """Raise CanvasSpaceError unless the file system of `directory` has room for the canvases; returns their bytes.

    The arrays are sparse files, but the tissue's rows get written, so only the full size is a safe bound.
    """
    need = canvas_bytes(grid, channels)
    probe = Path(directory).resolve()
    while not probe.exists():
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    if free < need:
        raise CanvasSpaceError(
            f"slide {slide}: its inference canvases ({grid.width}×{grid.height} map px at downsample "
            f"{grid.downsample}) need {need / 1e9:.2f} GB ({need} bytes) but {probe} has {free / 1e9:.2f} GB free; "
            "free disk there or raise stitching.map_mpp (coarser maps: the size falls with its square)"
        )
    return need


class DiskArray:
    """An array in a .npy file, read and written through short-lived row-band mappings.

    Slicing returns an in-memory copy of just the selected rows, which is what the pyramid writer and the tile-wise
    filters need; the band's pages leave the process when its mapping is dropped.
    """

    def __init__(self, path: str | Path, mode: str = "r"):
        self.path = Path(path)
        self.mode = mode
        head = np.load(self.path, mmap_mode="r")
        self.shape, self.dtype, self.offset = tuple(head.shape), head.dtype, head.offset
        del head

    @classmethod
    def create(cls, path: str | Path, shape: tuple[int, ...], dtype) -> DiskArray:
        """A zero-filled array (a sparse file: untouched regions cost no disk)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        # A 0-row header-only file would not map; numpy needs at least one element to memory-map.
        mm = np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=tuple(int(s) for s in shape))
        del mm
        return cls(path, mode="r+")

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def _rows(self, r0: int, r1: int, mode: str | None = None) -> np.memmap:
        row_bytes = int(np.prod(self.shape[1:], dtype=np.int64)) * self.dtype.itemsize
        return np.memmap(
            self.path,
            dtype=self.dtype,
            mode=mode or self.mode,
            offset=self.offset + r0 * row_bytes,
            shape=(r1 - r0, *self.shape[1:]),
        )

    def _row_range(self, key) -> tuple[int, int, tuple]:
        key = key if isinstance(key, tuple) else (key,)
        rows, rest = key[0], key[1:]
        if isinstance(rows, slice):
            r0, r1, step = rows.indices(self.shape[0])
            if step != 1:
                raise IndexError("DiskArray supports row slices with step 1 only")
            return r0, max(r0, r1), (slice(None), *rest)
        r = int(rows) + (self.shape[0] if int(rows) < 0 else 0)
        return r, r + 1, (0, *rest)

    def __getitem__(self, key) -> np.ndarray:
        r0, r1, rest = self._row_range(key)
        if r1 <= r0:
            return np.zeros((0, *self.shape[1:]), self.dtype)[rest]
        mm = self._rows(r0, r1, "r")
        out = np.array(mm[rest])
        del mm
        return out

    def __setitem__(self, key, value) -> None:
        r0, r1, rest = self._row_range(key)
        if r1 <= r0:
            return
        mm = self._rows(r0, r1, "r+")
        mm[rest] = value
        mm.flush()
        del mm

    def add(self, r0: int, c0: int, block: np.ndarray) -> None:
        """In-place `self[r0:r0+h, c0:c0+w] += block`."""
        h, w = block.shape[:2]
        mm = self._rows(r0, r0 + h, "r+")
        mm[:, c0 : c0 + w] += block
        del mm

    def band(self, r0: int, r1: int) -> np.memmap:
        """A writable mapping of rows [r0, r1); drop it (del) when done so its pages leave the process."""
        return self._rows(r0, r1, "r+")


@dataclass
class Canvas:
    """Sum canvases of the named per-patch maps plus one shared covered-area canvas, in one directory."""

    directory: Path
    grid: MapGrid
    channels: dict[str, int]
    sums: dict[str, DiskArray]
    count: DiskArray


def create_canvas(directory: str | Path, grid: MapGrid, channels: dict[str, int], extra: dict | None = None) -> Canvas:
    """Fresh zeroed canvases for maps `name -> channels` (1 gives a 2-D map) at the grid's size."""
    directory = Path(directory)
    if directory.exists():
        shutil.rmtree(directory)
    directory.mkdir(parents=True)
    shape2 = (max(grid.height, 1), max(grid.width, 1))
    sums = {
        name: DiskArray.create(directory / f"{name}.sum.npy", shape2 if c == 1 else (*shape2, c), np.float32)
        for name, c in channels.items()
    }
    count = DiskArray.create(directory / "count.npy", shape2, np.float32)
    meta = {"grid": asdict(grid), "channels": channels, **(extra or {})}
    (directory / CANVAS_JSON).write_text(json.dumps(meta, indent=2) + "\n")
    return Canvas(directory, grid, dict(channels), sums, count)


def open_canvas(directory: str | Path) -> tuple[Canvas, dict]:
    """The canvas written by `create_canvas` (read-only) and its metadata."""
    directory = Path(directory)
    meta_path = directory / CANVAS_JSON
    if not meta_path.exists():
        raise FileNotFoundError(f"{meta_path} is missing: re-run infer_slide for this slide to rebuild its canvas")
    meta = json.loads(meta_path.read_text())
    grid = MapGrid(**meta["grid"])
    channels = {k: int(v) for k, v in meta["channels"].items()}
    sums = {name: DiskArray(directory / f"{name}.sum.npy") for name in channels}
    return Canvas(directory, grid, channels, sums, DiskArray(directory / "count.npy")), meta


def overlap_weights(start: float, extent: float, n_px: int, downsample: int, limit_l0: int) -> tuple[int, np.ndarray]:
    """Overlap lengths (level-0 px) of `n_px` equal patch pixels spanning [start, start+extent) with map pixels.

    Returns (first map index, W) with W[i, j] = overlap of map pixel first+i and patch pixel j. Only level 0 inside
    [0, limit_l0) counts, so a patch crossing the slide edge keeps only its inside part, also in the last map pixel.
    """
    edges = start + extent * np.arange(n_px + 1, dtype=np.float64) / n_px
    first = max(0, math.floor(start / downsample))
    last = min(math.ceil(limit_l0 / downsample), math.ceil((start + extent) / downsample))
    if last <= first:
        return first, np.zeros((0, n_px), np.float64)
    map_edges = np.minimum(np.arange(first, last + 1, dtype=np.float64) * downsample, limit_l0)
    lo = np.maximum(map_edges[:-1, None], edges[None, :-1])
    hi = np.minimum(map_edges[1:, None], edges[None, 1:])
    return first, np.clip(hi - lo, 0.0, None)


def add_patch(canvas: Canvas, x: int, y: int, w: int, h: int, maps: dict[str, np.ndarray]) -> None:
    """Accumulate one patch's maps ((S, S) or (S, S, C) float arrays at model resolution) into the canvas."""
    add_patches(canvas, [(x, y, w, h)], {name: np.asarray(m)[None] for name, m in maps.items()})


def add_patches(canvas: Canvas, boxes, maps: dict[str, np.ndarray], border_px: int = 0) -> None:
    """Accumulate a batch of patches (level-0 boxes (x, y, w, h); maps (N, S, S[, C])) into the canvas.

    `border_px` patch pixels along every edge get zero weight (neither value nor covered area), so overlapping
    neighbours fill them from their interiors. Each canvas is mapped once per batch over the rows the batch touches
    (a patch row or two, as the table is in reading order), rather than once per patch and map.
    """
    ds, grid = canvas.grid.downsample, canvas.grid
    placed = []
    for i, (x, y, w, h) in enumerate(boxes):
        sy, sx = next(iter(maps.values())).shape[1:3]
        r0, wy = overlap_weights(y, h, sy, ds, grid.height_l0)
        c0, wx = overlap_weights(x, w, sx, ds, grid.width_l0)
        if border_px:
            for w_ in (wy, wx):
                w_[:, :border_px] = 0.0
                w_[:, w_.shape[1] - border_px :] = 0.0
        if wy.shape[0] and wx.shape[0]:
            placed.append((i, r0, c0, wy.astype(np.float32), np.ascontiguousarray(wx.T, dtype=np.float32)))
    if not placed:
        return
    top = min(p[1] for p in placed)
    bottom = max(p[1] + p[3].shape[0] for p in placed)
    for name, batch in maps.items():
        band = canvas.sums[name].band(top, bottom)
        for i, r0, c0, wy, wxt in placed:
            p = np.asarray(batch[i], np.float32)
            # Separable area resampling, (rows × S) · (S × S) · (S × cols), batched over channels put first.
            block = wy @ p @ wxt if p.ndim == 2 else np.moveaxis(wy @ np.moveaxis(p, -1, 0) @ wxt, 0, -1)
            band[r0 - top : r0 - top + block.shape[0], c0 : c0 + block.shape[1]] += block
        del band
    band = canvas.count.band(top, bottom)
    for _, r0, c0, wy, wxt in placed:
        band[r0 - top : r0 - top + wy.shape[0], c0 : c0 + wxt.shape[1]] += np.outer(wy.sum(1), wxt.sum(0))
    del band


def bands(height: int, rows: int) -> Iterator[tuple[int, int]]:
    """Row bands [r0, r1) of at most `rows` rows."""
    for r0 in range(0, height, rows):
        yield r0, min(height, r0 + rows)


def finalize_map(
    canvas: Canvas, name: str, out_path: str | Path, *, dtype=np.float32, fill: float = np.nan, band_rows: int = 256
) -> DiskArray:
    """Average (sum / covered area) of one map, band by band, into a new .npy; uncovered pixels get `fill`.

    Float maps keep the default NaN there: no patch interior covered the pixel, so it was not scored (a 0 would read
    as a confident "normal"). RGB maps pass a colour (e.g. 255 for a white background).

    uint8 output rounds and clips to [0, 255] (RGB maps); float output keeps the average as float32.
    """
    src = canvas.sums[name]
    out = DiskArray.create(out_path, src.shape, dtype)
    for r0, r1 in bands(src.shape[0], band_rows):
        total, area = src[r0:r1], canvas.count[r0:r1]
        if total.ndim == 3:
            area = area[..., None]
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = np.where(area > 0, total / np.where(area > 0, area, 1.0), fill)
        if np.dtype(dtype) == np.uint8:
            mean = np.clip(np.rint(mean), 0, 255)
        out[r0:r1] = mean.astype(dtype)
    return out


def coverage_map(canvas: Canvas, out_path: str | Path, band_rows: int = 256) -> DiskArray:
    """uint8 0/255 map of where at least one patch was inferred (any overlap with a patch)."""
    out = DiskArray.create(out_path, canvas.count.shape, np.uint8)
    for r0, r1 in bands(canvas.count.shape[0], band_rows):
        out[r0:r1] = np.where(canvas.count[r0:r1] > 0, 255, 0).astype(np.uint8)
    return out


def scored_tissue(count: DiskArray, tissue, out_path, band_rows: int = 256) -> tuple[DiskArray, dict]:
    """float32 weight map w (1 = scored tissue: covered by a patch interior and tissue > 0; else 0) and its counts.

    Returns (w, {"tissue_pixels", "unscored_tissue_pixels", "unscored_tissue_fraction"}); the fraction is None for a
    map without tissue.
    """
    out = DiskArray.create(out_path, count.shape, np.float32)
    n_tissue = n_unscored = 0
    for r0, r1 in bands(count.shape[0], band_rows):
        t, covered = np.asarray(tissue[r0:r1]) > 0, count[r0:r1] > 0
        out[r0:r1] = (t & covered).astype(np.float32)
        n_tissue += int(t.sum())
        n_unscored += int((t & ~covered).sum())
    fraction = n_unscored / n_tissue if n_tissue else None
    stats = {"tissue_pixels": n_tissue, "unscored_tissue_pixels": n_unscored, "unscored_tissue_fraction": fraction}
    return out, stats


def resample_mask(mask: np.ndarray, mask_downsample: float, grid: MapGrid, out_path, band_rows: int = 256) -> DiskArray:
    """Nearest-neighbour resampling of a low-resolution mask (level-0 downsample `mask_downsample`) to the map grid.

    Each map pixel takes the mask pixel under its level-0 centre, so both grids stay aligned to level 0.
    """
    mh, mw = mask.shape[:2]
    out = DiskArray.create(out_path, (max(grid.height, 1), max(grid.width, 1)), np.uint8)
    cols = np.clip(((np.arange(out.shape[1]) + 0.5) * grid.downsample / mask_downsample).astype(np.int64), 0, mw - 1)
    for r0, r1 in bands(out.shape[0], band_rows):
        rows = np.clip(((np.arange(r0, r1) + 0.5) * grid.downsample / mask_downsample).astype(np.int64), 0, mh - 1)
        out[r0:r1] = np.where(mask[np.ix_(rows, cols)] > 0, 255, 0).astype(np.uint8)
    return out


def overview(image, max_px: int = 2000, band_rows: int | None = None) -> np.ndarray:
    """A downscaled copy (integer box average, ≤ max_px on the long side) of a large array-like, band by band.

    NaN ("not scored") pixels are left out of each box's mean; a box of NaN only stays NaN.
    """
    h, w = image.shape[:2]
    f = max(1, math.ceil(max(h, w) / max_px))
    oh, ow = math.ceil(h / f), math.ceil(w / f)
    trailing = tuple(image.shape[2:])
    out = np.zeros((oh, ow, *trailing), np.float64)
    for i in range(oh):
        band = np.asarray(image[i * f : min(h, (i + 1) * f)], dtype=np.float64)
        pad_w = ow * f - w
        if pad_w:
            band = np.concatenate([band, np.full((band.shape[0], pad_w, *trailing), np.nan)], axis=1)
        cells = band.reshape(band.shape[0], ow, f, *trailing)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # "mean of empty slice": an all-NaN box is NaN
            out[i] = np.nanmean(cells, axis=(0, 2))
    return (
        out.astype(image.dtype) if np.dtype(image.dtype) != np.uint8 else np.clip(np.rint(out), 0, 255).astype(np.uint8)
    )
