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
# A slide's numbers at the operating point come from export_predictions (the pooled ones are in metrics.json).
for slide, path in zip(snakemake.params.slides, snakemake.input.at_point, strict=True):
    at = json.loads(Path(path).read_text())
    metrics[slide] |= {"operating_point": at["operating_point"], "at_operating_point": {"all": at["all"]}}

style.save(evaluation.plot_pixel_curves(metrics), snakemake.output.curves)

summary = evaluation.metrics_summary(metrics)
best = evaluation.best_rows(grids)
with atomic_path(snakemake.output.csv) as tmp:
    summary.to_csv(tmp, index=False)
note = (
    "Reported: the metrics at the operating point (one threshold × dilation cell chosen on the pooled validation "
    "slides, or fixed; see results/eval/operating_point.json), per slide and per pooled split. The best cells by F1 "
    "and IoU are oracles: chosen on the slide or split they score, they are upper bounds, not results. Also: "
    "pixel-level AUROC and average precision of each score map (all classes). Best cell by F1: precision, recall, "
    "F1, IoU and false-positive rate of that (oracle) cell, from its confusion areas (µm², clipped to tissue)."
)
page = tables.page(
    "Evaluation metrics", [("Reported metrics", summary), ("Oracle best cell per slide and split (by F1)", best)], note
)
write_text(snakemake.output.table, page)
log.info("metrics of %s", names)
