"""Rule plot_class_metrics: the per-class metrics table (pooled per split) with the operating point's origin."""

import json
from pathlib import Path

from proganomaly.common.io import atomic_path, write_text
from proganomaly.common.runlog import setup_logging
from proganomaly.report import classes, tables

log = setup_logging(snakemake.log[0])
splits = list(snakemake.params.splits)
pooled = {s: json.loads(Path(p).read_text()) for s, p in zip(splits, snakemake.input.metrics, strict=True)}
op = json.loads(Path(snakemake.input.operating_point).read_text())
table = classes.class_table(pooled)
with atomic_path(snakemake.output.csv) as tmp:
    table.to_csv(tmp, index=False)
note = (
    classes.operating_point_text(op) + " Each class (and group) is scored against normal tissue (tissue outside "
    "every annotation); other classes' pixels and regions are left out. Pixel AUROC / AP: weighted tissue-pixel "
    "samples pooled over the split's slides. Oracle best-cell F1: the best threshold × dilation cell of that split's "
    "own pooled grid (an upper bound, chosen on the data it scores). At operating point: the validation-chosen cell, "
    "areas summed over the split's slides. The test split's numbers at the operating point are the reported ones."
)
sections = [(f"{split} slides pooled", table[table["split"] == split].drop(columns="split")) for split in splits]
write_text(snakemake.output.table, tables.page("Per-class evaluation metrics", sections, note, float_format=".3f"))
log.info("per-class table of %s: %d rows", splits, len(table))
