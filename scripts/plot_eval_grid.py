"""Rule plot_eval_grid: F1 and IoU heat maps over the threshold × dilation grid of one slide (or the pooled grid),
the oracle best cell and the validation-chosen operating point marked."""

import json
from pathlib import Path

import pandas as pd

from proganomaly.common.runlog import setup_logging
from proganomaly.evaluation.metrics import cell_metrics
from proganomaly.report import evaluation, style

log = setup_logging(snakemake.log[0])
name = snakemake.wildcards.evalset
grid = pd.read_parquet(snakemake.input.grid)
op = json.loads(Path(snakemake.input.operating_point).read_text())
# The evaluation stage's own F1 / IoU columns are used when present (the pooled grid computes them from µm² sums).
if not {"f1", "iou"} <= set(grid.columns):
    grid = cell_metrics(grid)
if name.startswith("pooled/"):
    title = f"{name.removeprefix('pooled/')} slides pooled (areas summed); red: best cell = oracle"
else:
    title = f"Slide {name}; red: best cell = oracle"
title += f"; white: operating point ({op.get('source', '?')})"
style.save(evaluation.plot_grid_heatmaps(grid, title, operating_point=op), snakemake.output[0])
log.info(
    "%s: %d cells, best F1 %.4f, operating point %s",
    name,
    len(grid),
    grid["f1"].max(),
    (op["threshold"], op["dilation"]),
)
