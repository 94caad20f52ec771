"""Batched inference of the exported detector over one slide's tissue patches, straight into disk-backed canvases.

Three stages overlap so that the model never waits on the host: a reader thread reads the next batches (each batch's
patches decoded by a small thread pool, from the pyramid level nearest the model's resolution when the caller's
`read_patch` does so), the main thread runs the model, and a writer thread stitches each batch's maps into the
canvases at the map downsample. Batches are written in order, so the canvases are the same as a sequential run's.
Neither the slide nor the maps are ever held in memory.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pandas as pd

from proganomaly.common.pixels import to_uint8_float
from proganomaly.detector.load import Detector
from proganomaly.maps import stitching

log = logging.getLogger("proganomaly.maps.inference")

PATCH_COLUMNS = ("x", "y", "width", "height")
# Maps stitched from every patch: name -> channels.
CANVAS_MAPS = {"thumbnail": 3, "reconstruction": 3, "anomaly_map": 1, "mahalanobis_d2": 1, "flags": 1}


class InferenceError(ValueError):
    """Bad patch table or detector output; the message names the file and the fix."""


def check_patch_table(table: pd.DataFrame, source: str) -> pd.DataFrame:
    """The patch table with int64 coordinates, in reading order (rows of the slide, then columns)."""
    missing = [c for c in PATCH_COLUMNS if c not in table.columns]
    if missing:
        raise InferenceError(f"{source}: missing column(s) {missing}; re-run tile_slide to rebuild the patch table")
    table = table.astype({c: "int64" for c in PATCH_COLUMNS})
    if len(table) and ((table["width"] <= 0) | (table["height"] <= 0)).any():
        raise InferenceError(f"{source}: patches with non-positive width/height; re-run tile_slide")
    return table.sort_values(["y", "x"], kind="stable").reset_index(drop=True)


def prefetch(items: Iterable, depth: int) -> Iterator:
    """Yield from `items`, produced by a background thread up to `depth` ahead; its exceptions re-raise here."""
    if depth <= 0:
        yield from items
        return
    q: queue.Queue = queue.Queue(maxsize=depth)
    done, stop = object(), threading.Event()

    def work():
        try:
            for item in items:
                while not stop.is_set():
                    try:
                        q.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            q.put(done)
        except BaseException as exc:  # handed to the consumer, which re-raises it
            q.put(exc)

    thread = threading.Thread(target=work, name="patch-reader", daemon=True)
    thread.start()
    try:
        while True:
            item = q.get()
            if item is done:
                break
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        thread.join(timeout=5)


def read_batches(
    slide, table: pd.DataFrame, patch_size_px: int, batch_size: int, read_patch, pool: ThreadPoolExecutor | None = None
) -> Iterator[tuple]:
    """(first row, uint8 (n, S, S, 3) batch, seconds spent reading) for consecutive rows of the table.

    With a `pool` a batch's patches are read concurrently (in table order). A patch whose level-0 extent is not
    square (width != height) is read as its width; the tiling stage writes square patches.
    """

    def one(box):
        return read_patch(slide, *box, patch_size_px)

    for start in range(0, len(table), batch_size):
        t0 = time.perf_counter()
        rows = table.iloc[start : start + batch_size]
        boxes = [(int(x), int(y), int(w)) for x, y, w in zip(rows.x, rows.y, rows.width, strict=True)]
        batch = np.stack(list(pool.map(one, boxes)) if pool is not None else [one(b) for b in boxes])
        yield start, batch, time.perf_counter() - t0


class Writer:
    """Calls `handle(item)` for every submitted item, in order, in a background thread holding at most `depth`
    waiting items (depth 0: in the caller's thread). An exception in `handle` re-raises in the caller at its next
    `submit` or at `close`. `stall_s`: seconds `submit` blocked on a full queue (the model waiting on the host)."""

    def __init__(self, handle: Callable, depth: int):
        self.handle, self.depth, self.stall_s, self.error = handle, depth, 0.0, None
        if depth > 0:
            self.queue: queue.Queue = queue.Queue(maxsize=depth)
            self.thread = threading.Thread(target=self._work, name="canvas-writer", daemon=True)
            self.thread.start()

    def _work(self) -> None:
        while (item := self.queue.get()) is not None:
            if self.error is None:
                try:
                    self.handle(item)
                except BaseException as exc:  # handed to the caller, which re-raises it
                    self.error = exc

    def _raise(self) -> None:
        if self.error is not None:
            raise self.error

    def submit(self, item) -> None:
        if self.depth <= 0:
            self.handle(item)
            return
        self._raise()
        t0 = time.perf_counter()
        self.queue.put(item)
        self.stall_s += time.perf_counter() - t0

    def close(self, raise_error: bool = True) -> None:
        """Wait for every submitted item to be handled (or, after an error, dropped), then re-raise any error."""
        if self.depth > 0 and self.thread.is_alive():
            self.queue.put(None)
            self.thread.join()
        if raise_error:
            self._raise()


def _per_pixel(a: np.ndarray, n: int, s: int) -> np.ndarray:
    """(n, S, S) from (n, S, S) or (n, S, S, C) (channel mean)."""
    a = np.asarray(a, np.float32)
    if a.ndim == 4:
        a = a.mean(axis=-1)
    if a.shape != (n, s, s):
        raise InferenceError(f"detector output of shape {a.shape}, expected ({n}, {s}, {s}[, C])")
    return a


def _to_rgb255(a: np.ndarray) -> np.ndarray:
    """Reconstruction as float 0–255: uint8 passes through; floats are the model's [-1, 1] range."""
    a = np.asarray(a)
    if a.dtype == np.uint8:
        return a.astype(np.float32)
    return to_uint8_float(a)


def batch_maps(batch: np.ndarray, out: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The per-patch maps to stitch, at model resolution: RGB in 0–255, per-pixel maps (n, S, S), flags 0/1."""
    n, s = batch.shape[:2]
    flags = np.asarray(out["flags"])
    if flags.ndim == 4:
        flags = flags[..., 0]
    return {
        "thumbnail": batch.astype(np.float32),
        "reconstruction": _to_rgb255(out["reconstruction"]),
        "anomaly_map": _per_pixel(out["anomaly_map"], n, s),
        "mahalanobis_d2": _per_pixel(out["mahalanobis_d2"], n, s),
        # Flags are +1/-1 in the original and 0/1 (or bool) in ours: "flagged" is > 0 either way.
        "flags": (flags > 0).astype(np.float32),
    }


def batch_scores(maps: dict[str, np.ndarray], out: dict[str, np.ndarray], border_px: int = 0) -> dict[str, np.ndarray]:
    """Per-patch scores over the patch interior; `score` is the mean d², a calibrated, unsaturated ranking score."""
    inner = slice(border_px, maps["flags"].shape[1] - border_px)
    d2 = maps["mahalanobis_d2"][:, inner, inner].reshape(len(maps["flags"]), -1)
    scores = {
        "flagged_fraction": maps["flags"][:, inner, inner].reshape(len(d2), -1).mean(axis=1),
        "mean_d2": d2.mean(axis=1),
        "max_d2": d2.max(axis=1),
    }
    scores["score"] = scores["mean_d2"]
    if "latent_norm" in out:
        scores["latent_norm"] = np.asarray(out["latent_norm"], np.float32).reshape(-1)
    return {k: np.asarray(v, np.float32) for k, v in scores.items()}


def run_inference(
    slide,
    table: pd.DataFrame,
    detector: Detector,
    canvas: stitching.Canvas,
    *,
    slide_id: str,
    batch_size: int,
    prefetch_batches: int,
    read_patch=None,
    patch_kde=None,
    progress=None,
    border_px: int = 0,
    read_threads: int = 1,
    write_queue_batches: int = 0,
) -> tuple[pd.DataFrame, dict[str, float]]:
    """Run the detector over every patch of `table`, stitching into `canvas`; returns the per-patch table and timings.

    patch_kde: optional function flags (S, S) -> (S, S) in [0, 1]; its result is stitched as the `kde_patch` map
    (the canvas must have that map). timings: seconds spent reading (in the reader thread, summed over batches),
    waiting for the reader, in the model, writing into the canvases (in the writer thread), the model waiting on a
    full writer queue (`stall_s`) and on the last writes (`drain_s`), plus the wall time.
    """
    if read_patch is None:
        from proganomaly.data.slide import read_patch
    columns = ["slide_id", "x", "y", "width", "height", "flagged_fraction", "mean_d2", "max_d2", "score"]
    timings = {"read_s": 0.0, "wait_s": 0.0, "model_s": 0.0, "write_s": 0.0, "stall_s": 0.0, "drain_s": 0.0}
    timings.update(wall_s=0.0, patches=len(table))
    if len(table) == 0:
        log.warning("slide %s has no tissue patches: its maps will be empty", slide_id)
        return pd.DataFrame({c: pd.Series(dtype="str" if c == "slide_id" else "float32") for c in columns}), timings
    wall0 = time.perf_counter()
    parts: list[dict[str, np.ndarray]] = []

    def write(item) -> None:
        t0 = time.perf_counter()
        start, batch, out = item
        maps = batch_maps(batch, out)
        parts.append(batch_scores(maps, out, border_px))
        rows = table.iloc[start : start + len(batch)]
        if patch_kde is not None:
            maps["kde_patch"] = np.stack([patch_kde(f) for f in maps["flags"]])
        boxes = zip(rows.x, rows.y, rows.width, rows.height, strict=True)
        stitching.add_patches(canvas, [tuple(int(v) for v in box) for box in boxes], maps, border_px)
        timings["write_s"] += time.perf_counter() - t0
        if progress is not None:
            progress(len(batch))

    pool = ThreadPoolExecutor(read_threads, thread_name_prefix="patch-read") if read_threads > 1 else None
    writer = Writer(write, write_queue_batches)
    batches = prefetch(
        read_batches(slide, table, detector.patch_size_px, batch_size, read_patch, pool), prefetch_batches
    )
    try:
        while True:
            t0 = time.perf_counter()
            item = next(batches, None)
            timings["wait_s"] += time.perf_counter() - t0
            if item is None:
                break
            start, batch, read_s = item
            timings["read_s"] += read_s
            t0 = time.perf_counter()
            out = detector(batch)
            timings["model_s"] += time.perf_counter() - t0
            writer.submit((start, batch, out))
        t0 = time.perf_counter()
        writer.close()
        timings["drain_s"] = time.perf_counter() - t0
    finally:  # on an error: stop the reader before its pool, and let the writer finish or drop what it holds
        batches.close()
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
        writer.close(raise_error=False)
    timings["stall_s"] = writer.stall_s
    timings["wall_s"] = time.perf_counter() - wall0
    result = pd.DataFrame({"slide_id": slide_id, **{c: table[c].to_numpy() for c in PATCH_COLUMNS}})
    for key in parts[0]:
        result[key] = np.concatenate([p[key] for p in parts])
    return result, timings
