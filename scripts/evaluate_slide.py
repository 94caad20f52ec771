"""Rule evaluate_slide: threshold × dilation grid (all classes and per class / group) and pixel-level AUROC/AP
for one annotated slide. The predicted polygons come later (export_predictions), at the validation-chosen cell."""

import time

import numpy as np
import pandas as pd

from proganomaly.common.io import atomic_path
from proganomaly.common.raster import rasterize
from proganomaly.common.runlog import Progress, provenance, setup_logging, write_json
from proganomaly.config import from_params
from proganomaly.evaluation import classes, geometry, metrics
from proganomaly.evaluation import inputs as eval_io
from proganomaly.evaluation.grid import GridSpec, evaluate_grids

MAPS = ("mahalanobis_d2", "anomaly_map", "kde")

log = setup_logging(snakemake.log[0])
t_start = time.perf_counter()
config = from_params(snakemake.params, snakemake.rule)
ev = config.evaluation
slide = snakemake.wildcards.slide
inp, out = snakemake.input, snakemake.output
spec = GridSpec.from_config(ev)

# Every input is read and checked before the sweep.
s = eval_io.load_slide(inp, ev, slide, log)
mpp, ds, shape = s.mpp, s.downsample, s.shape

t0 = time.perf_counter()
progress = Progress(len(spec.thresholds) * len(spec.dilations), f"{slide} grid", unit="cells", logger=log)
grid, part_grid = evaluate_grids(s.kde, ds, s.region, spec, mpp, s.parts, progress=progress)
grid.insert(0, "slide_id", slide)
part_grid.insert(0, "slide_id", slide)
grid = metrics.with_metrics(grid, mpp, ev.beta)
part_grid = metrics.with_metrics(part_grid, mpp, ev.beta)
grid_seconds = time.perf_counter() - t0
eval_io.write_tables(grid, out.grid, out.csv)
with atomic_path(out.class_grid) as tmp:
    part_grid.to_parquet(tmp, index=False)
best = {"f1": metrics.best_cell(grid, "f1"), "iou": metrics.best_cell(grid, "iou")}
best_parts = metrics.best_part_cells(part_grid, "f1")

# Pixel level: every tissue pixel of the map grid (pixel-centre rule), or a seeded subsample of them.
tissue_mask = geometry.boxes_mask(s.patches["x"], s.patches["y"], s.patches["width"], s.patches["height"], shape, ds)
flat = np.flatnonzero(tissue_mask)
pick = flat[metrics.sample_pixels(len(flat), ev.max_pixels, config.seed, slide)]
sample = pd.DataFrame({"label": rasterize(s.annotation, shape, ds).ravel()[pick]})
part_columns = {key: classes.column(*key) for key in s.parts}
for key, col in part_columns.items():
    sample[col] = rasterize(s.parts[key], shape, ds).ravel()[pick]
sample["kde"] = s.kde.ravel()[pick]
del tissue_mask
s.kde = None
for name in ("mahalanobis_d2", "anomaly_map"):
    sample[name] = eval_io.read_map(inp[name], shape).ravel()[pick]
sample["weight"] = len(flat) / max(len(pick), 1)
sample.insert(0, "slide_id", slide)
with atomic_path(out.pixels) as tmp:
    sample.to_parquet(tmp, index=False)
pixel = {name: metrics.pixel_scores(sample["label"], sample[name], curve_points=ev.curve_points) for name in MAPS}
part_pixel = metrics.part_pixel_scores(sample, part_columns, MAPS, curve_points=ev.curve_points)
for name, res in pixel.items():
    log.info("%s pixel-level %s: AUROC %s, AP %s over %d pixels", slide, name, res["auroc"], res["average_precision"], res["n_pixels"])  # fmt: skip
for level, named in part_pixel.items():
    for part, res in named.items():
        log.info("%s %s %r: AUROC %s", slide, level, part, {m: res[m]["auroc"] for m in MAPS})

per_part = {
    level: {
        name: {
            "pixel": part_pixel[level][name],
            "oracle_best_f1": best_parts.get(level, {}).get(name),
            "area_um2_in_tissue": float(s.parts[(level, name)].area * mpp**2),
        }
        for name in named
    }
    for level, named in part_pixel.items()
}
write_json(
    out.metrics,
    {
        "slide_id": slide,
        "mpp": mpp,
        "map": {"downsample": ds, "width": shape[1], "height": shape[0], "mpp": s.info.get("mpp")},
        "tissue_area_um2": s.region.tissue.area * mpp**2,
        "annotation_area_um2": s.annotation.area * mpp**2,
        "annotation_in_tissue_um2": s.region.annotation.area * mpp**2,
        "annotation_repairs": s.repairs,
        "annotation_classes": s.groups,
        "contour_tolerance_px": spec.contour_tolerance_px,
        # "raster" areas are within grid.raster_tolerance of the exact overlay (docs/deviations.md).
        "grid_method": spec.method,
        "cells": len(grid),
        "cells_skipped": 0,
        # Chosen on this slide's own grid: an upper bound, not a result (the reported cell is in operating_point).
        "best_cells_are_oracle": True,
        "best_f1": best["f1"],
        "best_iou": best["iou"],
        "pixel": {
            "tissue_pixels": len(flat),
            "sampled_pixels": len(pick),
            "annotated_tissue_pixels_sampled": int(sample["label"].sum()),
            **pixel,
        },
        "per_class": {
            "definition": "each class (and group) against normal tissue (tissue outside every annotation); other "
            "classes' pixels and regions are left out. Grid: TP = prediction ∩ class, FN = class \\ prediction, FP = "
            "prediction ∩ normal tissue, TN = normal tissue \\ prediction (FP and TN as in the all-classes grid).",
            **per_part,
        },
        "seconds": {"grid": grid_seconds, "total": time.perf_counter() - t_start},
        "provenance": provenance(config.to_dict(), slide=slide),
    },
)
log.info(
    "%s: %d cells × %d parts in %.1f s; oracle best F1 %s, best IoU %s",
    slide, len(grid), len(s.parts), grid_seconds, best["f1"] and round(best["f1"]["value"], 4),
    best["iou"] and round(best["iou"]["value"], 4),
)  # fmt: skip
