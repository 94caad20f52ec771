"""Rule plot_eval_summary: pixel-level ROC and precision–recall curves and the metrics table of the evaluated slides."""

import json
from pathlib import Path

import pandas as pd

from proganomaly.common.io import atomic_path, write_text
from proganomaly.common.runlog import setup_logging
from proganomaly.report import evaluation, style, tables

log = setup_logging(snakemake.log[0])
names = list(snakemake.params.names)
grids = {n: pd.read_parquet(p) for n, p in zip(names, snakemake.input.grids, strict=True)}
metrics = {n: json.loads(Path(p).read_text()) for n, p in zip(names, snakemake.input.metrics, strict=True)}

style.save(evaluation.plot_pixel_curves(metrics), snakemake.output.curves)

summary = evaluation.metrics_summary(metrics)
best = evaluation.best_rows(grids)
with atomic_path(snakemake.output.csv) as tmp:
    summary.to_csv(tmp, index=False)
note = (
    "Reported: the evaluation stage's metrics.json (best grid cells by F1 and IoU with their threshold and dilation, "
    "the exported operating point, pixel-level AUROC and average precision of each score map). Best cell by F1: "
    "precision, recall, F1, IoU and false-positive rate of that cell by the evaluation stage's metrics, from its "
    "confusion areas (µm², clipped to tissue; pooled over slides the same way as metrics.json)."
)
page = tables.page("Evaluation metrics", [("Reported metrics", summary), ("Best cell per slide (by F1)", best)], note)
write_text(snakemake.output.table, page)
log.info("metrics of %s", names)
