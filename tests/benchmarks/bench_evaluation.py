"""Benchmark: the full threshold × dilation grid for one slide with an 8192×8192 KDE map.

Run: .venv/bin/python tests/benchmarks/bench_evaluation.py [--size 8192] [--blobs 300] [--repeats 3]
Prints median wall and CPU seconds and the peak traced memory (numpy + Python; GEOS allocations are not traced) of
each step on one core (BLAS/OpenMP pools limited to one thread). CPU seconds are the fairer figure on a busy machine.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np
import shapely
from threadpoolctl import threadpool_limits

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))

from proganomaly.evaluation import geometry
from proganomaly.evaluation.grid import GridSpec, Region, evaluate_grid

THRESHOLDS = tuple(round(0.01 * i, 2) for i in range(26))
DILATIONS = (1, 1.1, 1.5, 2, 3, 4, 5, 6, 7, 8, 9, 10, 15, 20, 25, 30)


def synthetic_slide(size: int, blobs: int, seed: int = 0):
    """A KDE-like map of Gaussian bumps (cut below 0.01), a ragged disc of tissue patches, circular annotations."""
    rng = np.random.default_rng(seed)
    kde = np.zeros((size, size), dtype=np.float32)
    for _ in range(blobs):
        sigma = rng.uniform(4, 20)
        r = int(3 * sigma)
        cy, cx = rng.integers(r, size - r, 2)
        yy, xx = np.mgrid[-r : r + 1, -r : r + 1]
        bump = rng.uniform(0.1, 1.0) * np.exp(-(xx**2 + yy**2) / (2 * sigma**2))
        bump[bump < 0.01] = 0
        win = kde[cy - r : cy + r + 1, cx - r : cx + r + 1]
        np.maximum(win, bump, out=win)
    ds = 16.0  # a 131072² level-0 slide
    patch = 1024
    n = int(size * ds // patch)
    gy, gx = np.mgrid[0:n, 0:n]
    keep = (gx - n / 2) ** 2 + (gy - n / 2) ** 2 + rng.normal(0, n, gx.shape) < (0.45 * n) ** 2
    xs, ys = gx[keep] * patch, gy[keep] * patch
    centers = rng.uniform(0.1, 0.9, (blobs // 6, 2)) * size * ds
    radii = rng.uniform(100, 800, len(centers))
    annotation = shapely.union_all(shapely.buffer(shapely.points(centers), radii))
    return kde, ds, (xs, ys, np.full_like(xs, patch), np.full_like(ys, patch)), annotation


def timed(fn, repeats: int):
    """Median wall and CPU seconds of `repeats` untraced runs, then the peak of one traced run (tracemalloc slows
    allocation-heavy numpy code several-fold, so it must not touch the timed runs)."""
    walls, cpus, out = [], [], None
    for _ in range(repeats):
        w0, c0 = time.perf_counter(), time.process_time()
        out = fn()
        walls.append(time.perf_counter() - w0)
        cpus.append(time.process_time() - c0)
    tracemalloc.start()
    fn()
    peak = tracemalloc.get_traced_memory()[1] / 2**20
    tracemalloc.stop()
    return statistics.median(walls), statistics.median(cpus), peak, out


def naive_grid(kde, ds, region, thresholds):
    """The original's per-cell recipe (union_all of every scaled polygon, then overlay), for the ratio."""
    spec = GridSpec(thresholds, DILATIONS, "scale", "centroid", 0.0)
    for t in thresholds:
        polys = geometry.scale_coords(geometry.threshold_polygons(kde, t), ds)
        origins = geometry.dilation_origins(polys, "centroid")
        for f in spec.dilations:
            pred = shapely.intersection(shapely.union_all(geometry.scale_polygons(polys, f, origins)), region.tissue)
            shapely.area(shapely.intersection(pred, region.annotation))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=8192)
    ap.add_argument("--blobs", type=int, default=300)
    ap.add_argument("--repeats", type=int, default=3, help="timed runs of the quick steps")
    ap.add_argument("--grid-repeats", type=int, default=1, help="timed runs of the grid steps")
    args = ap.parse_args()
    kde, ds, boxes, annotation = synthetic_slide(args.size, args.blobs)
    xs, ys, ws, hs = boxes
    mpp, rows = 0.25, []

    def add(name, n, fn, repeats=args.repeats):
        wall, cpu, peak, out = timed(fn, repeats)
        rows.append((name, n if n is not None else len(out), wall, cpu, peak))
        return out

    add("tissue: union_all of patch boxes", len(xs), lambda: shapely.union_all(shapely.box(xs, ys, xs + ws, ys + hs)))
    tissue = add("tissue: compressed-grid polygonise", len(xs), lambda: geometry.boxes_region(*boxes))
    region = Region.clipped(tissue, annotation)
    add("polygonise kde > 0.05 (one threshold)", None, lambda: geometry.threshold_polygons(kde, 0.05))
    two = (0.05, 0.15)
    add("naive cells, 2 thresholds x 16 dilations", 32, lambda: naive_grid(kde, ds, region, two), args.grid_repeats)
    spec2 = GridSpec(two, DILATIONS, "scale", "centroid", 0.0)
    add("ours, 2 thresholds x 16 dilations", 32, lambda: evaluate_grid(kde, ds, region, spec2, mpp), args.grid_repeats)
    for tol in (0.0, 0.5):
        spec = GridSpec(THRESHOLDS, DILATIONS, "scale", "centroid", tol)
        grid = lambda spec=spec: evaluate_grid(kde, ds, region, spec, mpp)  # noqa: E731
        add(f"full grid, tolerance {tol} px", None, grid, args.grid_repeats)
    print(f"KDE {args.size}x{args.size}, {args.blobs} bumps, {len(xs)} tissue patches; median of {args.repeats} runs")
    print(f"(grid steps: median of {args.grid_repeats}); peak = traced numpy/Python memory of one extra run")
    print(f"{'step':44s} {'n':>6s} {'wall s':>8s} {'cpu s':>8s} {'peak MiB':>9s}")
    for name, n, wall, cpu, peak in rows:
        print(f"{name:44s} {n:6d} {wall:8.3f} {cpu:8.3f} {peak:9.1f}")
    print(f"ratio tissue union_all / compressed grid (cpu): {rows[0][3] / rows[1][3]:.1f}x")
    print(f"ratio naive / ours, 32 cells (cpu): {rows[3][3] / rows[4][3]:.1f}x")
    print(f"process max RSS: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")


if __name__ == "__main__":
    with threadpool_limits(1):
        main()
