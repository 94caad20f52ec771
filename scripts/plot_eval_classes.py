"""Rule plot_eval_classes: pixel-level ROC and precision–recall curves per annotation class and per group, one
split's slides pooled."""

import json
from pathlib import Path

from proganomaly.common.runlog import setup_logging
from proganomaly.report import classes, style

log = setup_logging(snakemake.log[0])
split = snakemake.wildcards.split
metrics = json.loads(Path(snakemake.input.metrics).read_text())
n = len(metrics.get("slides", []))
for level, path in (("class", snakemake.output.classes), ("group", snakemake.output.groups)):
    title = f"Per {level}, against normal tissue: {split} slides pooled ({n})"
    style.save(classes.plot_class_curves(metrics, title, level), path)
    log.info("%s %s curves: %s", split, level, classes.part_names(metrics, level))
