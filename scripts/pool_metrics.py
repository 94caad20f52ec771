"""Rule pool_metrics: pool the evaluated slides' grids (areas summed per cell) and pixels (concatenated)."""

from pathlib import Path

import pandas as pd

from proganomaly.common.runlog import provenance, setup_logging, write_json
from proganomaly.config import from_params
from proganomaly.evaluation import inputs as eval_io
from proganomaly.evaluation import metrics

log = setup_logging(snakemake.log[0])
config = from_params(snakemake.params, snakemake.rule)
ev = config.evaluation
inp, out = snakemake.input, snakemake.output

grids = [pd.read_parquet(p) for p in inp.grids]
per_slide = [eval_io.read_json(p) for p in inp.metrics]
pooled = metrics.pool_grids(grids, beta=ev.beta)
eval_io.write_tables(pooled, out.grid, out.csv)

# Each slide's pixel sample carries a weight (its tissue pixels / sampled pixels): pooled, every pixel counts once.
pixels = pd.concat([pd.read_parquet(p) for p in inp.pixels], ignore_index=True)
pixel = {
    name: metrics.pixel_scores(pixels["label"], pixels[name], pixels["weight"], curve_points=ev.curve_points)
    for name in ("mahalanobis_d2", "anomaly_map", "kde")
}
slides = [m["slide_id"] for m in per_slide]
summary = [
    {
        "slide_id": m["slide_id"],
        "best_f1": m["best_f1"],
        "best_iou": m["best_iou"],
        **{f"auroc_{k}": m["pixel"][k]["auroc"] for k in pixel},
        **{f"average_precision_{k}": m["pixel"][k]["average_precision"] for k in pixel},
    }
    for m in per_slide
]
write_json(
    out.metrics,
    {
        "slides": slides,
        "pooling": "areas in µm² summed per (threshold, dilation) cell, metrics recomputed; pixels concatenated "
        "with weights tissue_pixels / sampled_pixels per slide",
        "cells": len(pooled),
        "best_f1": metrics.best_cell(pooled, "f1"),
        "best_iou": metrics.best_cell(pooled, "iou"),
        "pixel": {"sampled_pixels": len(pixels), **pixel},
        "per_slide": summary,
        "provenance": provenance(
            config.to_dict(),
            inputs=[str(Path(p)) for p in inp.grids],
        ),
    },
)
log.info("pooled %d slides (%s): best F1 %s", len(slides), ", ".join(slides), metrics.best_cell(pooled, "f1"))
