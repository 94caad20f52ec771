"""Rule plot_eval_summary: pixel-level ROC and precision–recall curves and the metrics table of the evaluated slides."""

import json
from pathlib import Path

import pandas as pd

from proganomaly.common.io import atomic_path, write_text
from proganomaly.common.runlog import setup_logging
from proganomaly.evaluation import specificity
from proganomaly.report import evaluation, style, tables

log = setup_logging(snakemake.log[0])
names = list(snakemake.params.names)
grids = {n: pd.read_parquet(p) for n, p in zip(names, snakemake.input.grids, strict=True)}
metrics = {n: json.loads(Path(p).read_text()) for n, p in zip(names, snakemake.input.metrics, strict=True)}
# A slide's numbers at the operating point come from export_predictions (the pooled ones are in metrics.json).
for slide, path in zip(snakemake.params.slides, snakemake.input.at_point, strict=True):
    at = json.loads(Path(path).read_text())
    metrics[slide] |= {
        "operating_point": at["operating_point"],
        "at_operating_point": {"all": at["all"]},
        "specificity": specificity.slide_summary(metrics[slide], at),
    }

style.save(evaluation.plot_pixel_curves(metrics), snakemake.output.curves)

# Every column (specificity, metrics at the operating point, oracle best cells, pixel AUROC / AP per map) to the CSV;
# the page shows the few a pathologist reads.
summary = evaluation.metrics_summary(metrics)
best = evaluation.best_rows(grids).set_index("slide").add_prefix("oracle best-F1 cell: ")
summary = summary.merge(best, left_on="slide", right_index=True, how="left")
with atomic_path(snakemake.output.csv) as tmp:
    summary.to_csv(tmp, index=False)
reading = tables.reading_table(metrics, dict(snakemake.params.split_of))
note = (
    "At the operating point (one KDE threshold × dilation cell chosen on the pooled validation slides, or fixed; see "
    "results/eval/operating_point.json), per slide and pooled per split: F1, precision, recall and specificity of "
    "the predicted polygons' area against the annotations (µm² clipped to tissue); the share of normal tissue "
    "(outside every annotation) inside the predicted polygons (pooled rows: over all the split's slides, and over "
    "its normal-only slides alone); lesion sensitivity (annotated regions the polygons hit); pixel-level AUROC of "
    "the d² map and of the KDE heat map (all classes); and the F1 of flagging all tissue, 2p / (1 + p) with p the "
    "anomalous share: an F1 at or below it detects nothing. A warning says the polygons cover more than half of a "
    "slide's tissue. Empty: undefined (e.g. recall and F1 on a slide with nothing anomalous). Every other number "
    "(FP area, KDE and pixel-flag shares, oracle best cells, average precision, areas) is in the CSV beside this "
    "table in the report (metrics.csv)."
)
write_text(snakemake.output.table, tables.page("Evaluation metrics", [("At the operating point", reading)], note))
log.info("metrics of %s", names)
