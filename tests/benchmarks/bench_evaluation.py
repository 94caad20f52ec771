"""Benchmark: the 26 × 16 threshold × dilation grid of one slide on one core, raster method against exact.

Run: .venv/bin/python tests/benchmarks/bench_evaluation.py [--cases small,large] [--repeats 3] [--exact-cells 64,6]
Two synthetic slides, each a noisy KDE-like map (sparse flagged pixels plus elliptic anomalies, Gaussian-smoothed and
divided by a ceiling, as maps.kde does), a ragged disc of tissue patches reaching past the map edge, and a few
hundred annotation polygons (some with holes) in three classes and two groups:
- small: 2220 × 1335 map (3 Mpx), about 600 polygons at the busiest threshold; target ≤ 5 s;
- large: 6250 × 6250 map, about 5000 polygons at the busiest threshold; target ≤ 60 s.
Prints the median wall and CPU seconds of the raster grid, cells, polygons per threshold (max and mean), peak RSS,
and the largest difference of any area (all classes and per part, every cell compared) from the exact method on
`--exact-cells` cells (thresholds spread over the range, all dilations, or the first ones on the large map where an
exact cell takes seconds to minutes): absolute (level-0 px²) and relative to the cell's exact prediction +
annotation area, the scale of the stated tolerance (grid.RASTER_TOLERANCE).
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import resource  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import scipy.ndimage as ndi  # noqa: E402
import shapely  # noqa: E402
from threadpoolctl import threadpool_limits  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))

from proganomaly.evaluation import classes, geometry  # noqa: E402
from proganomaly.evaluation.grid import (  # noqa: E402
    RASTER_BLOCKS,
    RASTER_TOLERANCE,
    GridSpec,
    Region,
    evaluate_grids,
    raster_tolerance,
)

THRESHOLDS = tuple(round(0.01 * i, 2) for i in range(26))
DILATIONS = (1, 1.1, 1.5, 2, 3, 4, 5, 6, 7, 8, 9, 10, 15, 20, 25, 30)
AREAS = ["true_positive", "false_positive", "false_negative", "true_negative"]
# (height, width, anomalies, flag rate, KDE sigma in map px): rate and sigma set the number of noise polygons; the
# finer large map has the wider kernel in pixels that the same bandwidth in µm gives.
CASES = {"small": (1335, 2220, 300, 0.01, 6.0), "large": (6250, 6250, 2400, 0.01, 8.0)}


def synthetic_slide(h: int, w: int, anomalies: int, noise: float, sigma: float, seed: int = 0, ds: float = 16.0,
                    patch: int = 512):  # fmt: skip
    """(kde, downsample, region, parts): see the module docstring."""
    rng = np.random.default_rng(seed)
    pm = patch / ds
    nr, nc = int(np.ceil(h / pm)), int(np.ceil(w / pm))
    gy, gx = np.mgrid[0:nr, 0:nc]
    ring = ((gx + 0.5 - nc / 2) / (0.48 * nc)) ** 2 + ((gy + 0.5 - nr / 2) / (0.48 * nr)) ** 2
    keep = ring + rng.normal(0, 0.15, gx.shape) < 1
    xs, ys = gx[keep] * patch, gy[keep] * patch
    sizes = np.full(len(xs), patch)
    tissue_mask = geometry.boxes_mask(xs, ys, sizes, sizes, (h, w), ds)
    flags = rng.random((h, w), dtype=np.float32) < noise
    cy, cx = rng.uniform(0, h, anomalies), rng.uniform(0, w, anomalies)
    ry, rx = rng.uniform(5, 40, anomalies), rng.uniform(5, 40, anomalies)
    polys, names = [], []
    for i in range(anomalies):
        r0, r1 = int(max(cy[i] - ry[i], 0)), int(min(cy[i] + ry[i] + 1, h))
        c0, c1 = int(max(cx[i] - rx[i], 0)), int(min(cx[i] + rx[i] + 1, w))
        yy, xx = np.mgrid[r0:r1, c0:c1]
        inside = ((yy - cy[i]) / ry[i]) ** 2 + ((xx - cx[i]) / rx[i]) ** 2 < 1
        flags[r0:r1, c0:c1] |= inside & (rng.random(inside.shape) < rng.uniform(0.2, 0.6))
        ellipse = shapely.affinity.scale(shapely.Point(cx[i], cy[i]).buffer(1, 16), rx[i] * 1.1, ry[i] * 1.1)
        if i % 7 == 0:
            ellipse = ellipse.difference(shapely.affinity.scale(ellipse, 0.3, 0.3))
        polys.append(shapely.affinity.scale(ellipse, ds, ds, origin=(0, 0)))
        names.append(("ihc", "blur", "ink")[i % 3])
    flags &= tissue_mask
    kde = np.clip(ndi.gaussian_filter(flags.astype(np.float32), sigma) / 0.1, 0, 1).astype(np.float32)
    tissue = geometry.boxes_region(xs, ys, sizes, sizes)
    region = Region.clipped(tissue, shapely.union_all(polys))
    regions = {c: shapely.union_all([p for p, n in zip(polys, names, strict=True) if n == c]) for c in set(names)}
    groups = {"ihc": "foreign stain", "blur": "artefact", "ink": "artefact"}
    parts = {k: shapely.intersection(g, tissue) for k, g in classes.part_regions(regions, groups).items()}
    return kde, ds, region, parts


def max_difference(fast: tuple, exact: tuple, annotation_area: float, spec, ds: float) -> tuple[float, ...]:
    """Largest |fast − exact| of any area (grid and part grid), the same relative to the exact prediction +
    annotation area of its cell, and relative to the stated bound (grid.raster_tolerance; ≤ 1 passes)."""
    worst = [0.0, 0.0, 0.0]
    keys = ["threshold", "dilation"]
    g = exact[0].merge(fast[0], on=keys, suffixes=("", "_fast"))
    pred = g.true_positive + g.false_positive
    g["scale"] = pred + annotation_area
    g["bound"] = raster_tolerance(pred.to_numpy(), annotation_area, g.dilation, spec, ds)
    p = exact[1].merge(fast[1], on=["level", "name", *keys], suffixes=("", "_fast"))
    p = p.merge(g[[*keys, "scale", "bound"]], on=keys)
    for frame in (g, p):
        for a in AREAS:
            diff = (frame[f"{a}_fast"] - frame[a]).abs()
            for k, d in enumerate((diff, diff / frame["scale"], diff / frame["bound"])):
                worst[k] = max(worst[k], float(d.max()))
    return tuple(worst)


def run_case(name: str, repeats: int, exact_cells: int) -> dict:
    kde, ds, region, parts = synthetic_slide(*CASES[name])
    h, w = kde.shape
    mpp = 0.25
    spec = GridSpec(THRESHOLDS, DILATIONS, "scale", "centroid", 0.0)
    counts = [len(geometry.threshold_polygons(kde, t)) for t in THRESHOLDS]
    walls, cpus = [], []
    for _ in range(repeats):
        w0, c0 = time.perf_counter(), time.process_time()
        fast = evaluate_grids(kde, ds, region, spec, mpp, parts)
        walls.append(time.perf_counter() - w0)
        cpus.append(time.process_time() - c0)
    # Exact on thresholds spread over the range: all dilations when they fit the budget, else the first ones.
    n_dil = min(len(DILATIONS), exact_cells)
    n_thr = max(exact_cells // n_dil, 1)
    spread = np.linspace(0, len(THRESHOLDS) - 1, n_thr + 2).round().astype(int)[1:-1]
    picks = THRESHOLDS if n_thr >= len(THRESHOLDS) else tuple(THRESHOLDS[i] for i in spread)
    sub = GridSpec(picks, DILATIONS[:n_dil], "scale", "centroid", 0.0, method="exact")
    e0 = time.process_time()
    exact = evaluate_grids(kde, ds, region, sub, mpp, parts)
    exact_cpu = time.process_time() - e0
    abs_diff, rel_diff, of_bound = max_difference(fast, exact, region.annotation.area, spec, ds)
    return {
        "case": name,
        "map": f"{w}x{h}",
        "polygons max": max(counts),
        "polygons mean": round(float(np.mean(counts))),
        "cells": len(fast[0]),
        "wall s": statistics.median(walls),
        "cpu s": statistics.median(cpus),
        "cells vs exact": len(exact[0]),
        "exact cpu s/cell": exact_cpu / len(exact[0]),
        "max abs diff px2": abs_diff,
        "max rel diff": rel_diff,
        "max diff / bound": of_bound,
        "peak RSS MiB": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", default="small,large")
    ap.add_argument("--repeats", type=int, default=3, help="timed runs of the raster grid (median reported)")
    ap.add_argument("--exact-cells", default="64,6", help="cells computed exactly, per case")
    args = ap.parse_args()
    names = args.cases.split(",")
    budgets = dict(zip(CASES, (int(n) for n in args.exact_cells.split(",")), strict=False))
    rows = [run_case(n, args.repeats, budgets.get(n, 6)) for n in names]
    load = os.getloadavg()
    pd.set_option("display.width", 200)
    print(pd.DataFrame(rows).to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    print(f"one core (BLAS/OpenMP 1 thread); median of {args.repeats} runs; load average {load[0]:.2f} {load[1]:.2f}")
    print(
        f"stated tolerance (grid.raster_tolerance): every area within max({RASTER_TOLERANCE:g} x (prediction + "
        f"annotation area), {RASTER_BLOCKS:g} raster blocks) of exact; 'max diff / bound' <= 1 passes"
    )


if __name__ == "__main__":
    with threadpool_limits(1):
        main()
