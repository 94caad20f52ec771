"""Rule evaluate_slide: threshold × dilation grid (all classes, per class / group and per lesion) and pixel-level
AUROC/AP for one annotated slide, and how much of its normal tissue the pixel flags and the KDE mark. A slide whose
annotation file has zero features is normal-only: all its tissue is normal, recall and F1 are undefined (null). The
predicted polygons come later (export_predictions), at the validation-chosen cell. With several detectors the maps are
the fused ones, and each detector's own score (`detector:NAME`) is scored at the same sampled pixels beside them."""

import time
from pathlib import Path

import numpy as np
import pandas as pd

from proganomaly.common.io import atomic_path
from proganomaly.common.raster import rasterize
from proganomaly.common.runlog import Progress, provenance, setup_logging, write_json
from proganomaly.config import from_params
from proganomaly.evaluation import classes, geometry, lesions, metrics, specificity
from proganomaly.evaluation import inputs as eval_io
from proganomaly.evaluation.grid import GridSpec, evaluate_all
from proganomaly.maps import fused

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
ann_path = Path(inp.annotations[0])
lesion_geoms, lesion_table = lesions.slide_lesions(
    ann_path, s.annotation, s.region.tissue, ev.annotation_classes, ann_path.suffix.lower() in eval_io.MASK_SUFFIXES
)
normal_only = s.region.annotation.is_empty or s.region.annotation.area <= 0
if normal_only:
    log.info("%s: no annotated anomaly in tissue (%s): a normal-only slide, all its tissue is normal", slide, ann_path)

t0 = time.perf_counter()
progress = Progress(len(spec.thresholds) * len(spec.dilations), f"{slide} grid", unit="cells", logger=log)
grid, part_grid, lesion_grid = evaluate_all(s.kde, ds, s.region, spec, mpp, s.parts, lesion_geoms, progress)
grid.insert(0, "slide_id", slide)
part_grid.insert(0, "slide_id", slide)
lesion_grid = lesions.with_lesions(lesion_grid, lesion_table, mpp)
lesion_grid.insert(0, "slide_id", slide)
grid = metrics.with_metrics(grid, mpp, ev.beta)
part_grid = metrics.with_metrics(part_grid, mpp, ev.beta)
grid_seconds = time.perf_counter() - t0
eval_io.write_tables(grid, out.grid, out.csv)
with atomic_path(out.class_grid) as tmp:
    part_grid.to_parquet(tmp, index=False)
with atomic_path(out.lesion_grid) as tmp:
    lesion_grid.to_parquet(tmp, index=False)
# A normal-only slide has nothing to find: its best F1 / IoU cells are undefined, not the "predict nothing" cell.
best = {m: None if normal_only else metrics.best_cell(grid, m) for m in ("f1", "iou")}
best_parts = metrics.best_part_cells(part_grid, "f1")

# Pixel level: every tissue pixel of the map grid (pixel-centre rule), or a seeded subsample of them.
tissue_mask = geometry.boxes_mask(s.patches["x"], s.patches["y"], s.patches["width"], s.patches["height"], shape, ds)
# Unscored tissue (no patch interior covers it: NaN in the d² map) is neither positive nor negative evidence.
scored = s.scored_tissue if s.scored_tissue is not None else tissue_mask
annotated = rasterize(s.annotation, shape, ds).astype(bool)
# Normal tissue flagged by the per-pixel τ decision and by the KDE, on the map grid (pixel-centre rule).
pixel_areas = specificity.pixel_areas(eval_io.read_map(inp.flags, shape), s.kde, scored, annotated, (ds * mpp) ** 2)
pixel_shares = specificity.pixel_fractions(pixel_areas)
log.info("%s: normal tissue flagged %s, KDE > %g on %s of normal tissue", slide, pixel_shares["normal_tissue_flagged"],
         specificity.KDE_LEVEL, pixel_shares[specificity.KDE_KEY])  # fmt: skip
flat = np.flatnonzero(scored)
pick = flat[metrics.sample_pixels(len(flat), ev.max_pixels, config.seed, slide)]
sample = pd.DataFrame({"label": annotated.ravel()[pick]})
del annotated
part_columns = {key: classes.column(*key) for key in s.parts}
for key, col in part_columns.items():
    sample[col] = rasterize(s.parts[key], shape, ds).ravel()[pick]
sample["kde"] = s.kde.ravel()[pick]
del tissue_mask, scored
s.kde = None
for name in ("mahalanobis_d2", "anomaly_map"):
    sample[name] = eval_io.read_map(inp[name], shape).ravel()[pick]
# Several detectors: each one alone, on the scale the fusion combines, at the very pixels sampled of the fused maps,
# so the pooled tables show what fusing adds. A pixel only the other detectors scored is NaN in its column (dropped and
# counted by pixel_scores).
detectors = list(getattr(snakemake.params, "detector_names", None) or [])
if detectors:
    metas = fused.read_json(inp.detector_maps)
    fused.check_same_grid(metas, detectors)
    thresholds = fused.read_json(inp.detector_thresholds)
    for name, d2_path, meta, threshold in zip(detectors, inp.detector_d2, metas, thresholds, strict=True):
        d2 = eval_io.read_map(d2_path, shape)
        sample[fused.detector_column(name)] = fused.detector_score(d2, meta, threshold, pick)
maps = (*MAPS, *map(fused.detector_column, detectors))
sample["weight"] = len(flat) / max(len(pick), 1)
sample.insert(0, "slide_id", slide)
with atomic_path(out.pixels) as tmp:
    sample.to_parquet(tmp, index=False)
pixel = {name: metrics.pixel_scores(sample["label"], sample[name], curve_points=ev.curve_points) for name in maps}
part_pixel = metrics.part_pixel_scores(sample, part_columns, maps, curve_points=ev.curve_points)
for name, res in pixel.items():
    log.info("%s pixel-level %s: AUROC %s, AP %s over %d pixels", slide, name, res["auroc"], res["average_precision"], res["n_pixels"])  # fmt: skip
for level, named in part_pixel.items():
    for part, res in named.items():
        log.info("%s %s %r: AUROC %s", slide, level, part, {m: res[m]["auroc"] for m in maps})

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
        # Reviewed with nothing anomalous in tissue: every tissue pixel is a negative, recall and F1 are null.
        "normal_only": bool(normal_only),
        "lesions": {
            "count": len(lesion_table),
            "area_um2": [float(a) * mpp**2 for a in lesion_table["area"]],
            "class": lesion_table["class"].tolist(),
            "group": lesion_table["group"].tolist(),
        },
        "specificity_pixels": {
            "definition": "map pixels whose centre lies in tissue; normal = outside every annotation; flagged = "
            f"flags.tif > 0; KDE above = kde.tif > {specificity.KDE_LEVEL:g}; NaN counts as neither",
            "areas_um2": pixel_areas,
            **pixel_shares,
            "f1_flag_everything": specificity.flag_everything_f1(s.region.annotation.area, s.region.tissue.area)
            if not normal_only
            else None,
        },
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
            "scored_tissue_pixels": len(flat),
            "unscored_tissue_fraction": s.unscored_tissue_fraction,
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
