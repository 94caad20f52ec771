"""Rule pool_metrics: pool one split's evaluated slides (normal-only slides included): grids (areas summed per cell,
all classes and per part), pixels (concatenated, weighted: one AUROC over every pixel of every slide, so per-slide
offsets count), the areas at the validation-chosen operating point, and the specificity object (normal tissue
flagged, FP area, lesion sensitivity, FROC, flag-everything F1)."""

from pathlib import Path

import pandas as pd

from proganomaly.common.io import atomic_path
from proganomaly.common.runlog import provenance, setup_logging, write_json
from proganomaly.config import from_params
from proganomaly.evaluation import classes, lesions, metrics, operating, specificity
from proganomaly.evaluation import inputs as eval_io
from proganomaly.maps.fused import DETECTOR_PREFIX

MAPS = ("mahalanobis_d2", "anomaly_map", "kde")

log = setup_logging(snakemake.log[0])
config = from_params(snakemake.params, snakemake.rule)
ev = config.evaluation
split = snakemake.wildcards.split
inp, out = snakemake.input, snakemake.output

grids = [pd.read_parquet(p) for p in inp.grids]
part_grids = [pd.read_parquet(p) for p in inp.class_grids]
per_slide = [eval_io.read_json(p) for p in inp.metrics]
at_point = [eval_io.read_json(p) for p in inp.at_point]
op = eval_io.read_json(inp.operating_point)
pooled = metrics.pool_grids(grids, beta=ev.beta)
pooled_parts = metrics.pool_part_grids(grids, part_grids, beta=ev.beta)
eval_io.write_tables(pooled, out.grid, out.csv)
with atomic_path(out.class_grid) as tmp:
    pooled_parts.to_parquet(tmp, index=False)

# Each slide's pixel sample carries a weight (its tissue pixels / sampled pixels): pooled, every pixel counts once.
pixels = pd.concat([pd.read_parquet(p) for p in inp.pixels], ignore_index=True)
# With several detectors, each one's own score too (evaluate_slide gives every slide of a run the same columns).
maps = (*MAPS, *(col for col in pixels.columns if col.startswith(DETECTOR_PREFIX)))
pixel = {
    name: metrics.pixel_scores(pixels["label"], pixels[name], pixels["weight"], curve_points=ev.curve_points)
    for name in maps
}
part_columns = {key: col for col in pixels.columns if (key := classes.parse_column(col))}
part_pixel = metrics.part_pixel_scores(pixels, part_columns, maps, pixels["weight"], ev.curve_points)
best_parts = metrics.best_part_cells(pooled_parts, "f1")

lesion_grid = pd.concat([pd.read_parquet(p) for p in inp.lesion_grids], ignore_index=True)
froc = lesions.froc(pooled, lesion_grid, float(op["dilation"]), ev.lesion_min_overlap)
froc["operating_threshold"] = float(op["threshold"])
best_f1 = metrics.best_cell(pooled, "f1")
spec = specificity.split_summary(per_slide, at_point, best_f1 and best_f1["value"], froc)
for warning in spec["warnings"]:
    log.warning("at the operating point: %s", warning)

mode = str(grids[0]["dilation_mode"].iloc[0])
point_frames = [operating.record_frames(r, op, mode) for r in at_point]
at_op = operating.pooled_record([g for g, _ in point_frames], [p for _, p in point_frames], ev.beta)
groups = {c: g for m in per_slide for c, g in (m.get("annotation_classes") or {}).items()}

slides = [m["slide_id"] for m in per_slide]
summary = [
    {
        "slide_id": m["slide_id"],
        "oracle_best_f1": m["best_f1"],
        "oracle_best_iou": m["best_iou"],
        "normal_only": bool(m.get("normal_only", False)),
        "at_operating_point": {k: r["all"].get(k) for k in ("precision", "recall", "f1", "iou")},
        **{f"auroc_{k}": m["pixel"][k]["auroc"] for k in pixel},
        **{f"average_precision_{k}": m["pixel"][k]["average_precision"] for k in pixel},
    }
    for m, r in zip(per_slide, at_point, strict=True)
]
write_json(
    out.metrics,
    {
        "split": split,
        "slides": slides,
        "pooling": "areas in µm² summed per (threshold, dilation) cell, metrics recomputed; pixels concatenated "
        "with weights tissue_pixels / sampled_pixels per slide. Per class: a slide without the class adds its "
        "normal tissue (prediction on it FP, the rest TN; its normal pixels as negatives).",
        "cells": len(pooled),
        "annotation_classes": groups,
        # best_f1 / best_iou are this split's own best cells (an oracle); at_operating_point is the reported one.
        "best_cells_are_oracle": True,
        "best_f1": best_f1,
        "best_iou": metrics.best_cell(pooled, "iou"),
        "operating_point": {k: v for k, v in op.items() if k != "provenance"},
        "at_operating_point": at_op,
        "specificity": spec,
        "pixel": {"sampled_pixels": len(pixels), **pixel},
        "per_class": {
            level: {
                name: {"pixel": res, "oracle_best_f1": best_parts.get(level, {}).get(name)}
                for name, res in named.items()
            }
            for level, named in part_pixel.items()
        },
        "per_slide": summary,
        "provenance": provenance(config.to_dict(), inputs=[str(Path(p)) for p in inp.grids]),
    },
)
log.info(
    "pooled %s: %d slides (%s; normal-only %s): oracle best F1 %s; at the operating point (%s) F1 %s (flag "
    "everything %s), normal tissue inside polygons %s (normal-only slides) / %s (all), pixel flags %s, lesion "
    "sensitivity %s",
    split, len(slides), ", ".join(slides), spec["normal_only_slides"], best_f1 and best_f1["value"], op["source"],
    at_op["all"]["f1"], spec["f1_flag_everything"], spec["normal_tissue_in_polygons"],
    spec["normal_tissue_in_polygons_all"], spec["normal_tissue_flagged"], spec["lesion_sensitivity"],
)  # fmt: skip
log.info("per class AUROC (kde): %s", {n: r["kde"]["auroc"] for n, r in part_pixel.get("class", {}).items()})
